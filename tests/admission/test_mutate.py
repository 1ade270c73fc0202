"""The engine without HTTP: decisions, template provisioning, dry-run, conflicts, opt-outs, GC."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.admission.helpers import decode_patch, request
from tests.conftest import assert_valid, container, pod
from webhook.admission.engine import Admission
from webhook.admission.jsonpatch import apply
from webhook.admission.templates import TemplateProvisioner
from webhook.cluster.memory import InMemoryCluster
from webhook.translate.catalogue import CatalogueIndex


@pytest.fixture
def cluster() -> InMemoryCluster:
    c = InMemoryCluster()
    c.add_namespace("team-a")
    return c


@pytest.fixture
def admission(cluster: InMemoryCluster, index: CatalogueIndex) -> Admission:
    return Admission(cluster=cluster, catalogue=lambda: index)


def gpu_pod(**limits: Any) -> dict[str, Any]:
    return pod(container("train", limits=limits or {"nvidia.com/gpu": "2"}))


def test_legacy_pod_is_patched_and_its_template_created(admission: Admission, cluster: InMemoryCluster) -> None:
    original = gpu_pod()
    decision = admission.mutate(request(original))
    assert decision.outcome == "patched" and decision.reason == "converted"
    response = decision.response
    assert response.allowed and response.uid == "uid-1" and response.patch_type == "JSONPatch"
    assert response.patch is not None
    patched = apply(original, decode_patch(response.patch))
    assert_valid(patched)
    template_name = patched["spec"]["resourceClaims"][0]["resourceClaimTemplateName"]
    stored = cluster.get_template("team-a", template_name)
    assert stored is not None
    assert_valid(
        {k: v for k, v in stored.items() if k != "metadata"}
        | {"metadata": {"name": template_name, "namespace": "team-a"}}
    )
    assert response.warnings == ["dra-bridge: train: nvidia.com/gpu=2 -> 2 whole devices (nvidia)"]
    from webhook.audit.log import audit_annotations

    assert audit_annotations(decision)["templates"] == f"train={template_name}"


def test_second_pod_of_the_same_shape_reuses_the_template(admission: Admission, cluster: InMemoryCluster) -> None:
    first = admission.mutate(request(gpu_pod()))
    second = admission.mutate(request(gpu_pod(), uid="uid-2"))
    assert first.templates_created and not second.templates_created
    assert cluster.writes == 1


def test_reinvocation_changes_nothing(admission: Admission) -> None:
    original = gpu_pod(**{"nvidia.com/gpumem": "4096"})
    decision = admission.mutate(request(original))
    assert decision.response.patch is not None
    patched = apply(original, decode_patch(decision.response.patch))
    again = admission.mutate(request(patched))
    assert again.outcome == "allowed" and again.response.patch is None


def test_dry_run_creates_no_template(admission: Admission, cluster: InMemoryCluster) -> None:
    decision = admission.mutate(request(gpu_pod(), dry_run=True))
    assert decision.outcome == "patched"
    assert cluster.writes == 0 and cluster.managed_templates() == []


def test_pod_without_gpu_requests_gets_no_patch(admission: Admission, cluster: InMemoryCluster) -> None:
    decision = admission.mutate(request(pod(container(limits={"cpu": "1"}))))
    assert decision.outcome == "allowed" and decision.reason == "no-legacy-request"
    assert decision.response.patch is None and decision.response.patch_type is None
    assert cluster.writes == 0


@pytest.mark.parametrize(("kind", "operation"), [("Pod", "UPDATE"), ("Pod", "DELETE"), ("ConfigMap", "CREATE")])
def test_other_kinds_and_operations_are_allowed_unchanged(admission: Admission, kind: str, operation: str) -> None:
    decision = admission.mutate(request(gpu_pod(), kind=kind, operation=operation))
    assert decision.outcome == "allowed" and decision.response.patch is None


def test_pod_opt_out_label(admission: Admission) -> None:
    subject = gpu_pod()
    subject["metadata"]["labels"] = {"dra-bridge.io/ignore": "true"}
    assert admission.mutate(request(subject)).reason == "opt-out"


def test_namespace_opt_out_label(admission: Admission, cluster: InMemoryCluster) -> None:
    cluster.add_namespace("legacy", {"dra-bridge.io/ignore": "true"})
    assert admission.mutate(request(gpu_pod(), namespace="legacy")).reason == "opt-out"


def test_invalid_request_is_denied_with_the_details(admission: Admission, cluster: InMemoryCluster) -> None:
    decision = admission.mutate(request(gpu_pod(**{"nvidia.com/gpu": "1.5"})))
    assert decision.outcome == "denied" and decision.reason == "invalid-request"
    status = decision.response.status
    assert status is not None and status.code == 422 and status.reason == "Invalid"
    assert status.message == "container 'train': nvidia.com/gpu: 1.5 is not a whole number"
    assert cluster.writes == 0


def test_unmanaged_template_of_the_same_name_is_never_used(admission: Admission, cluster: InMemoryCluster) -> None:
    probe = admission.mutate(request(gpu_pod(), dry_run=True))
    assert probe.response.patch is not None
    name = apply(gpu_pod(), decode_patch(probe.response.patch))["spec"]["resourceClaims"][0][
        "resourceClaimTemplateName"
    ]
    cluster.create_template(
        {"metadata": {"name": name, "namespace": "team-a"}, "spec": {"spec": {"devices": {"requests": []}}}}
    )
    decision = admission.mutate(request(gpu_pod()))
    assert decision.outcome == "denied" and decision.reason == "template-conflict"
    assert f"team-a/{name} exists but is not managed by dra-bridge" in decision.message


def test_managed_template_with_a_different_spec_is_never_used(admission: Admission, cluster: InMemoryCluster) -> None:
    admission.mutate(request(gpu_pod()))
    assert admission.mutate(request(gpu_pod(), uid="uid-1b")).outcome == "patched"  # found and checked once
    (stored,) = cluster.managed_templates()
    name = stored["metadata"]["name"]
    cluster.delete_template("team-a", name, uid=stored["metadata"]["uid"])
    tampered = copy.deepcopy(stored)
    tampered["spec"]["spec"]["devices"]["requests"][0]["firstAvailable"][0]["count"] = 8
    cluster.create_template(tampered)
    decision = admission.mutate(request(gpu_pod(), uid="uid-2"))
    assert decision.outcome == "denied" and "its spec differs" in decision.message


def test_native_extended_resource_is_left_and_warned(admission: Admission, cluster: InMemoryCluster) -> None:
    cluster.add_device_class(
        {"metadata": {"name": "gpu.nvidia.com"}, "spec": {"extendedResourceName": "nvidia.com/gpu"}}
    )
    decision = admission.mutate(request(gpu_pod()))
    assert decision.outcome == "allowed" and decision.reason == "native-extended-resource"
    assert decision.response.warnings == [
        "dra-bridge: train: nvidia.com/gpu left as is, DeviceClass gpu.nvidia.com serves it natively"
    ]


def test_generate_name_pods_are_converted(admission: Admission) -> None:
    subject = gpu_pod()
    del subject["metadata"]["name"]
    subject["metadata"]["generateName"] = "trainer-7d9f-"
    decision = admission.mutate(request(subject))
    assert decision.outcome == "patched"


def test_missing_object_is_malformed(admission: Admission) -> None:
    from webhook.errors import MalformedReview

    with pytest.raises(MalformedReview, match=r"request\.object is required"):
        admission.mutate(request(None))


def test_garbage_collection_after_grace(index: CatalogueIndex) -> None:
    now = [1_000_000_000.0]
    cluster = InMemoryCluster(clock=lambda: now[0])
    provisioner = TemplateProvisioner(cluster, clock=lambda: now[0])
    admission = Admission(cluster=cluster, catalogue=lambda: index, provisioner=provisioner)
    original = gpu_pod()
    decision = admission.mutate(request(original))
    assert decision.response.patch is not None
    stored_pod = apply(original, decode_patch(decision.response.patch))
    cluster.add_pod(stored_pod)
    now[0] += 7200
    assert provisioner.collect_garbage(grace_seconds=3600) == []  # referenced by a Pod
    cluster.remove_pod("team-a", "p")
    now[0] += 10
    name = stored_pod["spec"]["resourceClaims"][0]["resourceClaimTemplateName"]
    assert provisioner.collect_garbage(grace_seconds=3600) == [("team-a", name)]
    assert cluster.managed_templates() == []


def test_recently_used_template_survives_gc(index: CatalogueIndex) -> None:
    now = [2_000_000_000.0]
    cluster = InMemoryCluster(clock=lambda: now[0])
    provisioner = TemplateProvisioner(cluster, clock=lambda: now[0])
    admission = Admission(cluster=cluster, catalogue=lambda: index, provisioner=provisioner)
    admission.mutate(request(gpu_pod()))
    now[0] += 7200  # created long ago...
    admission.mutate(request(gpu_pod(), uid="uid-2"))  # ...but used again just now, by a Pod not stored yet
    now[0] += 100
    assert provisioner.collect_garbage(grace_seconds=3600) == []
    now[0] += 3600
    assert len(provisioner.collect_garbage(grace_seconds=3600)) == 1


class _Unsynced(InMemoryCluster):
    def ready(self) -> tuple[bool, str]:
        return False, "waiting for: resourceclaims"


def test_unsynced_caches_never_decide(index: CatalogueIndex) -> None:
    from webhook.errors import NotReady

    admission = Admission(cluster=_Unsynced(), catalogue=lambda: index)
    with pytest.raises(NotReady, match="waiting for: resourceclaims"):
        admission.mutate(request(gpu_pod()))
    with pytest.raises(NotReady):
        admission.validate(request(gpu_pod()))
    assert admission.mutate(request(gpu_pod(), kind="ConfigMap")).outcome == "allowed"  # not ours: no cache needed


# -- node by node: a Pod that may run only where a device plugin serves it is left for it ----------
def mixed_cluster() -> tuple[Any, Any]:
    from webhook.admission.nodes import NodePools

    pools = NodePools()
    pools.on_node(
        "ADDED",
        {
            "metadata": {"name": "dp-1", "labels": {"pool": "legacy"}},
            "status": {"allocatable": {"nvidia.com/gpu": "4"}},
        },
    )
    pools.on_node(
        "ADDED", {"metadata": {"name": "dra-1", "labels": {"pool": "dra"}}, "status": {"allocatable": {"cpu": "8"}}}
    )
    pools.on_slice(
        "ADDED",
        {
            "metadata": {"name": "dra-1-gpu"},
            "spec": {
                "driver": "gpu.nvidia.com",
                "nodeName": "dra-1",
                "pool": {"name": "dra-1"},
                "devices": [{"name": "gpu-0"}],
            },
        },
    )
    return pools, None


def test_a_pod_pinned_to_device_plugin_nodes_is_left_for_the_device_plugin(index: CatalogueIndex) -> None:
    from webhook.admission.engine import Admission
    from webhook.cluster.memory import InMemoryCluster

    pools, _ = mixed_cluster()
    cluster = InMemoryCluster()
    cluster.add_namespace("team-a")
    admission = Admission(cluster=cluster, catalogue=lambda: index, nodes=pools)
    pinned = pod(container(limits={"nvidia.com/gpu": "1"}))
    pinned["spec"]["nodeSelector"] = {"pool": "legacy"}
    decision = admission.mutate(request(pinned))
    assert decision.reason == "left-for-device-plugin" and decision.response.patch is None
    assert "advertise nvidia.com/gpu" in decision.message
    assert admission.validate(request(pinned)).outcome == "allowed"  # the backstop agrees
    by_affinity = pod(container(limits={"nvidia.com/gpu": "1"}))
    by_affinity["spec"]["affinity"] = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "pool", "operator": "NotIn", "values": ["dra"]}]}]
            }
        }
    }
    assert admission.mutate(request(by_affinity)).reason == "left-for-device-plugin"
    anywhere = pod(container(limits={"nvidia.com/gpu": "1"}))
    assert admission.mutate(request(anywhere)).reason == "converted"  # it may run on the DRA node
    on_dra = pod(container(limits={"nvidia.com/gpu": "1"}))
    on_dra["spec"]["nodeSelector"] = {"pool": "dra"}
    assert admission.mutate(request(on_dra)).reason == "converted"
