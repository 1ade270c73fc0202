"""``dra-bridge report --cluster`` against the real apiserver: what still uses legacy requests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from tests.e2e.helpers import Kube, pod

pytestmark = pytest.mark.e2e

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def deployment(name: str, namespace: str, limits: dict[str, str], replicas: int = 2) -> dict[str, Any]:
    spec = pod(name, limits)["spec"]
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
    assert kube.create(pod("converted", {"nvidia.com/gpu": "1"}), "-n", namespace).returncode == 0

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
