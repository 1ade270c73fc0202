"""The quota bypass table on the real control plane: each way a tenant might get more than its
limits past the charge, tried as the tenant would (``kubectl create``), then allocated by the real
scheduler. The property is checked directly, from what was allocated: the devices in the tenant's
claims' ``status.allocation`` (looked up in the ResourceSlices: count, kind, memory, the consumed
capacity of shared devices, partition profiles) never exceed the tenant's limits.

Each attempt has its own tenant, with limits below what the GPU nodes could hand out, so a charge
too low would show as an allocation over the limit. See README, "What is counted, and when".
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from fractions import Fraction
from typing import Any

import pytest
import yaml

from tests.e2e.helpers import (
    BRIDGE_NAMESPACE,
    Allocated,
    BridgeServer,
    Kube,
    allocated_to,
    claim_pod,
    wait_for,
    why_pending,
)
from webhook.translate.quantity import parse_quantity

pytestmark = pytest.mark.e2e

TENANT_LABEL = "dra-bridge.io/tenant"
POLICY = "e2e-quota-bypass"
DRIVER_CLASS = "gpu.nvidia.com"  # named like the NVIDIA driver's own class; not in the catalogue
PROFILE = "device.attributes['gpu.nvidia.com'].profile"

# One tenant per attempt. The GPU nodes publish 2 whole 80Gi GPUs, 5 MIG slices (one 3g.20gb, four
# 1g.5gb), 2 HAMi vGPU-capable GPUs (cores default 100) and 4 example GPUs (compute default 100).
TENANTS: dict[str, dict[str, Any]] = {
    "bp-capacity": {"limits": {"devices": {"kind:gpu": 8}, "memory": "100Gi"}},  # memory alone binds
    "bp-class": {"limits": {"devices": {"kind:whole": 1, "whole.*": 1}, "memory": "200Gi"}},
    "bp-shared": {"limits": {"devices": {"kind:gpu": 8}, "memory": "400Gi", "compute": 150}},
    "bp-profile": {"limits": {"devices": {"kind:gpu": 8}}, "allowedProfiles": ["1g.5gb"]},
    "bp-template": {"limits": {"devices": {"kind:gpu": 8}, "memory": "100Gi", "compute": 150}},
}


def policy_configmap() -> dict[str, Any]:
    document = {
        "apiVersion": "dra-bridge.io/v1alpha1",
        "kind": "QuotaPolicy",
        "tenantLabel": TENANT_LABEL,
        "tenants": [{"name": name, **spec} for name, spec in TENANTS.items()],
    }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": POLICY, "namespace": BRIDGE_NAMESPACE, "labels": {"dra-bridge.io/policy": "true"}},
        "data": {"policy.yaml": yaml.safe_dump(document)},
    }


def over_limits(tenant: str, held: Allocated) -> list[str]:
    """Where ``held`` exceeds the tenant's limits (devices by kind, memory, compute, profiles)."""
    spec = TENANTS[tenant]
    limits = spec["limits"]
    out = []
    for pattern, limit in limits.get("devices", {}).items():
        if pattern == "kind:gpu":
            got = held.devices
        elif pattern.startswith("kind:"):
            got = held.kinds.get(pattern.removeprefix("kind:"), 0)
        else:
            continue  # a class-name glob: the allocation does not say which class a device came through
        if got > limit:
            out.append(f"devices {pattern}: {got} allocated, limit {limit}")
    if "memory" in limits and held.memory > parse_quantity(limits["memory"]):
        out.append(f"memory: {float(held.memory / 2**30):.2f}Gi allocated, limit {limits['memory']}")
    if "compute" in limits and held.compute > Fraction(limits["compute"]):
        out.append(f"compute: {float(held.compute):.1f} % allocated, limit {limits['compute']}")
    allowed = spec.get("allowedProfiles")
    if allowed is not None:
        out += [f"profile {p} allocated, allowed {allowed}" for p in held.profiles if p not in allowed]
    return out


def claim(
    name: str, device_class: str, *, count: int = 1, capacity: dict[str, str] | None = None, selector: str | None = None
) -> dict[str, Any]:
    exactly: dict[str, Any] = {"deviceClassName": device_class, "count": count}
    if capacity:
        exactly["capacity"] = {"requests": capacity}
    if selector:
        exactly["selectors"] = [{"cel": {"expression": selector}}]
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name},
        "spec": {"devices": {"requests": [{"name": "gpu", "exactly": exactly}]}},
    }


def template(name: str, device_class: str, capacity: dict[str, str]) -> dict[str, Any]:
    spec = claim(name, device_class, capacity=capacity)["spec"]
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": {"name": name},
        "spec": {"spec": spec},
    }


class Tenant:
    """One tenant's namespace, as its user acts in it."""

    def __init__(self, kube: Kube, name: str) -> None:
        self.kube = kube
        self.name = name
        self.namespace = kube.namespace(f"e2e-{name}", {TENANT_LABEL: name})
        self.pods: list[str] = []

    def create(self, manifest: dict[str, Any]) -> tuple[bool, str]:
        result = self.kube.create(manifest, "-n", self.namespace)
        if result.returncode == 0:
            if manifest["kind"] == "Pod":
                self.pods.append(manifest["metadata"]["name"])
            return True, ""
        assert "denied the request" in result.stderr, result.stderr  # refused by the webhook, nothing else
        return False, result.stderr

    def until_denied(self, make: Callable[[int], dict[str, Any]], tries: int = 4) -> tuple[list[str], str]:
        """Create ``make(0)``, ``make(1)``... until one is refused; the admitted names and the refusal."""
        admitted = []
        for i in range(tries):
            manifest = make(i)
            ok, refusal = self.create(manifest)
            if not ok:
                return admitted, refusal
            admitted.append(manifest["metadata"]["name"])
        return admitted, ""

    def run(self, claims: list[str]) -> None:
        """A Pod per admitted claim, so the scheduler allocates it."""
        for name in claims:
            ok, refusal = self.create(claim_pod(f"use-{name}", claims={"gpu": name}))
            assert ok, refusal

    def allocated(self) -> Allocated:
        """Wait (bounded) for the admitted Pods to be bound, then sum what the tenant holds."""
        kube = self.kube

        def bound() -> bool:
            return all((kube.get("pod", p, self.namespace) or {}).get("spec", {}).get("nodeName") for p in self.pods)

        try:
            wait_for(bound, 60, what="the tenant's Pods to be bound")
        except AssertionError as err:
            pending = [p for p in self.pods if not (kube.get("pod", p, self.namespace) or {})["spec"].get("nodeName")]
            self.unbound = f"{err}: " + "; ".join(f"{p}: {why_pending(kube, self.namespace, p)}" for p in pending)
        else:
            self.unbound = ""
        return allocated_to(kube.items("resourceclaims", "-n", self.namespace), kube.items("resourceslices"))

    def assert_within_limits(self) -> Allocated:
        held = self.allocated()
        over = over_limits(self.name, held)
        assert not over, f"tenant {self.name} holds more than its limits: {over}; held: {held.describe()}"
        assert not self.unbound, self.unbound
        return held

    def clean(self) -> None:
        self.kube.force_delete_pods(self.namespace)
        for kind in ("resourceclaims", "resourceclaimtemplates"):
            self.kube.kubectl(
                "delete", kind, "--all", "-n", self.namespace, "--wait=true", "--timeout=60s", check=False
            )


@pytest.fixture(scope="module")
def bypass_policy(bridge: BridgeServer, kube: Kube) -> Iterator[None]:
    kube.apply(policy_configmap())
    wait_for(lambda: f"{POLICY}@" in bridge.get("/readyz")[1], 30, what="the policy to be loaded")
    yield
    kube.kubectl("delete", "configmap", POLICY, "-n", BRIDGE_NAMESPACE, "--ignore-not-found")
    kube.kubectl("delete", "deviceclass", DRIVER_CLASS, "--ignore-not-found")


@pytest.fixture
def tenant(bypass_policy: None, kube: Kube, request: pytest.FixtureRequest) -> Iterator[Tenant]:
    t = Tenant(kube, request.param)
    yield t
    t.clean()


def remember(observations: dict[str, Any], key: str, held: Allocated, **more: Any) -> None:
    observations[f"bypass {key}"] = {
        "devices": held.devices,
        "memoryGi": round(float(held.memory / 2**30), 2),
        "compute": round(float(held.compute), 1),
        **more,
    }


@pytest.mark.parametrize("tenant", ["bp-capacity"], indirect=True)
def test_a_capacity_request_on_an_exclusive_gpu_is_charged_the_whole_gpu(
    tenant: Tenant, observations: dict[str, Any]
) -> None:
    # 1Mi of an 80Gi GPU that cannot be shared: the allocator hands out the whole GPU.
    admitted, refusal = tenant.until_denied(
        lambda i: claim(f"tiny-{i}", "whole.nvidia.dra-bridge.io", capacity={"memory": "1Mi"})
    )
    tenant.run(admitted)
    held = tenant.assert_within_limits()
    assert admitted == ["tiny-0"] and "memory: requested 80Gi" in refusal, (admitted, refusal)
    assert held.kinds == {"whole": 1} and held.memory == 80 * 2**30
    remember(observations, "capacity on an exclusive GPU", held, admitted=len(admitted))


@pytest.mark.parametrize("tenant", ["bp-class"], indirect=True)
def test_a_class_the_catalogue_does_not_know_is_charged_by_the_devices_it_selects(
    tenant: Tenant, kube: Kube, observations: dict[str, Any]
) -> None:
    # Before any such class exists: charged the worst GPU known, and counted as a whole device.
    early_ok, refusal = tenant.create(claim("early", DRIVER_CLASS))
    assert early_ok, refusal
    # The admin creates the class as the NVIDIA driver's chart does: it selects the same GPUs as
    # whole.nvidia.dra-bridge.io, under a name no `whole.*` glob matches.
    kube.apply(
        {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "DeviceClass",
            "metadata": {"name": DRIVER_CLASS},
            "spec": {
                "selectors": [
                    {
                        "cel": {
                            "expression": "device.driver == 'gpu.nvidia.com' && "
                            "device.attributes['gpu.nvidia.com'].type == 'gpu'"
                        }
                    }
                ]
            },
        }
    )
    refused_pair, pair_refusal = tenant.create(claim("pair", DRIVER_CLASS, count=2))
    assert not refused_pair
    admitted, refusal = tenant.until_denied(lambda i: claim(f"late-{i}", DRIVER_CLASS, capacity={"memory": "1Mi"}))
    tenant.run(["early", *admitted])
    held = tenant.assert_within_limits()
    assert admitted == [] and "devices/kind:whole: requested 1, in use 1, limit 1" in refusal, (admitted, refusal)
    assert "devices/kind:whole: requested 2" in pair_refusal, pair_refusal
    assert held.kinds == {"whole": 1}
    remember(observations, "a class the catalogue does not know", held)


@pytest.mark.parametrize("tenant", ["bp-shared"], indirect=True)
def test_a_shared_device_without_a_compute_request_is_charged_the_default_compute(
    tenant: Tenant, observations: dict[str, Any]
) -> None:
    # 1Gi of a vGPU and no cores: the driver's default (the whole GPU's 100 cores) is consumed.
    admitted, refusal = tenant.until_denied(
        lambda i: claim(f"vgpu-{i}", "shared.hami-core.dra-bridge.io", capacity={"memory": "1Gi"})
    )
    example_ok, example_refusal = tenant.create(
        claim("example", "shared.example.dra-bridge.io", capacity={"memory": "1Gi"})
    )
    tenant.run(admitted + (["example"] if example_ok else []))
    held = tenant.assert_within_limits()
    assert admitted == ["vgpu-0"] and "compute: requested 100" in refusal, (admitted, refusal)
    assert not example_ok and "compute: requested 100" in example_refusal, example_refusal
    assert held.kinds == {"shared": 1} and held.compute == 100 and held.memory == 2**30
    remember(observations, "shared without compute", held)


PROFILE_SELECTORS = {
    "in": f"{PROFILE} in ['1g.5gb', '3g.20gb']",
    "or": f"{PROFILE} == '1g.5gb' || {PROFILE} == '3g.20gb'",
    "reversed": f"'3g.20gb' == {PROFILE}",
    "not-equal": f"{PROFILE} != '1g.5gb'",
    "prefix": f"{PROFILE}.startsWith('3g')",
    "none": None,
}


@pytest.mark.parametrize("tenant", ["bp-profile"], indirect=True)
def test_partition_selectors_written_another_way_meet_allowed_profiles(
    tenant: Tenant, observations: dict[str, Any]
) -> None:
    outcomes = {}
    for key, selector in PROFILE_SELECTORS.items():
        ok, refusal = tenant.create(claim(f"sel-{key}", "partition.nvidia.dra-bridge.io", selector=selector))
        outcomes[key] = "admitted" if ok else refusal.strip().splitlines()[-1]
    # The allowed profile, written both ways round, is admitted.
    for key, selector in {"equal": f"{PROFILE} == '1g.5gb'", "equal-reversed": f"'1g.5gb' == {PROFILE}"}.items():
        ok, refusal = tenant.create(claim(f"sel-{key}", "partition.nvidia.dra-bridge.io", selector=selector))
        assert ok, refusal
    admitted = [f"sel-{k}" for k, v in outcomes.items() if v == "admitted"]
    tenant.run(["sel-equal", "sel-equal-reversed", *admitted])
    held = tenant.assert_within_limits()
    refused = {k: v for k, v in outcomes.items() if v != "admitted"}
    assert admitted == [], outcomes
    assert all("partition profile 3g.20gb is not allowed" in v for v in refused.values()), refused
    assert held.profiles == {"1g.5gb": 2}
    remember(observations, "partition selectors", held, refused=sorted(refused))


@pytest.mark.parametrize("tenant", ["bp-template"], indirect=True)
def test_claims_from_templates_are_charged_like_direct_claims(tenant: Tenant, observations: dict[str, Any]) -> None:
    for manifest in (
        template("whole-1mi", "whole.nvidia.dra-bridge.io", {"memory": "1Mi"}),
        template("vgpu-no-cores", "shared.hami-core.dra-bridge.io", {"memory": "1Gi"}),
    ):
        ok, refusal = tenant.create(manifest)
        assert ok, refusal
    outcomes = {}
    for name, templates in {
        "first": {"gpu": "whole-1mi"},
        "second": {"gpu": "whole-1mi"},
        "vgpu": {"vgpu": "vgpu-no-cores"},
        "two-vgpus": {"a": "vgpu-no-cores", "b": "vgpu-no-cores"},
    }.items():
        ok, refusal = tenant.create(claim_pod(name, templates=templates))
        outcomes[name] = "admitted" if ok else refusal.strip().splitlines()[-1]
    held = tenant.assert_within_limits()  # waits for every admitted Pod to be bound
    assert outcomes["first"] == "admitted", outcomes
    assert [k for k, v in outcomes.items() if v == "admitted"] == ["first"], outcomes
    assert held.kinds == {"whole": 1} and held.memory == 80 * 2**30
    remember(observations, "templates", held, outcomes=json.dumps(outcomes)[:300])
