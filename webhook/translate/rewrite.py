"""The Pod rewrite: legacy GPU requests out, DRA claims from ResourceClaimTemplates in.

``rewrite_pod`` is a pure function: a Pod (dict) in, a ``RewritePlan`` out, holding the rewritten
Pod (a new object), the templates it references, what was converted and warnings. The input is
never modified. Running it on its own output changes nothing (a fixed point), which
``reinvocationPolicy: IfNeeded`` relies on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from webhook.errors import TranslationError
from webhook.labels import CONVERTED_ANNOTATION, OPT_OUT_LABEL
from webhook.translate.catalogue import CatalogueIndex
from webhook.translate.claims import amounts, describe, template_for
from webhook.translate.legacy import ContainerDemands, read_pod

CLAIM_PREFIX = "gpu-"
TEMPLATE_MEMO_SIZE = 4096


@dataclass(frozen=True)
class Conversion:
    """One container's conversion, as recorded on the Pod and in the audit log."""

    container: str
    claim: str
    template: str
    legacy: Mapping[str, str]
    summary: str
    devices: int = 0  # devices asked for, every demand of the container together
    memory: Fraction = Fraction(0)  # bytes asked for in absolute units (shares of a card count 0)


@dataclass(frozen=True)
class RewritePlan:
    """The rewritten Pod shares every subtree it does not change with the input, and the templates
    are shared with other plans of the same shape: copy before changing either."""

    pod: dict[str, Any]
    templates: tuple[dict[str, Any], ...] = ()
    conversions: tuple[Conversion, ...] = ()
    warnings: tuple[str, ...] = ()
    removed_annotations: tuple[str, ...] = ()
    changed: bool = False


def opted_out(labels: Mapping[str, str] | None) -> bool:
    """The opt-out label, on a Pod or its Namespace: ``dra-bridge.io/ignore: "true"``."""
    return str((labels or {}).get(OPT_OUT_LABEL, "")).lower() == "true"


def rewrite_pod(
    pod: Mapping[str, Any],
    *,
    index: CatalogueIndex,
    namespace: str,
    native: Mapping[str, str] | None = None,
) -> RewritePlan:
    """Rewrite the legacy GPU requests of ``pod`` into claims; raises ``TranslationError``."""
    found, annotation_keys, warnings = read_pod(pod, index=index, native=native or {})
    if not found and not annotation_keys:
        return RewritePlan(pod=dict(pod), warnings=tuple(warnings))

    new = _writable_copy(pod, found)
    spec = new.setdefault("spec", {})
    existing_claims = {c.get("name") for c in spec.get("resourceClaims") or []}
    conversions: list[Conversion] = []
    templates: dict[str, dict[str, Any]] = {}
    for item in found:
        container = spec[item.field][item.index]
        _strip_resources(container, item.resource_keys)
        if not item.demands:
            continue  # every legacy value was zero: nothing to claim
        template = _template(index, item, namespace)
        template_name = template["metadata"]["name"]
        templates[template_name] = template
        claim = claim_name(item.name)
        if claim in existing_claims:
            raise TranslationError(
                f"the Pod already has a resource claim named {claim!r}; rename it or convert this Pod by hand",
                container=item.name,
            )
        existing_claims.add(claim)
        spec.setdefault("resourceClaims", []).append({"name": claim, "resourceClaimTemplateName": template_name})
        container.setdefault("resources", {}).setdefault("claims", []).append({"name": claim})
        devices, memory = amounts(item.demands)
        conversions.append(
            Conversion(
                container=item.name,
                claim=claim,
                template=template_name,
                legacy={lv.name: lv.value for d in item.demands for lv in d.legacy},
                summary="; ".join(describe(d) for d in item.demands),
                devices=devices,
                memory=memory,
            )
        )

    metadata = new.setdefault("metadata", {})
    annotations = metadata.setdefault("annotations", {})
    removed = {key: str(annotations.pop(key)) for key in annotation_keys}
    if conversions or removed:
        annotations[CONVERTED_ANNOTATION] = _record(annotations.get(CONVERTED_ANNOTATION), conversions, removed)
    elif not annotations:
        del metadata["annotations"]
    return RewritePlan(
        pod=new,
        templates=tuple(templates.values()),
        conversions=tuple(conversions),
        warnings=tuple(warnings),
        removed_annotations=tuple(removed),
        changed=True,
    )


def _template(index: CatalogueIndex, item: ContainerDemands, namespace: str) -> dict[str, Any]:
    """``template_for``, once per (demands, namespace, container) and catalogue: the replicas of a
    workload ask for the same thing. The template is shared between plans: read it, never change it."""
    key = ("template", item.demands, namespace, item.name)
    found: dict[str, Any] | None = index.derived.get(key)
    if found is None:
        found = template_for(item.demands, catalogue=index.catalogue, namespace=namespace, container=item.name)
        if len(index.derived) >= TEMPLATE_MEMO_SIZE:
            index.derived.clear()  # the shapes in use come back on their next Pod
        index.derived[key] = found
    return found


def _writable_copy(pod: Mapping[str, Any], found: list[ContainerDemands]) -> dict[str, Any]:
    """A copy of ``pod`` in which exactly what the rewrite changes is copied: the metadata and its
    annotations, the spec, its ``resourceClaims``, the container lists and the resources of the
    converted containers. Everything else (env, volumes, other containers: most of a large Pod) is
    shared with ``pod``, read-only; that also lets the patch skip it by identity."""
    new = dict(pod)
    metadata = new["metadata"] = dict(pod.get("metadata") or {})
    if isinstance(metadata.get("annotations"), dict):
        metadata["annotations"] = dict(metadata["annotations"])
    spec = new["spec"] = dict(pod.get("spec") or {})
    if isinstance(spec.get("resourceClaims"), list):
        spec["resourceClaims"] = list(spec["resourceClaims"])
    for field_name in {item.field for item in found}:
        spec[field_name] = list(spec[field_name])
    for item in found:
        container = spec[item.field][item.index] = dict(spec[item.field][item.index])
        resources = container.get("resources")
        if isinstance(resources, dict):
            container["resources"] = {
                key: dict(value) if isinstance(value, dict) else list(value) if isinstance(value, list) else value
                for key, value in resources.items()
            }
    return new


def claim_name(container: str) -> str:
    """``gpu-<container>``; a DNS label of at most 63 characters, stable for a container name."""
    name = f"{CLAIM_PREFIX}{container}"
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(container.encode()).hexdigest()[:8]
    return f"{name[:54].rstrip('-')}-{digest}"


def _strip_resources(container: dict[str, Any], keys: tuple[str, ...]) -> None:
    resources = container.get("resources") or {}
    for section in ("requests", "limits"):
        values = resources.get(section)
        if values:
            for key in keys:
                values.pop(key, None)
            if not values:
                del resources[section]  # an empty map left behind says nothing


def _record(previous: str | None, conversions: list[Conversion], removed: Mapping[str, str]) -> str:
    """The Pod annotation that shows what was converted and what the owner originally wrote."""
    record: dict[str, Any] = {}
    if previous:
        try:
            loaded = json.loads(previous)
            record = loaded if isinstance(loaded, dict) else {}
        except ValueError:
            record = {}
    containers = record.setdefault("containers", {})
    for c in conversions:
        containers[c.container] = {"claim": c.claim, "template": c.template, "legacy": dict(c.legacy)}
    if removed:
        record.setdefault("annotations", {}).update(removed)
    return json.dumps(record, sort_keys=True, separators=(",", ":"))
