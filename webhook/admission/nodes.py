"""Which nodes DRA serves and which a device plugin serves, for converting a Pod node by node.

A cluster moves to DRA one node pool at a time: some nodes publish ResourceSlices, others still
advertise the legacy extended resource (``nvidia.com/gpu`` in ``status.allocatable``) from a device
plugin. A converted Pod can only run where a DRA driver serves its claim, so a Pod that may run only
on device-plugin nodes (its node selector and required affinity) is better left for the device
plugin. Fed by the cluster port's ``nodes`` and ``resourceslices`` sources; answers from memory:
at once while no node advertises a legacy name (an all-DRA cluster, the embedded default), and
otherwise from a memo per (placement constraints, drivers, names) for the current node state, so
a Deployment's thousand Pods cost one walk over the nodes.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from webhook.translate.placement import may_run_on, term_matches

Serving = Literal["dra", "device-plugin", "unknown"]


@dataclass(frozen=True)
class _Slice:
    driver: str
    node: str | None  # spec.nodeName
    all_nodes: bool
    node_terms: tuple[Mapping[str, Any], ...] = ()  # spec.nodeSelector.nodeSelectorTerms


@dataclass
class NodePools:
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _labels: dict[str, dict[str, str]] = field(default_factory=dict)
    _legacy: dict[str, frozenset[str]] = field(default_factory=dict)  # node -> extended resources it advertises
    _slices: dict[str, _Slice] = field(default_factory=dict)
    _memo: dict[tuple[str, frozenset[str], frozenset[str]], Serving] = field(default_factory=dict)

    def on_node(self, event: str, node: dict[str, Any]) -> None:
        meta = node.get("metadata") or {}
        name = str(meta.get("name", ""))
        with self._lock:
            self._memo.clear()
            if event == "DELETED":
                self._labels.pop(name, None)
                self._legacy.pop(name, None)
                return
            self._labels[name] = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
            allocatable = (node.get("status") or {}).get("allocatable") or {}
            self._legacy[name] = frozenset(
                str(k) for k, v in allocatable.items() if "/" in str(k) and str(v) not in ("0", "")
            )

    def on_slice(self, event: str, resource_slice: dict[str, Any]) -> None:
        name = str((resource_slice.get("metadata") or {}).get("name", ""))
        spec = resource_slice.get("spec") or {}
        with self._lock:
            self._memo.clear()
            if event == "DELETED" or not spec.get("devices"):
                self._slices.pop(name, None)
                return
            selector = spec.get("nodeSelector") or {}
            self._slices[name] = _Slice(
                driver=str(spec.get("driver", "")),
                node=spec.get("nodeName"),
                all_nodes=bool(spec.get("allNodes")),
                node_terms=tuple(selector.get("nodeSelectorTerms") or ()),
            )

    def serving(self, pod: Mapping[str, Any], *, drivers: Iterable[str], legacy: Iterable[str]) -> Serving:
        """``dra`` when a node the Pod may run on has devices of one of ``drivers``; else
        ``device-plugin`` when such a node advertises one of the ``legacy`` names; else ``unknown``
        (no node known either way: convert, as on a cluster that is all DRA)."""
        wanted, names = frozenset(drivers), frozenset(legacy)
        with self._lock:
            if not any(advertised & names for advertised in self._legacy.values()):
                return "unknown"  # no device plugin serves these names anywhere: convert
            spec = pod.get("spec") or {}
            placement = json.dumps(
                [spec.get("nodeName"), spec.get("nodeSelector"), (spec.get("affinity") or {}).get("nodeAffinity")],
                sort_keys=True,
                default=str,
            )
            key = (placement, wanted, names)
            found = self._memo.get(key)
            if found is None:
                if len(self._memo) >= 4096:
                    self._memo.clear()
                found = self._memo[key] = self._serving(pod, wanted, names)
            return found

    def _serving(self, pod: Mapping[str, Any], wanted: frozenset[str], names: frozenset[str]) -> Serving:
        slices = [s for s in self._slices.values() if s.driver in wanted]
        candidates = [n for n, labels in self._labels.items() if may_run_on(pod, n, labels)]
        on_node = {s.node for s in slices if s.node is not None}
        selected = [s for s in slices if s.node is None and not s.all_nodes]
        if candidates and any(s.all_nodes for s in slices):
            return "dra"
        if on_node.intersection(candidates) or any(self._on(s, n) for n in candidates for s in selected):
            return "dra"
        if any(self._legacy.get(node, frozenset()) & names for node in candidates):
            return "device-plugin"
        return "unknown"

    def _on(self, published: _Slice, node: str) -> bool:
        if published.node is not None:
            return published.node == node
        if published.all_nodes:
            return True
        labels = self._labels.get(node, {})
        return any(term_matches(term, node, labels) for term in published.node_terms)
