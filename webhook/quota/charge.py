"""What a claim costs a tenant: devices per DeviceClass, GPU memory, compute share, claims.

Counted as core quota counts DRA devices: ``ExactCount`` adds ``count``, ``All`` counts 32, and
``firstAvailable`` counts its largest alternative (per class for devices; the largest memory and
compute of any alternative for those dimensions), so a claim is charged for the most it could get.

Memory per device is the claim's capacity request where it makes one; otherwise a partition's
profile (``3g.20gb`` is 20 GB) or a whole device at the memory its class declares (the policy's
``classes`` table, else the largest card size the catalogue lists for the class's driver). Compute is
in percent of one device: a whole device is 100, a capacity request is scaled by its driver's
``wholeDevice``, a partition is its share of slices.

Pure: a claim spec (dict) in, a ``Charge`` out. ``basis`` reduces a claim to a few tuples that the
usage cache keeps instead of the whole object.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from webhook.translate.catalogue import DEVICE_KINDS, Catalogue
from webhook.translate.quantity import QuantityError, parse_quantity

ALL_MODE_COUNT = 32  # core quota's figure for allocationMode: All
_PROFILE = re.compile(r"\.(?:profile|partitionProfile)\s*==\s*['\"]([^'\"]+)['\"]")
_MIG = re.compile(r"^(?P<slices>[1-7])g\.(?P<memgb>[0-9]+)gb")
HUNDRED = Fraction(100)


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

    def _combine(self, other: Charge, sign: int) -> Charge:
        return Charge(
            devices=_merge(self.devices, other.devices, sign),
            memory=self.memory + sign * other.memory,
            compute=self.compute + sign * other.compute,
            claims=self.claims + sign * other.claims,
            profiles=_merge(self.profiles, other.profiles, sign),
            matched=_merge(self.matched, other.matched, sign),
            total_devices=self.total_devices + sign * other.total_devices,
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
    profile: str | None = None


Basis = tuple[tuple[Alternative, ...], ...]  # per request, its alternatives


def basis(claim_spec: Mapping[str, Any]) -> Basis:
    """Reduce a ResourceClaimSpec to its quota-relevant facts; unparseable capacity counts as 0."""
    requests = ((claim_spec or {}).get("devices") or {}).get("requests") or []
    out = []
    for request in requests:
        if not isinstance(request, dict):
            continue
        if "firstAvailable" in request:
            subs = request.get("firstAvailable") or []
        elif "exactly" in request:
            subs = [request["exactly"]]
        else:
            subs = [request]
        alternatives = tuple(_alternative(s) for s in subs if isinstance(s, dict) and s.get("deviceClassName"))
        if alternatives:
            out.append(alternatives)
    return tuple(out)


def _alternative(sub: Mapping[str, Any]) -> Alternative:
    count = ALL_MODE_COUNT if sub.get("allocationMode") == "All" else int(sub.get("count") or 1)
    capacity = []
    for name, value in (((sub.get("capacity") or {}).get("requests")) or {}).items():
        try:
            capacity.append((str(name), parse_quantity(value)))
        except QuantityError:
            continue
    profile = None
    for selector in sub.get("selectors") or []:
        found = _PROFILE.search(str(((selector or {}).get("cel") or {}).get("expression", "")))
        if found:
            profile = found.group(1)
    return Alternative(
        device_class=str(sub["deviceClassName"]), count=count, capacity=tuple(sorted(capacity)), profile=profile
    )


@dataclass(frozen=True)
class ClassInfo:
    kind: str  # whole, partition, shared, or "unknown" for classes not from the catalogue
    memory_capacity: str | None = None
    compute_capacity: str | None = None
    compute_whole: Fraction | None = None
    device_memory: Fraction | None = None  # what one whole device of the class counts as


class ClassResolver:
    """What the catalogue and the policy say about each DeviceClass."""

    def __init__(
        self,
        catalogue: Catalogue,
        *,
        declared_memory: Mapping[str, Fraction | None] | None = None,
        device_patterns: Iterable[str] = (),
    ) -> None:
        self._info: dict[str, ClassInfo] = {}
        self._declared = dict(declared_memory or {})
        self.device_patterns = tuple(sorted(set(device_patterns)))
        for driver in catalogue.drivers:
            largest = max(driver.shared.memory_sizes) if driver.shared and driver.shared.memory_sizes else None
            for kind in DEVICE_KINDS:
                if driver.kind(kind) is None:
                    continue
                shared = driver.shared
                self._info[catalogue.class_name(kind, driver.name)] = ClassInfo(
                    kind=kind,
                    memory_capacity=shared.memory.capacity if shared else None,
                    compute_capacity=shared.compute.capacity if shared and shared.compute else None,
                    compute_whole=shared.compute.whole_device if shared and shared.compute else None,
                    device_memory=largest,
                )

    def info(self, device_class: str) -> ClassInfo:
        base = self._info.get(device_class, ClassInfo(kind="unknown"))
        declared = self._declared.get(device_class)
        if declared is not None:
            return ClassInfo(base.kind, base.memory_capacity, base.compute_capacity, base.compute_whole, declared)
        return base


def charge(claim_basis: Basis, *, classes: ClassResolver) -> Charge:
    total = Charge(claims=1)
    for alternatives in claim_basis:
        total = total + _request_charge(alternatives, classes)
    return total


def _request_charge(alternatives: Iterable[Alternative], classes: ClassResolver) -> Charge:
    devices: dict[str, int] = {}
    profiles: dict[str, int] = {}
    matched: dict[str, int] = {}
    memory = Fraction(0)
    compute = Fraction(0)
    total = 0
    for alt in alternatives:
        devices[alt.device_class] = max(devices.get(alt.device_class, 0), alt.count)
        total = max(total, alt.count)
        for pattern in classes.device_patterns:
            if fnmatch.fnmatchcase(alt.device_class, pattern):
                matched[pattern] = max(matched.get(pattern, 0), alt.count)
        if alt.profile:
            profiles[alt.profile] = max(profiles.get(alt.profile, 0), alt.count)
        per_memory, per_compute = _per_device(alt, classes.info(alt.device_class))
        memory = max(memory, per_memory * alt.count)
        compute = max(compute, per_compute * alt.count)
    return Charge(
        devices=devices, memory=memory, compute=compute, profiles=profiles, matched=matched, total_devices=total
    )


def _per_device(alt: Alternative, info: ClassInfo) -> tuple[Fraction, Fraction]:
    capacity = dict(alt.capacity)
    memory = capacity.get(info.memory_capacity or "memory")
    compute: Fraction | None = None
    if info.compute_capacity and info.compute_capacity in capacity and info.compute_whole:
        compute = capacity[info.compute_capacity] * HUNDRED / info.compute_whole
    if alt.profile:
        mig = _MIG.match(alt.profile)
        if mig:
            memory = memory if memory is not None else Fraction(int(mig["memgb"]) * 10**9)
            compute = compute if compute is not None else Fraction(int(mig["slices"]) * 100, 7)
    if memory is None:
        memory = info.device_memory if info.kind in ("whole", "unknown", "partition") or not capacity else None
        memory = memory or Fraction(0)
    if compute is None:
        compute = HUNDRED if info.kind in ("whole", "unknown") else Fraction(0)
    return memory, compute
