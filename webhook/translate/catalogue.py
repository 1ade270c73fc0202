"""The translation catalogue: which legacy GPU names exist, what they mean, and where they land.

The catalogue is data, not code. It ships as ``policies/catalogue.yaml`` (a ConfigMap) and admins
extend or override it with more ConfigMaps of the same shape, merged entry by entry by ``name``.
A new vendor's legacy name therefore needs a ConfigMap, never a code change.

Three tables:

``drivers``
    A DRA driver and what its devices offer: a selector per device kind (whole, partition,
    shared), the capacity names it uses for memory and compute, their request steps, and the card
    memory sizes that percentages of memory resolve against.
``targets``
    For one family of hardware (NVIDIA GPUs, AMD GPUs, TPUs...), which drivers serve each kind of
    request, in order of preference. Each becomes a ``firstAvailable`` alternative.
``sources``
    A legacy API (NVIDIA device plugin + HAMi, Volcano, Aliyun, Tencent, KAI...): its extended
    resource names and Pod annotations, each with a meaning and a unit.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from webhook.labels import CATALOGUE_KEY
from webhook.translate.quantity import QuantityError, parse_quantity

API_VERSION = "dra-bridge.io/v1alpha1"
KIND = "TranslationCatalogue"
MAX_ALTERNATIVES = 8  # resource.k8s.io/v1: firstAvailable holds at most 8 subrequests

_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"  # attribute and capacity names, usable as CEL fields
_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


class CatalogueError(ValueError):
    """A catalogue document that cannot be used; the message names the field and the value."""


def _quantity(value: object) -> Fraction:
    try:
        return parse_quantity(value)
    except QuantityError as err:
        raise ValueError(str(err)) from err


Quantity = Annotated[Fraction, BeforeValidator(_quantity)]
Meaning = Literal[
    "devices", "sharedDevice", "memory", "memoryPercent", "compute", "partition", "fraction", "containerName"
]
DeviceKind = Literal["whole", "partition", "shared"]
DEVICE_KINDS: tuple[DeviceKind, ...] = ("whole", "partition", "shared")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Capacity(_Model):
    """One consumable capacity of a driver's devices."""

    capacity: str = Field(pattern=_IDENTIFIER, description="capacity name in the driver's domain")
    step: Quantity = Field(default=Fraction(1), description="requests are rounded up to a multiple")
    whole_device: Quantity | None = Field(
        default=None, alias="wholeDevice", description="for compute: the amount that is one whole device"
    )

    @model_validator(mode="after")
    def _positive(self) -> Capacity:
        if self.step <= 0:
            raise ValueError(f"step must be positive, got {self.step}")
        if self.whole_device is not None and self.whole_device <= 0:
            raise ValueError(f"wholeDevice must be positive, got {self.whole_device}")
        return self


class KindSelector(_Model):
    selector: str | None = Field(default=None, description="CEL, and-ed with the driver check")


class PartitionKind(KindSelector):
    profile_attribute: str = Field(alias="profileAttribute", pattern=_IDENTIFIER)


class SharedKind(KindSelector):
    memory: Capacity
    compute: Capacity | None = None
    memory_sizes: tuple[Quantity, ...] = Field(default=(), alias="memorySizes")

    @model_validator(mode="after")
    def _compute_scale(self) -> SharedKind:
        if self.compute is not None and self.compute.whole_device is None:
            raise ValueError("compute.wholeDevice is required: it says what 100 % of a device is")
        return self


DeviceRole = Literal["product", "uuid"]


class Driver(_Model):
    name: str = Field(pattern=_DNS_LABEL, description="short key, part of DeviceClass names")
    driver: str = Field(pattern=_DNS_SUBDOMAIN, description="the DRA driver name (device.driver)")
    description: str = ""
    whole: KindSelector | None = None
    partition: PartitionKind | None = None
    shared: SharedKind | None = None
    attributes: dict[DeviceRole, str] = Field(
        default_factory=dict,
        description="which attribute (in the driver's domain) names a device's product or uuid: model pinning",
    )
    models: tuple[dict[str, Any], ...] = Field(
        default=(),
        description="devices this driver publishes, written as ResourceSlice devices: the known models "
        "quota charges a claim at when no published device matches it",
    )

    def kind(self, kind: DeviceKind) -> KindSelector | None:
        return {"whole": self.whole, "partition": self.partition, "shared": self.shared}[kind]


class Target(_Model):
    name: str = Field(pattern=_DNS_LABEL)
    description: str = ""
    whole: tuple[str, ...] = ()
    partition: tuple[str, ...] = ()
    shared: tuple[str, ...] = ()
    partition_as_shared: tuple[str, ...] = Field(
        default=(),
        alias="partitionAsShared",
        description="shared drivers that may serve a partition profile as its equivalent vGPU",
    )

    def drivers_for(self, kind: DeviceKind) -> tuple[str, ...]:
        return {"whole": self.whole, "partition": self.partition, "shared": self.shared}[kind]


class LegacyName(_Model):
    """An extended resource name (or a pattern of them) or a Pod annotation, with its meaning."""

    name: str | None = None
    pattern: str | None = None
    meaning: Meaning
    unit: Quantity = Field(default=Fraction(1), description="memory: bytes in one unit of the value")
    whole_device: Quantity | None = Field(
        default=None, alias="wholeDevice", description="compute: the value that is one whole device"
    )
    multi_device: bool = Field(
        default=False, alias="multiDevice", description="compute: multiples of wholeDevice ask for whole devices"
    )
    total_slices: int | None = Field(
        default=None, alias="totalSlices", ge=1, description="partition: compute slices of a whole device"
    )
    replica_share: Quantity | None = Field(
        default=None,
        alias="replicaShare",
        description="sharedDevice: percent of a device's memory and compute one replica gets; unset: no capacity",
    )

    @model_validator(mode="after")
    def _shape(self) -> LegacyName:
        if (self.name is None) == (self.pattern is None):
            raise ValueError("give exactly one of name or pattern")
        if self.pattern is not None:
            try:
                compiled = re.compile(self.pattern)
            except re.error as err:
                raise ValueError(f"pattern {self.pattern!r} is not a regular expression: {err}") from err
            if self.meaning == "partition" and "profile" not in compiled.groupindex:
                raise ValueError(f"pattern {self.pattern!r} needs a named group (?P<profile>...)")
        if self.meaning == "partition" and self.pattern is None:
            raise ValueError("a partition entry needs a pattern with a (?P<profile>...) group")
        if self.meaning == "compute" and self.whole_device is None:
            raise ValueError("a compute entry needs wholeDevice (the value that is one whole device)")
        if self.unit <= 0:
            raise ValueError(f"unit must be positive, got {self.unit}")
        if self.replica_share is not None and not 0 < self.replica_share <= 100:
            raise ValueError(f"replicaShare must be a percentage above 0 and at most 100, got {self.replica_share}")
        return self

    @property
    def key(self) -> str:
        return self.name if self.name is not None else f"pattern:{self.pattern}"


class Pin(_Model):
    """A Pod annotation or node-selector label that pins the GPU model (or device) a workload gets."""

    annotation: str | None = None
    node_label: str | None = Field(default=None, alias="nodeLabel")
    attribute: DeviceRole
    match: Literal["contains", "equals", "label"] = Field(
        description="contains: comma-separated, case-insensitive substrings (HAMi's use-gputype); "
        "equals: comma-separated exact values (uuids); label: a node label value, spaces written as '-'"
    )
    negate: bool = Field(default=False, description="the devices that do NOT match (HAMi's nouse-*)")

    @model_validator(mode="after")
    def _one_place(self) -> Pin:
        if (self.annotation is None) == (self.node_label is None):
            raise ValueError("give exactly one of annotation or nodeLabel")
        return self


class Source(_Model):
    name: str = Field(pattern=_DNS_LABEL)
    description: str = ""
    target: str
    enabled: bool = True
    resources: tuple[LegacyName, ...] = ()
    annotations: tuple[LegacyName, ...] = ()
    conflicts_with: tuple[str, ...] = Field(default=(), alias="conflictsWith")
    pins: tuple[Pin, ...] = ()


class Catalogue(_Model):
    api_version: Literal["dra-bridge.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["TranslationCatalogue"]
    class_domain: str = Field(default="dra-bridge.io", alias="classDomain", pattern=_DNS_SUBDOMAIN)
    drivers: tuple[Driver, ...]
    targets: tuple[Target, ...]
    sources: tuple[Source, ...]

    @model_validator(mode="after")
    def _references(self) -> Catalogue:
        drivers = _unique("drivers", self.drivers)
        targets = _unique("targets", self.targets)
        _unique("sources", self.sources)
        for target in self.targets:
            uses: list[tuple[str, tuple[str, ...], DeviceKind]] = [(k, target.drivers_for(k), k) for k in DEVICE_KINDS]
            uses.append(("partitionAsShared", target.partition_as_shared, "shared"))
            for field_name, names, needed in uses:
                for driver_name in names:
                    driver = drivers.get(driver_name)
                    if driver is None:
                        raise ValueError(f"targets[{target.name}].{field_name}: unknown driver {driver_name!r}")
                    if driver.kind(needed) is None:
                        raise ValueError(
                            f"targets[{target.name}].{field_name}: driver {driver_name!r} defines no {needed} devices"
                        )
            _check_alternative_budget(target, drivers)
        seen: dict[str, str] = {}
        for source in self.sources:
            if source.target not in targets:
                raise ValueError(f"sources[{source.name}].target: unknown target {source.target!r}")
            for other in source.conflicts_with:
                if other not in {s.name for s in self.sources}:
                    raise ValueError(f"sources[{source.name}].conflictsWith: unknown source {other!r}")
            for entry in (*source.resources, *source.annotations):
                if entry.key in seen and source.enabled:
                    raise ValueError(f"{entry.key!r} is claimed by sources {seen[entry.key]!r} and {source.name!r}")
                if source.enabled:
                    seen[entry.key] = source.name
        return self

    def driver(self, name: str) -> Driver:
        return next(d for d in self.drivers if d.name == name)

    def target(self, name: str) -> Target:
        return next(t for t in self.targets if t.name == name)

    def class_name(self, kind: DeviceKind, driver: str) -> str:
        """The unified DeviceClass that serves ``kind`` devices of ``driver``."""
        return f"{kind}.{driver}.{self.class_domain}"


def _unique(table: str, entries: Sequence[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for entry in entries:
        if entry.name in out:
            raise ValueError(f"{table}: name {entry.name!r} appears twice")
        out[entry.name] = entry
    return out


def _check_alternative_budget(target: Target, drivers: Mapping[str, Driver]) -> None:
    """A percentage of memory becomes one alternative per (driver, card size): keep it under 8."""
    alternatives = 0
    for name in target.shared:
        shared = drivers[name].shared
        assert shared is not None
        alternatives += len(shared.memory_sizes)
    if alternatives > MAX_ALTERNATIVES:
        raise ValueError(
            f"targets[{target.name}].shared: percentages of memory would need {alternatives} alternatives "
            f"(one per driver and card size in memorySizes), DRA allows {MAX_ALTERNATIVES}"
        )


# -- loading and merging -----------------------------------------------------------------------


def parse_document(text: str, *, origin: str) -> dict[str, Any]:
    """Return the catalogue mapping inside ``text``: a bare catalogue or a ConfigMap carrying one."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise CatalogueError(f"{origin}: not valid YAML: {err}") from err
    if not isinstance(doc, dict):
        raise CatalogueError(f"{origin}: expected a mapping, got {type(doc).__name__}")
    if doc.get("kind") == "ConfigMap":
        data = doc.get("data") or {}
        if CATALOGUE_KEY not in data:
            raise CatalogueError(f"{origin}: ConfigMap has no data key {CATALOGUE_KEY!r}")
        return parse_document(data[CATALOGUE_KEY], origin=f"{origin}: data.{CATALOGUE_KEY}")
    if doc.get("kind") != KIND:
        raise CatalogueError(f"{origin}: kind must be {KIND!r} or ConfigMap, got {doc.get('kind')!r}")
    return doc


def merge_documents(documents: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Merge catalogue documents in order: an entry replaces the earlier one of the same name."""
    merged: dict[str, Any] = {"apiVersion": API_VERSION, "kind": KIND}
    tables: dict[str, dict[str, Any]] = {"drivers": {}, "targets": {}, "sources": {}}
    for doc in documents:
        for key, value in doc.items():
            if key in tables:
                if not isinstance(value, list):
                    raise CatalogueError(f"{key}: expected a list, got {type(value).__name__}")
                for index, entry in enumerate(value):
                    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                        raise CatalogueError(f"{key}[{index}]: every entry needs a string name")
                    tables[key][entry["name"]] = entry
            else:
                merged[key] = value
    for key, entries in tables.items():
        merged[key] = list(entries.values())
    return merged


def build_catalogue(documents: Iterable[Mapping[str, Any]]) -> Catalogue:
    merged = merge_documents(documents)
    try:
        return Catalogue.model_validate(merged)
    except ValidationError as err:
        raise CatalogueError(describe_validation_error(err, merged)) from err


def load_catalogue(paths: Sequence[Path]) -> Catalogue:
    """Load and merge catalogue files in the given order (the shipped default first)."""
    docs = [parse_document(path.read_text(encoding="utf-8"), origin=str(path)) for path in paths]
    return build_catalogue(docs)


def describe_validation_error(err: ValidationError, document: Any) -> str:
    """Pydantic errors rewritten as ``field.path: message (got value)``, one per line."""
    lines = []
    for item in err.errors():
        path = _field_path(item["loc"], document)
        value = item.get("input")
        message = item["msg"].removeprefix("Value error, ")
        shown = "" if isinstance(value, dict | list) else f" (got {value!r})"
        lines.append(message if path == "(document)" else f"{path}: {message}{shown}")
    return "; ".join(lines)


def _field_path(loc: Sequence[int | str], document: Any) -> str:
    """``('sources', 3, 'resources', 0, 'meaning')`` -> ``sources[hami].resources[0].meaning``."""
    parts: list[str] = []
    node = document
    for key in loc:
        if isinstance(key, int):
            name = node[key].get("name") if isinstance(node, list) and isinstance(node[key], dict) else None
            parts[-1] += f"[{name}]" if isinstance(name, str) else f"[{key}]"
        else:
            parts.append(str(key))
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            node = None
    return ".".join(parts) or "(document)"


# -- the runtime index ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Match:
    source: Source
    entry: LegacyName
    profile: str | None = None
    slices: int | None = None
    memory_gb: int | None = None


class CatalogueIndex:
    """O(1) lookups of legacy names for the request path; patterns are tried only for names that
    share a pattern's literal prefix, so a Pod without GPU requests costs a few dict misses."""

    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue
        self._resources: dict[str, tuple[Source, LegacyName]] = {}
        self._annotations: dict[str, tuple[Source, LegacyName]] = {}
        self._patterns: list[tuple[str, re.Pattern[str], Source, LegacyName]] = []
        # Values derived from this catalogue by the layers above (templates per demand), kept as
        # long as the catalogue is: a reload builds a new index and starts empty.
        self.derived: dict[Hashable, Any] = {}
        for source in catalogue.sources:
            if not source.enabled:
                continue
            for entry in source.resources:
                if entry.name is not None:
                    self._resources[entry.name] = (source, entry)
                else:
                    assert entry.pattern is not None
                    prefix = re.split(r"[\\\[(.*+?{|^$]", entry.pattern, maxsplit=1)[0]
                    self._patterns.append((prefix, re.compile(entry.pattern), source, entry))
            for entry in source.annotations:
                assert entry.name is not None, "annotations are matched by exact name"
                self._annotations[entry.name] = (source, entry)

    def driver_of_class(self, device_class: str) -> str | None:
        """The DRA driver name (``device.driver``) behind one of the unified DeviceClasses."""
        found = self.derived.get(("driver-of-class", device_class), False)
        if found is False:
            found = next(
                (
                    d.driver
                    for d in self.catalogue.drivers
                    for kind in DEVICE_KINDS
                    if self.catalogue.class_name(kind, d.name) == device_class
                ),
                None,
            )
            self.derived[("driver-of-class", device_class)] = found
        return found  # type: ignore[no-any-return]

    def resource(self, name: str) -> Match | None:
        hit = self._resources.get(name)
        if hit is not None:
            return Match(source=hit[0], entry=hit[1])
        patterned = self._pattern_for(name)
        if patterned is None:
            return None
        found, source, entry = patterned
        groups = found.groupdict()
        return Match(
            source=source,
            entry=entry,
            profile=groups.get("profile"),
            slices=int(groups["slices"]) if groups.get("slices") else None,
            memory_gb=int(groups["memgb"]) if groups.get("memgb") else None,
        )

    def knows_any(self, names: Iterable[str]) -> bool:
        """Whether ``resource`` finds any of ``names``: the same test, without building matches (a
        Pod's every review asks it of each container's limits and requests)."""
        names = tuple(names)
        if not self._resources.keys().isdisjoint(names):
            return True
        return any(self._pattern_for(name) is not None for name in names)

    def _pattern_for(self, name: str) -> tuple[re.Match[str], Source, LegacyName] | None:
        """The first pattern that matches ``name`` whole (tried only where its literal prefix does)."""
        for prefix, pattern, source, entry in self._patterns:
            if name.startswith(prefix):
                found = pattern.fullmatch(name)
                if found is not None:
                    return found, source, entry
        return None

    def annotation(self, name: str) -> tuple[Source, LegacyName] | None:
        return self._annotations.get(name)

    @property
    def annotation_names(self) -> frozenset[str]:
        return frozenset(self._annotations)

    def source(self, name: str) -> Source:
        return next(s for s in self.catalogue.sources if s.name == name)
