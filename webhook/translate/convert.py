"""Offline conversion of manifests, for GitOps repositories: ``dra-bridge convert``.

Pods and the Pod templates of workload controllers are rewritten exactly as the mutating webhook
would rewrite the Pods they create; the ResourceClaimTemplates they need follow the objects.
Everything is converted in memory first: on any error nothing is written.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from webhook.errors import TranslationError
from webhook.translate.catalogue import CatalogueIndex
from webhook.translate.rewrite import opted_out, rewrite_pod

# kind -> path of the Pod template inside the object
POD_TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": (),
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "ReplicationController": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
    "PodTemplate": ("template",),
}


@dataclass
class ConversionResult:
    objects: list[Any] = field(default_factory=list)
    templates: list[dict[str, Any]] = field(default_factory=list)
    converted: list[str] = field(default_factory=list)  # "Kind/namespace/name: summary"
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def convert_documents(
    documents: Iterable[Any], *, index: CatalogueIndex, namespace: str | None = None
) -> ConversionResult:
    result = ConversionResult()
    seen_templates: set[tuple[str | None, str]] = set()
    for position, document in enumerate(documents):
        if document is None:
            continue
        try:
            converted = _convert(document, index=index, namespace=namespace, result=result, seen=seen_templates)
        except TranslationError as err:
            result.errors.append(f"document {position + 1} ({_describe(document)}): {err}")
            continue
        result.objects.append(converted)
    return result


def _convert(
    document: Any,
    *,
    index: CatalogueIndex,
    namespace: str | None,
    result: ConversionResult,
    seen: set[tuple[str | None, str]],
) -> Any:
    if not isinstance(document, dict):
        return document
    kind = document.get("kind")
    if kind == "List":
        out = copy.deepcopy(document)
        out["items"] = [
            _convert(item, index=index, namespace=namespace, result=result, seen=seen)
            for item in document.get("items") or []
        ]
        return out
    path = POD_TEMPLATE_PATHS.get(str(kind))
    if path is None:
        return document
    pod_template = _get(document, path)
    if not isinstance(pod_template, dict):
        return document
    metadata = document.get("metadata") or {}
    if opted_out(metadata.get("labels")) or opted_out((pod_template.get("metadata") or {}).get("labels")):
        return document
    effective_ns = metadata.get("namespace") or namespace
    plan = rewrite_pod(pod_template, index=index, namespace=effective_ns or "default")
    for warning in plan.warnings:
        result.warnings.append(f"{_describe(document)}: {warning}")
    if not plan.changed:
        return document
    out = copy.deepcopy(document)
    if path:
        _set(out, path, plan.pod)
    else:
        out = plan.pod
    for template in plan.templates:
        key = (effective_ns, template["metadata"]["name"])
        if key in seen:
            continue
        seen.add(key)
        if effective_ns is None:
            template = {**template, "metadata": dict(template["metadata"])}  # the plan's is shared
            del template["metadata"]["namespace"]  # lands wherever the workload is applied
        result.templates.append(template)
    for conversion in plan.conversions:
        result.converted.append(f"{_describe(document)}: {conversion.container}: {conversion.summary}")
    return out


def _describe(document: Any) -> str:
    if not isinstance(document, dict):
        return type(document).__name__
    meta = document.get("metadata") or {}
    name = meta.get("name") or meta.get("generateName") or "?"
    ns = meta.get("namespace")
    return f"{document.get('kind', '?')} {ns + '/' if ns else ''}{name}"


def _get(document: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = document
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def _set(document: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = document
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
