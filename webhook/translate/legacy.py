"""Reading legacy GPU requests: from a container's resources and a Pod's annotations to demands.

A *demand* is the vendor-neutral meaning of what one legacy source asked for in one container:
``count`` devices of a kind (whole, partition, shared), with memory (bytes or percent of the card)
and a compute share (percent) per device. Every unit is normalised here and every rule that makes
a request meaningless is enforced here, so later stages only ever see consistent demands.

Pure: plain dicts in, frozen dataclasses out, ``TranslationError`` for input that means nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any

from webhook.errors import TranslationError
from webhook.translate.catalogue import CatalogueIndex, DeviceKind, LegacyName, Match, Source
from webhook.translate.quantity import QuantityError, parse_quantity

HUNDRED = Fraction(100)


@dataclass(frozen=True)
class LegacyValue:
    """One legacy key as the owner wrote it."""

    name: str
    value: str
    where: str  # "resources" or "annotation"


@dataclass(frozen=True)
class PinValue:
    """What a Pod pinned: the devices whose ``attribute`` matches (or, negated, does not) ``values``."""

    attribute: str  # a device role: product, uuid
    match: str  # contains, equals, label
    values: tuple[str, ...]
    negate: bool
    origin: str  # the annotation or node label, for messages


@dataclass(frozen=True)
class Demand:
    source: str
    target: str
    kind: DeviceKind
    count: int
    memory: Fraction | None = None  # bytes per device
    memory_percent: Fraction | None = None  # of each device's memory
    compute_percent: Fraction | None = None  # of each device's compute
    compute_implied: bool = False  # derived from the memory share, not asked for: drivers without compute serve it too
    profile: str | None = None  # partition profile
    equivalent_memory: Fraction | None = None  # partition as a vGPU: bytes
    equivalent_compute_percent: Fraction | None = None  # partition as a vGPU: compute share
    legacy: tuple[LegacyValue, ...] = ()
    pins: tuple[PinValue, ...] = ()  # the GPU model or devices the Pod asked for


@dataclass(frozen=True)
class ContainerDemands:
    """What one container asked for, and the legacy keys to take out of its resources."""

    field: str  # "containers" or "initContainers"
    index: int
    name: str
    demands: tuple[Demand, ...]
    resource_keys: tuple[str, ...]


@dataclass
class _Found:
    """Legacy values of one source in one container, by meaning."""

    source: Source
    values: dict[str, list[tuple[Match, Fraction, LegacyValue]]] = field(default_factory=dict)

    def add(self, meaning: str, match: Match, amount: Fraction, legacy: LegacyValue) -> None:
        self.values.setdefault(meaning, []).append((match, amount, legacy))


CONTAINER_LISTS = ("initContainers", "containers")  # the containers whose legacy requests are converted, in order


def read_pod(
    pod: Mapping[str, Any], *, index: CatalogueIndex, native: Mapping[str, str]
) -> tuple[list[ContainerDemands], list[str], list[str]]:
    """All legacy demands of a Pod.

    Returns the per-container demands, the legacy annotation keys consumed, and warnings (legacy
    names left alone because a DeviceClass serves them natively).
    """
    spec = pod.get("spec") or {}
    warnings: list[str] = []
    per_container: list[tuple[str, int, Mapping[str, Any], dict[str, _Found], list[str]]] = []
    for field_name in CONTAINER_LISTS:
        for position, container in enumerate(spec.get(field_name) or []):
            found, keys = _read_resources(container, index=index, native=native, warnings=warnings)
            per_container.append((field_name, position, container, found, keys))

    annotation_keys = _read_annotations(pod, index=index, containers=per_container)
    result: list[ContainerDemands] = []
    for field_name, position, container, found, keys in per_container:
        name = str(container.get("name", f"{field_name}[{position}]"))
        _check_conflicts(name, found)
        demands: list[Demand] = []
        for group in found.values():
            pins = read_pins(pod, group.source)
            demands.extend(replace(d, pins=pins) if pins else d for d in _demands(name, group))
        if demands or keys:
            result.append(
                ContainerDemands(
                    field=field_name, index=position, name=name, demands=tuple(demands), resource_keys=tuple(keys)
                )
            )
    return result, annotation_keys, warnings


def mentions_legacy(pod: Mapping[str, Any], *, index: CatalogueIndex) -> bool:
    """Whether ``read_pod`` could find anything in ``pod``: a container resource or a Pod annotation
    the catalogue knows. False means the Pod is left exactly as it is, without a warning."""
    spec = pod.get("spec") or {}
    for field_name in CONTAINER_LISTS:
        for container in spec.get(field_name) or []:
            resources = container.get("resources") or {}
            for section in ("limits", "requests"):
                names = resources.get(section)
                if names and index.knows_any(names):
                    return True
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    return any(index.annotation(key) is not None for key in annotations)


def read_pins(pod: Mapping[str, Any], source: Source) -> tuple[PinValue, ...]:
    """The model or device pins of ``source`` a Pod carries (annotations, node selector labels)."""
    if not source.pins:
        return ()
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    selector = (pod.get("spec") or {}).get("nodeSelector") or {}
    out = []
    for pin in source.pins:
        where = annotations if pin.annotation is not None else selector
        key = pin.annotation if pin.annotation is not None else pin.node_label
        raw = where.get(key) if isinstance(where, Mapping) else None
        if raw is None:
            continue
        # A node label is one value; annotations list several, comma-separated.
        parts = [str(raw)] if pin.match == "label" else str(raw).split(",")
        values = tuple(v.strip() for v in parts if v.strip())
        if pin.match == "contains":
            values = tuple(v.lower() for v in values)
        if values:
            out.append(PinValue(pin.attribute, pin.match, tuple(sorted(set(values))), pin.negate, str(key)))
    return tuple(out)


def _read_resources(
    container: Mapping[str, Any], *, index: CatalogueIndex, native: Mapping[str, str], warnings: list[str]
) -> tuple[dict[str, _Found], list[str]]:
    name = container.get("name", "?")
    resources = container.get("resources") or {}
    requests = resources.get("requests") or {}
    limits = resources.get("limits") or {}
    found: dict[str, _Found] = {}
    keys: list[str] = []
    for key in sorted({*requests, *limits}):
        match = index.resource(key)
        if match is None:
            continue
        if key in native:
            warnings.append(f"{name}: {key} left as is, DeviceClass {native[key]} serves it natively")
            continue
        raw = _resource_value(name, key, requests, limits)
        amount = _amount(name, key, raw, integer=True)
        keys.append(key)
        legacy = LegacyValue(name=key, value=raw, where="resources")
        found.setdefault(match.source.name, _Found(match.source)).add(match.entry.meaning, match, amount, legacy)
    return found, keys


def _resource_value(container: str, key: str, requests: Mapping[str, Any], limits: Mapping[str, Any]) -> str:
    if key not in limits:
        raise TranslationError(
            f"{key} is set in requests ({requests[key]}) but not in limits; extended resources are given as limits",
            container=container,
            resource=key,
            value=str(requests[key]),
        )
    limit = str(limits[key])
    if key in requests:
        request = str(requests[key])
        if _amount(container, key, request, integer=False) != _amount(container, key, limit, integer=False):
            raise TranslationError(
                f"requests ({request}) differ from limits ({limit}); they must be equal",
                container=container,
                resource=key,
                value=request,
            )
    return limit


def _amount(container: str, key: str, raw: str, *, integer: bool) -> Fraction:
    try:
        amount = parse_quantity(raw)
    except QuantityError:
        raise TranslationError(f"{raw!r} is not a quantity", container=container, resource=key, value=raw) from None
    if amount < 0:
        raise TranslationError(f"{raw} is negative", container=container, resource=key, value=raw)
    if integer and amount.denominator != 1:
        raise TranslationError(f"{raw} is not a whole number", container=container, resource=key, value=raw)
    return amount


def _read_annotations(
    pod: Mapping[str, Any],
    *,
    index: CatalogueIndex,
    containers: list[tuple[str, int, Mapping[str, Any], dict[str, _Found], list[str]]],
) -> list[str]:
    """Pod-level annotations (KAI's ``gpu-fraction`` family) attach to one container."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    hits = [(key, index.annotation(key)) for key in sorted(annotations)]
    relevant = [(key, hit) for key, hit in hits if hit is not None]
    if not relevant:
        return []
    regular = [c for c in containers if c[0] == "containers"]
    if not regular:
        return []
    by_source: dict[str, list[tuple[str, Source, LegacyName]]] = {}
    for key, (source, entry) in relevant:
        by_source.setdefault(source.name, []).append((key, source, entry))
    consumed: list[str] = []
    for entries in by_source.values():
        target_name = next((str(annotations[k]) for k, _, e in entries if e.meaning == "containerName"), None)
        if target_name is None:
            chosen = regular[0]
        else:
            chosen_or_none = next((c for c in regular if c[2].get("name") == target_name), None)
            if chosen_or_none is None:
                names = ", ".join(str(c[2].get("name")) for c in regular)
                key = next(k for k, _, e in entries if e.meaning == "containerName")
                raise TranslationError(
                    f"names no container of this Pod (containers: {names})", resource=key, value=target_name
                )
            chosen = chosen_or_none
        for key, source, entry in entries:
            consumed.append(key)
            if entry.meaning == "containerName":
                continue
            raw = str(annotations[key])
            amount = _amount(str(chosen[2].get("name")), key, raw, integer=entry.meaning != "fraction")
            legacy = LegacyValue(name=key, value=raw, where="annotation")
            chosen[3].setdefault(source.name, _Found(source)).add(entry.meaning, Match(source, entry), amount, legacy)
    return consumed


def _check_conflicts(container: str, found: Mapping[str, _Found]) -> None:
    for group in found.values():
        for other in group.source.conflicts_with:
            if other in found:
                mine = ", ".join(v[2].name for vs in group.values.values() for v in vs)
                theirs = ", ".join(v[2].name for vs in found[other].values.values() for v in vs)
                raise TranslationError(
                    f"{mine} cannot be combined with {theirs} in one container",
                    container=container,
                    resource=mine,
                    value=theirs,
                )


def _single(container: str, group: _Found, meaning: str) -> tuple[Match, Fraction, LegacyValue] | None:
    values = group.values.get(meaning) or []
    if len(values) > 1:
        names = " and ".join(v[2].name for v in values)
        raise TranslationError(
            f"{names} both give the same thing ({meaning}); give one", container=container, resource=names
        )
    return values[0] if values else None


def _percent(container: str, hit: tuple[Match, Fraction, LegacyValue] | None, scale: Fraction) -> Fraction | None:
    if hit is None:
        return None
    percent = hit[1] * HUNDRED / scale
    if percent > HUNDRED:
        raise TranslationError(
            f"{hit[2].value} is more than one whole device ({scale})",
            container=container,
            resource=hit[2].name,
            value=hit[2].value,
        )
    return percent or None


def _demands(container: str, group: _Found) -> list[Demand]:
    source = group.source
    partitions = [_partition(container, source, m, amount, lv) for m, amount, lv in group.values.get("partition", [])]
    demands = [d for d in partitions if d is not None]
    rest = {k: v for k, v in group.values.items() if k != "partition"}
    if not rest:
        return demands

    devices = _single(container, group, "devices")
    shared = _single(container, group, "sharedDevice")
    memory = _single(container, group, "memory")
    memory_pct = _single(container, group, "memoryPercent")
    fraction = _single(container, group, "fraction")
    compute = _single(container, group, "compute")
    rest_legacy = tuple(v[2] for meaning, values in rest.items() for v in values)

    def fail(message: str, hit: tuple[Match, Fraction, LegacyValue]) -> TranslationError:
        return TranslationError(message, container=container, resource=hit[2].name, value=hit[2].value)

    if shared is not None and shared[1]:
        others = [h for h in (devices, memory, memory_pct, fraction, compute) if h is not None and h[1]]
        if shared[1] != 1:
            raise fail("a shared GPU replica is requested one at a time; set it to 1", shared)
        if others:
            raise fail(f"a shared GPU replica cannot be combined with {others[0][2].name}", shared)
        # A time-sliced replica is the catalogue's share of a device (25 %: four replicas a GPU),
        # so on a consumable-capacity driver replicas pack as many to a device as time-slicing did.
        share = shared[0].entry.replica_share
        return [
            *demands,
            Demand(
                source.name,
                source.target,
                "shared",
                1,
                memory_percent=share,
                compute_percent=share,
                compute_implied=True,
                legacy=rest_legacy,
            ),
        ]

    count = int(devices[1]) if devices is not None else None
    memory_bytes = memory[1] * memory[0].entry.unit if memory is not None and memory[1] else None
    percent = _percent(container, memory_pct, HUNDRED)
    if fraction is not None:
        if not 0 < fraction[1] <= 1:
            raise fail(f"{fraction[2].value} is not a fraction of one GPU (0 < fraction <= 1)", fraction)
        if percent is not None:
            raise fail(
                f"cannot be combined with {memory_pct[2].name if memory_pct else 'a memory percentage'}", fraction
            )
        percent = fraction[1] * HUNDRED
    if memory_bytes is not None and percent is not None:
        assert memory is not None
        raise fail("memory is given both in bytes and as a share of the card; give one", memory)

    compute_pct: Fraction | None = None
    if compute is not None and compute[1]:
        whole = compute[0].entry.whole_device
        assert whole is not None
        if compute[0].entry.multi_device and compute[1] >= whole:
            if compute[1] % whole:
                raise fail(f"above {whole} it must be a multiple of {whole} (whole devices)", compute)
            if count is not None or memory_bytes is not None or percent is not None:
                raise fail("whole devices given as compute cannot be combined with a count or memory", compute)
            return [*demands, Demand(source.name, source.target, "whole", int(compute[1] / whole), legacy=rest_legacy)]
        compute_pct = _percent(container, compute, whole)

    if count == 0 and (memory_bytes or percent or compute_pct):
        assert devices is not None
        raise fail("zero devices cannot carry memory or compute", devices)
    if memory_bytes is None and percent is None and compute_pct is None:
        if not count:
            return demands
        return [*demands, Demand(source.name, source.target, "whole", count, legacy=rest_legacy)]
    if memory_bytes is None and percent is None:
        percent = HUNDRED  # no memory given: the whole card's memory, as HAMi does
    implied = percent is not None and compute_pct is None
    if implied:
        # A share of a card's memory takes the same share of its compute. Left unset, the driver's
        # request-policy default applies, which is the whole device on HAMi-core: not shared at all.
        compute_pct = percent
    return [
        *demands,
        Demand(
            source.name,
            source.target,
            "shared",
            count or 1,
            memory=memory_bytes,
            memory_percent=percent,
            compute_percent=compute_pct,
            compute_implied=implied,
            legacy=rest_legacy,
        ),
    ]


def _partition(container: str, source: Source, match: Match, amount: Fraction, legacy: LegacyValue) -> Demand | None:
    if not amount:
        return None
    equivalent_memory = Fraction(match.memory_gb * 10**9) if match.memory_gb else None
    equivalent_compute = None
    if match.slices and match.entry.total_slices:
        if match.slices > match.entry.total_slices:
            raise TranslationError(
                f"profile {match.profile} has more slices than a device ({match.entry.total_slices})",
                container=container,
                resource=legacy.name,
                value=legacy.value,
            )
        equivalent_compute = Fraction(match.slices * 100, match.entry.total_slices)
    return Demand(
        source.name,
        source.target,
        "partition",
        int(amount),
        profile=match.profile,
        equivalent_memory=equivalent_memory,
        equivalent_compute_percent=equivalent_compute,
        legacy=(legacy,),
    )
