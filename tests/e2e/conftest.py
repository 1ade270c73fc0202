"""Session fixtures for the end-to-end tests: one real control plane, fake GPU nodes publishing
ResourceSlices, the project's DeviceClasses and a ``dra-bridge serve`` process registered through
the shipped webhook configurations. Reusable by later scenarios (quota): take ``kube``, ``bridge``
and ``namespace``, and the helpers in ``tests/e2e/helpers.py``.

The control plane is built from Go modules by build-control-plane.sh (instant once cached). Without
Go and without cached binaries the tests are skipped, unless ``DRA_BRIDGE_E2E=require`` (CI) turns
that into a failure.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.availability import control_plane_bin_or_skip
from tests.e2e.controlplane import DRA_FEATURE_GATES, ControlPlane
from tests.e2e.helpers import (
    BRIDGE_NAMESPACE,
    DEVICECLASSES,
    BridgeServer,
    Kube,
    gpu_inventory,
    pod,
    wait_for,
    webhook_configurations,
)
from tests.e2e.releases import RELEASE, SHARES_CHECKED_PER_DEVICE

# ConfigMap watches skip the apiserver's watch cache and go to etcd, so that compacting etcd makes a
# real "410 Gone" for the adapter's relist test (tests/e2e/test_kube_cluster.py).
APISERVER_ARGS = ["--watch-cache-sizes=configmaps#0"]


@pytest.fixture(scope="session")
def timings() -> dict[str, float]:
    """Seconds spent in each session stage; printed at the end of the run."""
    return {}


@pytest.fixture(scope="session")
def observations() -> dict[str, Any]:
    """What the scenarios saw (devices, memory, shareIDs); printed at the end of the run."""
    return {}


@pytest.fixture(scope="session")
def bin_dir(timings: dict[str, float]) -> Path:
    started = time.monotonic()
    path = control_plane_bin_or_skip()
    timings["binaries"] = time.monotonic() - started
    return path


@pytest.fixture(scope="session")
def control_plane(
    bin_dir: Path, tmp_path_factory: pytest.TempPathFactory, timings: dict[str, float], observations: dict[str, Any]
) -> Iterator[ControlPlane]:
    started = time.monotonic()
    cp = ControlPlane(bin_dir, tmp_path_factory.mktemp("control-plane"), DRA_FEATURE_GATES, APISERVER_ARGS)
    cp.start()
    timings["control plane"] = time.monotonic() - started
    version = cp.kubectl("version", "-o", "json").stdout
    observations["kubernetes"] = {
        "release": RELEASE,
        "server": json.loads(version)["serverVersion"]["gitVersion"],
        # What each release needs: the gates the binaries accepted, and those they refused or lock (GA).
        "feature gates": {comp: cp.effective_feature_gates[comp] for comp in sorted(cp.effective_feature_gates)},
        "dropped gates": {comp: sorted(d) for comp, d in sorted(cp.dropped_feature_gates.items()) if d},
    }
    assert observations["kubernetes"]["server"] == RELEASE, f"asked for {RELEASE}, the apiserver is {version}"
    yield cp
    cp.stop()


@pytest.fixture(scope="session")
def kube(control_plane: ControlPlane) -> Kube:
    return Kube(control_plane)


@pytest.fixture(scope="session")
def gpu_cluster(kube: Kube, timings: dict[str, float]) -> list[dict[str, Any]]:
    """Three kubelet-less GPU nodes, their drivers' ResourceSlices, the project's DeviceClasses."""
    started = time.monotonic()
    slices = gpu_inventory(split_shared=not SHARES_CHECKED_PER_DEVICE)
    for node in {s["spec"]["nodeName"] for s in slices}:
        kube.cp.create_node(node)
    kube.kubectl("apply", "--server-side", "-f", str(DEVICECLASSES))
    kube.apply(slices)
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": BRIDGE_NAMESPACE}})
    timings["gpu nodes"] = time.monotonic() - started
    return slices


@pytest.fixture(scope="session")
def bridge(
    gpu_cluster: list[dict[str, Any]],
    kube: Kube,
    tmp_path_factory: pytest.TempPathFactory,
    timings: dict[str, float],
) -> Iterator[BridgeServer]:
    """``dra-bridge serve`` on 127.0.0.1, registered with the shipped webhook configurations, and
    already called by the apiserver (a server-side dry-run of a legacy Pod comes back converted)."""
    started = time.monotonic()
    server = BridgeServer(work_dir=tmp_path_factory.mktemp("dra-bridge"), kubeconfig=kube.kubeconfig)
    server.start()
    timings["dra-bridge ready"] = time.monotonic() - started
    try:
        kube.apply(webhook_configurations(port=server.port, ca_pem=server.ca_pem))
        probe = kube.namespace("e2e-probe")
        legacy = json.dumps(pod("probe", {"nvidia.com/gpu": "1"}))

        def converted() -> bool:
            out = kube.kubectl("create", "-n", probe, "--dry-run=server", "-o", "json", "-f", "-", input=legacy)
            return bool(json.loads(out.stdout)["spec"].get("resourceClaims"))

        wait_for(converted, 30, what="the apiserver to call the mutating webhook")
        timings["webhooks effective"] = time.monotonic() - started
        yield server
    finally:
        server.stop()
        if server.log.exists():
            shutil.copy(server.log, kube.cp.work_dir / "logs" / "dra-bridge.log")


@pytest.fixture
def namespace(kube: Kube, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test; its Pods are force-deleted afterwards so their devices free up."""
    name = kube.namespace(f"e2e-{request.node.name.removeprefix('test_')[:24]}")
    yield name
    kube.force_delete_pods(name)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    session = terminalreporter.config._e2e_report if hasattr(terminalreporter.config, "_e2e_report") else None
    if not session:
        return
    terminalreporter.section("e2e timings and observations")
    for key, value in session["timings"].items():
        terminalreporter.write_line(f"{key:>22}: {value:6.1f}s")
    for key, value in session["observations"].items():
        terminalreporter.write_line(f"{key}: {json.dumps(value, sort_keys=True)}")


@pytest.fixture(scope="session", autouse=True)
def _report(request: pytest.FixtureRequest, timings: dict[str, float], observations: dict[str, Any]) -> None:
    request.config._e2e_report = {"timings": timings, "observations": observations}  # type: ignore[attr-defined]
