"""The one port to the cluster.

Everything that reads or writes Kubernetes objects goes through ``ClusterPort``. Two adapters:
``webhook.cluster.memory.InMemoryCluster`` (the embedded default and tests) and
``webhook.cluster.kube.KubeCluster`` (the ``kubernetes`` client with watch-backed caches; the only
module that imports it). Reads on the request path come from caches, never from an API call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol

EventType = Literal["ADDED", "MODIFIED", "DELETED"]
EventHandler = Callable[[EventType, dict[str, Any]], None]
# What the port can watch for its consumers (the quota engine, the policy and catalogue stores):
#   resourceclaims       every ResourceClaim in the cluster
#   policy-configmaps    ConfigMaps in the webhook's namespace labelled dra-bridge.io/policy=true
#   catalogue-configmaps ConfigMaps in the webhook's namespace labelled dra-bridge.io/catalogue=true
#   deviceclasses        every DeviceClass (the quota evaluates their selectors)
#   resourceslices       every ResourceSlice (the devices the allocator can hand out)
#   nodes                every Node's labels and allocatable extended resources (node-by-node migration)
Source = Literal[
    "resourceclaims", "policy-configmaps", "catalogue-configmaps", "deviceclasses", "resourceslices", "nodes"
]


class AlreadyExists(Exception):
    """The object exists already (HTTP 409 from the apiserver)."""


class Conflict(Exception):
    """A conditional update lost: the object's resourceVersion changed (HTTP 409)."""


class ClusterPort(Protocol):
    def watch(self, source: Source, handler: EventHandler) -> None:
        """Register ``handler`` for a source, before ``start``: it receives the initial list as ADDED
        events, then every change. Handlers run on the port's watch thread and must be quick."""

    def start(self) -> None:
        """Start the caches and watches (no-op for adapters without any)."""

    def stop(self) -> None:
        """Stop them."""

    def ready(self) -> tuple[bool, str]:
        """Whether every cache has synced, and a short detail for ``/readyz``."""

    def namespaces(self) -> Mapping[str, Mapping[str, str]]:
        """Every Namespace's labels, from cache; ``generation`` changes when any of them does."""

    @property
    def namespace_generation(self) -> int:
        """A counter that changes whenever a Namespace or its labels change."""

    def namespace_labels(self, name: str) -> Mapping[str, str] | None:
        """Labels of a Namespace, ``None`` when unknown."""

    def native_extended_resources(self) -> Mapping[str, str]:
        """Extended resource name -> DeviceClass that serves it natively (``extendedResourceName``)."""

    def get_template(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A ResourceClaimTemplate, from cache where there is one. The object may be the cache's own:
        read it, never modify it; a change to the template in the cluster replaces the object."""

    def create_template(self, template: dict[str, Any]) -> dict[str, Any]:
        """Create a ResourceClaimTemplate; raises ``AlreadyExists``."""

    def managed_templates(self) -> list[dict[str, Any]]:
        """Every ResourceClaimTemplate labelled as managed by dra-bridge."""

    def referenced_templates(self) -> set[tuple[str, str]]:
        """(namespace, template name) pairs that some Pod references."""

    def delete_template(self, namespace: str, name: str, *, uid: str) -> None:
        """Delete a template, only if its uid is still ``uid`` (a precondition)."""

    def get_lease(self, name: str) -> dict[str, Any] | None:
        """A coordination.k8s.io/v1 Lease in the webhook's namespace, read fresh (never cached)."""

    def list_leases(self, label: str) -> list[dict[str, Any]]:
        """Every Lease in the webhook's namespace that carries the label ``label``, read fresh."""

    def delete_lease(self, name: str, *, resource_version: str) -> None:
        """Delete a Lease, only if it is still at ``resource_version`` (gone or changed: nothing)."""

    def put_lease(self, lease: dict[str, Any]) -> dict[str, Any]:
        """Create the Lease (no resourceVersion) or replace it conditionally on its
        ``metadata.resourceVersion``; raises ``Conflict`` when someone else wrote it first."""
