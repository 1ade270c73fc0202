"""A Pod's conversion, once per Pod shape: what the mutating webhook answers, memoised.

The replicas of a Deployment, a Job or a StatefulSet reach the webhook as the same Pod under other
names. ``convert`` rewrites a Pod (``webhook.translate.rewrite``) and turns the plan into what the
answer needs: the JSON Patch (encoded), the templates, the conversions, the warnings and which
drivers the claims need. All of that is a function of the Pod without its identity (name, uid,
timestamps, managed fields: nothing the rewrite reads), its namespace, the names served natively
and the catalogue, so it is kept per catalogue (a reload starts empty) keyed on exactly those:
the Pod as JSON, every other field included. Anything that depends on the cluster (templates to
create, node pools, the rollout mode, quota) is decided again for every Pod by the engine.

Bounded: at most ``MAX_SHAPES`` shapes and ``MAX_KEY_BYTES`` bytes of keys per catalogue, a Pod
larger than ``MAX_POD_BYTES`` as JSON never kept (its JSON would cost about what its rewrite does); when
full, the memo starts again empty (the shapes in use come back on their next Pod). Errors are never
kept: a Pod that cannot be converted is refused with its own message each time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic_core import PydanticSerializationError, to_json

from webhook.admission.jsonpatch import diff
from webhook.admission.review import encode_patch
from webhook.translate.catalogue import CatalogueIndex
from webhook.translate.legacy import mentions_legacy
from webhook.translate.rewrite import Conversion, RewritePlan, rewrite_pod

MAX_SHAPES = 1024
MAX_KEY_BYTES = 8 * 1024 * 1024
MAX_POD_BYTES = 32 * 1024
# Set per object by the apiserver, never read by the conversion: left out of the key so that
# the replicas of a workload share one entry.
IDENTITY = frozenset({"name", "uid", "creationTimestamp", "resourceVersion", "generation", "managedFields", "selfLink"})


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
    """The Pod as JSON (UTF-8) without its identity, or None when it is too large to be worth keeping."""
    meta = pod.get("metadata")
    if isinstance(meta, Mapping) and not IDENTITY.isdisjoint(meta):
        pod = {**pod, "metadata": {k: v for k, v in meta.items() if k not in IDENTITY}}
    try:
        text = to_json(pod)  # a JSON serialiser, so one text per document; a third of json.dumps' time
    except (PydanticSerializationError, TypeError, ValueError):
        return None
    return text if len(text) <= MAX_POD_BYTES else None


def convert(
    pod: Mapping[str, Any],
    *,
    index: CatalogueIndex,
    namespace: str,
    native: Mapping[str, str],
    review_bytes: int = 0,
) -> Converted:
    """``pod`` converted (``rewrite_pod`` and the patch), from the memo when a Pod of its shape
    was converted before in ``namespace`` with the same ``native`` names; raises ``TranslationError``.
    ``review_bytes``, the size of the review the Pod came in (0: not known), spares a large Pod
    the JSON of a key it could not be kept under."""
    if not mentions_legacy(pod, index=index):
        return NOTHING_TO_CONVERT
    shape = shape_of(pod) if review_bytes <= MAX_POD_BYTES * 2 else None
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
