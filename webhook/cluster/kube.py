"""The real cluster: the official ``kubernetes`` client, watch-backed caches (the only module importing it).

Objects travel as the plain camelCase dicts the apiserver sends (``json.loads`` of the body; the
generated model classes are never used for reading), so fields this code does not know survive.

One ``Informer`` (``webhook.cluster.informer``) per resource keeps a cache that the request path
reads; this module gives them their HTTP (``RestTransport``) and joins them into the port. What is
cached and watched:

  namespaces             labels only (opt-out labels, tenants); every event bumps ``namespace_generation``
  deviceclasses          ``extendedResourceName`` -> class (KEP-5004 names left alone); selectors for quota
  resourceclaimtemplates managed by dra-bridge, every namespace (the request path reads them)
  resourceclaims         every namespace, slimmed to what subscribers need (the quota ledger)
  resourceslices         every slice, for the quota's device inventory (reduced to shapes there)
  nodes                  labels and allocatable extended resources (which nodes a device plugin serves)
  configmaps x2          in the webhook's namespace, labelled as policies / catalogue parts

Pods are not cached: ``referenced_templates`` pages through them (500 at a time) and only runs in
the periodic garbage collector, never on the request path. Leases (quota coordination) are read
fresh and written conditionally on their resourceVersion.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.config.config_exception import ConfigException

from webhook.cluster import AlreadyExists, Conflict, EventHandler, EventType, Source
from webhook.cluster.informer import (
    LIST_TIMEOUT,
    PAGE_SIZE,
    REQUEST_TIMEOUT,
    WATCH_READ_TIMEOUT,
    APIError,
    ClaimStore,
    Expired,
    Informer,
    Key,
    Query,
    Transport,
    WatchStream,
    WatchTimeout,
    list_item_kind,
    parse_watch_line,
    slim_claim,
    slim_namespace,
    slim_node,
    split_lines,
    without_managed_fields,
)
from webhook.errors import ClusterError
from webhook.inline import may_block
from webhook.labels import CATALOGUE_LABEL, MANAGED_BY, MANAGED_BY_LABEL, POLICY_LABEL

log = logging.getLogger("dra_bridge.cluster")

T = TypeVar("T")

RESOURCE_API = "/apis/resource.k8s.io/v1"
WORKLOAD_PATHS = (
    "/api/v1/pods",
    "/api/v1/replicationcontrollers",
    "/apis/apps/v1/deployments",
    "/apis/apps/v1/statefulsets",
    "/apis/apps/v1/daemonsets",
    "/apis/apps/v1/replicasets",
    "/apis/batch/v1/jobs",
    "/apis/batch/v1/cronjobs",
)
SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")

# Every API call the webhook makes through this adapter, as RBAC names it: (apiGroup, resource) ->
# verbs. deploy/base/rbac.yaml grants exactly this (a test compares them), and a test of the adapter
# records every call it makes and checks it is listed here.
CLUSTER_ACCESS: dict[tuple[str, str], frozenset[str]] = {
    ("", "namespaces"): frozenset({"list", "watch"}),
    ("", "nodes"): frozenset({"list", "watch"}),
    ("", "pods"): frozenset({"list"}),  # only the template garbage collector, off the request path
    ("resource.k8s.io", "deviceclasses"): frozenset({"list", "watch"}),
    ("resource.k8s.io", "resourceclaims"): frozenset({"list", "watch"}),
    ("resource.k8s.io", "resourceslices"): frozenset({"list", "watch"}),
    ("resource.k8s.io", "resourceclaimtemplates"): frozenset({"get", "list", "watch", "create", "delete"}),
}
# In the webhook's own namespace only.
NAMESPACE_ACCESS: dict[tuple[str, str], frozenset[str]] = {
    ("", "configmaps"): frozenset({"list", "watch"}),
    ("coordination.k8s.io", "leases"): frozenset({"get", "list", "create", "update", "delete"}),
}
# ``dra-bridge report --cluster`` also lists the workloads, and for its fleet section the Nodes,
# ResourceSlices and ResourceClaims in full (for whoever runs it, not the webhook).
REPORT_ACCESS: dict[tuple[str, str], frozenset[str]] = {
    ("", "nodes"): frozenset({"list"}),
    ("resource.k8s.io", "resourceslices"): frozenset({"list"}),
    ("resource.k8s.io", "resourceclaims"): frozenset({"list"}),
    ("", "pods"): frozenset({"list"}),
    ("", "replicationcontrollers"): frozenset({"list"}),
    ("apps", "deployments"): frozenset({"list"}),
    ("apps", "statefulsets"): frozenset({"list"}),
    ("apps", "daemonsets"): frozenset({"list"}),
    ("apps", "replicasets"): frozenset({"list"}),
    ("batch", "jobs"): frozenset({"list"}),
    ("batch", "cronjobs"): frozenset({"list"}),
}


class RestTransport:
    """JSON over the ``kubernetes`` client's ``param_serialize``/``call_api`` (auth, TLS, proxies,
    token refresh), reading raw bodies: no model classes, unknown fields kept."""

    def __init__(self, api_client: k8s_client.ApiClient) -> None:
        self.api_client = api_client

    def _call(
        self,
        method: str,
        path: str,
        *,
        query: Query,
        body: dict[str, Any] | None,
        timeout: tuple[float, float],
        accept: str = "application/json",
    ) -> Any:
        may_block(f"{method} {path}")  # a decision running on the event loop moves to a thread first
        headers = {"Accept": accept}
        if body is not None:
            headers["Content-Type"] = "application/json"
        serialized = self.api_client.param_serialize(
            method=method,
            resource_path=path,
            query_params=list(query),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        _, url, header_params, payload, post_params = serialized
        try:
            return self.api_client.call_api(
                method,
                url,
                header_params=header_params,
                body=payload,
                post_params=post_params,
                _request_timeout=timeout,
            )
        except k8s_client.ApiException as err:  # the client's wrapper for TLS failures
            raise APIError(0, "Unreachable", str(err.reason), what=f"{method} {path}") from err
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise APIError(0, "Unreachable", str(err), what=f"{method} {path}") from err

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Query = (),
        body: dict[str, Any] | None = None,
        timeout: tuple[float, float] = REQUEST_TIMEOUT,
    ) -> dict[str, Any]:
        response = self._call(method, path, query=query, body=body, timeout=timeout)
        try:
            data = response.read()
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise APIError(0, "Unreachable", str(err), what=f"{method} {path}") from err
        if not 200 <= response.status < 300:
            raise _status_error(response.status, data, what=f"{method} {path}")
        decoded: dict[str, Any] = json.loads(data)
        return decoded

    def watch(self, path: str, *, query: Query) -> WatchStream:
        response = self._call("GET", path, query=query, body=None, timeout=(REQUEST_TIMEOUT[0], WATCH_READ_TIMEOUT))
        if not 200 <= response.status < 300:
            data = response.read()
            if response.status == 410:
                raise Expired(f"watch {path}: 410 Gone")
            raise _status_error(response.status, data, what=f"watch {path}")
        return _HttpWatchStream(response.response)


def _status_error(status: int, data: bytes, *, what: str) -> APIError:
    reason, message = "", data.decode(errors="replace")[:500]
    with contextlib.suppress(ValueError, AttributeError):
        body = json.loads(data)
        reason, message = str(body.get("reason") or ""), str(body.get("message") or message)
    return APIError(status, reason, message, what=what)


class _HttpWatchStream:
    """The events of one streaming HTTP response; ``close`` unblocks a reader on another thread."""

    def __init__(self, response: urllib3.response.BaseHTTPResponse) -> None:
        self._response = response
        self._closed = False

    def __iter__(self) -> Iterator[dict[str, Any]]:
        try:
            for line in split_lines(self._response.stream(amt=None, decode_content=True)):
                event = parse_watch_line(line)
                if event is not None:
                    yield event
        except urllib3.exceptions.ReadTimeoutError as err:
            raise WatchTimeout(str(err)) from None
        except (urllib3.exceptions.HTTPError, OSError, ValueError):
            if not self._closed:
                raise

    def close(self) -> None:
        self._closed = True
        connection = getattr(self._response, "connection", None)
        sock = getattr(connection, "sock", None)
        if sock is not None:
            # Shut the socket down rather than close the response: a reader blocked in ssl.read
            # wakes up at once, where close() would wait for the lock that read holds.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
        with contextlib.suppress(Exception):
            self._response.close()


# -- the port ------------------------------------------------------------------------------------
@dataclass(eq=False)
class KubeCluster:
    """``ClusterPort`` over a real apiserver."""

    def __init__(self, transport: Transport, *, namespace: str, page_size: int = PAGE_SIZE) -> None:
        self.namespace = namespace
        self.page_size = page_size
        self._transport = transport
        self._namespace_generation = 0
        self._deviceclass_generation = 0
        # (generation it was built at, extended resource name -> DeviceClass): read twice per Pod review
        self._native: tuple[int, Mapping[str, str]] = (-1, MappingProxyType({}))
        selector = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
        configmaps = f"/api/v1/namespaces/{namespace}/configmaps"

        def informer(name: str, path: str, **kwargs: Any) -> Informer:
            return Informer(name=name, path=path, transport=transport, page_size=page_size, **kwargs)

        self.namespaces_informer = informer("namespaces", "/api/v1/namespaces", slim=slim_namespace)
        self.deviceclasses = informer("deviceclasses", f"{RESOURCE_API}/deviceclasses")
        self.templates = informer(
            "resourceclaimtemplates", f"{RESOURCE_API}/resourceclaimtemplates", label_selector=selector
        )
        self.claims = informer("resourceclaims", f"{RESOURCE_API}/resourceclaims", slim=slim_claim, store=ClaimStore())
        self.resourceslices = informer("resourceslices", f"{RESOURCE_API}/resourceslices")
        self.nodes = informer("nodes", "/api/v1/nodes", slim=slim_node)
        self.policy_configmaps = informer("policy-configmaps", configmaps, label_selector=f"{POLICY_LABEL}=true")
        self.catalogue_configmaps = informer(
            "catalogue-configmaps", configmaps, label_selector=f"{CATALOGUE_LABEL}=true"
        )
        self.informers = (
            self.namespaces_informer,
            self.deviceclasses,
            self.templates,
            self.claims,
            self.resourceslices,
            self.nodes,
            self.policy_configmaps,
            self.catalogue_configmaps,
        )
        self._sources: dict[Source, Informer] = {
            "resourceclaims": self.claims,
            "policy-configmaps": self.policy_configmaps,
            "catalogue-configmaps": self.catalogue_configmaps,
            "deviceclasses": self.deviceclasses,
            "resourceslices": self.resourceslices,
            "nodes": self.nodes,
        }
        self.namespaces_informer.subscribe(self._namespace_changed)
        self.deviceclasses.subscribe(self._deviceclass_changed)

    @classmethod
    def from_environment(cls, namespace: str, *, kubeconfig: str | None = None) -> KubeCluster:
        """In-cluster credentials inside a Pod, else the kubeconfig (``KUBECONFIG`` or ~/.kube/config)."""
        configuration = k8s_client.Configuration()
        try:
            if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST") and SERVICE_ACCOUNT_TOKEN.exists():
                k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            else:
                path = kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
                k8s_config.load_kube_config(config_file=path, client_configuration=configuration)  # type: ignore[no-untyped-call]
        except (ConfigException, OSError) as err:
            raise ClusterError(f"no Kubernetes credentials: {err}") from err
        # The request path runs on up to a few dozen threads; watches use their own clients.
        configuration.connection_pool_maxsize = 32
        return cls(_PerInformerTransport(configuration), namespace=namespace)

    # -- lifecycle -----------------------------------------------------------------------------
    def watch(self, source: Source, handler: EventHandler) -> None:
        self._sources[source].subscribe(handler)

    def start(self) -> None:
        for informer in self.informers:
            informer.start()

    def stop(self) -> None:
        for informer in self.informers:
            informer.stop()
        deadline = time.monotonic() + 5.0
        for informer in self.informers:
            informer.join(max(0.0, deadline - time.monotonic()))

    def ready(self) -> tuple[bool, str]:
        waiting = [i.name for i in self.informers if not i.synced]
        if waiting:
            return False, "waiting for: " + ", ".join(waiting)
        return True, "synced " + ", ".join(f"{i.name} ({len(i.store)})" for i in self.informers)

    def wait_synced(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        return all(i.wait_synced(max(0.0, deadline - time.monotonic())) for i in self.informers)

    # -- namespaces and classes ------------------------------------------------------------------
    def _namespace_changed(self, _event: EventType, _namespace: dict[str, Any]) -> None:
        self._namespace_generation += 1  # runs under the informer's lock

    def namespaces(self) -> Mapping[str, Mapping[str, str]]:
        return self.namespaces_informer.read(
            lambda cached: {name: dict(ns["metadata"]["labels"]) for (_, name), ns in cached.items()}
        )

    @property
    def namespace_generation(self) -> int:
        return self._namespace_generation

    def namespace_labels(self, name: str) -> Mapping[str, str] | None:
        # Read three times per Pod review: the labels copied, not the whole cached Namespace.
        found = self.namespaces_informer.peek(("", name))
        return dict(found["metadata"]["labels"]) if found is not None else None

    def _deviceclass_changed(self, _event: EventType, _deviceclass: dict[str, Any]) -> None:
        self._deviceclass_generation += 1  # runs under the informer's lock

    def native_extended_resources(self) -> Mapping[str, str]:
        """Built once per change of the DeviceClasses (read-only): the generation is read before
        the classes, so a change while building leaves a map that the next call builds again."""
        generation = self._deviceclass_generation
        built, native = self._native
        if built == generation:
            return native

        def extended(cached: Mapping[Key, dict[str, Any]]) -> dict[str, str]:
            return {
                dc["spec"]["extendedResourceName"]: name
                for (_, name), dc in sorted(cached.items())
                if (dc.get("spec") or {}).get("extendedResourceName")
            }

        native = MappingProxyType(self.deviceclasses.read(extended))
        self._native = (generation, native)
        return native

    # -- templates -----------------------------------------------------------------------------
    def get_template(self, namespace: str, name: str) -> dict[str, Any] | None:
        cached = self.templates.peek((namespace, name))  # read-only (the port's contract): no copy per Pod
        if cached is not None:
            return cached
        # Not (yet) in the cache: another replica may have created it moments ago, or it is not ours.
        try:
            return without_managed_fields(self._transport.request("GET", _template_path(namespace, name)))
        except APIError as err:
            if err.status == 404:
                return None
            raise

    def create_template(self, template: dict[str, Any]) -> dict[str, Any]:
        meta = template["metadata"]
        body = {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate", **template}
        try:
            return without_managed_fields(self._transport.request("POST", _template_path(meta["namespace"]), body=body))
        except APIError as err:
            if err.status == 409:
                raise AlreadyExists(
                    f"resourceclaimtemplates {meta['namespace']}/{meta['name']}: {err.message}"
                ) from err
            raise

    def managed_templates(self) -> list[dict[str, Any]]:
        def managed(cached: Mapping[Key, dict[str, Any]]) -> list[dict[str, Any]]:
            return [
                copy.deepcopy(t)
                for t in cached.values()
                if ((t.get("metadata") or {}).get("labels") or {}).get(MANAGED_BY_LABEL) == MANAGED_BY
            ]

        return self.templates.read(managed)

    def referenced_templates(self) -> set[tuple[str, str]]:
        return {
            ((pod.get("metadata") or {}).get("namespace") or "", claim["resourceClaimTemplateName"])
            for pod in self.list_all("/api/v1/pods")
            for claim in (pod.get("spec") or {}).get("resourceClaims") or []
            if claim.get("resourceClaimTemplateName")
        }

    def list_workloads(self) -> Iterator[dict[str, Any]]:
        """Every Pod and Pod-template owner in the cluster (for ``dra-bridge report --cluster``), as
        the API returns them with ``apiVersion``/``kind`` set; streamed a page at a time."""
        for path in WORKLOAD_PATHS:
            yield from self.list_all(path)

    # The fleet (``report --cluster``): whole objects, paged, where the caches keep slimmed ones.
    def list_nodes(self) -> Iterator[dict[str, Any]]:
        return self.list_all("/api/v1/nodes")

    def list_resource_slices(self) -> Iterator[dict[str, Any]]:
        return self.list_all(f"{RESOURCE_API}/resourceslices")

    def list_claims(self) -> Iterator[dict[str, Any]]:
        """ResourceClaims with their ``status.allocation`` (the cache drops status)."""
        return self.list_all(f"{RESOURCE_API}/resourceclaims")

    def list_all(self, path: str) -> Iterator[dict[str, Any]]:
        """A paginated LIST (``page_size`` a page, continue tokens), item by item, off the request path."""
        token = ""
        while True:
            query = [("limit", str(self.page_size))]
            if token:
                query.append(("continue", token))
            page = self._transport.request("GET", path, query=query, timeout=LIST_TIMEOUT)
            kind = list_item_kind(str(page.get("kind") or ""))
            for item in page.get("items") or []:
                item.setdefault("apiVersion", page.get("apiVersion"))
                item.setdefault("kind", kind)
                yield without_managed_fields(item)
            token = str((page.get("metadata") or {}).get("continue") or "")
            if not token:
                return

    def delete_template(self, namespace: str, name: str, *, uid: str) -> None:
        options = {"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": {"uid": uid}}
        try:
            self._transport.request("DELETE", _template_path(namespace, name), body=options)
        except APIError as err:
            if err.status in (404, 409):  # gone already, or replaced by a template of another uid
                return
            raise

    # -- leases (quota coordination between replicas) ------------------------------------------
    def get_lease(self, name: str) -> dict[str, Any] | None:
        try:
            return without_managed_fields(self._transport.request("GET", _lease_path(self.namespace, name)))
        except APIError as err:
            if err.status == 404:
                return None
            raise

    def list_leases(self, label: str) -> list[dict[str, Any]]:
        found = self._transport.request(
            "GET", _lease_path(self.namespace), query=[("labelSelector", label), ("limit", "500")], timeout=LIST_TIMEOUT
        )
        return [without_managed_fields(item) for item in found.get("items") or []]

    def delete_lease(self, name: str, *, resource_version: str) -> None:
        options = {"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": {"resourceVersion": resource_version}}
        try:
            self._transport.request("DELETE", _lease_path(self.namespace, name), body=options)
        except APIError as err:
            if err.status in (404, 409):  # gone already, or renewed since it was read
                return
            raise

    def put_lease(self, lease: dict[str, Any]) -> dict[str, Any]:
        """POST without a resourceVersion, else PUT conditional on it; losing either race is ``Conflict``."""
        meta = lease["metadata"]
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", **lease}
        body["metadata"] = {**meta, "namespace": self.namespace}
        try:
            if meta.get("resourceVersion"):
                written = self._transport.request("PUT", _lease_path(self.namespace, meta["name"]), body=body)
            else:
                written = self._transport.request("POST", _lease_path(self.namespace), body=body)
        except APIError as err:
            # 409: created or updated by someone else first; 404: deleted since it was read.
            if err.status in (404, 409):
                raise Conflict(f"leases {self.namespace}/{meta['name']}: {err.message}") from err
            raise
        return without_managed_fields(written)


def _lease_path(namespace: str, name: str | None = None) -> str:
    path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
    return f"{path}/{name}" if name else path


def _template_path(namespace: str, name: str | None = None) -> str:
    path = f"{RESOURCE_API}/namespaces/{namespace}/resourceclaimtemplates"
    return f"{path}/{name}" if name else path


class _PerInformerTransport(RestTransport):
    """One ``ApiClient`` for requests, and a separate one for each long-lived watch, so watches
    never hold the request path's pooled connections."""

    def __init__(self, configuration: k8s_client.Configuration) -> None:
        super().__init__(k8s_client.ApiClient(configuration))
        self._configuration = configuration
        self._watch_clients: dict[str, k8s_client.ApiClient] = {}
        self._lock = threading.Lock()

    def watch(self, path: str, *, query: Query) -> WatchStream:
        selector = dict(query).get("labelSelector", "")
        with self._lock:
            api_client = self._watch_clients.get(path + selector)
            if api_client is None:
                api_client = self._watch_clients[path + selector] = k8s_client.ApiClient(self._configuration)
        return RestTransport(api_client).watch(path, query=query)
