"""The real cluster: the official ``kubernetes`` client, watch-backed caches (the only module importing it).

Objects travel as the plain camelCase dicts the apiserver sends (``json.loads`` of the body; the
generated model classes are never used for reading), so fields this code does not know survive.

One ``Informer`` per resource keeps a cache that the request path reads: a paginated LIST, then a
WATCH from its resourceVersion with bookmarks; it reconnects when the server ends the watch, relists
on 410 Gone (telling subscribers what vanished and what changed meanwhile), and backs off
exponentially on errors. Each runs on a daemon thread. What is cached and watched:

  namespaces             labels only (opt-out labels, tenants); every event bumps ``namespace_generation``
  deviceclasses          ``extendedResourceName`` -> class (KEP-5004 names left alone)
  resourceclaimtemplates managed by dra-bridge, every namespace (the request path reads them)
  resourceclaims         every namespace, slimmed to what subscribers need (the quota ledger)
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
import random
import socket
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.config.config_exception import ConfigException

from webhook.claims import MANAGED_BY, MANAGED_BY_LABEL
from webhook.cluster import AlreadyExists, Conflict, EventHandler, EventType, Source
from webhook.errors import ClusterError

log = logging.getLogger("dra_bridge.cluster")

Key = tuple[str, str]  # (namespace or "", name)
T = TypeVar("T")
Query = Sequence[tuple[str, str]]

RESOURCE_API = "/apis/resource.k8s.io/v1"
POLICY_LABEL = "dra-bridge.io/policy"
CATALOGUE_LABEL = "dra-bridge.io/catalogue"
PAGE_SIZE = 500
# Request-path calls must finish well inside the webhook's own timeout; LIST pages may take longer.
REQUEST_TIMEOUT = (5.0, 10.0)  # (connect, read) seconds
LIST_TIMEOUT = (5.0, 60.0)
# The server ends each watch after a random 5-10 minutes (as client-go's reflector asks), spreading
# reconnects. A read timeout catches half-dead connections; bookmarks arrive about once a minute.
WATCH_SECONDS = (300, 600)
WATCH_READ_TIMEOUT = 150.0
SHORT_WATCH = 1.0  # a watch that ends sooner without an event is treated as an error (backoff, no busy loop)
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
    ("", "pods"): frozenset({"list"}),  # only the template garbage collector, off the request path
    ("resource.k8s.io", "deviceclasses"): frozenset({"list", "watch"}),
    ("resource.k8s.io", "resourceclaims"): frozenset({"list", "watch"}),
    ("resource.k8s.io", "resourceclaimtemplates"): frozenset({"get", "list", "watch", "create", "delete"}),
}
# In the webhook's own namespace only.
NAMESPACE_ACCESS: dict[tuple[str, str], frozenset[str]] = {
    ("", "configmaps"): frozenset({"list", "watch"}),
    ("coordination.k8s.io", "leases"): frozenset({"get", "create", "update"}),
}
# ``dra-bridge report --cluster`` also lists the workloads (for whoever runs it, not the webhook).
REPORT_ACCESS: dict[tuple[str, str], frozenset[str]] = {
    ("", "pods"): frozenset({"list"}),
    ("", "replicationcontrollers"): frozenset({"list"}),
    ("apps", "deployments"): frozenset({"list"}),
    ("apps", "statefulsets"): frozenset({"list"}),
    ("apps", "daemonsets"): frozenset({"list"}),
    ("apps", "replicasets"): frozenset({"list"}),
    ("batch", "jobs"): frozenset({"list"}),
    ("batch", "cronjobs"): frozenset({"list"}),
}


class APIError(ClusterError):
    """The apiserver answered with an error status (``status`` 0: it could not be reached)."""

    def __init__(self, status: int, reason: str, message: str, *, what: str = "") -> None:
        self.status, self.reason, self.message = status, reason, message
        super().__init__(f"{what}: {status} {reason}: {message}" if what else f"{status} {reason}: {message}")


class Expired(Exception):
    """410 Gone: the resourceVersion (or continue token) is too old; relist."""


# -- pure helpers ------------------------------------------------------------------------------
def object_key(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return (meta.get("namespace") or "", meta.get("name") or "")


def resource_version(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


def without_managed_fields(obj: dict[str, Any]) -> dict[str, Any]:
    """The object as the API sent it, minus ``managedFields`` (server-side apply bookkeeping)."""
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        meta.pop("managedFields", None)
    return obj


def slim_claim(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What subscribers need of a ResourceClaim: its identity and spec (no status, no managedFields)."""
    meta = obj.get("metadata") or {}
    return {
        "metadata": {k: meta[k] for k in ("namespace", "name", "uid", "resourceVersion") if k in meta},
        "spec": obj.get("spec") or {},
    }


def slim_namespace(obj: Mapping[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata") or {}
    return {
        "metadata": {
            "name": meta.get("name", ""),
            "resourceVersion": meta.get("resourceVersion", ""),
            "labels": dict(meta.get("labels") or {}),
        }
    }


def relist_event(before: Mapping[str, Any] | None, listed: Mapping[str, Any]) -> EventType | None:
    """What a relist tells subscribers about one listed object they last saw as ``before``: ADDED when
    new, MODIFIED when it changed (another resourceVersion), nothing when it did not (subscribers hold
    it already, and a relist of 100,000 claims should not replay them). What was not listed at all
    is DELETED (``vanished``)."""
    if before is None:
        return "ADDED"
    return "MODIFIED" if resource_version(before) != resource_version(listed) else None


def vanished(cached: Iterable[Key], listed: Collection[Key]) -> list[Key]:
    return [key for key in cached if key not in listed]


def list_item_kind(list_kind: str) -> str:
    return list_kind[: -len("List")] if list_kind.endswith("List") else list_kind


@dataclass
class Backoff:
    """Exponential backoff with jitter: 0.5 s, 1 s, 2 s, ... up to ``maximum``; ``reset`` on success."""

    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0
    jitter: float = 0.2
    attempts: int = 0
    rng: Callable[[], float] = random.random

    def next(self) -> float:
        delay = min(self.maximum, self.initial * self.factor**self.attempts)
        self.attempts += 1
        return min(self.maximum, delay * (1 + self.jitter * self.rng()))

    def reset(self) -> None:
        self.attempts = 0


def parse_watch_line(line: bytes) -> dict[str, Any] | None:
    """One line of a watch stream (``{"type": ..., "object": ...}``); ``None`` for a blank line."""
    line = line.strip()
    if not line:
        return None
    event = json.loads(line)
    if not isinstance(event, dict) or "type" not in event:
        raise ValueError(f"not a watch event: {line[:200]!r}")
    return event


def split_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Reassemble newline-delimited records from arbitrary chunks."""
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        yield from lines
    if buffer.strip():
        yield buffer


# -- caches ------------------------------------------------------------------------------------
class Store:
    """An informer's cache. It keeps its own copies: handlers and callers never share its objects."""

    def __init__(self) -> None:
        self._objects: dict[Key, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self._objects)

    def __contains__(self, key: object) -> bool:
        return key in self._objects

    def view(self) -> Mapping[Key, dict[str, Any]]:
        """The cached objects themselves: read-only, under the informer's lock."""
        return self._objects

    def get(self, key: Key) -> dict[str, Any] | None:
        return self._objects.get(key)

    def put(self, key: Key, obj: dict[str, Any]) -> None:
        old = self._objects.get(key)
        self._objects[key] = self._keep(obj)
        if old is not None:
            self._release(old)

    def pop(self, key: Key) -> None:
        old = self._objects.pop(key, None)
        if old is not None:
            self._release(old)

    def export(self, stored: dict[str, Any]) -> dict[str, Any]:
        """A copy of a cached object that its receiver may keep or change."""
        return copy.deepcopy(stored)

    def _keep(self, obj: dict[str, Any]) -> dict[str, Any]:
        return copy.deepcopy(obj)

    def _release(self, stored: dict[str, Any]) -> None:
        return None


class SpecPool:
    """Interns equal claim specs: claims made from one template share one spec object.

    100,000 claims from a few hundred templates hold a few hundred specs instead of 100,000 (about
    a fifth of the memory). Reference-counted, so the specs of deleted claims do not pile up.
    """

    def __init__(self) -> None:
        self._specs: dict[str, list[Any]] = {}  # canonical JSON -> [spec, references]

    def __len__(self) -> int:
        return len(self._specs)

    @staticmethod
    def canonical(spec: Any) -> str:
        return json.dumps(spec, sort_keys=True, separators=(",", ":"))

    def intern(self, spec: Any) -> Any:
        """The pooled object equal to ``spec`` (a private copy the first time)."""
        key = self.canonical(spec)
        entry = self._specs.get(key)
        if entry is None:
            entry = self._specs[key] = [copy.deepcopy(spec), 0]
        entry[1] += 1
        return entry[0]

    def release(self, spec: Any) -> None:
        key = self.canonical(spec)
        entry = self._specs.get(key)
        if entry is not None:
            entry[1] -= 1
            if entry[1] <= 0:
                del self._specs[key]


class ClaimStore(Store):
    """Slim claims (identity + spec) with interned specs; see ``SpecPool``."""

    def __init__(self) -> None:
        super().__init__()
        self.specs = SpecPool()

    def export(self, stored: dict[str, Any]) -> dict[str, Any]:
        return {"metadata": dict(stored["metadata"]), "spec": copy.deepcopy(stored["spec"])}

    def _keep(self, obj: dict[str, Any]) -> dict[str, Any]:
        meta = dict(obj.get("metadata") or {})
        if "namespace" in meta:
            meta["namespace"] = sys.intern(str(meta["namespace"]))
        return {"metadata": meta, "spec": self.specs.intern(obj.get("spec") or {})}

    def _release(self, stored: dict[str, Any]) -> None:
        self.specs.release(stored["spec"])


# -- transport ---------------------------------------------------------------------------------
class WatchStream(Protocol):
    def __iter__(self) -> Iterator[dict[str, Any]]: ...

    def close(self) -> None: ...


class Transport(Protocol):
    def request(
        self,
        method: str,
        path: str,
        *,
        query: Query = (),
        body: dict[str, Any] | None = None,
        timeout: tuple[float, float] = REQUEST_TIMEOUT,
    ) -> dict[str, Any]: ...

    def watch(self, path: str, *, query: Query) -> WatchStream: ...


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


# -- informer ----------------------------------------------------------------------------------
@dataclass(eq=False)
class Informer:
    """LIST + WATCH one resource into a ``Store``, on a daemon thread, and tell subscribers."""

    name: str
    path: str
    transport: Transport
    label_selector: str | None = None
    slim: Callable[[dict[str, Any]], dict[str, Any]] = without_managed_fields
    store: Store = field(default_factory=Store)
    page_size: int = PAGE_SIZE
    watch_seconds: tuple[int, int] = WATCH_SECONDS
    backoff: Backoff = field(default_factory=Backoff)
    resource_version: str = ""
    relists: int = 0
    _handlers: list[EventHandler] = field(default_factory=list)
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _stopping: threading.Event = field(default_factory=threading.Event)
    _synced: threading.Event = field(default_factory=threading.Event)
    _stream: WatchStream | None = None
    _thread: threading.Thread | None = None

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    def wait_synced(self, timeout: float | None = None) -> bool:
        return self._synced.wait(timeout)

    # -- reading the cache ---------------------------------------------------------------------
    def get(self, key: Key) -> dict[str, Any] | None:
        with self._lock:
            found = self.store.get(key)
            return self.store.export(found) if found is not None else None

    def read(self, reader: Callable[[Mapping[Key, dict[str, Any]]], T]) -> T:
        """Run ``reader`` over the cached objects under the lock; it must not keep or change them."""
        with self._lock:
            return reader(self.store.view())

    def subscribe(self, handler: EventHandler) -> None:
        """Add a handler; what is cached already reaches it first, as ADDED events."""
        with self._lock:
            self._handlers.append(handler)
            for stored in list(self.store.view().values()):
                self._call(handler, "ADDED", self.store.export(stored))

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self.run, name=f"informer-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        stream = self._stream
        if stream is not None:
            stream.close()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
            if not self._thread.is_alive():
                self._thread = None

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                if not self.resource_version:
                    self.relist()
                self.watch_once()
                self.backoff.reset()
            except Expired as expired:
                log.info("%s: %s; relisting", self.name, expired)
                self.resource_version = ""
            except Exception as err:
                if self._stopping.is_set():
                    break
                delay = self.backoff.next()
                log.warning("%s: %s; retrying in %.1fs", self.name, err, delay)
                self._stopping.wait(delay)

    # -- one LIST, one WATCH -------------------------------------------------------------------
    def relist(self) -> None:
        """LIST everything, a page at a time, into the cache, and tell subscribers what changed.

        Each page is applied as it arrives, so memory peaks at the cache plus one page (not twice the
        cache); what the cache holds and the LIST did not return is deleted at the end.
        """
        listed: set[Key] = set()
        version = ""
        changes = 0
        for page in self._pages():
            kind = list_item_kind(str(page.get("kind") or ""))
            with self._lock:
                for raw in page.get("items") or []:
                    if kind:  # list items come without apiVersion/kind; give them what a GET returns
                        raw.setdefault("apiVersion", page.get("apiVersion"))
                        raw.setdefault("kind", kind)
                    obj = self.slim(raw)
                    key = object_key(obj)
                    listed.add(key)
                    event = relist_event(self.store.get(key), obj)
                    if event is not None:
                        self.store.put(key, obj)
                        self._dispatch(event, obj)
                        changes += 1
            version = str((page.get("metadata") or {}).get("resourceVersion") or "")
        with self._lock:
            for key in vanished(list(self.store.view()), listed):
                gone = self.store.get(key)
                self.store.pop(key)
                if gone is not None:
                    self._dispatch("DELETED", self.store.export(gone))
                    changes += 1
            self.resource_version = version
            self.relists += 1
            self._synced.set()
        log.info("%s: listed %d objects at resourceVersion %s (%d changes)", self.name, len(listed), version, changes)

    def _pages(self) -> Iterator[dict[str, Any]]:
        token = ""
        while True:
            query = [("limit", str(self.page_size))]
            if self.label_selector:
                query.append(("labelSelector", self.label_selector))
            if token:
                query.append(("continue", token))
            try:
                page = self.transport.request("GET", self.path, query=query, timeout=LIST_TIMEOUT)
            except APIError as err:
                if err.status == 410:  # the continue token expired: start over
                    raise Expired(str(err)) from err
                raise
            yield page
            token = str((page.get("metadata") or {}).get("continue") or "")
            if not token:
                return

    def watch_once(self) -> None:
        """WATCH from ``resource_version`` until the server ends it (or ``stop``); raises ``Expired``."""
        query = [
            ("watch", "true"),
            ("allowWatchBookmarks", "true"),
            ("resourceVersion", self.resource_version),
            ("timeoutSeconds", str(random.randint(*self.watch_seconds))),
        ]
        if self.label_selector:
            query.append(("labelSelector", self.label_selector))
        started = time.monotonic()
        events = 0
        stream = self.transport.watch(self.path, query=query)
        self._stream = stream
        try:
            if self._stopping.is_set():
                return
            for event in stream:
                self.apply(event)
                events += 1
                self.backoff.reset()
        except urllib3.exceptions.ReadTimeoutError:
            log.debug("%s: no event for %.0fs; watching again", self.name, WATCH_READ_TIMEOUT)
        finally:
            self._stream = None
            stream.close()
        if not events and time.monotonic() - started < SHORT_WATCH and not self._stopping.is_set():
            raise APIError(0, "ShortWatch", "the watch ended at once without an event", what=f"watch {self.path}")

    def apply(self, event: Mapping[str, Any]) -> None:
        """One watch event: update the cache and the resourceVersion, tell subscribers."""
        event_type = str(event.get("type") or "")
        raw = event.get("object") or {}
        if event_type == "ERROR":
            code = int(raw.get("code") or 0)
            if code == 410:
                raise Expired(f"watch: {raw.get('reason') or 'Gone'}: {raw.get('message') or ''}")
            raise APIError(code, str(raw.get("reason") or ""), str(raw.get("message") or ""), what=f"watch {self.path}")
        version = resource_version(raw)
        if event_type == "BOOKMARK":
            if version:
                self.resource_version = version
            return
        obj = self.slim(raw)
        key = object_key(obj)
        with self._lock:
            known = key in self.store
            if event_type == "DELETED":
                self.store.pop(key)
                if known:
                    self._dispatch("DELETED", obj)
            elif event_type in ("ADDED", "MODIFIED"):
                self.store.put(key, obj)
                self._dispatch("MODIFIED" if known else "ADDED", obj)
            if version:
                self.resource_version = version

    def _dispatch(self, event_type: EventType, obj: dict[str, Any]) -> None:
        handlers = self._handlers
        for i, handler in enumerate(handlers):
            # Each handler gets its own object; the first one gets the freshly decoded one.
            self._call(handler, event_type, obj if i == 0 else copy.deepcopy(obj))

    def _call(self, handler: EventHandler, event_type: EventType, obj: dict[str, Any]) -> None:
        try:
            handler(event_type, obj)
        except Exception:
            log.exception("%s: a %s handler failed", self.name, event_type)


# -- the port ----------------------------------------------------------------------------------
class KubeCluster:
    """``ClusterPort`` over a real apiserver."""

    def __init__(self, transport: Transport, *, namespace: str, page_size: int = PAGE_SIZE) -> None:
        self.namespace = namespace
        self.page_size = page_size
        self._transport = transport
        self._namespace_generation = 0
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
        self.policy_configmaps = informer("policy-configmaps", configmaps, label_selector=f"{POLICY_LABEL}=true")
        self.catalogue_configmaps = informer(
            "catalogue-configmaps", configmaps, label_selector=f"{CATALOGUE_LABEL}=true"
        )
        self.informers = (
            self.namespaces_informer,
            self.deviceclasses,
            self.templates,
            self.claims,
            self.policy_configmaps,
            self.catalogue_configmaps,
        )
        self._sources: dict[Source, Informer] = {
            "resourceclaims": self.claims,
            "policy-configmaps": self.policy_configmaps,
            "catalogue-configmaps": self.catalogue_configmaps,
        }
        self.namespaces_informer.subscribe(self._namespace_changed)

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
        found = self.namespaces_informer.get(("", name))
        return found["metadata"]["labels"] if found is not None else None

    def native_extended_resources(self) -> Mapping[str, str]:
        def extended(cached: Mapping[Key, dict[str, Any]]) -> dict[str, str]:
            return {
                dc["spec"]["extendedResourceName"]: name
                for (_, name), dc in sorted(cached.items())
                if (dc.get("spec") or {}).get("extendedResourceName")
            }

        return self.deviceclasses.read(extended)

    # -- templates -----------------------------------------------------------------------------
    def get_template(self, namespace: str, name: str) -> dict[str, Any] | None:
        cached = self.templates.get((namespace, name))
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
