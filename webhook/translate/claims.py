"""From demands to ResourceClaimTemplates bound to the unified DeviceClasses.

Each demand becomes one DeviceRequest. Where several drivers (or, for percentages of memory,
several card sizes) can serve it, the request is a ``firstAvailable`` list in the catalogue's order
of preference; with one way to serve it, it is ``exactly``. Capacity amounts are converted to each
driver's own capacity names and rounded up to its request step, so the claim asks for what the
device would grant anyway and the same legacy request means the same thing on every backend.

Template names are derived from the template's content: the same shape gives the same template,
shared by every Pod of a namespace.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

from webhook.errors import TranslationError
from webhook.labels import MANAGED_BY, MANAGED_BY_LABEL, SPEC_HASH_LABEL, SUMMARY_ANNOTATION, TEMPLATE_LABEL
from webhook.translate.catalogue import MAX_ALTERNATIVES, Catalogue, Driver
from webhook.translate.legacy import Demand, PinValue
from webhook.translate.quantity import QuantityError, format_quantity, parse_quantity, round_up

API_VERSION = "resource.k8s.io/v1"
HUNDRED = Fraction(100)
_NOT_LABEL = re.compile(r"[^a-z0-9-]+")


def template_for(demands: Sequence[Demand], *, catalogue: Catalogue, namespace: str, container: str) -> dict[str, Any]:
    """The ResourceClaimTemplate that gives one container what its legacy requests asked for."""
    requests = []
    used: set[str] = set()
    for demand in demands:
        request = device_request(demand, catalogue=catalogue, container=container)
        request["name"] = _unique(request["name"], used)
        requests.append(request)
    claim_spec = {"devices": {"requests": requests}}
    digest = spec_hash(claim_spec)
    name = f"dra-bridge-{digest}"
    return {
        "apiVersion": API_VERSION,
        "kind": "ResourceClaimTemplate",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {MANAGED_BY_LABEL: MANAGED_BY, SPEC_HASH_LABEL: digest},
            "annotations": {SUMMARY_ANNOTATION: "; ".join(describe(d) for d in demands)},
        },
        "spec": {
            "metadata": {"labels": {MANAGED_BY_LABEL: MANAGED_BY, TEMPLATE_LABEL: name}},
            "spec": claim_spec,
        },
    }


def spec_hash(claim_spec: dict[str, Any]) -> str:
    canonical = json.dumps(claim_spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def device_request(demand: Demand, *, catalogue: Catalogue, container: str) -> dict[str, Any]:
    """One DeviceRequest: ``exactly`` when one alternative serves it, else ``firstAvailable``."""
    alternatives = _alternatives(demand, catalogue=catalogue, container=container)
    # Named after the hardware, not the legacy source, so equal demands give equal templates.
    name = _label(demand.target if demand.profile is None else f"{demand.target}-{demand.profile}")
    if len(alternatives) == 1:
        only = dict(alternatives[0])
        del only["name"]
        return {"name": name, "exactly": only}
    return {"name": name, "firstAvailable": alternatives}


def _alternatives(demand: Demand, *, catalogue: Catalogue, container: str) -> list[dict[str, Any]]:
    target = catalogue.target(demand.target)
    out: list[tuple[Driver, dict[str, Any]]] = []
    skipped: list[str] = []
    if demand.kind == "whole":
        for driver_name in target.whole:
            driver = catalogue.driver(driver_name)
            out.append((driver, _sub(catalogue, "whole", driver, driver_name, demand.count)))
    elif demand.kind == "partition":
        for driver_name in target.partition:
            driver = catalogue.driver(driver_name)
            assert driver.partition is not None and demand.profile is not None
            selector = f"device.attributes[{_cel_str(driver.driver)}].{driver.partition.profile_attribute} == {_cel_str(demand.profile)}"
            out.append((driver, _sub(catalogue, "partition", driver, driver_name, demand.count, selectors=[selector])))
    # Shared devices: the demand itself, or a partition's equivalent vGPU (same memory and compute).
    shared_drivers: tuple[str, ...] = ()
    memory, memory_percent, compute_percent = demand.memory, demand.memory_percent, demand.compute_percent
    implied = demand.compute_implied
    if demand.kind == "shared":
        shared_drivers = target.shared
    elif demand.kind == "partition" and demand.equivalent_memory is not None:
        shared_drivers = target.partition_as_shared
        memory, memory_percent, compute_percent = demand.equivalent_memory, None, demand.equivalent_compute_percent
    for driver_name in shared_drivers:
        driver = catalogue.driver(driver_name)
        assert driver.shared is not None
        compute = None if implied and driver.shared.compute is None else compute_percent  # implied: no limit there
        out.extend(
            (driver, s) for s in _shared(catalogue, driver, demand.count, memory, memory_percent, compute, skipped)
        )
    pinned = _pinned(out, demand.pins, skipped)
    what = ", ".join(lv.name for lv in demand.legacy)
    if not pinned:
        why = f" ({'; '.join(dict.fromkeys(skipped))})" if skipped else ""
        raise TranslationError(
            f"no driver of target {target.name!r} in the catalogue can serve {describe(demand)}{why}",
            container=container,
            resource=what,
        )
    if len(pinned) > MAX_ALTERNATIVES:
        raise TranslationError(
            f"{describe(demand)} needs {len(pinned)} alternatives, DRA allows {MAX_ALTERNATIVES}; "
            "trim the drivers or memorySizes of the catalogue target",
            container=container,
            resource=what,
        )
    return pinned


def _pinned(
    alternatives: list[tuple[Driver, dict[str, Any]]], pins: Sequence[PinValue], skipped: list[str]
) -> list[dict[str, Any]]:
    """Each alternative with the Pod's model or device pins as selectors on its driver's attribute;
    a driver that publishes no such attribute cannot honour them and is left out."""
    out = []
    for driver, sub in alternatives:
        extra = []
        for pin in pins:
            attribute = driver.attributes.get(pin.attribute)  # type: ignore[call-overload]
            if attribute is None:
                skipped.append(f"{driver.name} publishes no {pin.attribute} attribute for {pin.origin}")
                break
            extra.append(pin_selector(driver.driver, attribute, pin))
        else:
            if extra:
                selectors = [*sub.get("selectors", []), *({"cel": {"expression": e}} for e in extra)]
                sub = {**sub, "selectors": selectors}
            out.append(sub)
    return out


def pin_selector(domain: str, attribute: str, pin: PinValue) -> str:
    """The CEL selector of one pin; a device without the attribute matches only a negated pin."""
    value = f"device.attributes[{_cel_str(domain)}].{attribute}"
    present = f"has({value})"
    if pin.match == "contains":
        test = " || ".join(f"{value}.lowerAscii().contains({_cel_str(v)})" for v in pin.values)
    elif pin.match == "label":
        test = f"{value}.replace(' ', '-') == {_cel_str(pin.values[0])}"
    else:
        test = f"{value} in [{', '.join(_cel_str(v) for v in pin.values)}]"
    return f"!{present} || !({test})" if pin.negate else f"{present} && ({test})"


def _sub(
    catalogue: Catalogue,
    kind: str,
    driver: Driver,
    name: str,
    count: int,
    *,
    selectors: Sequence[str] = (),
    capacity: dict[str, str] | None = None,
) -> dict[str, Any]:
    sub: dict[str, Any] = {
        "name": _label(name),
        "deviceClassName": catalogue.class_name(kind, driver.name),  # type: ignore[arg-type]
        "allocationMode": "ExactCount",
        "count": count,
    }
    if selectors:
        sub["selectors"] = [{"cel": {"expression": s}} for s in selectors]
    if capacity:
        sub["capacity"] = {"requests": capacity}
    return sub


def _shared(
    catalogue: Catalogue,
    driver: Driver,
    count: int,
    memory: Fraction | None,
    memory_percent: Fraction | None,
    compute_percent: Fraction | None,
    skipped: list[str],
) -> list[dict[str, Any]]:
    """Alternatives of one shared driver: one, or one per known card size for a percentage."""
    shared = driver.shared
    assert shared is not None
    compute: dict[str, str] = {}
    if compute_percent is not None:
        if shared.compute is None:
            skipped.append(f"{driver.name} has no compute capacity")
            return []
        assert shared.compute.whole_device is not None
        amount = round_up(compute_percent * shared.compute.whole_device / HUNDRED, shared.compute.step)
        compute[shared.compute.capacity] = format_quantity(amount)
    if memory_percent is None:
        capacity = dict(compute)
        if memory is not None:
            capacity[shared.memory.capacity] = format_quantity(round_up(memory, shared.memory.step))
        return [_sub(catalogue, "shared", driver, driver.name, count, capacity=capacity or None)]
    if not shared.memory_sizes:
        skipped.append(f"{driver.name} lists no memorySizes to resolve a percentage of memory")
        return []
    out = []
    for size in shared.memory_sizes:
        size_text = format_quantity(size)
        amount = round_up(size * memory_percent / HUNDRED, shared.memory.step)
        amount = min(amount, size)
        selector = (
            f"device.capacity[{_cel_str(driver.driver)}].{shared.memory.capacity}"
            f".compareTo(quantity({_cel_str(size_text)})) == 0"
        )
        capacity = {**compute, shared.memory.capacity: format_quantity(amount)}
        out.append(
            _sub(
                catalogue,
                "shared",
                driver,
                f"{driver.name}-{size_text}",
                count,
                selectors=[selector],
                capacity=capacity,
            )
        )
    return out


def amounts(demands: Sequence[Demand]) -> tuple[int, Fraction]:
    """(devices, bytes of memory asked for in absolute units) of a container's demands: the figures
    the audit summary adds up, kept beside the ``describe`` phrase so nobody parses the phrase."""
    devices = sum(d.count for d in demands)
    memory = sum((d.count * d.memory for d in demands if d.kind == "shared" and d.memory is not None), Fraction(0))
    return devices, memory


def describe(demand: Demand) -> str:
    """A short human phrase: ``2 whole GPUs``, ``1 shared GPU (4Gi, 30% compute)``, ``1 partition 1g.5gb``."""
    plural = "s" if demand.count != 1 else ""
    if demand.kind == "whole":
        return f"{demand.count} whole device{plural} ({demand.target})"
    if demand.kind == "partition":
        return f"{demand.count} partition{plural} {demand.profile} ({demand.target})"
    parts = []
    if demand.memory is not None:
        parts.append(format_quantity(round_up(demand.memory, Fraction(1))))
    if demand.memory_percent is not None:
        parts.append(f"{_pct(demand.memory_percent)}% memory")
    if demand.compute_percent is not None:
        parts.append(f"{_pct(demand.compute_percent)}% compute")
    detail = f", {', '.join(parts)}" if parts else ", time-sliced"
    return f"{demand.count} shared device{plural} ({demand.target}{detail})"


def _pct(value: Fraction) -> str:
    return str(int(value)) if value.denominator == 1 else f"{float(value):.4g}"


def _label(text: str) -> str:
    """A DNS label from free text (``1g.5gb`` -> ``1g-5gb``), at most 63 characters."""
    label = _NOT_LABEL.sub("-", text.lower()).strip("-")
    if len(label) > 63:
        label = f"{label[:54]}-{hashlib.sha256(label.encode()).hexdigest()[:8]}"
    return label or "gpu"


def _unique(name: str, used: set[str]) -> str:
    candidate, n = name, 2
    while candidate in used:
        suffix = f"-{n}"
        candidate = f"{name[: 63 - len(suffix)]}{suffix}"
        n += 1
    used.add(candidate)
    return candidate


def _cel_str(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def native_claims(pod: Mapping[str, Any], native: Mapping[str, str]) -> list[dict[str, Any]]:
    """The claim specs kube-scheduler creates for a Pod's extended resources that a DeviceClass
    serves natively (KEP-5004): one request per container and name, whole devices of that class.
    Values that are not whole numbers are left out (the apiserver refuses them)."""
    spec = pod.get("spec") or {}
    out: list[dict[str, Any]] = []
    for field_name in ("initContainers", "containers"):
        for container in spec.get(field_name) or ():
            resources = (container or {}).get("resources") or {}
            amounts = {**(resources.get("requests") or {}), **(resources.get("limits") or {})}
            for name, value in sorted(amounts.items()):
                device_class = native.get(str(name))
                if device_class is None:
                    continue
                try:
                    count = parse_quantity(value)
                except QuantityError:
                    continue
                if count.denominator != 1 or count <= 0:
                    continue
                request = {"name": "extended", "exactly": {"deviceClassName": device_class, "count": int(count)}}
                out.append({"devices": {"requests": [request]}})
    return out
