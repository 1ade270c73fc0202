"""The Kubernetes adapter without a cluster: pure helpers, and the informer and port driven through a
fake transport (scripted LIST pages and watch streams). tests/e2e proves the same against a real
apiserver."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from webhook.cluster import AlreadyExists, Conflict
from webhook.cluster.informer import (
    APIError,
    Backoff,
    ClaimStore,
    Expired,
    Informer,
    SpecPool,
    Store,
    parse_watch_line,
    relist_event,
    slim_claim,
    slim_namespace,
    split_lines,
    vanished,
    without_managed_fields,
)
from webhook.cluster.kube import RESOURCE_API, WORKLOAD_PATHS, KubeCluster
from webhook.errors import ClusterError
from webhook.labels import REPLICA_LABEL

Event = tuple[str, dict[str, Any]]


def obj(name: str, rv: str = "1", *, namespace: str = "ns", **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "resourceVersion": rv}
    if namespace:
        meta["namespace"] = namespace
    meta.update(extra.pop("metadata", {}))
    return {"metadata": meta, **extra}


def claim(name: str, rv: str = "1", *, count: int = 1, namespace: str = "ns") -> dict[str, Any]:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{name}",
            "resourceVersion": rv,
            "ownerReferences": [{"kind": "Pod", "name": "p"}],
            "managedFields": [{"manager": "kube-controller-manager"}],
        },
        "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "c", "count": count}}]}},
        "status": {"allocation": {"devices": {"results": [{"device": "gpu-0"}]}}},
    }


# -- fakes -------------------------------------------------------------------------------------
class FakeStream:
    """A scripted watch: yields its events, then either ends (the server's timeout) or, with
    ``block=True``, waits until ``close`` (as a live watch does)."""

    def __init__(self, events: list[dict[str, Any]], *, block: bool = False) -> None:
        self.events = events
        self.block = block
        self.closed = threading.Event()
        self.waiting = threading.Event()  # the reader is blocked on the open watch
        self.timed_out = False  # a blocking watch ran out on its own instead of being closed

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for event in self.events:
            if self.closed.is_set():
                return
            yield event
        if self.block:
            self.waiting.set()
            self.timed_out = not self.closed.wait(10)

    def close(self) -> None:
        self.closed.set()


class FakeTransport:
    """Collections served as paginated LISTs, single objects, recorded writes, scripted watches."""

    def __init__(self) -> None:
        self.collections: dict[str, list[dict[str, Any]]] = {}
        self.list_rv: dict[str, str] = {}
        self.objects: dict[str, dict[str, Any]] = {}
        self.watches: dict[str, list[FakeStream | Exception]] = {}
        self.errors: dict[tuple[str, str], APIError] = {}
        self.calls: list[tuple[str, str, dict[str, str], dict[str, Any] | None]] = []
        self.expire_continue = False
        self.watch_queries: list[dict[str, str]] = []
        self.opened: list[FakeStream] = []  # every watch stream handed out

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Any = (),
        body: dict[str, Any] | None = None,
        timeout: tuple[float, float] = (1.0, 1.0),
    ) -> dict[str, Any]:
        params = dict(query)
        self.calls.append((method, path, params, copy.deepcopy(body)))
        if (method, path) in self.errors:
            raise self.errors[(method, path)]
        if method == "GET" and path in self.collections:
            return self._page(path, params)
        if method == "GET":
            if path not in self.objects:
                raise APIError(404, "NotFound", f"{path} not found")
            return copy.deepcopy(self.objects[path])
        if method in ("POST", "PUT"):
            created = copy.deepcopy(body or {})
            if method == "POST":
                created["metadata"]["uid"] = "new-uid"
            created["metadata"]["resourceVersion"] = str(int(created["metadata"].get("resourceVersion") or 0) + 1)
            created["metadata"]["managedFields"] = [{"manager": "x"}]
            return created
        return {"kind": "Status", "status": "Success"}

    def _page(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        items = self.collections[path]
        if "labelSelector" in params:
            key, equals, value = params["labelSelector"].partition("=")
            items = [
                i
                for i in items
                if (i["metadata"].get("labels") or {}).get(key) == value
                or (not equals and key in (i["metadata"].get("labels") or {}))  # an existence selector
            ]
        start = int(params.get("continue") or 0)
        if start and self.expire_continue:
            raise APIError(410, "Expired", "continue token expired")
        limit = int(params["limit"])
        chunk = items[start : start + limit]
        more = start + limit < len(items)
        meta = {"resourceVersion": self.list_rv.get(path, "100"), **({"continue": str(start + limit)} if more else {})}
        return {"apiVersion": "v1", "kind": "ThingList", "metadata": meta, "items": copy.deepcopy(chunk)}

    def watch(self, path: str, *, query: Any) -> FakeStream:
        self.watch_queries.append(dict(query))
        script = self.watches.get(path) or []
        if not script:
            self.opened.append(FakeStream([], block=True))
            return self.opened[-1]
        step = script.pop(0)
        if isinstance(step, Exception):
            raise step
        self.opened.append(step)
        return step


def recorder() -> tuple[list[Event], Callable[[str, dict[str, Any]], None]]:
    seen: list[Event] = []

    def handler(event_type: str, o: dict[str, Any]) -> None:
        seen.append((event_type, o))

    return seen, handler


def names(events: list[Event]) -> list[tuple[str, str]]:
    return [(t, o["metadata"]["name"]) for t, o in events]


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


# -- pure helpers ------------------------------------------------------------------------------
def test_relist_event_reports_new_and_changed_objects_only() -> None:
    assert relist_event(None, obj("new")) == "ADDED"
    assert relist_event(obj("a", "5"), obj("a", "9")) == "MODIFIED"
    assert relist_event(obj("a", "5"), obj("a", "5")) is None  # subscribers hold it already
    assert vanished([("ns", "a"), ("ns", "gone")], {("ns", "a"), ("ns", "new")}) == [("ns", "gone")]


def test_slim_claim_keeps_identity_and_spec_only() -> None:
    slim = slim_claim(claim("c1", "7"))
    assert slim == {
        "metadata": {"namespace": "ns", "name": "c1", "resourceVersion": "7"},
        "spec": claim("c1")["spec"],
    }


def test_slim_namespace_keeps_labels() -> None:
    ns = {"metadata": {"name": "a", "resourceVersion": "3", "labels": {"x": "y"}, "uid": "u"}, "spec": {}}
    assert slim_namespace(ns) == {"metadata": {"name": "a", "resourceVersion": "3", "labels": {"x": "y"}}}
    assert slim_namespace({"metadata": {"name": "b"}})["metadata"]["labels"] == {}


def test_without_managed_fields_keeps_unknown_fields() -> None:
    o = {"metadata": {"name": "t", "managedFields": [{}], "futureField": 1}, "spec": {"newThing": {"a": 1}}}
    assert without_managed_fields(o) == {"metadata": {"name": "t", "futureField": 1}, "spec": {"newThing": {"a": 1}}}


def test_backoff_doubles_up_to_the_maximum_and_resets() -> None:
    backoff = Backoff(initial=0.5, maximum=4.0, rng=lambda: 0.0)
    assert [backoff.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    backoff.reset()
    assert backoff.next() == 0.5
    jittered = Backoff(initial=1.0, maximum=30.0, jitter=0.2, rng=lambda: 1.0)
    assert jittered.next() == pytest.approx(1.2)


def test_split_lines_reassembles_records_across_chunks() -> None:
    chunks = [b'{"type":"ADD', b'ED","object":{}}\n{"type":"BOOK', b'MARK","object":{}}\n\n', b'{"type":"X"}']
    assert list(split_lines(chunks)) == [
        b'{"type":"ADDED","object":{}}',
        b'{"type":"BOOKMARK","object":{}}',
        b"",
        b'{"type":"X"}',
    ]
    assert parse_watch_line(b'{"type":"ADDED","object":{"a":1}}\r') == {"type": "ADDED", "object": {"a": 1}}
    assert parse_watch_line(b"  ") is None
    with pytest.raises(ValueError):
        parse_watch_line(b"[1]")


def test_spec_pool_shares_equal_specs_and_forgets_unused_ones() -> None:
    pool = SpecPool()
    a = pool.intern({"devices": {"requests": [{"name": "gpu", "count": 1}]}})
    b = pool.intern({"devices": {"requests": [{"count": 1, "name": "gpu"}]}})  # same content, other key order
    assert a is b and len(pool) == 1
    pool.release(a)
    assert len(pool) == 1
    pool.release(b)
    assert len(pool) == 0


def test_claim_store_interns_specs_and_exports_private_copies() -> None:
    store = ClaimStore()
    for name in ("c1", "c2", "c3"):
        store.put(("ns", name), slim_claim(claim(name)))
    store.put(("ns", "big"), slim_claim(claim("big", count=4)))
    assert len(store) == 4 and len(store.specs) == 2
    assert store.get(("ns", "c1"))["spec"] is store.get(("ns", "c2"))["spec"]  # type: ignore[index]
    exported = store.export(store.get(("ns", "c1")))  # type: ignore[arg-type]
    exported["spec"]["devices"]["requests"][0]["exactly"]["count"] = 99
    assert store.get(("ns", "c2"))["spec"]["devices"]["requests"][0]["exactly"]["count"] == 1  # type: ignore[index]
    assert store.get(("ns", "c1"))["metadata"] == {"namespace": "ns", "name": "c1", "resourceVersion": "1"}  # type: ignore[index]
    for name in ("d1", "d2"):
        namespace = "".join(["team", "-b"])  # a new string each time, as a decoded watch event has
        store.put((namespace, name), slim_claim(claim(name, namespace=namespace)))
    assert len({id(key[0]) for key in store.cached_keys() if key[0] == "team-b"}) == 1  # one string per namespace
    store.pop(("team-b", "d1"))
    store.pop(("team-b", "d2"))
    with pytest.raises(TypeError):
        store.view()
    store.pop(("ns", "big"))
    store.put(("ns", "c1"), slim_claim(claim("c1", "2", count=2)))  # replaced: its old spec is released
    assert len(store.specs) == 2
    for name in ("c1", "c2", "c3"):
        store.pop(("ns", name))
    assert len(store.specs) == 0


def test_store_keeps_its_own_copy() -> None:
    store = Store()
    original = obj("a", spec={"x": 1})
    store.put(("ns", "a"), original)
    original["spec"]["x"] = 2
    assert store.get(("ns", "a"))["spec"] == {"x": 1}  # type: ignore[index]


# -- the informer ------------------------------------------------------------------------------
PATH = "/apis/example/v1/things"


def informer(transport: FakeTransport, **kwargs: Any) -> Informer:
    kwargs.setdefault("page_size", 2)
    return Informer(
        name="things", path=PATH, transport=transport, backoff=Backoff(initial=0.001, maximum=0.01), **kwargs
    )


def test_relist_pages_through_the_collection_and_announces_everything_as_added() -> None:
    transport = FakeTransport()
    transport.collections[PATH] = [obj(f"o{i}", str(i)) for i in range(5)]
    transport.list_rv[PATH] = "42"
    inf = informer(transport)
    seen, handler = recorder()
    inf.subscribe(handler)
    assert not inf.synced
    inf.relist()
    assert inf.synced and inf.resource_version == "42"
    assert names(seen) == [("ADDED", f"o{i}") for i in range(5)]
    assert [c[2].get("continue") for c in transport.calls] == [None, "2", "4"]
    assert all(c[2]["limit"] == "2" for c in transport.calls)
    assert seen[0][1]["kind"] == "Thing" and seen[0][1]["apiVersion"] == "v1"  # as a GET returns it


def test_relist_sends_the_label_selector() -> None:
    transport = FakeTransport()
    transport.collections[PATH] = [obj("a", metadata={"labels": {"k": "v"}}), obj("b")]
    inf = informer(transport, label_selector="k=v")
    inf.relist()
    assert inf.read(lambda cached: sorted(cached)) == [("ns", "a")]


def test_an_expired_continue_token_means_relist_from_scratch() -> None:
    transport = FakeTransport()
    transport.collections[PATH] = [obj(f"o{i}") for i in range(3)]
    transport.expire_continue = True
    with pytest.raises(Expired):
        informer(transport).relist()


def test_watch_events_update_cache_version_and_subscribers() -> None:
    inf = informer(FakeTransport())
    seen, handler = recorder()
    inf.subscribe(handler)
    inf.apply({"type": "ADDED", "object": obj("a", "2")})
    inf.apply({"type": "ADDED", "object": obj("a", "3")})  # already known: a change for subscribers
    inf.apply({"type": "MODIFIED", "object": obj("b", "4")})  # never seen: new for subscribers
    inf.apply({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "5"}}})
    assert inf.resource_version == "5"
    inf.apply({"type": "DELETED", "object": obj("a", "6")})
    inf.apply({"type": "DELETED", "object": obj("never-seen", "7")})  # nothing to tell
    assert names(seen) == [("ADDED", "a"), ("MODIFIED", "a"), ("ADDED", "b"), ("DELETED", "a")]
    assert inf.resource_version == "7"
    assert inf.get(("ns", "a")) is None and inf.get(("ns", "b")) == obj("b", "4")


def test_watch_error_events() -> None:
    inf = informer(FakeTransport())
    with pytest.raises(Expired):
        inf.apply({"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}})
    with pytest.raises(APIError) as err:
        inf.apply({"type": "ERROR", "object": {"kind": "Status", "code": 500, "message": "boom"}})
    assert err.value.status == 500


def test_a_failing_handler_does_not_stop_the_others() -> None:
    inf = informer(FakeTransport())
    seen, handler = recorder()

    def broken(_t: str, _o: dict[str, Any]) -> None:
        raise RuntimeError("bug")

    inf.subscribe(broken)
    inf.subscribe(handler)
    inf.apply({"type": "ADDED", "object": obj("a")})
    assert names(seen) == [("ADDED", "a")]


def test_each_handler_gets_its_own_copy() -> None:
    inf = informer(FakeTransport())
    first, h1 = recorder()
    second, h2 = recorder()
    inf.subscribe(h1)
    inf.subscribe(h2)
    inf.apply({"type": "ADDED", "object": obj("a", spec={"x": 1})})
    first[0][1]["spec"]["x"] = 2
    assert second[0][1]["spec"] == {"x": 1} and inf.get(("ns", "a"))["spec"] == {"x": 1}  # type: ignore[index]


def test_relist_after_gone_tells_subscribers_what_vanished_and_changed() -> None:
    transport = FakeTransport()
    transport.collections[PATH] = [obj("stays", "1"), obj("changes", "1"), obj("vanishes", "1")]
    inf = informer(transport)
    seen, handler = recorder()
    inf.subscribe(handler)
    inf.relist()
    seen.clear()
    transport.collections[PATH] = [obj("stays", "1"), obj("changes", "8"), obj("appears", "9")]
    inf.relist()
    assert names(seen) == [("MODIFIED", "changes"), ("ADDED", "appears"), ("DELETED", "vanishes")]
    assert seen[2][1]["metadata"] == obj("vanishes", "1")["metadata"]  # the last state subscribers knew
    assert inf.read(lambda cached: sorted(n for _, n in cached)) == ["appears", "changes", "stays"]


def test_late_subscribers_get_the_cache_as_added_first() -> None:
    transport = FakeTransport()
    transport.collections[PATH] = [obj("a"), obj("b")]
    inf = informer(transport)
    inf.relist()
    seen, handler = recorder()
    inf.subscribe(handler)
    assert sorted(names(seen)) == [("ADDED", "a"), ("ADDED", "b")]
    seen[0][1]["metadata"]["name"] = "changed by the subscriber"
    assert inf.read(lambda cached: sorted(n for _, n in cached)) == ["a", "b"]


def test_run_lists_watches_reconnects_relists_on_gone_and_backs_off_on_errors() -> None:
    transport = FakeTransport()
    transport.collections[PATH] = [obj("a", "1")]
    transport.list_rv[PATH] = "10"  # every LIST answers at 10: after the relist, watch from 10 again
    transport.watches[PATH] = [
        FakeStream([{"type": "ADDED", "object": obj("b", "11")}]),  # ends: the server's timeout
        APIError(0, "Unreachable", "connection refused"),  # backoff, then watch again from 11
        FakeStream([{"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "12"}}}]),
        FakeStream([{"type": "ERROR", "object": {"code": 410, "reason": "Expired"}}]),  # relist
    ]
    inf = informer(transport)
    seen, handler = recorder()
    inf.subscribe(handler)
    inf.start()
    try:
        wait_until(lambda: inf.relists == 2 and len(transport.watch_queries) >= 5)
    finally:
        inf.stop()
        inf.join(2)
    assert not inf._thread
    # the retry after the error resumes from 11; after 410 the relist starts over from its own version
    transport_rvs = [q["resourceVersion"] for q in transport.watch_queries[:5]]
    assert transport_rvs == ["10", "11", "11", "12", "10"]
    assert all(q["allowWatchBookmarks"] == "true" and q["watch"] == "true" for q in transport.watch_queries)
    assert names(seen)[:2] == [("ADDED", "a"), ("ADDED", "b")]
    assert ("DELETED", "b") in names(seen)  # b is not in the relist: it vanished while the watch was gone


def test_a_broken_watch_makes_the_cache_unsynced_until_it_resumes_or_relists() -> None:
    """While a watch is down (the apiserver restarting) events may be missed: the informer says so,
    and readiness and decisions wait, until the watch resumes from its resourceVersion or, on 410
    Gone, until the relist is done."""
    transport = FakeTransport()
    transport.collections[PATH] = [obj("a", "1")]
    transport.list_rv[PATH] = "10"
    resumed = FakeStream([], block=True)
    transport.watches[PATH] = [APIError(0, "Unreachable", "connection refused"), resumed]
    inf = Informer(name="things", path=PATH, transport=transport, backoff=Backoff(initial=0.3, maximum=0.3, jitter=0))
    inf.start()
    try:
        wait_until(lambda: len(transport.watch_queries) >= 1)
        wait_until(lambda: not inf.synced)  # the error: backing off, not synced
        assert not resumed.waiting.is_set()
        wait_until(resumed.waiting.is_set)  # watching again from 10: synced
        assert inf.synced
        assert transport.watch_queries[-1]["resourceVersion"] == "10"
    finally:
        inf.stop()
        inf.join(2)


def test_run_retries_a_failing_list_with_backoff() -> None:
    transport = FakeTransport()
    transport.collections[PATH] = [obj("a")]
    transport.errors[("GET", PATH)] = APIError(503, "ServiceUnavailable", "etcd")
    inf = informer(transport)
    inf.start()
    try:
        wait_until(lambda: len(transport.calls) >= 3)
        assert not inf.synced
        del transport.errors[("GET", PATH)]
        assert inf.wait_synced(5)
    finally:
        inf.stop()
        inf.join(2)


def test_stop_closes_the_open_watch_at_once() -> None:
    transport = FakeTransport()
    transport.collections[PATH] = []
    stream = FakeStream([], block=True)
    transport.watches[PATH] = [stream]
    inf = informer(transport)
    inf.start()
    wait_until(stream.waiting.is_set)  # the informer is inside the open watch
    inf.stop()
    assert stream.closed.is_set()  # closed by stop() itself, before it returns
    inf.join(2)
    assert inf._thread is None
    assert not stream.timed_out  # the watch ended because it was closed, not by running out


# -- the port ----------------------------------------------------------------------------------
TEMPLATES = "/apis/resource.k8s.io/v1/resourceclaimtemplates"
MANAGED = {"app.kubernetes.io/managed-by": "dra-bridge"}


def cluster_with(transport: FakeTransport) -> KubeCluster:
    for path in (
        "/api/v1/namespaces",
        "/apis/resource.k8s.io/v1/deviceclasses",
        TEMPLATES,
        "/apis/resource.k8s.io/v1/resourceclaims",
        "/apis/resource.k8s.io/v1/resourceslices",
        "/api/v1/nodes",
        "/api/v1/namespaces/dra-bridge/configmaps",
    ):
        transport.collections.setdefault(path, [])
    return KubeCluster(transport, namespace="dra-bridge", page_size=2)


def synced(transport: FakeTransport) -> KubeCluster:
    cluster = cluster_with(transport)
    for inf in cluster.informers:
        inf.relist()
    return cluster


def template(name: str, namespace: str = "team-a", uid: str = "u1") -> dict[str, Any]:
    return obj(name, namespace=namespace, metadata={"labels": dict(MANAGED), "uid": uid}, spec={"spec": {}})


def test_ready_names_the_caches_it_waits_for() -> None:
    transport = FakeTransport()
    cluster = cluster_with(transport)
    ready, detail = cluster.ready()
    assert not ready and detail.startswith(
        "waiting for: namespaces, deviceclasses, resourceclaimtemplates, resourceclaims, resourceslices, nodes"
    )
    for inf in cluster.informers[:-1]:
        inf.relist()
    assert cluster.ready() == (False, "waiting for: catalogue-configmaps")
    cluster.informers[-1].relist()
    ready, detail = cluster.ready()
    assert ready and detail.startswith("synced namespaces (0)")


def test_namespaces_and_their_generation() -> None:
    transport = FakeTransport()
    transport.collections["/api/v1/namespaces"] = [obj("team-a", namespace="", metadata={"labels": {"t": "a"}})]
    cluster = synced(transport)
    assert cluster.namespaces() == {"team-a": {"t": "a"}}
    assert cluster.namespace_labels("team-a") == {"t": "a"} and cluster.namespace_labels("nope") is None
    handed_out = cluster.namespace_labels("team-a")
    assert isinstance(handed_out, dict)
    handed_out["t"] = "changed by a reader"  # a copy: the cache keeps what the apiserver said
    assert cluster.namespace_labels("team-a") == {"t": "a"} and cluster.namespaces() == {"team-a": {"t": "a"}}
    before = cluster.namespace_generation
    cluster.namespaces_informer.apply(
        {"type": "MODIFIED", "object": obj("team-a", "2", namespace="", metadata={"labels": {"t": "b"}})}
    )
    assert cluster.namespace_generation == before + 1 and cluster.namespace_labels("team-a") == {"t": "b"}


def test_native_extended_resources_from_device_classes() -> None:
    transport = FakeTransport()
    transport.collections["/apis/resource.k8s.io/v1/deviceclasses"] = [
        obj("gpu.nvidia.com", namespace="", spec={"extendedResourceName": "nvidia.com/gpu"}),
        obj("plain", namespace="", spec={"selectors": []}),
    ]
    cluster = synced(transport)
    native = cluster.native_extended_resources()
    assert native == {"nvidia.com/gpu": "gpu.nvidia.com"}
    assert cluster.native_extended_resources() is native  # kept until the DeviceClasses change
    with pytest.raises(TypeError):
        native["amd.com/gpu"] = "mine"  # type: ignore[index]  # read-only: every Pod review shares it
    changes = [
        {"type": "ADDED", "object": obj("gpu.amd.com", namespace="", spec={"extendedResourceName": "amd.com/gpu"})},
        {"type": "MODIFIED", "object": obj("gpu.nvidia.com", "2", namespace="", spec={"selectors": []})},
        {"type": "MODIFIED", "object": obj("plain", "2", namespace="", spec={"extendedResourceName": "x.io/a"})},
        {"type": "DELETED", "object": obj("gpu.amd.com", "3", namespace="")},
    ]
    expected = [
        {"nvidia.com/gpu": "gpu.nvidia.com", "amd.com/gpu": "gpu.amd.com"},
        {"amd.com/gpu": "gpu.amd.com"},
        {"amd.com/gpu": "gpu.amd.com", "x.io/a": "plain"},
        {"x.io/a": "plain"},
    ]
    for change, want in zip(changes, expected, strict=True):
        cluster.deviceclasses.apply(change)
        assert cluster.native_extended_resources() == want, change["type"]


def test_get_template_reads_the_cache_then_the_apiserver() -> None:
    transport = FakeTransport()
    transport.collections[TEMPLATES] = [template("cached")]
    cluster = synced(transport)
    transport.calls.clear()
    assert cluster.get_template("team-a", "cached") == template("cached") | {
        "apiVersion": "v1",
        "kind": "Thing",
    }
    assert transport.calls == []  # no API call on a cache hit
    path = "/apis/resource.k8s.io/v1/namespaces/team-a/resourceclaimtemplates/fresh"
    transport.objects[path] = template("fresh") | {"metadata": {**template("fresh")["metadata"], "managedFields": []}}
    assert cluster.get_template("team-a", "fresh")["metadata"].get("managedFields") is None  # type: ignore[index]
    assert cluster.get_template("team-a", "missing") is None
    transport.errors[("GET", path)] = APIError(500, "InternalError", "boom")
    with pytest.raises(ClusterError):
        cluster.get_template("team-a", "fresh")


def test_managed_templates_are_private_copies() -> None:
    transport = FakeTransport()
    transport.collections[TEMPLATES] = [template("t")]
    cluster = synced(transport)
    cluster.managed_templates()[0]["metadata"]["labels"].clear()
    assert cluster.managed_templates()[0]["metadata"]["labels"] == MANAGED


def test_get_template_hands_out_the_cached_object_and_an_update_replaces_it() -> None:
    """The request path reads a template per Pod: no copy (the port says read-only), and a change in
    the cluster gives a new object, which is what the provisioner's check-once memo relies on."""
    transport = FakeTransport()
    transport.collections[TEMPLATES] = [template("t")]
    cluster = synced(transport)
    first = cluster.get_template("team-a", "t")
    assert first is not None and cluster.get_template("team-a", "t") is first
    changed = template("t")
    changed["metadata"]["labels"] = {**MANAGED, "edited": "yes"}
    cluster.templates.apply({"type": "MODIFIED", "object": changed})
    second = cluster.get_template("team-a", "t")
    assert second is not first and second["metadata"]["labels"]["edited"] == "yes"  # type: ignore[index]
    assert "edited" not in first["metadata"]["labels"]


def test_create_template_posts_and_maps_conflicts() -> None:
    transport = FakeTransport()
    cluster = synced(transport)
    created = cluster.create_template(template("t"))
    method, path, _, body = transport.calls[-1]
    assert (method, path) == ("POST", "/apis/resource.k8s.io/v1/namespaces/team-a/resourceclaimtemplates")
    assert body is not None and body["kind"] == "ResourceClaimTemplate" and body["apiVersion"] == "resource.k8s.io/v1"
    assert created["metadata"]["uid"] == "new-uid" and "managedFields" not in created["metadata"]
    transport.errors[("POST", path)] = APIError(409, "AlreadyExists", "exists")
    with pytest.raises(AlreadyExists):
        cluster.create_template(template("t"))
    transport.errors[("POST", path)] = APIError(403, "Forbidden", "namespace is terminating")
    with pytest.raises(ClusterError, match="403 Forbidden: namespace is terminating"):
        cluster.create_template(template("t"))


@pytest.mark.parametrize("status", [404, 409])
def test_delete_template_with_a_uid_precondition_tolerates_races(status: int) -> None:
    transport = FakeTransport()
    cluster = synced(transport)
    cluster.delete_template("team-a", "t", uid="u1")
    method, path, _, body = transport.calls[-1]
    assert (method, path) == ("DELETE", "/apis/resource.k8s.io/v1/namespaces/team-a/resourceclaimtemplates/t")
    assert body == {"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": {"uid": "u1"}}
    transport.errors[("DELETE", path)] = APIError(status, "x", "y")
    cluster.delete_template("team-a", "t", uid="u1")  # someone else changed or deleted it: fine
    transport.errors[("DELETE", path)] = APIError(500, "x", "y")
    with pytest.raises(ClusterError):
        cluster.delete_template("team-a", "t", uid="u1")


def test_referenced_templates_pages_through_pods() -> None:
    transport = FakeTransport()
    pods = [
        obj(
            f"p{i}",
            namespace=f"ns{i % 2}",
            spec={"resourceClaims": [{"name": "g", "resourceClaimTemplateName": f"t{i % 3}"}]},
        )
        for i in range(5)
    ]
    pods.append(obj("plain", spec={"containers": []}))
    pods.append(obj("direct", spec={"resourceClaims": [{"name": "g", "resourceClaimName": "shared"}]}))
    transport.collections["/api/v1/pods"] = pods
    cluster = synced(transport)
    transport.calls.clear()
    assert cluster.referenced_templates() == {("ns0", "t0"), ("ns1", "t1"), ("ns0", "t2"), ("ns1", "t0"), ("ns0", "t1")}
    assert [c[2].get("continue") for c in transport.calls] == [None, "2", "4", "6"]


def test_claims_reach_subscribers_slimmed() -> None:
    transport = FakeTransport()
    transport.collections["/apis/resource.k8s.io/v1/resourceclaims"] = [claim("c1"), claim("c2")]
    cluster = cluster_with(transport)
    seen, handler = recorder()
    cluster.watch("resourceclaims", handler)
    cluster.claims.relist()
    cluster.claims.apply({"type": "DELETED", "object": claim("c1", "5")})
    assert names(seen) == [("ADDED", "c1"), ("ADDED", "c2"), ("DELETED", "c1")]
    assert all(set(o) == {"metadata", "spec"} and "managedFields" not in o["metadata"] for _, o in seen)


def test_configmap_sources_are_label_selected_informers() -> None:
    transport = FakeTransport()
    transport.collections["/api/v1/namespaces/dra-bridge/configmaps"] = [
        obj("quota", namespace="dra-bridge", metadata={"labels": {"dra-bridge.io/policy": "true"}}),
        obj("cat", namespace="dra-bridge", metadata={"labels": {"dra-bridge.io/catalogue": "true"}}),
        obj("other", namespace="dra-bridge"),
    ]
    cluster = cluster_with(transport)
    policies, on_policy = recorder()
    catalogues, on_catalogue = recorder()
    cluster.watch("policy-configmaps", on_policy)
    cluster.watch("catalogue-configmaps", on_catalogue)
    cluster.policy_configmaps.relist()
    cluster.catalogue_configmaps.relist()
    assert names(policies) == [("ADDED", "quota")] and names(catalogues) == [("ADDED", "cat")]


def test_start_and_stop_run_every_informer_on_its_own_thread() -> None:
    transport = FakeTransport()
    cluster = cluster_with(transport)
    cluster.start()
    try:
        assert cluster.wait_synced(5)
        assert cluster.ready()[0]
        running = {t.name for t in threading.enumerate()}
        assert {f"informer-{i.name}" for i in cluster.informers} <= running
    finally:
        cluster.stop()
    # Every informer thread is gone when stop() returns, each released by stop closing its watch
    # (an informer that had not opened one yet closes it on opening), none by a watch running out.
    assert not any(t.name.startswith("informer-") for t in threading.enumerate())
    assert all(s.closed.is_set() and not s.timed_out for s in transport.opened)


def test_relist_applies_pages_as_they_come_and_deletes_the_unlisted_last() -> None:
    transport = FakeTransport()
    transport.collections[PATH] = [obj(f"o{i}", "1") for i in range(4)]
    inf = informer(transport)
    seen, handler = recorder()
    inf.subscribe(handler)
    inf.relist()
    seen.clear()
    transport.collections[PATH] = [obj("o0", "1"), obj("o1", "2"), obj("o9", "1")]
    inf.relist()  # pages applied as they come; what was not listed goes last
    assert names(seen) == [("MODIFIED", "o1"), ("ADDED", "o9"), ("DELETED", "o2"), ("DELETED", "o3")]


def test_a_watch_that_ends_at_once_without_events_is_an_error() -> None:
    transport = FakeTransport()
    transport.watches[PATH] = [FakeStream([])]
    inf = informer(transport)
    inf.resource_version = "5"
    with pytest.raises(APIError, match="ShortWatch"):
        inf.watch_once()
    transport.watches[PATH] = [FakeStream([{"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "6"}}}])]
    inf.watch_once()  # it did deliver something: an ordinary end (the server's timeout)
    assert inf.resource_version == "6"


LEASES = "/apis/coordination.k8s.io/v1/namespaces/dra-bridge/leases"


def lease(rv: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "q", "annotations": {"dra-bridge.io/reservations": "[]"}}
    if rv:
        meta["resourceVersion"] = rv
    return {"metadata": meta, "spec": {"holderIdentity": "r1"}}


def test_leases_are_read_fresh_and_written_conditionally() -> None:
    transport = FakeTransport()
    cluster = synced(transport)
    assert cluster.get_lease("q") is None
    created = cluster.put_lease(lease())
    method, path, _, body = transport.calls[-1]
    assert (method, path) == ("POST", LEASES)
    assert body is not None and body["kind"] == "Lease" and body["metadata"]["namespace"] == "dra-bridge"
    assert created["metadata"]["resourceVersion"] == "1" and "managedFields" not in created["metadata"]
    cluster.put_lease(lease("1"))
    assert transport.calls[-1][:2] == ("PUT", f"{LEASES}/q")
    transport.objects[f"{LEASES}/q"] = lease("2") | {"metadata": {**lease("2")["metadata"], "managedFields": []}}
    assert cluster.get_lease("q") == lease("2")


@pytest.mark.parametrize(("method", "status"), [("POST", 409), ("PUT", 409), ("PUT", 404)])
def test_losing_a_lease_race_is_a_conflict(method: str, status: int) -> None:
    transport = FakeTransport()
    cluster = synced(transport)
    path = LEASES if method == "POST" else f"{LEASES}/q"
    transport.errors[(method, path)] = APIError(status, "Conflict", "the object has been modified")
    with pytest.raises(Conflict):
        cluster.put_lease(lease("3" if method == "PUT" else None))
    transport.errors[(method, path)] = APIError(500, "InternalError", "etcd")
    with pytest.raises(ClusterError):
        cluster.put_lease(lease("3" if method == "PUT" else None))


LEASES = "/apis/coordination.k8s.io/v1/namespaces/dra-bridge/leases"


def test_list_leases_selects_by_label_in_the_webhook_namespace_without_managed_fields() -> None:
    transport = FakeTransport()
    transport.collections[LEASES] = [
        obj("m-1", metadata={"labels": {REPLICA_LABEL: "true"}}),
        obj("other"),
        obj("m-2", metadata={"labels": {REPLICA_LABEL: "true"}}),
    ]
    cluster = cluster_with(transport)
    found = cluster.list_leases(REPLICA_LABEL)
    assert [lease["metadata"]["name"] for lease in found] == ["m-1", "m-2"]
    assert all("managedFields" not in lease["metadata"] for lease in found)
    assert transport.calls[-1][:3] == ("GET", LEASES, {"labelSelector": REPLICA_LABEL, "limit": "500"})


def test_delete_lease_is_conditional_on_the_version_read_and_quiet_when_it_lost() -> None:
    transport = FakeTransport()
    cluster = cluster_with(transport)
    cluster.delete_lease("m-1", resource_version="7")
    method, path, _, body = transport.calls[-1]
    assert (method, path) == ("DELETE", f"{LEASES}/m-1")
    assert body == {"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": {"resourceVersion": "7"}}
    for status in (404, 409):  # gone, or renewed since it was listed
        transport.errors[("DELETE", f"{LEASES}/m-1")] = APIError(status, "x", "y")
        cluster.delete_lease("m-1", resource_version="7")
    transport.errors[("DELETE", f"{LEASES}/m-1")] = APIError(500, "x", "y")
    with pytest.raises(APIError):
        cluster.delete_lease("m-1", resource_version="7")


def test_list_workloads_streams_every_kind_with_its_kind_set() -> None:
    transport = FakeTransport()
    for path in WORKLOAD_PATHS:
        transport.collections[path] = [obj(f"{path.rsplit('/', 1)[-1]}-{i}") for i in range(3)]
    cluster = synced(transport)
    transport.calls.clear()
    workloads = list(cluster.list_workloads())
    assert len(workloads) == 3 * len(WORKLOAD_PATHS)
    assert {w["metadata"]["name"] for w in workloads} >= {"deployments-0", "cronjobs-2", "pods-1"}
    assert all(w["kind"] == "Thing" and w["apiVersion"] == "v1" for w in workloads)  # from the fake's list kind
    assert sum(1 for c in transport.calls if c[2].get("continue")) == len(WORKLOAD_PATHS)  # 2 a page: 2 pages each


# -- the RBAC the adapter needs ------------------------------------------------------------------
def rbac_view(method: str, path: str, *, watch: bool = False) -> tuple[str, str, str, bool]:
    """(apiGroup, resource, verb, in the webhook's namespace) of one REST call, as RBAC sees it."""
    parts = path.strip("/").split("/")
    group, rest = ("", parts[2:]) if parts[0] == "api" else (parts[1], parts[3:])
    own = len(rest) >= 2 and rest[0] == "namespaces" and rest[1] == "dra-bridge" and len(rest) > 2
    if rest[0] == "namespaces" and len(rest) > 2:
        rest = rest[2:]
    resource, named = rest[0], len(rest) > 1
    verb = (
        "watch"
        if watch
        else {"GET": "get" if named else "list", "POST": "create", "PUT": "update", "DELETE": "delete"}[method]
    )
    return group, resource, verb, own


def test_every_call_the_adapter_makes_is_in_its_declared_access() -> None:
    from webhook.cluster.kube import CLUSTER_ACCESS, NAMESPACE_ACCESS, REPORT_ACCESS

    transport = FakeTransport()
    transport.collections["/api/v1/pods"] = []
    cluster = cluster_with(transport)
    watched: list[str] = []
    original_watch = transport.watch

    def recording_watch(path: str, *, query: Any) -> FakeStream:
        watched.append(path)
        return original_watch(path, query=query)

    transport.watch = recording_watch  # type: ignore[method-assign]
    cluster.start()
    wait_until(lambda: cluster.ready()[0] and len(watched) >= len(cluster.informers))
    cluster.stop()
    cluster.get_template("team-a", "missing")
    cluster.create_template(template("t"))
    cluster.delete_template("team-a", "t", uid="u1")
    cluster.referenced_templates()
    cluster.get_lease("q")
    cluster.put_lease(lease())
    cluster.put_lease(lease("1"))
    transport.collections[LEASES] = []
    cluster.list_leases(REPLICA_LABEL)
    cluster.delete_lease("q", resource_version="2")
    webhook_calls = {rbac_view(m, p) for m, p, _, _ in transport.calls} | {
        rbac_view("GET", p, watch=True) for p in watched
    }
    declared = {(g, r, v, False) for (g, r), verbs in CLUSTER_ACCESS.items() for v in verbs}
    declared |= {(g, r, v, True) for (g, r), verbs in NAMESPACE_ACCESS.items() for v in verbs}
    assert webhook_calls == declared  # nothing used that is not declared, nothing declared that is unused

    transport.calls.clear()
    for path in (*WORKLOAD_PATHS, "/api/v1/nodes", f"{RESOURCE_API}/resourceslices", f"{RESOURCE_API}/resourceclaims"):
        transport.collections.setdefault(path, [])
    list(cluster.list_workloads())
    list(cluster.list_nodes())
    list(cluster.list_resource_slices())
    list(cluster.list_claims())
    report_calls = {rbac_view(m, p)[:3] for m, p, _, _ in transport.calls}
    assert report_calls == {(g, r, v) for (g, r), verbs in REPORT_ACCESS.items() for v in verbs}
