"""Tenant quota against the real apiserver: the denial at kubectl, claims created directly, claims
that kube-controller-manager creates from templates, a live policy edit, a malformed policy."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.e2e.helpers import BRIDGE_NAMESPACE, BridgeServer, Kube, pod, scheduled, wait_for

pytestmark = pytest.mark.e2e

TENANT_LABEL = "dra-bridge.io/tenant"


def policy(limit: int, *, rules: list[dict[str, str]] | None = None) -> dict[str, Any]:
    tenant: dict[str, Any] = {"name": "e2e-team", "limits": {"devices": {"whole.*": limit}, "perPod": {"devices": 2}}}
    if rules:
        tenant["rules"] = rules
    document = {
        "apiVersion": "dra-bridge.io/v1alpha1",
        "kind": "QuotaPolicy",
        "tenantLabel": TENANT_LABEL,
        "tenants": [tenant],
    }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "e2e-quota", "namespace": BRIDGE_NAMESPACE, "labels": {"dra-bridge.io/policy": "true"}},
        "data": {"policy.yaml": yaml.safe_dump(document)},
    }


def whole_gpu_claim(name: str, count: int) -> dict[str, Any]:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name},
        "spec": {
            "devices": {
                "requests": [
                    {"name": "gpu", "exactly": {"deviceClassName": "whole.example.dra-bridge.io", "count": count}}
                ]
            }
        },
    }


@pytest.fixture
def tenant_namespace(bridge: BridgeServer, kube: Kube) -> Iterator[str]:
    """A namespace of tenant e2e-team, whose policy (2 whole GPUs) the webhook has loaded."""
    kube.apply(policy(2))
    name = kube.namespace("e2e-quota", {TENANT_LABEL: "e2e-team"})
    wait_for(lambda: "e2e-quota@" in bridge.get("/readyz")[1], 30, what="the policy to be loaded")
    yield name
    kube.force_delete_pods(name)
    kube.kubectl("delete", "resourceclaims", "--all", "-n", name, "--wait=false")
    kube.kubectl("delete", "configmap", "e2e-quota", "-n", BRIDGE_NAMESPACE, "--ignore-not-found")


def version(bridge: BridgeServer) -> str:
    ready = json.loads(bridge.get("/readyz")[1])
    return str(ready["policyVersion"])


def test_a_pod_over_quota_is_denied_at_kubectl_with_the_full_message(
    bridge: BridgeServer, kube: Kube, tenant_namespace: str
) -> None:
    refused = kube.create(pod("greedy", {"nvidia.com/gpu": "3"}), "-n", tenant_namespace)
    assert refused.returncode != 0
    expected = (
        f"tenant e2e-team: devices per Pod: requested 3, in use 0, limit 2: over by 1 [policy {version(bridge)}]; "
        f"tenant e2e-team: devices/whole.*: requested 3, in use 0, limit 2: over by 1 [policy {version(bridge)}]"
    )
    assert expected in refused.stderr, refused.stderr
    assert kube.get("pod", "greedy", tenant_namespace) is None


def test_claims_from_templates_and_direct_claims_share_the_tenant_quota(
    bridge: BridgeServer, kube: Kube, tenant_namespace: str
) -> None:
    # A legacy Pod's claim is created by kube-controller-manager from the template, and charged.
    assert kube.create(pod("one-gpu", {"nvidia.com/gpu": "1"}), "-n", tenant_namespace).returncode == 0
    wait_for(lambda: scheduled(kube, tenant_namespace, "one-gpu"), 60, what="the Pod's claim to be allocated")
    # One unit left: a direct claim for two is refused, with the figures...
    refused = kube.create(whole_gpu_claim("two", 2), "-n", tenant_namespace)
    assert refused.returncode != 0
    assert (
        f"tenant e2e-team: devices/whole.*: requested 2, in use 1, limit 2: over by 1 [policy {version(bridge)}]"
        in refused.stderr
    )
    # ...one for one fits, and then nothing does.
    assert kube.create(whole_gpu_claim("one", 1), "-n", tenant_namespace).returncode == 0
    assert kube.create(whole_gpu_claim("another", 1), "-n", tenant_namespace).returncode != 0
    # Deleting a claim releases its unit.
    kube.kubectl("delete", "resourceclaim", "one", "-n", tenant_namespace, "--wait=true")
    wait_for(
        lambda: kube.create(whole_gpu_claim("another", 1), "-n", tenant_namespace).returncode == 0,
        30,
        what="the released unit",
    )


def test_a_policy_edit_takes_effect_without_a_restart(bridge: BridgeServer, kube: Kube, tenant_namespace: str) -> None:
    assert kube.create(whole_gpu_claim("first", 2), "-n", tenant_namespace).returncode == 0
    assert kube.create(whole_gpu_claim("second", 1), "-n", tenant_namespace).returncode != 0
    before = version(bridge)
    kube.apply(policy(4))
    wait_for(lambda: version(bridge) != before, 30, what="the edited policy to be loaded")
    assert kube.create(whole_gpu_claim("second", 1), "-n", tenant_namespace).returncode == 0


def test_a_malformed_policy_is_refused_when_saved_and_the_old_one_stays(
    bridge: BridgeServer, kube: Kube, tenant_namespace: str
) -> None:
    before = version(bridge)
    broken = policy(8, rules=[{"name": "typo", "expression": "claim.charge.totalDevices <", "message": "m"}])
    result = kube.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(broken), check=False)
    assert result.returncode != 0
    assert "e2e-quota: tenants[e2e-team].rules[typo].expression: does not parse" in result.stderr, result.stderr
    assert version(bridge) == before  # the ConfigMap was never stored: nothing changed
    assert kube.create(whole_gpu_claim("three", 3), "-n", tenant_namespace).returncode != 0
