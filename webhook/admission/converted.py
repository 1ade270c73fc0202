"""A Pod's conversion, once per Pod shape: what the mutating webhook answers, memoised.

The replicas of a Deployment, a Job or a StatefulSet reach the webhook as the same Pod under other
names, labels and volumes (the service account token's volume has a random name per Pod).
``convert`` rewrites a Pod (``webhook.translate.rewrite``) and turns the plan into what the answer
needs: the JSON Patch (encoded), the templates, the conversions, the warnings and which drivers the
claims need. All of that is a function of what the rewrite reads and changes (``SHAPE``: the Pod's
annotations; its node selector, which holds model pins; its resource claims; and the name and
resources of each init and regular container, in order: every other field is shared with the
rewritten Pod untouched, so the patch never names it), of the namespace, the names served natively
and the catalogue. So it is kept per catalogue (a reload starts empty) keyed on exactly those. A
differential test changes any field of many Pods and compares every memoised answer with a fresh
conversion: it fails if the rewrite comes to read a field the key leaves out. Anything that
depends on the cluster (templates to create, node pools, the rollout mode, quota) is decided again
for every Pod by the engine.

Bounded: at most ``MAX_SHAPES`` shapes and ``MAX_KEY_BYTES`` bytes of keys per catalogue, a key over
``MAX_SHAPE_BYTES`` never kept; when full, the memo starts again empty (the shapes in use come back
on their next Pod). Errors are never kept: a Pod that cannot be converted is refused with its own
message each time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic_core import PydanticSerializationError, to_json

from webhook.admission.jsonpatch import diff
from webhook.admission.review import encode_patch
from webhook.translate.catalogue import CatalogueIndex
from webhook.translate.legacy import CONTAINER_LISTS, mentions_legacy
from webhook.translate.rewrite import Conversion, RewritePlan, rewrite_pod

MAX_SHAPES = 1024
MAX_KEY_BYTES = 8 * 1024 * 1024
MAX_SHAPE_BYTES = 32 * 1024
# What the rewrite reads and what it may change, by level: the key is these fields where present.
SHAPE_METADATA = frozenset({"annotations"})
SHAPE_SPEC = frozenset({"nodeSelector", "resourceClaims"})
SHAPE_CONTAINER_LISTS = frozenset(CONTAINER_LISTS)
SHAPE_CONTAINER = frozenset({"name", "resources"})
_METADATA_FIELDS = tuple(sorted(SHAPE_METADATA))
_SPEC_FIELDS = (*sorted(SHAPE_SPEC), *CONTAINER_LISTS)
_CONTAINER_FIELDS = tuple(sorted(SHAPE_CONTAINER))


@dataclass(frozen=True)
class Converted:
    """What converting one Pod shape yields; shared between Pods: read it, never change it."""

    changed: bool
    warnings: tuple[str, ...] = ()  # the rewrite's own (native names left, zero requests, ...)
    templates: tuple[dict[str, Any], ...] = ()
    conversions: tuple[Conversion, ...] = ()
    patch: str | None = None  # base64 of the JSON Patch; None when it would be empty
    drivers: frozenset[str] = frozenset()  # of the DeviceClasses the templates name
    legacy: frozenset[str] = frozenset()  # the legacy names converted
    removed_annotations: tuple[str, ...] = ()  # legacy annotations taken off the Pod
    summaries: tuple[str, ...] = ()  # per conversion: "<container>: <legacy names=values> -> <what it claims>"
    message: str = ""  # "<container>: <what it claims>; ..."

    @classmethod
    def of(cls, pod: Mapping[str, Any], plan: RewritePlan, index: CatalogueIndex) -> Converted:
        if not plan.changed:
            return cls(changed=False, warnings=plan.warnings)
        drivers = {
            index.driver_of_class(sub.get("deviceClassName", ""))
            for template in plan.templates
            for request in (template.get("spec") or {}).get("spec", {}).get("devices", {}).get("requests", [])
            for sub in request.get("firstAvailable") or [request.get("exactly") or {}]
        }
        return cls(
            changed=True,
            warnings=plan.warnings,
            templates=plan.templates,
            conversions=plan.conversions,
            patch=encode_patch(diff(pod, plan.pod)),
            drivers=frozenset(d for d in drivers if d),
            legacy=frozenset(name for c in plan.conversions for name in c.legacy),
            removed_annotations=plan.removed_annotations,
            summaries=tuple(
                f"{c.container}: {','.join(f'{k}={v}' for k, v in sorted(c.legacy.items()))} -> {c.summary}"
                for c in plan.conversions
            ),
            message="; ".join(f"{c.container}: {c.summary}" for c in plan.conversions),
        )


NOTHING_TO_CONVERT = Converted(changed=False)


class ShapeMemo:
    """``Converted`` per Pod shape, for one catalogue (kept in its ``derived`` values)."""

    def __init__(self) -> None:
        self._found: dict[tuple[str, tuple[tuple[str, str], ...], bytes], Converted] = {}
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._found)

    def get(self, key: tuple[str, tuple[tuple[str, str], ...], bytes]) -> Converted | None:
        found = self._found.get(key)
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
        return found

    def put(self, key: tuple[str, tuple[tuple[str, str], ...], bytes], converted: Converted) -> None:
        size = len(key[0]) + len(key[2])
        if len(self._found) >= MAX_SHAPES or self._bytes + size > MAX_KEY_BYTES:
            self._found.clear()
            self._bytes = 0
        self._found[key] = converted
        self._bytes += size


def shape_of(pod: Mapping[str, Any]) -> bytes | None:
    """What of ``pod`` its conversion depends on (``SHAPE``: each field where present), as JSON; None
    for a Pod whose levels are not JSON objects and arrays (dicts and lists; the rewrite decides
    those itself) or a key too large to keep."""
    # The fields are looked up rather than found among all of a level's: a Pod's spec and containers
    # hold many that the key leaves out (a third of this function's time went to passing them by).
    # Levels and spec fields are kept in the Pod's own order: the patch lists its operations in
    # that order. Within a container only ``resources`` can change, so the order of its two fields
    # never reaches the patch, and the key writes them in one order.
    shape: dict[str, Any] = {}
    for level, value in pod.items():
        if level == "metadata":
            if not isinstance(value, dict):
                return None
            shape[level] = {k: value[k] for k in _METADATA_FIELDS if k in value}
        elif level == "spec":
            if not isinstance(value, dict):
                return None
            present = [f for f in _SPEC_FIELDS if f in value]
            if len(present) > 1:
                order = list(value)
                present.sort(key=order.index)
            kept: dict[str, Any] = {}
            for field in present:
                item = value[field]
                if field in SHAPE_CONTAINER_LISTS:
                    if not isinstance(item, list):
                        return None
                    containers = []
                    for c in item:
                        if not isinstance(c, dict):
                            return None
                        containers.append({k: c[k] for k in _CONTAINER_FIELDS if k in c})
                    item = containers
                kept[field] = item
            shape[level] = kept
    try:
        text = to_json(shape)  # a JSON serialiser: one text per document
    except (PydanticSerializationError, TypeError, ValueError):
        return None
    return text if len(text) <= MAX_SHAPE_BYTES else None


def convert(
    pod: Mapping[str, Any],
    *,
    index: CatalogueIndex,
    namespace: str,
    native: Mapping[str, str],
) -> Converted:
    """``pod`` converted (``rewrite_pod`` and the patch), from the memo when a Pod of its shape
    was converted before in ``namespace`` with the same ``native`` names; raises ``TranslationError``."""
    if not mentions_legacy(pod, index=index):
        return NOTHING_TO_CONVERT
    shape = shape_of(pod)
    if shape is None:
        return Converted.of(pod, rewrite_pod(pod, index=index, namespace=namespace, native=native), index)
    memo = index.derived.get(ShapeMemo)
    if not isinstance(memo, ShapeMemo):
        memo = index.derived[ShapeMemo] = ShapeMemo()
    key = (namespace, tuple(sorted(native.items())), shape)
    found = memo.get(key)
    if found is None:
        found = Converted.of(pod, rewrite_pod(pod, index=index, namespace=namespace, native=native), index)
        memo.put(key, found)
    return found
