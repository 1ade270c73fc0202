"""KAR-0004: a physical fractional GPU and a vGPU give the same thing.

The same workload asks for a MIG 1g.5gb slice (``nvidia.com/mig-1g.5gb: 1``) and for what a 1g.5gb
is worth as a HAMi vGPU (``nvidia.com/gpumem: 4769`` MiB = 5 GB, ``nvidia.com/gpucores: 15`` = 1/7 of
the SMs, rounded up), two almost identical Pods each. Both must get one device each, the same
memory visible (within the profile name's rounding: "5gb" is 4.5-5.5 GB), and isolation: the MIG
Pods different slices, the vGPU Pods distinct shares.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import pytest

from tests.e2e.helpers import (
    NODES,
    Kube,
    allocated_devices,
    attribute,
    device_index,
    pod,
    scheduled,
    wait_for,
    why_pending,
)
from tests.e2e.releases import PRIORITIZED_LIST_SCORING, skip_before
from webhook.translate.quantity import parse_quantity

pytestmark = pytest.mark.e2e

GB = 10**9
MIG = {"nvidia.com/mig-1g.5gb": "1"}
VGPU = {"nvidia.com/gpumem": "4769", "nvidia.com/gpucores": "15"}


def test_mig_slice_and_equivalent_vgpu_are_consistent(
    bridge: Any, kube: Kube, namespace: str, gpu_cluster: list[dict[str, Any]], observations: dict[str, Any]
) -> None:
    workloads = {"mig-a": MIG, "mig-b": MIG, "vgpu-a": VGPU, "vgpu-b": VGPU}
    for name, limits in workloads.items():
        manifest = pod(name, limits)
        if not PRIORITIZED_LIST_SCORING:
            # Before 1.35 kube-scheduler may pick the node of a later alternative while the first
            # is free elsewhere (a MIG request its vGPU, a vGPU request the example driver; see the
            # test below): compare a slice with a HAMi-core vGPU, each on the node that has it.
            node = NODES["nvidia"] if limits is MIG else NODES["hami"]
            manifest["spec"]["nodeSelector"] = {"kubernetes.io/hostname": node}
        result = kube.create(manifest, "-n", namespace)
        assert result.returncode == 0, result.stderr
    results = {}
    for name in workloads:
        _, claims = wait_for(
            lambda n=name: scheduled(kube, namespace, n),  # type: ignore[misc]
            90,
            what=lambda n=name: f"{n} bound: {why_pending(kube, namespace, n)}",  # type: ignore[misc]
        )
        results[name] = allocated_devices(claims)
    index = device_index(gpu_cluster)

    def published(result: dict[str, Any]) -> dict[str, Any]:
        return index[(result["driver"], result["pool"], result["device"])][1]

    # Same count: one device per Pod either way.
    assert {name: len(r) for name, r in results.items()} == dict.fromkeys(workloads, 1)
    mig = [results["mig-a"][0], results["mig-b"][0]]
    vgpu = [results["vgpu-a"][0], results["vgpu-b"][0]]
    assert all(attribute(published(r), "profile") == "1g.5gb" for r in mig)
    assert all(r["driver"] == "hami-core-gpu.project-hami.io" for r in vgpu)

    # Same memory visible: the slice's memory capacity vs the vGPU's consumed memory.
    mig_memory = [parse_quantity(published(r)["capacity"]["memory"]["value"]) for r in mig]
    vgpu_memory = [parse_quantity(r["consumedCapacity"]["memory"]) for r in vgpu]
    for memory in mig_memory + vgpu_memory:
        assert round(memory / GB) == 5, f"{memory / GB:.3f} GB is not what a 1g.5gb profile stands for"
    assert max(vgpu_memory) <= min(mig_memory)  # a vGPU never shows more than the slice would
    # Compute: 15 % of the SMs vs one of seven slices.
    assert all(Fraction(r["consumedCapacity"]["cores"]) >= Fraction(100, 7) for r in vgpu)

    # Isolation: two different slices; two distinct shares (of one GPU or two).
    assert mig[0]["device"] != mig[1]["device"]
    share_ids = [r.get("shareID") for r in vgpu]
    assert all(share_ids) and share_ids[0] != share_ids[1]

    observations["KAR-0004 MIG"] = [
        {"device": r["device"], "memory": published(r)["capacity"]["memory"]["value"]} for r in mig
    ]
    observations["KAR-0004 vGPU"] = [
        {"device": r["device"], "shareID": r["shareID"], "consumed": r["consumedCapacity"]} for r in vgpu
    ]


@skip_before(
    35,
    "kube-scheduler scores firstAvailable alternatives across nodes from 1.35 (kubernetes#134711); before, a "
    "MIG request may get its HAMi-core vGPU alternative on another node while 1g.5gb slices are free",
)
def test_a_mig_request_prefers_a_free_slice_to_its_vgpu_alternative_on_another_node(
    bridge: Any, kube: Kube, namespace: str, gpu_cluster: list[dict[str, Any]]
) -> None:
    names = [f"mig-{i}" for i in range(3)]  # three of the four 1g.5gb slices; HAMi-core has room too
    for name in names:
        result = kube.create(pod(name, MIG), "-n", namespace)
        assert result.returncode == 0, result.stderr
    index = device_index(gpu_cluster)
    for name in names:
        _, claims = wait_for(
            lambda n=name: scheduled(kube, namespace, n),  # type: ignore[misc]
            90,
            what=lambda n=name: f"{n} bound: {why_pending(kube, namespace, n)}",  # type: ignore[misc]
        )
        (result,) = allocated_devices(claims)
        assert attribute(index[(result["driver"], result["pool"], result["device"])][1], "profile") == "1g.5gb", result
