"""The one port to the cluster.

Everything that reads or writes Kubernetes objects goes through ``ClusterPort``. Two adapters:
``webhook.cluster.memory.InMemoryCluster`` (the embedded default and tests) and
``webhook.cluster.kube.KubeCluster`` (the ``kubernetes`` client with watch-backed caches; the only
module that imports it). Reads on the request path come from caches, never from an API call.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol


class AlreadyExists(Exception):
    """The object exists already (HTTP 409 from the apiserver)."""


class ClusterPort(Protocol):
    def ready(self) -> tuple[bool, str]:
        """Whether every cache has synced, and a short detail for ``/readyz``."""

    def namespace_labels(self, name: str) -> Mapping[str, str] | None:
        """Labels of a Namespace, ``None`` when unknown."""

    def native_extended_resources(self) -> Mapping[str, str]:
        """Extended resource name -> DeviceClass that serves it natively (``extendedResourceName``)."""

    def get_template(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A ResourceClaimTemplate, from cache where there is one."""

    def create_template(self, template: dict[str, Any]) -> dict[str, Any]:
        """Create a ResourceClaimTemplate; raises ``AlreadyExists``."""

    def managed_templates(self) -> list[dict[str, Any]]:
        """Every ResourceClaimTemplate labelled as managed by dra-bridge."""

    def referenced_templates(self) -> set[tuple[str, str]]:
        """(namespace, template name) pairs that some Pod references."""

    def delete_template(self, namespace: str, name: str, *, uid: str) -> None:
        """Delete a template, only if its uid is still ``uid`` (a precondition)."""
