"""Legacy GPU Pods through the real apiserver: rewritten by the webhook, claims created by
kube-controller-manager from the templates, allocated by the real scheduler on the fake GPU nodes.

Pods never run (no kubelet): "bound" means ``spec.nodeName`` is set and every claim has
``status.allocation``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.e2e.helpers import (
    NODES,
    Kube,
    allocated_devices,
    attribute,
    device_index,
    legacy_keys,
    pod,
    scheduled,
    wait_for,
    why_pending,
)
from tests.e2e.releases import PRIORITIZED_LIST_SCORING
from webhook.translate.quantity import parse_quantity

pytestmark = pytest.mark.e2e

CONVERTED = "dra-bridge.io/converted"
KAI = ("gpu-fraction", "gpu-memory", "gpu-fraction-container-name", "gpu-fraction-num-devices")


@dataclass(frozen=True)
class Kind:
    """One legacy way of asking for a GPU, and where its claim may land."""

    name: str
    limits: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    lands_on: str = "share"  # whole | partition | share (memory and compute) | memory-share
    memory: str | None = None  # expected consumedCapacity.memory on a shared device
    compute: str | None = None  # expected cores (HAMi) / compute (example)


KINDS = [
    Kind("nvidia-gpu", {"nvidia.com/gpu": "1"}, lands_on="whole"),
    Kind(
        "hami-gpumem-gpucores", {"nvidia.com/gpumem": "4096", "nvidia.com/gpucores": "30"}, memory="4Gi", compute="30"
    ),
    Kind("hami-gpumem-percentage", {"nvidia.com/gpumem-percentage": "25"}, lands_on="memory-share", memory="20Gi"),
    Kind("mig-1g5gb", {"nvidia.com/mig-1g.5gb": "1"}, lands_on="partition"),
    Kind("time-sliced", {"nvidia.com/gpu.shared": "1"}, lands_on="memory-share"),
    Kind(
        "volcano",
        {"volcano.sh/vgpu-number": "1", "volcano.sh/vgpu-memory": "2048", "volcano.sh/vgpu-cores": "10"},
        memory="2Gi",
        compute="10",
    ),
    Kind("aliyun", {"aliyun.com/gpu-mem": "3"}, lands_on="memory-share", memory="3Gi"),
    Kind("tencent", {"tencent.com/vcuda-core": "25", "tencent.com/vcuda-memory": "8"}, memory="2Gi", compute="25"),
    Kind("kai-fraction", annotations={"gpu-fraction": "0.25"}, lands_on="memory-share", memory="20Gi"),
]
LEGACY_NAMES = {name for k in KINDS for name in k.limits} | set(KAI)


Bound = tuple[dict[str, Any], list[dict[str, Any]]]  # the stored Pod and its claims


@pytest.fixture(scope="module")
def legacy_pods(bridge: Any, kube: Kube) -> Iterator[tuple[str, dict[str, Bound]]]:
    """Every kind at once (the scheduler works through them in parallel); each test checks one."""
    namespace = kube.namespace("e2e-legacy")
    try:
        for kind in KINDS:
            manifest = pod(kind.name, kind.limits, annotations=kind.annotations)
            if kind.lands_on == "partition" and not PRIORITIZED_LIST_SCORING:
                # Before 1.35 kube-scheduler may pick the vGPU alternative's node while slices are
                # free (test_mig_vs_vgpu.py checks the preference where the release has it).
                manifest["spec"]["nodeSelector"] = {"kubernetes.io/hostname": NODES["nvidia"]}
            result = kube.create(manifest, "-n", namespace)
            assert result.returncode == 0, f"{kind.name}: {result.stderr}"
        bound: dict[str, Bound] = {}
        for kind in KINDS:
            bound[kind.name] = wait_for(
                lambda name=kind.name: scheduled(kube, namespace, name),  # type: ignore[misc]
                90,
                what=lambda name=kind.name: f"{name} bound with allocated claims: {why_pending(kube, namespace, name)}",  # type: ignore[misc]
            )
        yield namespace, bound
    finally:  # also when a Pod never bound: its claims would hold devices for the later scenarios
        kube.force_delete_pods(namespace)


@pytest.mark.parametrize("kind", KINDS, ids=[k.name for k in KINDS])
def test_legacy_pod_is_converted_and_scheduled(
    kind: Kind,
    legacy_pods: tuple[str, dict[str, Bound]],
    kube: Kube,
    gpu_cluster: list[dict[str, Any]],
    observations: dict[str, Any],
) -> None:
    namespace, pods = legacy_pods
    stored, claims = pods[kind.name]
    # The rewrite: no legacy name left, a claim from a managed template, the conversion recorded.
    assert legacy_keys(stored, LEGACY_NAMES) == []
    assert CONVERTED in stored["metadata"]["annotations"]
    refs = stored["spec"]["resourceClaims"]
    assert [r["name"] for r in refs] == ["gpu-main"] and refs[0]["resourceClaimTemplateName"].startswith("dra-bridge-")
    assert stored["spec"]["containers"][0]["resources"]["claims"] == [{"name": "gpu-main"}]
    template = kube.get("resourceclaimtemplates", refs[0]["resourceClaimTemplateName"], namespace)
    assert template and template["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "dra-bridge"
    # The claim: made by kube-controller-manager from that template, owned by the Pod.
    (claim,) = claims
    assert claim["metadata"]["ownerReferences"][0]["name"] == kind.name
    assert claim["metadata"]["labels"]["dra-bridge.io/template"] == template["metadata"]["name"]
    assert claim["spec"] == template["spec"]["spec"]
    # The allocation: on a node and a device of the expected kind.
    (result,) = allocated_devices(claims)
    node, device = device_index(gpu_cluster)[(result["driver"], result["pool"], result["device"])]
    assert stored["spec"]["nodeName"] == node
    observations[f"legacy {kind.name}"] = {
        "node": node,
        "device": result["device"],
        "request": result["request"],
        **({"consumed": result["consumedCapacity"]} if "consumedCapacity" in result else {}),
    }
    check_landing(kind, node=node, device=device, result=result)


def check_landing(kind: Kind, *, node: str, device: dict[str, Any], result: dict[str, Any]) -> None:
    driver = result["driver"]
    consumed = result.get("consumedCapacity") or {}
    if kind.lands_on == "whole":
        assert node in (NODES["nvidia"], NODES["example"])
        assert driver == "gpu.example.com" or attribute(device, "type") == "gpu"
    elif kind.lands_on == "partition":
        assert node == NODES["nvidia"]
        assert (attribute(device, "type"), attribute(device, "profile")) == ("mig", "1g.5gb")
    elif kind.lands_on == "share" or (kind.lands_on == "memory-share" and device.get("allowMultipleAllocations")):
        # A share of a device that serves many claims: HAMi-core's vGPU or the example driver.
        assert node in (NODES["hami"], NODES["example"]) and device.get("allowMultipleAllocations") is True
        assert result.get("shareID")
        if kind.memory is not None:
            assert parse_quantity(consumed["memory"]) == parse_quantity(kind.memory)
        if kind.compute is not None:
            assert consumed.get("cores", consumed.get("compute")) == kind.compute
    else:
        # A memory-only share may also take a whole NVIDIA GPU of at least that memory: the catalogue
        # lists the NVIDIA driver for memory shares (it has no compute capacity to share).
        assert node == NODES["nvidia"] and attribute(device, "type") == "gpu"
        if kind.memory is not None:
            assert parse_quantity(device["capacity"]["memory"]["value"]) >= parse_quantity(kind.memory)


def test_pods_of_a_deployment_arrive_without_a_name_and_are_converted(
    bridge: Any, kube: Kube, namespace: str, gpu_cluster: list[dict[str, Any]], observations: dict[str, Any]
) -> None:
    spec = pod("trainer", {"nvidia.com/gpumem": "1024", "nvidia.com/gpucores": "5"})["spec"]
    template = {"metadata": {"labels": {"app": "trainer"}}, "spec": spec}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "trainer", "namespace": namespace},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "trainer"}}, "template": template},
    }
    kube.apply(deployment)

    def both_bound() -> list[tuple[dict[str, Any], list[dict[str, Any]]]] | None:
        names = [p["metadata"]["name"] for p in kube.items("pods", "-n", namespace, "-l", "app=trainer")]
        done = [scheduled(kube, namespace, n) for n in names]
        return [d for d in done if d] if len(names) == 2 and all(done) else None

    bound = wait_for(both_bound, 90, what="both Deployment Pods bound with allocated claims")
    templates = set()
    for stored, claims in bound:
        assert stored["metadata"]["generateName"].startswith("trainer-")
        assert legacy_keys(stored, {"nvidia.com/gpumem", "nvidia.com/gpucores"}) == []
        templates.add(stored["spec"]["resourceClaims"][0]["resourceClaimTemplateName"])
        (result,) = allocated_devices(claims)
        assert result["consumedCapacity"] in ({"memory": "1Gi", "cores": "5"}, {"memory": "1Gi", "compute": "5"})
    assert len(templates) == 1  # one content-addressed template serves every replica
    observations["deployment"] = {
        "pods": sorted(s["metadata"]["name"] for s, _ in bound),
        "template": templates.pop(),
        "devices": sorted(f"{r['pool']}/{r['device']}" for _, c in bound for r in allocated_devices(c)),
    }


def test_server_side_dry_run_creates_no_template(bridge: Any, kube: Kube, namespace: str) -> None:
    manifest = json.dumps(pod("dry", {"nvidia.com/gpu": "2"}))
    out = kube.kubectl("create", "-n", namespace, "--dry-run=server", "-o", "json", "-f", "-", input=manifest)
    converted = json.loads(out.stdout)
    name = converted["spec"]["resourceClaims"][0]["resourceClaimTemplateName"]  # the answer is converted...
    assert legacy_keys(converted, {"nvidia.com/gpu"}) == []
    assert kube.items("resourceclaimtemplates", "-n", namespace) == []  # ...but nothing was written
    assert kube.get("resourceclaimtemplates", name, namespace) is None
    assert kube.get("pod", "dry", namespace) is None
