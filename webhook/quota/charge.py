"""What a claim costs a tenant: an upper bound of what the allocator can hand out for it.

Devices per DeviceClass are counted as core quota counts them: ``ExactCount`` adds ``count``,
``All`` counts 32, and ``firstAvailable`` counts its largest alternative. Memory and compute are
read from the devices a request can get, not from the claim's text: each alternative's DeviceClass
selectors and request selectors are evaluated (CEL, the Kubernetes DRA environment) against the
inventory's device shapes, and the worst matching shape is charged:

- a device that cannot be shared (no ``allowMultipleAllocations``) at its full memory and 100 %
  compute (a whole device) or its profile's share (a partition), whatever capacity the claim asks
  for: capacity only filters there;
- a shared device at the request rounded up by the device's request policy, and each capacity not
  requested at the policy's default, or the whole device where there is none;
- a request that matches no published device at the worst known model (the catalogue's) that its
  class selects, so a node that joins later brings no uncharged GPUs; a class nobody has created
  yet at the worst GPU known.

What a class is follows from the devices it selects, not its name: the kinds (``whole``,
``partition``, ``shared``) and drivers of the matching devices are charged too, for device limits
written as ``kind:<kind>`` and ``driver:<glob>`` beside class-name globs. Devices of drivers the
catalogue does not list as GPUs cost no memory or compute.

Pure: a claim spec (dict) in, a ``Charge`` out. ``basis`` reduces a claim to a few tuples that the
usage cache keeps instead of the whole object; a ``Pricer`` holds one inventory generation and
remembers the price of each distinct alternative, so CEL runs once per (selector, device shape).
"""

from __future__ import annotations

import fnmatch
import functools
import operator
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from webhook.quota.cel import SelectorProgram, compile_selector, device_value
from webhook.quota.devices import IDENTITY_ATTRIBUTES, DeviceShape, Snapshot
from webhook.translate.catalogue import Catalogue, Driver
from webhook.translate.quantity import QuantityError, parse_quantity

ALL_MODE_COUNT = 32  # core quota's figure for allocationMode: All
_MIG = re.compile(r"^(?P<slices>[1-7])g\.")
HUNDRED = Fraction(100)
KIND_PREFIX = "kind:"
DRIVER_PREFIX = "driver:"
GPU = "gpu"  # kind:gpu matches any GPU device, whatever its kind
MAX_PRICES = 65536  # distinct alternatives remembered per inventory generation


@dataclass(frozen=True)
class Charge:
    """``devices``: per DeviceClass, as core quota counts (largest alternative of that class).
    ``matched``: per devices-limit pattern of the policy, the largest alternative whose class
    matches, so alternatives of several classes under one pattern are not counted twice.
    ``total_devices``: per request the largest alternative, summed: the devices the claim gets."""

    devices: Mapping[str, int] = field(default_factory=dict)
    memory: Fraction = Fraction(0)
    compute: Fraction = Fraction(0)
    claims: int = 0
    profiles: Mapping[str, int] = field(default_factory=dict)
    matched: Mapping[str, int] = field(default_factory=dict)
    total_devices: int = 0

    def __add__(self, other: Charge) -> Charge:
        return self._combine(other, 1)

    def __sub__(self, other: Charge) -> Charge:
        return self._combine(other, -1)

    def times(self, n: int) -> Charge:
        """``n`` claims (or admissions) of this charge: the same as adding it ``n`` times."""
        return Charge(
            devices={k: v * n for k, v in self.devices.items()} if n else {},
            memory=self.memory * n,
            compute=self.compute * n,
            claims=self.claims * n,
            profiles={k: v * n for k, v in self.profiles.items()} if n else {},
            matched={k: v * n for k, v in self.matched.items()} if n else {},
            total_devices=self.total_devices * n,
        )

    def _combine(self, other: Charge, sign: int) -> Charge:
        # Added or subtracted as such (exact either way): ``sign * x`` cost a Fraction multiplication per field.
        op = operator.add if sign > 0 else operator.sub
        return Charge(
            devices=_merge(self.devices, other.devices, sign),
            memory=op(self.memory, other.memory),
            compute=op(self.compute, other.compute),
            claims=op(self.claims, other.claims),
            profiles=_merge(self.profiles, other.profiles, sign),
            matched=_merge(self.matched, other.matched, sign),
            total_devices=op(self.total_devices, other.total_devices),
        )

    def as_cel(self) -> dict[str, Any]:
        """The charge as rule variables see it: bytes and percent as integers (rounded up)."""
        return {
            "devices": dict(self.devices),
            "totalDevices": self.total_devices,
            "memory": _ceil(self.memory),
            "compute": _ceil(self.compute),
            "claims": self.claims,
            "profiles": dict(self.profiles),
        }


ZERO = Charge()


def _merge(a: Mapping[str, int], b: Mapping[str, int], sign: int) -> dict[str, int]:
    out = dict(a)
    if not b:
        return out
    for key, value in b.items():
        out[key] = out.get(key, 0) + sign * value
        if out[key] == 0:
            del out[key]
    return out


def _ceil(value: Fraction) -> int:
    return -((-value.numerator) // value.denominator)


@dataclass(frozen=True)
class Alternative:
    """One way a request can be satisfied, reduced to what quota needs."""

    device_class: str
    count: int
    capacity: tuple[tuple[str, Fraction], ...] = ()
    selectors: tuple[str, ...] = ()


Basis = tuple[tuple[Alternative, ...], ...]  # per request, its alternatives


def basis(claim_spec: Mapping[str, Any]) -> Basis:
    """Reduce a ResourceClaimSpec to its quota-relevant facts. A capacity that does not parse is
    left out: the device's policy default (the whole device) is charged instead."""
    requests = ((claim_spec or {}).get("devices") or {}).get("requests") or []
    out = []
    for request in requests if isinstance(requests, list) else []:
        if not isinstance(request, dict):
            continue
        if "firstAvailable" in request:
            subs = request.get("firstAvailable") or []
        elif "exactly" in request:
            subs = [request["exactly"]]
        else:
            subs = [request]
        alternatives = tuple(
            _alternative(s) for s in subs if isinstance(s, dict) and isinstance(s.get("deviceClassName"), str)
        )
        if alternatives:
            out.append(alternatives)
    return tuple(out)


def _alternative(sub: Mapping[str, Any]) -> Alternative:
    count = ALL_MODE_COUNT if sub.get("allocationMode") == "All" else _count(sub.get("count"))
    capacity = []
    requests = (sub.get("capacity") or {}).get("requests") if isinstance(sub.get("capacity"), dict) else None
    for name, value in (requests or {}).items() if isinstance(requests, dict) else ():
        try:
            capacity.append((str(name), parse_quantity(value)))
        except QuantityError:
            continue
    selectors = []
    for selector in sub.get("selectors") or () if isinstance(sub.get("selectors"), list) else ():
        cel = (selector or {}).get("cel") if isinstance(selector, dict) else None
        if isinstance(cel, dict):
            selectors.append(str(cel.get("expression", "")))
    return Alternative(
        device_class=str(sub["deviceClassName"]),
        count=count,
        capacity=tuple(sorted(capacity)),
        selectors=tuple(selectors),
    )


def _count(value: Any) -> int:
    if value is None:
        return 1
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= ALL_MODE_COUNT:
        return value
    return ALL_MODE_COUNT  # the apiserver refuses other counts; never charge less than it could be


@dataclass(frozen=True)
class Price:
    """What one device of an alternative can cost, over every device shape it may get."""

    memory: Fraction = Fraction(0)
    compute: Fraction = Fraction(0)
    kinds: frozenset[str] = frozenset()
    drivers: frozenset[str] = frozenset()
    profiles: frozenset[str] = frozenset()


@functools.lru_cache(maxsize=4096)
def _compiled(expression: str) -> SelectorProgram:
    program = compile_selector(expression)
    if program.unsupported is None and any(
        f".{name}" in expression or f"'{name}'" in expression or f'"{name}"' in expression
        for name in IDENTITY_ATTRIBUTES
    ):
        # Shapes leave identity out: a selector on a uuid may pick any device of its class.
        return SelectorProgram(expression, "names a device identity attribute")
    return program


class Pricer:
    """Prices alternatives against one inventory snapshot, the catalogue and the policy's facts."""

    def __init__(
        self,
        catalogue: Catalogue,
        snapshot: Snapshot,
        *,
        declared_memory: Mapping[str, Fraction | None] | None = None,
        device_patterns: Iterable[str] = (),
    ) -> None:
        self.generation = snapshot.generation
        self.device_patterns = tuple(sorted(set(device_patterns)))
        self._snapshot = snapshot
        self._declared = {k: v for k, v in (declared_memory or {}).items() if v is not None}
        self._drivers: dict[str, Driver] = {}
        for driver in catalogue.drivers:
            self._drivers.setdefault(driver.driver, driver)
        self._known = tuple(dict.fromkeys([*snapshot.published, *snapshot.models]))
        self._prices: dict[Alternative, Price] = {}
        self._largest: dict[str, Fraction] = {}
        for driver in catalogue.drivers:
            sizes = driver.shared.memory_sizes if driver.shared else ()
            if sizes:
                self._largest[driver.driver] = max(self._largest.get(driver.driver, Fraction(0)), max(sizes))

    def price(self, alt: Alternative) -> Price:
        found = self._prices.get(alt)
        if found is None:
            if len(self._prices) >= MAX_PRICES:  # claims of ever new shapes must not grow it without end
                self._prices.clear()
            found = self._prices[alt] = self._price(alt)
        return found

    # -- matching -------------------------------------------------------------------------------
    def _candidates(self, alt: Alternative) -> list[DeviceShape]:
        """The shapes a request may get: the published ones its class and selectors select; else
        the known ones (published and the catalogue's models) they select; else the known ones its
        class selects, whatever the request's selectors say."""
        class_selectors = self._snapshot.classes.get(alt.device_class)
        if class_selectors is None:  # no such class (yet): an admin may create one for any GPU
            return [s for s in self._known if s.driver in self._drivers]
        wanted = (*class_selectors, *alt.selectors)
        published = [s for s in self._snapshot.published if _selects(wanted, s)]
        if published:
            return published
        known = [s for s in self._known if _selects(wanted, s)]
        return known or [s for s in self._known if _selects(class_selectors, s)]

    # -- pricing --------------------------------------------------------------------------------
    def _price(self, alt: Alternative) -> Price:
        memory = compute = Fraction(0)
        kinds: set[str] = set()
        drivers: set[str] = set()
        profiles: set[str] = set()
        for shape in self._candidates(alt):
            driver = self._drivers.get(shape.driver)
            if driver is None:
                continue  # not a GPU the catalogue knows: no memory or compute
            kind, profile = _kind(shape, driver)
            kinds.add(kind)
            drivers.add(shape.driver)
            if profile is not None:
                profiles.add(profile)
            shape_memory, shape_compute = self._cost(shape, driver, alt, profile)
            memory = max(memory, shape_memory)
            compute = max(compute, shape_compute)
        declared = self._declared.get(alt.device_class)
        if declared is not None:
            memory = max(memory, declared)
        return Price(memory, compute, frozenset(kinds), frozenset(drivers), frozenset(profiles))

    def _cost(
        self, shape: DeviceShape, driver: Driver, alt: Alternative, profile: str | None
    ) -> tuple[Fraction, Fraction]:
        requested = {_local(name, shape.driver): value for name, value in alt.capacity}
        own = dict(dict(shape.capacity).get(shape.driver, ()))
        memory_name = driver.shared.memory.capacity if driver.shared else "memory"
        compute_spec = driver.shared.compute if driver.shared else None

        def allocated(name: str) -> Fraction | None:
            capacity = own.get(name)
            if capacity is None:
                return None
            got = capacity.allocated(requested.get(name), shared=shape.allow_multiple)
            # A request no device of this shape can meet: charge what was asked, at least.
            return got if got is not None else max(capacity.value, requested.get(name, Fraction(0)))

        memory = allocated(memory_name)
        if memory is None:
            memory = max(self._largest.get(shape.driver, Fraction(0)), requested.get(memory_name, Fraction(0)))
        compute: Fraction | None = None
        if compute_spec is not None and compute_spec.whole_device:
            got = allocated(compute_spec.capacity)
            if got is not None:
                compute = got * HUNDRED / compute_spec.whole_device
        if compute is None:
            mig = _MIG.match(profile) if profile is not None and shape.partition else None
            compute = Fraction(int(mig["slices"]) * 100, 7) if mig else HUNDRED
        return memory, compute


def _local(name: str, driver: str) -> str:
    domain, _, short = name.rpartition("/")
    return short if domain in ("", driver) else name


def _kind(shape: DeviceShape, driver: Driver) -> tuple[str, str | None]:
    profile = None
    if driver.partition is not None:
        value = shape.attribute(driver.partition.profile_attribute)
        profile = str(value) if value is not None else None
    if shape.partition or profile is not None:
        return "partition", profile
    return ("shared" if shape.allow_multiple else "whole"), None


def _selects(expressions: Iterable[str], shape: DeviceShape) -> bool:
    return all(_match(e, shape) for e in expressions)


@functools.lru_cache(maxsize=65536)
def _match(expression: str, shape: DeviceShape) -> bool:
    """One selector against one device shape, evaluated once for as long as both are in use."""
    return _compiled(expression).matches(_device(shape))


@functools.lru_cache(maxsize=4096)
def _device(shape: DeviceShape) -> Any:
    return device_value(
        driver=shape.driver,
        attributes={d: dict(v) for d, v in shape.attributes},
        capacity={d: {k: c.value for k, c in v} for d, v in shape.capacity},
        allow_multiple=shape.allow_multiple,
    )


def charge(claim_basis: Basis, *, pricer: Pricer) -> Charge:
    total = Charge(claims=1)
    for alternatives in claim_basis:
        total = total + _request_charge(alternatives, pricer)
    return total


def _request_charge(alternatives: Iterable[Alternative], pricer: Pricer) -> Charge:
    devices: dict[str, int] = {}
    profiles: dict[str, int] = {}
    matched: dict[str, int] = {}
    memory = Fraction(0)
    compute = Fraction(0)
    total = 0
    for alt in alternatives:
        price = pricer.price(alt)
        devices[alt.device_class] = max(devices.get(alt.device_class, 0), alt.count)
        total = max(total, alt.count)
        for pattern in pricer.device_patterns:
            if _matches(pattern, alt, price):
                matched[pattern] = max(matched.get(pattern, 0), alt.count)
        for profile in price.profiles:
            profiles[profile] = max(profiles.get(profile, 0), alt.count)
        memory = max(memory, price.memory * alt.count)
        compute = max(compute, price.compute * alt.count)
    return Charge(
        devices=devices, memory=memory, compute=compute, profiles=profiles, matched=matched, total_devices=total
    )


def _matches(pattern: str, alt: Alternative, price: Price) -> bool:
    if pattern.startswith(KIND_PREFIX):
        kind = pattern[len(KIND_PREFIX) :]
        return bool(price.kinds) if kind == GPU else kind in price.kinds
    if pattern.startswith(DRIVER_PREFIX):
        glob = pattern[len(DRIVER_PREFIX) :]
        return any(fnmatch.fnmatchcase(d, glob) for d in price.drivers)
    return fnmatch.fnmatchcase(alt.device_class, pattern)
