"""``dra-bridge report --cluster`` against the real apiserver: what still uses legacy requests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from tests.e2e.helpers import NODES, Kube, pod, scheduled, wait_for
from tests.e2e.releases import PRIORITIZED_LIST_SCORING

pytestmark = pytest.mark.e2e

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


# The report reads workloads; their Pods need not run. Kept off every node, they never reach the
# scheduler's device allocation (kube-scheduler 1.34.4 panics in its consumable-capacity check on
# some of them and exits, which would leave every later test without a scheduler).
NOWHERE = {"e2e.dra-bridge.io/nowhere": "true"}


def deployment(name: str, namespace: str, limits: dict[str, str], replicas: int = 2) -> dict[str, Any]:
    spec = pod(name, limits)["spec"]
    spec["nodeSelector"] = dict(NOWHERE)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": spec},
        },
    }


def test_report_from_the_cluster(bridge: Any, kube: Kube, namespace: str) -> None:
    legacy_ns = kube.namespace("e2e-report-legacy", {"dra-bridge.io/ignore": "true"})
    # A Deployment whose manifest still asks the old way (its Pods are converted when created),
    # one in an opted-out namespace, one that cannot be converted, and a Pod already converted.
    kube.apply(deployment("trainer", namespace, {"nvidia.com/gpu": "2"}))
    kube.apply(deployment("old-style", legacy_ns, {"nvidia.com/gpu": "1"}, replicas=1))
    half = deployment("half", namespace, {"nvidia.com/gpu": "1"}, replicas=1)  # its Pods will be refused
    half["spec"]["template"]["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpumem-percentage": "150"}}
    kube.apply(half)
    converted = pod("converted", {"nvidia.com/gpu": "1"})
    converted["spec"]["nodeSelector"] = dict(NOWHERE)
    assert kube.create(converted, "-n", namespace).returncode == 0

    env = {**os.environ, "KUBECONFIG": str(kube.kubeconfig)}
    result = subprocess.run(
        [sys.executable, "-m", "webhook", "report", "--cluster", "-o", "json", "--timeout", "60"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = {(r["namespace"], r["kind"], r["name"]): r for r in json.loads(result.stdout)["workloads"]}
    trainer = rows[(namespace, "Deployment", "trainer")]
    assert (
        trainer["status"] == "convertible"
        and trainer["gpus"] == 4
        and trainer["becomes"] == "main: 2 whole devices (nvidia)"
    )
    assert rows[(legacy_ns, "Deployment", "old-style")]["status"] == "opted-out"
    assert rows[(namespace, "Deployment", "half")]["status"] == "cannot-convert"
    assert "150 is more than one whole device" in rows[(namespace, "Deployment", "half")]["becomes"]
    # Converted Pods and the ReplicaSets/Pods a Deployment owns are not reported again.
    assert (namespace, "Pod", "converted") not in rows
    assert not [k for k in rows if k[0] == namespace and k[1] in ("ReplicaSet", "Pod")]


POOL = "e2e.dra-bridge.io/pool"
PLUGIN_NODE = "gpu-plugin-0"


def report_cluster(kube: Kube, *args: str) -> dict[str, Any]:
    env = {**os.environ, "KUBECONFIG": str(kube.kubeconfig)}
    result = subprocess.run(
        [sys.executable, "-m", "webhook", "report", "--cluster", "-o", "json", "--timeout", "60", *args],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_the_fleet_from_the_cluster(bridge: Any, kube: Kube, namespace: str) -> None:
    # A converted Pod whose claim the scheduler allocates on the NVIDIA DRA node (before any node
    # advertises a legacy name, so the conversion is the usual one)...
    on_dra = pod("on-dra", {"nvidia.com/gpu": "1"})
    if not PRIORITIZED_LIST_SCORING:  # 1.34 does not rank firstAvailable alternatives across nodes
        on_dra["spec"]["nodeSelector"] = {"kubernetes.io/hostname": NODES["nvidia"]}
    assert kube.create(on_dra, "-n", namespace).returncode == 0
    _, claims = wait_for(lambda: scheduled(kube, namespace, "on-dra"), 90, what="the Pod's claim to be allocated")
    legacy_ns = kube.namespace("e2e-fleet-legacy", {"dra-bridge.io/ignore": "true"})
    kube.kubectl("label", "node", NODES["nvidia"], f"{POOL}=dra", "--overwrite")
    try:
        # ...and a device-plugin node (GPU Feature Discovery's product label, nvidia.com/gpu in its
        # status), tainted so nothing else lands there, with a legacy Pod bound to it.
        taint = [{"key": "e2e.dra-bridge.io/device-plugin", "value": "true", "effect": "NoSchedule"}]
        kube.cp.create_node(
            PLUGIN_NODE, labels={POOL: "plugin", "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}, taints=taint
        )
        gpus = {"status": {"capacity": {"nvidia.com/gpu": "4"}, "allocatable": {"nvidia.com/gpu": "4"}}}
        kube.kubectl("patch", "node", PLUGIN_NODE, "--subresource=status", "--type=merge", "-p", json.dumps(gpus))
        bound = pod("on-plugin", {"nvidia.com/gpu": "2"})
        bound["spec"]["nodeName"] = PLUGIN_NODE
        assert kube.create(bound, "-n", legacy_ns).returncode == 0

        data = report_cluster(kube, "--pool-label", POOL)
    finally:
        kube.force_delete_pods(legacy_ns)
        kube.kubectl("delete", "node", PLUGIN_NODE, "--wait=false", check=False)
        kube.kubectl("label", "node", NODES["nvidia"], f"{POOL}-", check=False)

    fleet = data["fleet"]
    assert fleet["poolLabels"] == [POOL]
    pools = {p["name"]: p for p in fleet["pools"]}
    plugin, dra = pools["plugin"], pools["dra"]
    assert plugin["mode"] == "device-plugin" and plugin["nodes"] == 1 and plugin["devicePlugins"] == ["nvidia.com/gpu"]
    assert plugin["workloads"] == [f"Pod/{legacy_ns}/on-plugin"] and plugin["legacyGpus"] == 2
    assert plugin["switch"].startswith("device plugin (nvidia.com/gpu) to DRA: 1 workload(s) holding 2 GPU(s)")
    assert dra["mode"] == "dra" and dra["drivers"] == ["gpu.nvidia.com"] and dra["claims"] >= 1
    capacity = {(c["pool"], c["sku"], c["kind"], c["via"]): c for c in fleet["capacity"]}
    on_plugin = capacity[("plugin", "NVIDIA-A100-SXM4-80GB", "device-plugin", "nvidia.com/gpu")]
    assert (on_plugin["allocated"], on_plugin["allocatable"]) == (2, 4)
    # The DRA node publishes two whole A100 80GB and five MIG devices of an A100 40GB (helpers.nvidia_slice).
    whole = capacity[("dra", "NVIDIA A100-SXM4-80GB", "dra", "gpu.nvidia.com")]
    assert (
        whole["allocatable"] == 2
        and capacity[("dra", "NVIDIA A100-SXM4-40GB", "dra", "gpu.nvidia.com")]["allocatable"] == 5
    )
    (result,) = [r for c in claims for r in c["status"]["allocation"]["devices"]["results"]]
    assert result["device"].startswith("gpu-") and whole["allocated"] >= 1  # the claim's whole GPU, at least
    # The converted Pod's tenant uses DRA devices; the other DRA nodes carry no pool label.
    tenant = next(r["tenant"] for r in data["workloads"] if r["namespace"] == legacy_ns)
    assert tenant in plugin["tenants"]
    assert any(t["claims"] >= 1 and t["draDevices"] >= 1 for t in fleet["tenants"])
    assert pools["-"]["drivers"] == ["gpu.example.com", "hami-core-gpu.project-hami.io"]
