"""``webhook.cluster.kube.KubeCluster`` against the real apiserver: raw objects, informers, relist
after a genuine 410 Gone, template writes with their error mapping, pagination, prompt stop."""

from __future__ import annotations

import base64
import copy
import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.controlplane import LOOPBACK, ControlPlane
from tests.e2e.helpers import Kube, wait_for
from webhook.cluster import AlreadyExists, Conflict, EventType
from webhook.cluster.informer import APIError
from webhook.cluster.kube import KubeCluster
from webhook.translate.claims import spec_hash

pytestmark = pytest.mark.e2e

CLAIM_SPEC = {
    "devices": {
        "requests": [{"name": "gpu", "exactly": {"deviceClassName": "x", "allocationMode": "ExactCount", "count": 1}}]
    }
}  # as the apiserver defaults it: the webhook hashes the defaulted spec
# Labelled as dra-bridge's own, with the right hash: the registered validating webhook admits it.
MANAGED = {"app.kubernetes.io/managed-by": "dra-bridge", "dra-bridge.io/spec-hash": spec_hash(CLAIM_SPEC)}


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[EventType, dict[str, Any]]] = []
        self.lock = threading.Lock()

    def __call__(self, event: EventType, obj: dict[str, Any]) -> None:
        with self.lock:
            self.events.append((event, obj))

    def seen(self) -> list[tuple[str, str]]:
        with self.lock:
            return [(e, o["metadata"]["name"]) for e, o in self.events]


@pytest.fixture(scope="module")
def home(kube: Kube) -> str:
    """The adapter's own namespace (where it watches policy ConfigMaps)."""
    return kube.namespace("e2e-adapter")


@pytest.fixture(scope="module")
def adapter(kube: Kube, home: str) -> Iterator[tuple[KubeCluster, Recorder, Recorder]]:
    cluster = KubeCluster.from_environment(home, kubeconfig=str(kube.kubeconfig))
    cluster.page_size = 2
    claims, policies = Recorder(), Recorder()
    cluster.watch("resourceclaims", claims)
    cluster.watch("policy-configmaps", policies)
    cluster.start()
    assert cluster.wait_synced(30), cluster.ready()
    yield cluster, claims, policies
    cluster.stop()


def without_managed_fields(obj: dict[str, Any]) -> dict[str, Any]:
    obj["metadata"].pop("managedFields", None)
    return obj


def managed_template(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(MANAGED)},
        "spec": {
            "metadata": {"labels": {"team": "a"}},
            "spec": copy.deepcopy(CLAIM_SPEC),
        },
    }


def test_from_environment_uses_kubeconfig(kube: Kube, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    cluster = KubeCluster.from_environment("dra-bridge")
    assert cluster.ready() == (False, "waiting for: " + ", ".join(i.name for i in cluster.informers))
    assert cluster.get_template("default", "does-not-exist") is None  # talks to the test apiserver


def test_templates_are_the_apiservers_json_and_the_cache_follows_writes(
    adapter: tuple[KubeCluster, Recorder, Recorder], kube: Kube, home: str
) -> None:
    cluster, _, _ = adapter
    created = cluster.create_template(managed_template("t-raw", home))
    from_kubectl = without_managed_fields(kube.json("get", "resourceclaimtemplate", "t-raw", "-n", home))
    assert created == from_kubectl  # camelCase, nothing added or dropped but managedFields
    assert wait_for(lambda: cluster.templates.get((home, "t-raw")), 10) == from_kubectl  # the watch delivered it
    assert cluster.get_template(home, "t-raw") == from_kubectl
    assert any(t["metadata"]["name"] == "t-raw" for t in cluster.managed_templates())

    with pytest.raises(AlreadyExists):
        cluster.create_template(managed_template("t-raw", home))
    with pytest.raises(APIError) as invalid:
        cluster.create_template(managed_template("Not_A_Name", home))
    assert invalid.value.status == 422

    cluster.delete_template(home, "t-raw", uid="00000000-0000-0000-0000-000000000000")  # 409: someone else's
    assert kube.get("resourceclaimtemplate", "t-raw", home) is not None
    cluster.delete_template(home, "t-raw", uid=created["metadata"]["uid"])
    wait_for(lambda: kube.get("resourceclaimtemplate", "t-raw", home) is None, 10)
    cluster.delete_template(home, "t-raw", uid=created["metadata"]["uid"])  # 404: gone already, fine
    wait_for(lambda: cluster.templates.get((home, "t-raw")) is None, 10, what="the DELETED event")


def test_get_template_reads_through_to_the_apiserver_for_what_the_cache_does_not_hold(
    adapter: tuple[KubeCluster, Recorder, Recorder], kube: Kube, home: str
) -> None:
    cluster, _, _ = adapter
    foreign = managed_template("t-foreign", home)
    foreign["metadata"]["labels"] = {"owner": "someone-else"}  # not ours: the cache never holds it
    kube.apply(foreign)
    found = cluster.get_template(home, "t-foreign")
    assert found is not None and found["metadata"]["labels"] == {"owner": "someone-else"}
    assert cluster.templates.get((home, "t-foreign")) is None


def test_namespaces_and_device_classes(adapter: tuple[KubeCluster, Recorder, Recorder], kube: Kube) -> None:
    cluster, _, _ = adapter
    before = cluster.namespace_generation
    name = kube.namespace("e2e-labels", {"tenant": "a"})
    wait_for(lambda: cluster.namespace_labels(name), 10)
    assert cluster.namespace_labels(name) == {"tenant": "a", "kubernetes.io/metadata.name": name}
    assert cluster.namespace_generation > before and name in cluster.namespaces()
    kube.kubectl("label", "namespace", name, "dra-bridge.io/ignore=true")
    wait_for(lambda: (cluster.namespace_labels(name) or {}).get("dra-bridge.io/ignore") == "true", 10)

    device_class = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "DeviceClass",
        "metadata": {"name": "e2e-native.example.com"},
        "spec": {"extendedResourceName": "example.com/e2e-native"},
    }
    kube.apply(device_class)
    wait_for(lambda: "example.com/e2e-native" in cluster.native_extended_resources(), 10)
    assert cluster.native_extended_resources()["example.com/e2e-native"] == "e2e-native.example.com"
    kube.kubectl("delete", "deviceclass", "e2e-native.example.com")
    wait_for(lambda: "example.com/e2e-native" not in cluster.native_extended_resources(), 10)


def test_claim_subscribers_get_slim_claims(
    adapter: tuple[KubeCluster, Recorder, Recorder], kube: Kube, home: str
) -> None:
    _, claims, _ = adapter
    claim = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": "c-slim", "namespace": home, "labels": {"x": "y"}},
        "spec": {
            "devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "whole.nvidia.dra-bridge.io"}}]}
        },
    }
    kube.apply(claim)
    stored = kube.json("get", "resourceclaim", "c-slim", "-n", home)
    added = wait_for(lambda: [o for e, o in claims.events if e == "ADDED" and o["metadata"]["name"] == "c-slim"], 10)
    meta = stored["metadata"]
    assert added[0] == {
        "metadata": {k: meta[k] for k in ("namespace", "name", "resourceVersion")},
        "spec": stored["spec"],
    }
    kube.kubectl("delete", "resourceclaim", "c-slim", "-n", home)
    wait_for(lambda: ("DELETED", "c-slim") in claims.seen(), 10)


def test_a_410_after_a_gap_relists_and_tells_subscribers_what_they_missed(
    adapter: tuple[KubeCluster, Recorder, Recorder], kube: Kube, home: str, control_plane: ControlPlane
) -> None:
    cluster, _, policies = adapter
    informer = cluster.policy_configmaps

    def policy(name: str, value: str) -> dict[str, Any]:
        labels = {"dra-bridge.io/policy": "true"}
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": home, "labels": labels},
            "data": {"v": value},
        }

    kube.apply([policy("p-stays", "1"), policy("p-changes", "1"), policy("p-vanishes", "1")])
    wait_for(lambda: {"p-stays", "p-changes", "p-vanishes"} <= {n for _, n in policies.seen()}, 10)
    relists = informer.relists

    informer.stop()  # a gap: the informer misses what happens now...
    informer.join(5)
    stale = informer.resource_version
    kube.apply(policy("p-changes", "2"))
    kube.kubectl("delete", "configmap", "p-vanishes", "-n", home)
    kube.apply(policy("p-appears", "1"))
    compact_etcd(control_plane)  # ...and its resourceVersion is compacted away
    with policies.lock:
        policies.events.clear()
    informer.start()  # watches from the stale version: 410 Gone, then a relist

    wait_for(
        lambda: informer.relists > relists and len(policies.seen()) >= 3,
        20,
        what=lambda: f"relist; saw {policies.seen()}",
    )
    assert informer.resource_version != stale
    assert sorted(policies.seen()) == [("ADDED", "p-appears"), ("DELETED", "p-vanishes"), ("MODIFIED", "p-changes")]
    assert [o["data"] for e, o in policies.events if e == "MODIFIED"] == [{"v": "2"}]


def compact_etcd(cp: ControlPlane) -> None:
    """Compact etcd to its current revision (its JSON gateway), as the apiserver does every 5 minutes."""
    base = f"http://{LOOPBACK}:{cp.ports['etcd']}/v3/kv"

    def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(f"{base}/{path}", data=json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            out: dict[str, Any] = json.loads(response.read())
            return out

    revision = post("range", {"key": base64.b64encode(b"/").decode()})["header"]["revision"]
    post("compaction", {"revision": revision, "physical": True})


def test_referenced_templates_pages_through_every_pod(
    adapter: tuple[KubeCluster, Recorder, Recorder], kube: Kube, home: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster, _, _ = adapter
    for i in range(5):
        kube.apply(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": f"ref-{i}", "namespace": home},
                "spec": {
                    "containers": [{"name": "c", "image": "x", "resources": {"claims": [{"name": "gpu"}]}}],
                    "resourceClaims": [{"name": "gpu", "resourceClaimTemplateName": f"tmpl-{i % 2}"}],
                },
            }
        )
    pages: list[str] = []
    transport = cluster._transport
    real = transport.request

    def counting(method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        if path == "/api/v1/pods":
            pages.append(dict(kwargs.get("query", ())).get("continue", ""))
        return real(method, path, **kwargs)

    monkeypatch.setattr(transport, "request", counting)
    try:
        assert {(home, "tmpl-0"), (home, "tmpl-1")} <= cluster.referenced_templates()
        assert len(pages) >= 3 and pages[0] == "" and all(pages[1:])  # 2 Pods a page, continue tokens
    finally:
        kube.force_delete_pods(home)


def test_list_workloads_reads_every_pod_template_owner(
    adapter: tuple[KubeCluster, Recorder, Recorder], kube: Kube, home: str
) -> None:
    cluster, _, _ = adapter
    template = {"metadata": {"labels": {"app": "w"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}
    kube.apply(
        [
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "w-deploy", "namespace": home},
                "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "w"}}, "template": template},
            },
            {
                "apiVersion": "batch/v1",
                "kind": "CronJob",
                "metadata": {"name": "w-cron", "namespace": home},
                "spec": {
                    "schedule": "0 0 1 1 *",
                    "jobTemplate": {
                        "spec": {"template": {**template, "spec": {**template["spec"], "restartPolicy": "Never"}}}
                    },
                },
            },
        ]
    )
    found = {
        (w["apiVersion"], w["kind"], w["metadata"]["name"])
        for w in cluster.list_workloads()
        if w["metadata"].get("namespace") == home
    }
    assert {("apps/v1", "Deployment", "w-deploy"), ("batch/v1", "CronJob", "w-cron")} <= found


def test_leases_are_written_conditionally(adapter: tuple[KubeCluster, Recorder, Recorder], home: str) -> None:
    cluster, _, _ = adapter
    lease = {
        "metadata": {"name": "dra-bridge-quota-e2e", "annotations": {"dra-bridge.io/reservations": "[]"}},
        "spec": {"holderIdentity": "replica-a", "leaseDurationSeconds": 30},
    }
    assert cluster.get_lease("dra-bridge-quota-e2e") is None
    created = cluster.put_lease(lease)
    assert created["metadata"]["namespace"] == home and created["spec"]["holderIdentity"] == "replica-a"
    with pytest.raises(Conflict):
        cluster.put_lease(lease)  # another replica created it first
    read = cluster.get_lease("dra-bridge-quota-e2e")
    assert read == created
    read["metadata"]["annotations"]["dra-bridge.io/reservations"] = '[{"id": "r1"}]'
    updated = cluster.put_lease(read)
    assert updated["metadata"]["resourceVersion"] != created["metadata"]["resourceVersion"]
    with pytest.raises(Conflict):
        cluster.put_lease(read)  # conditional on a resourceVersion that is gone now


def test_stop_ends_every_watch_promptly(kube: Kube) -> None:
    cluster = KubeCluster.from_environment("dra-bridge", kubeconfig=str(kube.kubeconfig))
    cluster.start()
    assert cluster.wait_synced(30)
    ready, detail = cluster.ready()
    assert ready and detail.startswith("synced namespaces (")
    time.sleep(0.5)  # every informer is now blocked reading its watch
    threads = [i._thread for i in cluster.informers]
    started = time.monotonic()
    cluster.stop()
    assert time.monotonic() - started < 2.0
    assert not [t for t in threads if t is not None and t.is_alive()]
