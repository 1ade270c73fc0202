"""Moving a cluster to DRA, on the real control plane: a node pool still served by a device plugin
beside the DRA nodes, a tenant in observe mode, an extended resource a DeviceClass serves natively
(KEP-5004) under the tenant's quota, and HAMi's model pins on nodes with two GPU products.

Each scenario adds what it needs (a node, a slice, a policy, a DeviceClass) and removes it
afterwards, so the other scenarios of the session see the usual three GPU nodes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.e2e.helpers import (
    BRIDGE_NAMESPACE,
    NODES,
    REPO_ROOT,
    BridgeServer,
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
from tests.e2e.releases import skip_before

pytestmark = pytest.mark.e2e

PLUGIN_NODE = "gpu-plugin-0"
PINNING_NODE = "gpu-pinning-0"
CONVERTED = "dra-bridge.io/converted"


def dra_bridge(*args: str, kube: Kube) -> subprocess.CompletedProcess[str]:
    """The ``dra-bridge`` command line, as an admin runs it against the cluster."""
    env = {**os.environ, "KUBECONFIG": str(kube.kubeconfig)}
    return subprocess.run(
        [sys.executable, "-m", "webhook", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def audit_records(bridge: BridgeServer) -> list[dict[str, Any]]:
    return [json.loads(line) for line in bridge.audit_log.read_text().splitlines() if line.strip()]


def policy_configmap(name: str, tenants: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    document = {"apiVersion": "dra-bridge.io/v1alpha1", "kind": "QuotaPolicy", "tenants": tenants, **extra}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": BRIDGE_NAMESPACE, "labels": {"dra-bridge.io/policy": "true"}},
        "data": {"policy.yaml": yaml.safe_dump(document)},
    }


def load_policy(kube: Kube, bridge: BridgeServer, configmap: dict[str, Any]) -> None:
    """Apply a policy ConfigMap and wait until the webhook serves that version of it."""
    kube.apply(configmap)
    stored = kube.get("configmap", configmap["metadata"]["name"], BRIDGE_NAMESPACE)
    assert stored
    loaded = f"{configmap['metadata']['name']}@{stored['metadata']['resourceVersion']}"
    wait_for(lambda: loaded in bridge.get("/readyz")[1], 30, what=f"policy {loaded} to be loaded")


def delete_policy(kube: Kube, name: str) -> None:
    kube.kubectl("delete", "configmap", name, "-n", BRIDGE_NAMESPACE, "--ignore-not-found")


def with_node_selector(manifest: dict[str, Any], node: str) -> dict[str, Any]:
    manifest["spec"]["nodeSelector"] = {"kubernetes.io/hostname": node}
    return manifest


def converted_on_dry_run(kube: Kube, namespace: str, manifest: dict[str, Any]) -> bool:
    out = kube.kubectl(
        "create", "-n", namespace, "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(manifest)
    )
    return bool(json.loads(out.stdout)["spec"].get("resourceClaims"))


# -- a mixed cluster: a device-plugin node pool beside the DRA nodes --------------------------------
@pytest.fixture
def plugin_node(bridge: BridgeServer, kube: Kube, namespace: str) -> Iterator[str]:
    """A node served by the NVIDIA device plugin: ``nvidia.com/gpu: 4`` in its allocatable, no
    ResourceSlices. Removed afterwards (its Pods first)."""
    kube.cp.create_node(PLUGIN_NODE, extended={"nvidia.com/gpu": "4"})
    probe = with_node_selector(pod("probe", {"nvidia.com/gpu": "1"}), PLUGIN_NODE)
    wait_for(lambda: not converted_on_dry_run(kube, namespace, probe), 30, what="the webhook to see the node")
    yield PLUGIN_NODE
    kube.force_delete_pods(namespace)
    kube.kubectl("delete", "node", PLUGIN_NODE, "--wait=false")


def test_mixed_cluster_every_pod_is_scheduled_converted_or_left_for_the_device_plugin(
    bridge: BridgeServer,
    kube: Kube,
    namespace: str,
    plugin_node: str,
    gpu_cluster: list[dict[str, Any]],
    observations: dict[str, Any],
) -> None:
    pods = {
        "on-plugin-node": with_node_selector(pod("on-plugin-node", {"nvidia.com/gpu": "1"}), plugin_node),
        "on-plugin-node-2": with_node_selector(pod("on-plugin-node-2", {"nvidia.com/gpu": "2"}), plugin_node),
        "on-dra-node": with_node_selector(pod("on-dra-node", {"nvidia.com/gpu": "1"}), NODES["nvidia"]),
        "anywhere": pod("anywhere", {"nvidia.com/gpu": "1"}),
    }
    created = {name: kube.create(manifest, "-n", namespace) for name, manifest in pods.items()}
    for name, result in created.items():
        assert result.returncode == 0, f"{name}: {result.stderr}"
    assert "left for the device plugin" in created["on-plugin-node"].stderr, created["on-plugin-node"].stderr

    bound = {
        name: wait_for(
            lambda n=name: scheduled(kube, namespace, n),  # type: ignore[misc]
            90,
            what=lambda n=name: f"{n} bound: {why_pending(kube, namespace, n)}",  # type: ignore[misc]
        )
        for name in pods
    }
    index = device_index(gpu_cluster)
    for name in ("on-plugin-node", "on-plugin-node-2"):
        stored, claims = bound[name]
        # Unconverted: the device plugin's resource is still there, no claim, and it ran where it is served.
        assert legacy_keys(stored, {"nvidia.com/gpu"}) == ["nvidia.com/gpu"]
        assert not stored["spec"].get("resourceClaims") and claims == []
        assert CONVERTED not in (stored["metadata"].get("annotations") or {})
        assert stored["spec"]["nodeName"] == plugin_node
    for name in ("on-dra-node", "anywhere"):
        stored, claims = bound[name]
        assert legacy_keys(stored, {"nvidia.com/gpu"}) == [] and CONVERTED in stored["metadata"]["annotations"]
        (result,) = allocated_devices(claims)
        node, _ = index[(result["driver"], result["pool"], result["device"])]
        assert stored["spec"]["nodeName"] == node != plugin_node
    assert bound["on-dra-node"][0]["spec"]["nodeName"] == NODES["nvidia"]

    reasons = {
        r["name"]: r["reason"]
        for r in audit_records(bridge)
        if r["webhook"] == "mutate" and r["namespace"] == namespace and not r["dryRun"]
    }
    assert reasons == {
        "on-plugin-node": "left-for-device-plugin",
        "on-plugin-node-2": "left-for-device-plugin",
        "on-dra-node": "converted",
        "anywhere": "converted",
    }
    observations["mixed cluster"] = {name: stored["spec"]["nodeName"] for name, (stored, _) in bound.items()}


# -- observe mode, then convert -----------------------------------------------------------------
def test_observe_mode_admits_unchanged_with_warnings_and_the_audit_counts_it(
    bridge: BridgeServer, kube: Kube, namespace: str, observations: dict[str, Any]
) -> None:
    tenant = {"name": "e2e-observer", "namespaces": [namespace], "rollout": "observe", "limits": {"devices": {"*": 2}}}
    load_policy(kube, bridge, policy_configmap("e2e-observe", [tenant]))
    try:
        small = kube.create(pod("small", {"nvidia.com/gpu": "1"}), "-n", namespace)
        large = kube.create(pod("large", {"nvidia.com/gpu": "3"}), "-n", namespace)
        assert small.returncode == 0 and large.returncode == 0, small.stderr + large.stderr
        assert "dra-bridge (observe): would convert main: nvidia.com/gpu=1 ->" in small.stderr, small.stderr
        assert "quota would refuse it" not in small.stderr
        assert "dra-bridge (observe): quota would refuse it: tenant e2e-observer:" in large.stderr, large.stderr
        for name in ("small", "large"):
            stored = kube.get("pod", name, namespace)
            assert stored and legacy_keys(stored, ["nvidia.com/gpu"]) == ["nvidia.com/gpu"]  # admitted unchanged
            assert not stored["spec"].get("resourceClaims")
            assert CONVERTED not in (stored["metadata"].get("annotations") or {})
        assert kube.items("resourceclaimtemplates", "-n", namespace) == []  # nothing was created

        summary = dra_bridge(
            "audit", "--file", str(bridge.audit_log), "--summary", "--tenant", "e2e-observer", kube=kube
        )
        assert summary.returncode == 0, summary.stderr
        line = "observe: tenant e2e-observer: 2 Pod(s) admitted unchanged would have been converted (4 device(s)); quota would have refused 1"
        assert line in summary.stdout, summary.stdout
        as_json = dra_bridge(
            "audit", "--file", str(bridge.audit_log), "--summary", "--tenant", "e2e-observer", "-o", "json", kube=kube
        )
        observed = json.loads(as_json.stdout)["tenants"]["e2e-observer"]["observed"]
        assert observed == {"pods": 2, "devices": 4, "quotaWouldDeny": 1}, observed
        observations["observe summary"] = line

        # Convert this namespace (one pool of the tenant): the next Pod is rewritten.
        load_policy(kube, bridge, policy_configmap("e2e-observe", [tenant], rolloutNamespaces={namespace: "convert"}))
        after = kube.create(pod("after", {"nvidia.com/gpu": "1"}), "-n", namespace)
        assert after.returncode == 0, after.stderr
        stored = kube.get("pod", "after", namespace)
        assert (
            stored and CONVERTED in stored["metadata"]["annotations"] and legacy_keys(stored, ["nvidia.com/gpu"]) == []
        )
    finally:
        delete_policy(kube, "e2e-observe")


# -- KEP-5004: an extended resource a DeviceClass serves natively, under the tenant's quota --------
NATIVE_CLASS = "e2e-native.nvidia-gpu.example.com"


@pytest.fixture
def native_class(bridge: BridgeServer, kube: Kube, namespace: str) -> Iterator[str]:
    """A DeviceClass serving ``nvidia.com/gpu`` natively from the example driver's GPUs."""
    kube.apply(
        {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "DeviceClass",
            "metadata": {"name": NATIVE_CLASS},
            "spec": {
                "selectors": [{"cel": {"expression": "device.driver == 'gpu.example.com'"}}],
                "extendedResourceName": "nvidia.com/gpu",
            },
        }
    )
    stored = kube.get("deviceclass", NATIVE_CLASS)
    assert stored and stored["spec"].get("extendedResourceName") == "nvidia.com/gpu", (
        f"the apiserver dropped extendedResourceName (DRAExtendedResource off?): {stored}"
    )
    probe = pod("probe", {"nvidia.com/gpu": "1"})
    wait_for(lambda: not converted_on_dry_run(kube, namespace, probe), 30, what="the webhook to see the class")
    yield NATIVE_CLASS
    kube.force_delete_pods(namespace)
    kube.kubectl("delete", "deviceclass", NATIVE_CLASS, "--ignore-not-found")
    wait_for(lambda: converted_on_dry_run(kube, namespace, probe), 30, what="the webhook to forget the class")


@skip_before(34, "DeviceClass extendedResourceName (KEP-5004, DRAExtendedResource)")
def test_native_extended_resource_is_checked_at_admission_and_its_claim_charged(
    bridge: BridgeServer, kube: Kube, namespace: str, native_class: str, observations: dict[str, Any]
) -> None:
    tenant = {"name": "e2e-native", "namespaces": [namespace], "limits": {"devices": {"*": 1}}}
    load_policy(kube, bridge, policy_configmap("e2e-native", [tenant]))
    try:
        refused = kube.create(pod("two", {"nvidia.com/gpu": "2"}), "-n", namespace)
        assert refused.returncode != 0
        assert "tenant e2e-native: devices/*: requested 2, in use 0, limit 1: over by 1" in refused.stderr, (
            refused.stderr
        )
        assert kube.get("pod", "two", namespace) is None

        admitted = kube.create(pod("one", {"nvidia.com/gpu": "1"}), "-n", namespace)
        assert admitted.returncode == 0, admitted.stderr
        stored, _ = wait_for(
            lambda: scheduled(kube, namespace, "one"),
            90,
            what=lambda: f"one bound: {why_pending(kube, namespace, 'one')}",
        )
        assert legacy_keys(stored, {"nvidia.com/gpu"}) == ["nvidia.com/gpu"]  # left alone: the class serves it
        status = stored["status"].get("extendedResourceClaimStatus") or {}
        claim_name = status.get("resourceClaimName")
        assert claim_name, f"kube-scheduler made no claim for the extended resource: {stored['status']}"
        claim = kube.get("resourceclaim", claim_name, namespace)
        assert claim and (claim.get("status") or {}).get("allocation")
        (result,) = allocated_devices([claim])
        assert result["driver"] == "gpu.example.com"

        # The claim kube-scheduler created went through the validating webhook and was charged.
        charged = [
            r
            for r in audit_records(bridge)
            if r["webhook"] == "validate"
            and r["kind"]["kind"] == "ResourceClaim"
            and r["namespace"] == namespace
            and r["name"] == claim_name
        ]
        assert [r["decision"] for r in charged] == ["allowed"], charged
        assert charged[0]["tenant"] == "e2e-native" and charged[0]["quota"], charged
        usage = dra_bridge("policy", "usage", "--tenant", "e2e-native", "-o", "json", kube=kube)
        assert usage.returncode == 0, usage.stderr
        rows = {r["dimension"]: r for r in json.loads(usage.stdout)}
        assert (rows["devices/*"]["used"], rows["devices/*"]["limit"]) == ("1", "1"), rows
        # Full: another Pod asking for the native name is refused at admission.
        again = kube.create(pod("another", {"nvidia.com/gpu": "1"}), "-n", namespace)
        assert again.returncode != 0 and "in use 1, limit 1: over by 1" in again.stderr, again.stderr
        observations["KEP-5004 claim"] = {"claim": claim_name, "device": result["device"], "user": charged[0]["user"]}
    finally:
        delete_policy(kube, "e2e-native")


# -- model pinning: two GPU products on one node ---------------------------------------------------
PRODUCTS = {"gpu-0": "NVIDIA H100 80GB HBM3", "gpu-1": "NVIDIA L40S", "gpu-2": "NVIDIA H100 80GB HBM3"}


def pinning_slice() -> dict[str, Any]:
    devices = [
        {
            "name": name,
            "attributes": {
                "type": {"string": "gpu"},
                "uuid": {"string": f"GPU-9a1b{i:04d}-0000-4000-8000-00000000000{i}"},
                "productName": {"string": product},
            },
            "capacity": {"memory": {"value": "80Gi" if "H100" in product else "48Gi"}},
        }
        for i, (name, product) in enumerate(PRODUCTS.items())
    ]
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": f"{PINNING_NODE}-gpu.nvidia.com"},
        "spec": {
            "driver": "gpu.nvidia.com",
            "nodeName": PINNING_NODE,
            "pool": {"name": PINNING_NODE, "generation": 1, "resourceSliceCount": 1},
            "devices": devices,
        },
    }


@pytest.fixture
def two_products(bridge: BridgeServer, kube: Kube, namespace: str) -> Iterator[dict[str, Any]]:
    """A node whose NVIDIA driver publishes H100s and an L40S. Removed afterwards."""
    kube.cp.create_node(PINNING_NODE)
    published = pinning_slice()
    kube.apply(published)
    yield published
    kube.force_delete_pods(namespace)
    kube.kubectl("delete", "resourceslice", published["metadata"]["name"], "--ignore-not-found")
    kube.kubectl("delete", "node", PINNING_NODE, "--wait=false")


def test_a_pinned_model_is_the_model_allocated(
    bridge: BridgeServer,
    kube: Kube,
    namespace: str,
    two_products: dict[str, Any],
    gpu_cluster: list[dict[str, Any]],
    observations: dict[str, Any],
) -> None:
    uuid_of_l40s = attribute(two_products["spec"]["devices"][1], "uuid")
    pods = {
        "wants-h100": {"nvidia.com/use-gputype": "H100"},
        "wants-l40s": {"nvidia.com/use-gputype": "l40s"},  # a case-insensitive substring, as HAMi applies it
        "wants-uuid": {"nvidia.com/use-gpuuuid": uuid_of_l40s},
        "not-l40s-a100": {"nvidia.com/nouse-gputype": "L40S,A100"},
    }
    # The uuid pin and the L40S pin want the same device: the uuid one first, the other after it.
    for name, pins in pods.items():
        if name == "wants-l40s":
            continue
        result = kube.create(pod(name, {"nvidia.com/gpu": "1"}, annotations=pins), "-n", namespace)
        assert result.returncode == 0, f"{name}: {result.stderr}"
    index = device_index([*gpu_cluster, two_products])
    got: dict[str, tuple[str, str]] = {}
    for name in pods:
        if name == "wants-l40s":
            continue
        _, claims = wait_for(
            lambda n=name: scheduled(kube, namespace, n),  # type: ignore[misc]
            90,
            what=lambda n=name: f"{n} bound: {why_pending(kube, namespace, n)}",  # type: ignore[misc]
        )
        (result,) = allocated_devices(claims)
        _, device = index[(result["driver"], result["pool"], result["device"])]
        got[name] = (result["device"], str(attribute(device, "productName") or attribute(device, "model")))
    assert got["wants-uuid"] == ("gpu-1", "NVIDIA L40S")
    assert got["wants-h100"][1] == "NVIDIA H100 80GB HBM3"
    # Neither an L40S nor an A100: an H100, or an example driver GPU (whose model is neither).
    assert "L40S" not in got["not-l40s-a100"][1] and "A100" not in got["not-l40s-a100"][1]

    # Free the L40S; the L40S pin then gets it, never an H100.
    kube.kubectl("delete", "pod", "wants-uuid", "-n", namespace, "--force", "--grace-period=0")
    result = kube.create(pod("wants-l40s", {"nvidia.com/gpu": "1"}, annotations=pods["wants-l40s"]), "-n", namespace)
    assert result.returncode == 0, result.stderr
    _, claims = wait_for(
        lambda: scheduled(kube, namespace, "wants-l40s"),
        90,
        what=lambda: f"wants-l40s bound: {why_pending(kube, namespace, 'wants-l40s')}",
    )
    (result,) = allocated_devices(claims)
    got["wants-l40s"] = (result["device"], PRODUCTS.get(result["device"], "?"))
    assert result["pool"] == PINNING_NODE and got["wants-l40s"] == ("gpu-1", "NVIDIA L40S")
    observations["model pins"] = got
