"""Devices as quota sees them: what the allocator can hand out, reduced to device shapes.

ResourceSlices publish devices; many devices look alike (the eight GPUs of a node, the nodes of a
pool), so each is reduced to a ``DeviceShape``: its driver, its attributes other than identity
(uuid, index, PCI address...), its capacities with their request policy, whether it can be shared
(``allowMultipleAllocations``) and whether it is a partition (it consumes counters). Quota charges a
claim by evaluating selectors against shapes, never against devices, so 10,000 devices in 100
shapes cost 100 evaluations per selector, once per inventory generation.

DeviceClasses are kept too (their selectors), as are the catalogue's known models: devices its
drivers publish, written as ResourceSlice devices. A claim that matches no published device is
charged at the worst known model its class selects, so a node that joins later brings no
uncharged GPUs.

Pure: reduction functions and the ``Snapshot`` pricing reads; ``webhook.quota.inventory`` keeps
the live store the cluster port feeds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from webhook.translate.catalogue import Catalogue
from webhook.translate.deviceclasses import render_device_classes
from webhook.translate.quantity import QuantityError, parse_quantity

# Attributes that name one device rather than describe it: two devices that differ only in these
# have the same shape. A selector that reads one of them is taken to select any device of its class.
IDENTITY_ATTRIBUTES = frozenset(
    {"uuid", "parentUUID", "index", "deviceID", "minor", "pciBusID", "pcieRoot", "serial", "serialNumber", "id"}
)
STANDARD_DOMAIN = "resource.kubernetes.io"


class InventoryError(ValueError):
    """A device, ResourceSlice or DeviceClass that cannot be read; names the field and the value."""


@dataclass(frozen=True, slots=True)
class Capacity:
    """One capacity of a device and its request policy (``capacity.<name>.requestPolicy``)."""

    value: Fraction
    default: Fraction | None = None
    valid_values: tuple[Fraction, ...] = ()
    minimum: Fraction | None = None
    maximum: Fraction | None = None
    step: Fraction | None = None

    def allocated(self, requested: Fraction | None, *, shared: bool) -> Fraction | None:
        """What a claim gets of this capacity: all of it on a device that cannot be shared
        (capacity only filters there); on a shared one the request rounded up by the policy, or
        the policy's default, or the whole capacity when there is no policy. None: not eligible."""
        if not shared:
            return self.value if requested is None or requested <= self.value else None
        if requested is None:
            return self.default if self.default is not None else self.value
        if self.valid_values:
            fitting = [v for v in self.valid_values if v >= requested]
            got = min(fitting) if fitting else None
        elif self.step is not None or self.minimum is not None:
            low = self.minimum or Fraction(0)
            got = max(low, requested)
            if self.step:
                steps = (got - low) / self.step
                got = low + _ceil(steps) * self.step
            if self.maximum is not None and got > self.maximum:
                got = None
        else:
            got = requested
        return got if got is not None and got <= self.value else None


def _ceil(value: Fraction) -> int:
    return -((-value.numerator) // value.denominator)


AttributeValue = int | bool | str | tuple[int, int, int]
Domains = tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]


@dataclass(frozen=True, slots=True)
class DeviceShape:
    driver: str
    attributes: tuple[tuple[str, tuple[tuple[str, AttributeValue], ...]], ...]
    capacity: tuple[tuple[str, tuple[tuple[str, Capacity], ...]], ...]
    allow_multiple: bool = False
    partition: bool = False

    def attribute(self, name: str, domain: str | None = None) -> AttributeValue | None:
        return dict(dict(self.attributes).get(domain or self.driver, ())).get(name)

    def capacity_of(self, name: str, domain: str | None = None) -> Capacity | None:
        return dict(dict(self.capacity).get(domain or self.driver, ())).get(name)

    def capacities(self) -> dict[str, dict[str, Capacity]]:
        return {domain: dict(values) for domain, values in self.capacity}


def _qualified(name: str, driver: str) -> tuple[str, str]:
    domain, _, short = name.rpartition("/")
    return (domain or driver), short


def _attribute(path: str, value: Any) -> AttributeValue:
    if not isinstance(value, Mapping) or len(value) != 1:
        raise InventoryError(f"{path}: an attribute holds exactly one of int, bool, string, version (got {value!r})")
    ((kind, raw),) = value.items()
    if kind == "int" and isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if kind == "bool" and isinstance(raw, bool):
        return raw
    if kind == "string" and isinstance(raw, str):
        return raw
    if kind == "version" and isinstance(raw, str):
        core = raw.lstrip("v").split("-", 1)[0].split("+", 1)[0].split(".")
        if len(core) == 3 and all(p.isdigit() for p in core):
            return (int(core[0]), int(core[1]), int(core[2]))
    raise InventoryError(f"{path}: {kind}: {raw!r} is not a valid attribute value")


def _quantity(path: str, value: Any) -> Fraction:
    try:
        return parse_quantity(value)
    except QuantityError as err:
        raise InventoryError(f"{path}: {err}") from None


def _capacity(path: str, value: Any) -> Capacity:
    if not isinstance(value, Mapping) or "value" not in value:
        raise InventoryError(f"{path}: a capacity needs a value (got {value!r})")
    policy = value.get("requestPolicy") or {}
    if not isinstance(policy, Mapping):
        raise InventoryError(f"{path}.requestPolicy: must be a mapping (got {policy!r})")
    valid_range = policy.get("validRange") or {}
    if not isinstance(valid_range, Mapping):
        raise InventoryError(f"{path}.requestPolicy.validRange: must be a mapping (got {valid_range!r})")

    def optional(key: str, source: Mapping[str, Any]) -> Fraction | None:
        return _quantity(f"{path}.requestPolicy.{key}", source[key]) if source.get(key) is not None else None

    return Capacity(
        value=_quantity(f"{path}.value", value["value"]),
        default=optional("default", policy),
        valid_values=tuple(
            sorted(_quantity(f"{path}.requestPolicy.validValues", v) for v in policy.get("validValues") or ())
        ),
        minimum=optional("min", valid_range),
        maximum=optional("max", valid_range),
        step=optional("step", valid_range),
    )


def reduce_device(driver: str, device: Mapping[str, Any], *, where: str = "device") -> DeviceShape:
    """A ResourceSlice device (``spec.devices[]``) as a shape; raises ``InventoryError``."""
    if not isinstance(device, Mapping):
        raise InventoryError(f"{where}: must be a mapping (got {device!r})")
    attributes: dict[str, dict[str, AttributeValue]] = {}
    for name, value in (device.get("attributes") or {}).items():
        domain, short = _qualified(str(name), driver)
        if short in IDENTITY_ATTRIBUTES:
            continue
        attributes.setdefault(domain, {})[short] = _attribute(f"{where}.attributes[{name}]", value)
    capacity: dict[str, dict[str, Capacity]] = {}
    for name, value in (device.get("capacity") or {}).items():
        domain, short = _qualified(str(name), driver)
        capacity.setdefault(domain, {})[short] = _capacity(f"{where}.capacity[{name}]", value)
    return DeviceShape(
        driver=driver,
        attributes=tuple(sorted((d, tuple(sorted(v.items()))) for d, v in attributes.items())),
        capacity=tuple(sorted((d, tuple(sorted(v.items()))) for d, v in capacity.items())),
        allow_multiple=bool(device.get("allowMultipleAllocations")),
        partition=bool(device.get("consumesCounters")),
    )


def shapes_of_slice(resource_slice: Mapping[str, Any]) -> Counter[DeviceShape]:
    """The devices of a ResourceSlice, counted by shape."""
    spec = resource_slice.get("spec") or {}
    name = (resource_slice.get("metadata") or {}).get("name", "?")
    driver = spec.get("driver")
    if not isinstance(driver, str) or not driver:
        raise InventoryError(f"ResourceSlice {name}: spec.driver is required (got {driver!r})")
    counted: Counter[DeviceShape] = Counter()
    for i, device in enumerate(spec.get("devices") or ()):
        counted[reduce_device(driver, device, where=f"ResourceSlice {name}: spec.devices[{i}]")] += 1
    return counted


def class_selectors(device_class: Mapping[str, Any]) -> tuple[str, ...]:
    """The CEL expressions of a DeviceClass's selectors."""
    selectors = (device_class.get("spec") or {}).get("selectors") or ()
    return tuple(str(((s or {}).get("cel") or {}).get("expression", "")) for s in selectors if isinstance(s, Mapping))


@dataclass(frozen=True)
class Snapshot:
    """The inventory at one generation: what pricing reads."""

    generation: int
    published: Mapping[DeviceShape, int]  # shape -> devices published with it
    models: tuple[DeviceShape, ...]  # the catalogue's known models
    classes: Mapping[str, tuple[str, ...]]  # DeviceClass -> selector expressions


def models_of(drivers: Iterable[tuple[str, Iterable[Mapping[str, Any]]]]) -> list[DeviceShape]:
    """The catalogue's known models, (driver name, devices written as ResourceSlice devices)."""
    out = []
    for driver, devices in drivers:
        for i, device in enumerate(devices):
            out.append(reduce_device(driver, device, where=f"driver {driver}: models[{i}]"))
    return out


def catalogue_snapshot(catalogue: Catalogue) -> Snapshot:
    """An inventory without a cluster: the catalogue's DeviceClasses and known models, nothing
    published. Offline reports price claims by it; so does quota until the cluster's slices arrive."""
    classes = {c["metadata"]["name"]: class_selectors(c) for c in render_device_classes(catalogue)}
    return Snapshot(0, {}, tuple(models_of((d.driver, d.models) for d in catalogue.drivers)), classes)
