"""Where a Pod may run: its node selector and required node affinity, against a node's labels.

Pure: the scheduler's own rules for ``spec.nodeName``, ``spec.nodeSelector`` and
``requiredDuringSchedulingIgnoredDuringExecution`` node selector terms (terms OR-ed, expressions
AND-ed; In, NotIn, Exists, DoesNotExist, Gt, Lt; ``matchFields`` on ``metadata.name``), so the
admission can tell whether DRA can serve a Pod on a node it is allowed to run on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def may_run_on(pod: Mapping[str, Any], node: str, labels: Mapping[str, str]) -> bool:
    """Whether the scheduler could place ``pod`` on the node ``node`` with ``labels`` (by placement
    constraints only: resources, taints and the like are not considered)."""
    spec = pod.get("spec") or {}
    pinned = spec.get("nodeName")
    if pinned and pinned != node:
        return False
    selector = spec.get("nodeSelector") or {}
    if isinstance(selector, Mapping) and any(labels.get(str(k)) != str(v) for k, v in selector.items()):
        return False
    affinity = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    )
    if not affinity:
        return True
    terms = affinity.get("nodeSelectorTerms") or []
    return any(term_matches(term, node, labels) for term in terms if isinstance(term, Mapping))


def term_matches(term: Mapping[str, Any], node: str, labels: Mapping[str, str]) -> bool:
    """One node selector term: every expression and field requirement holds (an empty term matches nothing)."""
    expressions = term.get("matchExpressions") or []
    fields = term.get("matchFields") or []
    if not expressions and not fields:
        return False
    for requirement in expressions:
        if not _holds(requirement, labels.get(str(requirement.get("key")))):
            return False
    for requirement in fields:
        value = node if requirement.get("key") == "metadata.name" else None
        if not _holds(requirement, value):
            return False
    return True


def _holds(requirement: Mapping[str, Any], value: str | None) -> bool:
    operator = requirement.get("operator")
    values = [str(v) for v in requirement.get("values") or []]
    if operator == "In":
        return value is not None and value in values
    if operator == "NotIn":
        return value is None or value not in values
    if operator == "Exists":
        return value is not None
    if operator == "DoesNotExist":
        return value is None
    if operator in ("Gt", "Lt") and value is not None and len(values) == 1:
        try:
            have, bound = int(value), int(values[0])
        except ValueError:
            return False
        return have > bound if operator == "Gt" else have < bound
    return False
