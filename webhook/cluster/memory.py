"""An in-memory cluster: the embedded default of ``serve --dev`` and the adapter tests use.

It keeps what dra-bridge itself writes (templates) and what a test seeds (namespaces, Pods,
DeviceClasses), with the same semantics as the real adapter: ``AlreadyExists`` on a second create,
uid preconditions on delete, copies in and out so callers never share state.
"""

from __future__ import annotations

import copy
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from webhook.cluster import AlreadyExists, Conflict, EventHandler, EventType, Source
from webhook.cluster.informer import ClaimStore, slim_claim
from webhook.labels import CATALOGUE_LABEL, MANAGED_BY, MANAGED_BY_LABEL, POLICY_LABEL


class InMemoryCluster:
    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._namespaces: dict[str, dict[str, str]] = {}
        self._templates: dict[tuple[str, str], dict[str, Any]] = {}
        self._pods: dict[tuple[str, str], dict[str, Any]] = {}
        self._device_classes: dict[str, dict[str, Any]] = {}
        self._slices: dict[str, dict[str, Any]] = {}
        self._nodes: dict[str, dict[str, Any]] = {}
        # Claims are kept as the real adapter keeps them: identity and spec, specs shared by shape.
        self._claims = ClaimStore()
        self._configmaps: dict[str, dict[str, Any]] = {}
        self._handlers: dict[Source, list[EventHandler]] = {}
        self._namespace_generation = 0
        self._leases: dict[str, dict[str, Any]] = {}
        self._lease_version = 0
        self.writes = 0

    # -- seeding (tests and the dev server) --------------------------------------------------
    def add_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> None:
        with self._lock:
            self._namespaces[name] = dict(labels or {})
            self._namespace_generation += 1

    def add_claim(self, claim: dict[str, Any]) -> None:
        meta = claim["metadata"]
        key = (meta["namespace"], meta["name"])
        with self._lock:
            event: EventType = "MODIFIED" if key in self._claims else "ADDED"
            self._claims.put(key, slim_claim(claim))
            stored = self._claims.export(self._claims.get(key) or {})
        self._emit("resourceclaims", event, stored)

    def delete_claim(self, namespace: str, name: str) -> None:
        with self._lock:
            claim = self._claims.get((namespace, name))
            stored = self._claims.export(claim) if claim is not None else None
            self._claims.pop((namespace, name))
        if stored is not None:
            self._emit("resourceclaims", "DELETED", stored)

    def put_configmap(self, configmap: dict[str, Any]) -> None:
        """Create or replace a ConfigMap; a policy or catalogue label routes it to its watchers."""
        name = configmap["metadata"]["name"]
        with self._lock:
            event: EventType = "MODIFIED" if name in self._configmaps else "ADDED"
            stored = copy.deepcopy(configmap)
            stored["metadata"]["resourceVersion"] = str(self.writes + 1)
            self.writes += 1
            self._configmaps[name] = stored
        for source in _configmap_sources(stored):
            self._emit(source, event, stored)

    def delete_configmap(self, name: str) -> None:
        with self._lock:
            configmap = self._configmaps.pop(name, None)
        if configmap is not None:
            for source in _configmap_sources(configmap):
                self._emit(source, "DELETED", configmap)

    def _emit(self, source: Source, event: EventType, obj: dict[str, Any]) -> None:
        for handler in list(self._handlers.get(source, ())):
            handler(event, copy.deepcopy(obj))

    def add_pod(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        with self._lock:
            self._pods[(meta["namespace"], meta["name"])] = copy.deepcopy(pod)

    def remove_pod(self, namespace: str, name: str) -> None:
        with self._lock:
            self._pods.pop((namespace, name), None)

    def add_device_class(self, device_class: dict[str, Any]) -> None:
        with self._lock:
            self._device_classes[device_class["metadata"]["name"]] = copy.deepcopy(device_class)
        self._emit("deviceclasses", "ADDED", device_class)

    def put_resource_slice(self, resource_slice: dict[str, Any]) -> None:
        with self._lock:
            self._slices[resource_slice["metadata"]["name"]] = copy.deepcopy(resource_slice)
        self._emit("resourceslices", "ADDED", resource_slice)

    def put_node(self, node: dict[str, Any]) -> None:
        with self._lock:
            self._nodes[node["metadata"]["name"]] = copy.deepcopy(node)
        self._emit("nodes", "ADDED", node)

    def delete_resource_slice(self, name: str) -> None:
        with self._lock:
            gone = self._slices.pop(name, None)
        if gone is not None:
            self._emit("resourceslices", "DELETED", gone)

    # -- ClusterPort -------------------------------------------------------------------------
    def watch(self, source: Source, handler: EventHandler) -> None:
        self._handlers.setdefault(source, []).append(handler)
        with self._lock:
            if source == "resourceclaims":
                existing = self._claims.exported()
            elif source == "deviceclasses":
                existing = list(self._device_classes.values())
            elif source == "resourceslices":
                existing = list(self._slices.values())
            elif source == "nodes":
                existing = list(self._nodes.values())
            else:
                existing = [c for c in self._configmaps.values() if source in _configmap_sources(c)]
        for obj in existing:
            handler("ADDED", copy.deepcopy(obj))

    def start(self) -> None:
        return None

    def stop(self) -> None:
        return None

    def ready(self) -> tuple[bool, str]:
        return True, "in-memory cluster"

    def namespaces(self) -> Mapping[str, Mapping[str, str]]:
        with self._lock:
            return {name: dict(labels) for name, labels in self._namespaces.items()}

    @property
    def namespace_generation(self) -> int:
        return self._namespace_generation

    def namespace_labels(self, name: str) -> Mapping[str, str] | None:
        with self._lock:
            labels = self._namespaces.get(name)
            return dict(labels) if labels is not None else None

    def native_extended_resources(self) -> Mapping[str, str]:
        with self._lock:
            return {
                dc["spec"]["extendedResourceName"]: name
                for name, dc in sorted(self._device_classes.items())
                if (dc.get("spec") or {}).get("extendedResourceName")
            }

    def get_template(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self._templates.get((namespace, name))  # read-only, like an informer's cache

    def create_template(self, template: dict[str, Any]) -> dict[str, Any]:
        meta = template["metadata"]
        key = (meta["namespace"], meta["name"])
        with self._lock:
            if key in self._templates:
                raise AlreadyExists(f"resourceclaimtemplates {meta['namespace']}/{meta['name']} already exists")
            stored = copy.deepcopy(template)
            stored["metadata"]["uid"] = str(uuid.uuid4())
            stored["metadata"]["creationTimestamp"] = datetime.fromtimestamp(self._clock(), UTC).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            )
            self._templates[key] = stored
            self.writes += 1
            return copy.deepcopy(stored)

    def managed_templates(self) -> list[dict[str, Any]]:
        with self._lock:
            return [
                copy.deepcopy(t)
                for t in self._templates.values()
                if (t["metadata"].get("labels") or {}).get(MANAGED_BY_LABEL) == MANAGED_BY
            ]

    def referenced_templates(self) -> set[tuple[str, str]]:
        with self._lock:
            return {
                (ns, claim["resourceClaimTemplateName"])
                for (ns, _), pod in self._pods.items()
                for claim in (pod.get("spec") or {}).get("resourceClaims") or []
                if claim.get("resourceClaimTemplateName")
            }

    def get_lease(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            found = self._leases.get(name)
            return copy.deepcopy(found) if found is not None else None

    def list_leases(self, label: str) -> list[dict[str, Any]]:
        with self._lock:
            return [
                copy.deepcopy(lease)
                for lease in self._leases.values()
                if label in (lease["metadata"].get("labels") or {})
            ]

    def delete_lease(self, name: str, *, resource_version: str) -> None:
        with self._lock:
            found = self._leases.get(name)
            if found is not None and found["metadata"]["resourceVersion"] == resource_version:
                del self._leases[name]

    def put_lease(self, lease: dict[str, Any]) -> dict[str, Any]:
        name = lease["metadata"]["name"]
        expected = lease["metadata"].get("resourceVersion")
        with self._lock:
            current = self._leases.get(name)
            if (current is None and expected) or (
                current is not None and current["metadata"]["resourceVersion"] != expected
            ):
                raise Conflict(
                    f"leases {name}: the object has been modified; please apply your changes to the latest version"
                )
            self._lease_version += 1
            stored = copy.deepcopy(lease)
            stored["metadata"]["resourceVersion"] = str(self._lease_version)
            self._leases[name] = stored
            return copy.deepcopy(stored)

    def delete_template(self, namespace: str, name: str, *, uid: str) -> None:
        with self._lock:
            found = self._templates.get((namespace, name))
            if found is not None and found["metadata"]["uid"] == uid:
                del self._templates[(namespace, name)]
                self.writes += 1


def _configmap_sources(configmap: Mapping[str, Any]) -> list[Source]:
    labels = (configmap.get("metadata") or {}).get("labels") or {}
    out: list[Source] = []
    if labels.get(POLICY_LABEL) == "true":
        out.append("policy-configmaps")
    if labels.get(CATALOGUE_LABEL) == "true":
        out.append("catalogue-configmaps")
    return out
