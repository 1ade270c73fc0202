"""The fleet section of the migration report, computed from a table of Nodes, slices, claims and Pods."""

from __future__ import annotations

from typing import Any

import pytest

from webhook.audit.fleet import Fleet, WorkloadUse, build_fleet, newest_generation, pod_legacy_requests, pool_of
from webhook.audit.report import build_report, render_html, render_table
from webhook.quota.policy import PolicySet
from webhook.translate.catalogue import CatalogueIndex


def node(name: str, labels: dict[str, str], allocatable: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "status": {"allocatable": {"cpu": "8", **(allocatable or {})}},
    }


def device(name: str, product: str, attribute: str = "productName") -> dict[str, Any]:
    return {"name": name, "attributes": {"type": {"string": "gpu"}, attribute: {"string": product}}}


def resource_slice(node_name: str, driver: str, devices: list[dict[str, Any]], generation: int = 1) -> dict[str, Any]:
    return {
        "kind": "ResourceSlice",
        "metadata": {"name": f"{node_name}-{driver}-{generation}"},
        "spec": {
            "driver": driver,
            "nodeName": node_name,
            "pool": {"name": node_name, "generation": generation, "resourceSliceCount": 1},
            "devices": devices,
        },
    }


def claim(namespace: str, name: str, *results: tuple[str, str, str]) -> dict[str, Any]:
    return {
        "kind": "ResourceClaim",
        "metadata": {"namespace": namespace, "name": name},
        "status": {
            "allocation": {
                "devices": {"results": [{"request": "gpu", "driver": d, "pool": p, "device": n} for d, p, n in results]}
            }
        }
        if results
        else {},
    }


def pod(
    namespace: str,
    name: str,
    node_name: str,
    limits: dict[str, str],
    *,
    owner: tuple[str, str] | None = None,
    phase: str = "Running",
) -> dict[str, Any]:
    meta: dict[str, Any] = {"namespace": namespace, "name": name}
    if owner is not None:
        meta["ownerReferences"] = [{"kind": owner[0], "name": owner[1], "controller": True}]
    return {
        "kind": "Pod",
        "metadata": meta,
        "spec": {"nodeName": node_name, "containers": [{"name": "c", "resources": {"limits": limits}}]},
        "status": {"phase": phase},
    }


def owned(kind: str, namespace: str, name: str, owner: tuple[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"namespace": namespace, "name": name}
    if owner is not None:
        meta["ownerReferences"] = [{"kind": owner[0], "name": owner[1], "controller": True}]
    return {"kind": kind, "metadata": meta, "spec": {}}


GKE = "cloud.google.com/gke-nodepool"
TENANTS = {"ml": "research", "serve": "inference"}

NODES = [
    # a device-plugin pool of A100s (GPU Feature Discovery labels the product)
    node("a-0", {GKE: "a100", "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB"}, {"nvidia.com/gpu": "8"}),
    node("a-1", {GKE: "a100", "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB"}, {"nvidia.com/gpu": "8"}),
    # a DRA pool of H100s, and a node of no known pool with the example driver
    node("h-0", {GKE: "h100"}),
    node("h-1", {GKE: "h100"}),
    node("lonely", {}),
    # a CPU pool
    node("c-0", {GKE: "cpu"}),
]
SLICES = [
    resource_slice("h-0", "gpu.nvidia.com", [device(f"gpu-{i}", "NVIDIA H100 80GB HBM3") for i in range(4)]),
    resource_slice("h-1", "gpu.nvidia.com", [device(f"gpu-{i}", "NVIDIA H100 80GB HBM3") for i in range(4)]),
    # a stale generation of h-1's pool: ignored
    resource_slice("h-1", "gpu.nvidia.com", [device("gpu-9", "NVIDIA H100 80GB HBM3")], generation=0),
    resource_slice(
        "lonely", "gpu.example.com", [device("gpu-0", "LATEST-GPU-MODEL", attribute="gpu.example.com/model")]
    ),
    # a driver the catalogue does not know (not a GPU): ignored
    resource_slice("h-0", "nic.example.com", [device("eth-0", "x")]),
]
CLAIMS = [
    claim("serve", "llm-0", ("gpu.nvidia.com", "h-0", "gpu-0"), ("gpu.nvidia.com", "h-0", "gpu-1")),
    claim("serve", "llm-1", ("gpu.nvidia.com", "h-1", "gpu-0")),
    claim("ml", "pending"),  # not allocated
    claim("ml", "gone", ("gpu.nvidia.com", "h-1", "gpu-9")),  # a device of a stale generation
]
WORKLOADS = [
    owned("Deployment", "ml", "trainer"),
    owned("ReplicaSet", "ml", "trainer-5d", owner=("Deployment", "trainer")),
    pod("ml", "trainer-5d-a", "a-0", {"nvidia.com/gpu": "4"}, owner=("ReplicaSet", "trainer-5d")),
    pod("ml", "trainer-5d-b", "a-1", {"nvidia.com/gpu": "4"}, owner=("ReplicaSet", "trainer-5d")),
    pod("serve", "notebook", "a-0", {"nvidia.com/gpu": "1"}),
    pod("serve", "done", "a-1", {"nvidia.com/gpu": "8"}, phase="Succeeded"),  # holds nothing any more
    pod("ml", "unbound", "", {"nvidia.com/gpu": "1"}),  # pending: not on a node
    pod("ml", "cpu-only", "c-0", {}),
]


def tenant_of(namespace: str) -> str:
    return TENANTS.get(namespace, "-")


@pytest.fixture
def fleet(index: CatalogueIndex) -> Fleet:
    return build_fleet(
        nodes=NODES,
        slices=SLICES,
        claims=CLAIMS,
        workloads=WORKLOADS,
        index=index,
        tenant_of=tenant_of,
        legacy_rows=[WorkloadUse("research", 8), WorkloadUse("research", 1), WorkloadUse("inference", 2)],
    )


def test_pools_come_from_the_first_known_label_or_the_one_given() -> None:
    assert pool_of(node("n", {GKE: "a", "node.kubernetes.io/instance-type": "x"})) == "a"
    assert pool_of(node("n", {"eks.amazonaws.com/nodegroup": "g"})) == "g"
    assert pool_of(node("n", {"node.kubernetes.io/instance-type": "p4d.24xlarge"})) == "p4d.24xlarge"
    assert pool_of(node("n", {})) == "-"
    assert pool_of(node("n", {GKE: "a", "team": "t"}), "team") == "t"
    assert pool_of(node("n", {GKE: "a"}), "team") == "-"


def test_capacity_per_pool_and_sku(fleet: Fleet) -> None:
    rows = {(c.pool, c.sku, c.kind, c.via): (c.nodes, c.allocated, c.allocatable) for c in fleet.capacity}
    assert rows == {
        # running Pods bound there: 4 + 4 + 1 (the finished one and the unbound one hold nothing)
        ("a100", "NVIDIA-A100-SXM4-40GB", "device-plugin", "nvidia.com/gpu"): (2, 9, 16),
        # the newest generation's devices only; the claim on a stale device counts nowhere
        ("h100", "NVIDIA H100 80GB HBM3", "dra", "gpu.nvidia.com"): (2, 3, 8),
        # the product attribute the catalogue names for the driver, written qualified
        ("-", "LATEST-GPU-MODEL", "dra", "gpu.example.com"): (1, 0, 1),
    }


def test_pools_say_what_serves_them_and_what_a_switch_would_change(fleet: Fleet) -> None:
    pools = {p.name: p for p in fleet.pools}
    assert set(pools) == {"a100", "h100", "-", "cpu"}
    a100 = pools["a100"]
    assert a100.mode == "device-plugin" and a100.device_plugins == ("nvidia.com/gpu",) and a100.drivers == ()
    assert a100.workloads == ("Deployment/ml/trainer", "Pod/serve/notebook")  # Pods traced to their owner
    assert a100.legacy_gpus == 9 and a100.tenants == ("inference", "research")
    assert a100.switch == (
        "device plugin (nvidia.com/gpu) to DRA: 2 workload(s) holding 9 GPU(s) here would be converted "
        "when their Pods are recreated"
    )
    h100 = pools["h100"]
    assert h100.mode == "dra" and h100.drivers == ("gpu.nvidia.com",) and h100.claims == 2
    assert h100.tenants == ("inference",) and h100.switch == "on DRA already"
    assert pools["cpu"].mode == "none" and pools["cpu"].switch == "no GPUs" and pools["cpu"].skus == ()


def test_tenants_from_the_report_rows_and_the_claims(fleet: Fleet) -> None:
    tenants = {t.tenant: (t.legacy_workloads, t.legacy_gpus, t.claims, t.dra_devices) for t in fleet.tenants}
    assert tenants == {"research": (2, 9, 0, 0), "inference": (1, 2, 2, 3)}


def test_a_pool_with_both_is_mixed(index: CatalogueIndex) -> None:
    nodes = [node("m-0", {GKE: "m"}, {"nvidia.com/gpu": "2"}), node("m-1", {GKE: "m"})]
    slices = [resource_slice("m-1", "gpu.nvidia.com", [device("gpu-0", "NVIDIA H100 80GB HBM3")])]
    fleet = build_fleet(
        nodes=nodes, slices=slices, claims=[], workloads=[], index=index, tenant_of=tenant_of
    )  # fmt: skip
    (pool,) = fleet.pools
    assert pool.mode == "mixed" and pool.skus == ("-", "NVIDIA H100 80GB HBM3")  # no GFD label: SKU unknown
    assert pool.switch.startswith("mixed (device plugin and DRA on the same pool): no running workload")


def test_pod_requests_count_init_containers_as_the_scheduler_does(index: CatalogueIndex) -> None:
    spec = {
        "initContainers": [{"name": "i", "resources": {"limits": {"nvidia.com/gpu": "3"}}}],
        "containers": [
            {"name": "a", "resources": {"limits": {"nvidia.com/gpu": "1", "cpu": "2"}}},
            {"name": "b", "resources": {"requests": {"nvidia.com/gpu": "1"}}},
        ],
    }
    assert pod_legacy_requests(spec, index) == {"nvidia.com/gpu": 3}


def test_only_the_newest_generation_of_a_pool_counts() -> None:
    slices = [resource_slice("n", "d", [], generation=g) for g in (3, 1, 3, 2)]
    assert [s["spec"]["pool"]["generation"] for s in newest_generation(slices)] == [3, 3]


def test_rendered_as_table_json_and_html(fleet: Fleet, index: CatalogueIndex) -> None:
    report = build_report([], index=index, policies=PolicySet(), namespace_labels={}, native={})
    table = render_table(report, fleet)
    assert "Fleet (node pools):" in table and "Workloads a pool's switch to DRA would convert:" in table
    assert "  a100: Deployment/ml/trainer, Pod/serve/notebook" in table
    line = next(x for x in table.splitlines() if x.startswith("h100") and "gpu.nvidia.com" in x and "%" in x)
    assert line.split()[-3:] == ["3", "8", "38%"]
    data = fleet.as_json()
    assert data["poolLabels"][0] == GKE and {p["mode"] for p in data["pools"]} == {"device-plugin", "dra", "none"}
    assert data["capacity"][0].keys() == {"pool", "sku", "kind", "via", "nodes", "allocatable", "allocated"}
    page = render_html(report, fleet=fleet)
    assert page.count('class="used"') == page.count('class="free"') == len(fleet.capacity)
    assert "<script" not in page and "Capacity per SKU" in page
    assert "Fleet" not in render_html(report)
