"""Faults on the real control plane, scaled for CI (bench/faults.py has the full figures):

- certificate renewal and CA rollover while reviews flow straight to the server: none fails;
- the apiserver restarted under two replicas: /readyz 503 until the caches resync, a claim review
  meanwhile fails instead of being decided from a stale cache, the usage is right afterwards;
- a replica SIGKILLed while GPU Pods are created: only what it had in flight is lost.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.faults import restart_apiserver, rotate_under_load
from tests.e2e.helpers import BridgeServer, Kube, wait_for
from tests.e2e.replicas import (
    TENANT_LABEL,
    ReplicaPair,
    kill_stream,
    namespaces_ready,
    serving_pair,
)
from webhook.certs.files import write_pair
from webhook.certs.issue import create_ca, create_serving_cert

pytestmark = pytest.mark.e2e

LIMITS = {"rf-restart": 1_000, "rf-pods": 100_000}


def test_certificate_renewal_and_ca_rollover_under_load_fail_no_review(
    kube: Kube, tmp_path: Path, observations: dict[str, Any]
) -> None:
    server = BridgeServer(
        work_dir=tmp_path, kubeconfig=kube.kubeconfig, env={"DRA_BRIDGE_CERT_RELOAD_INTERVAL_SECONDS": "0.5"}
    )
    ca = create_ca(common_name="dra-bridge-e2e-rotation-ca")
    write_pair(
        server.cert_dir, ca=ca, serving=create_serving_cert(ca=ca, dns_names=["localhost"], ip_addresses=["127.0.0.1"])
    )
    server.ca_pem = ca.cert_pem
    server.start()
    try:
        result = rotate_under_load(server, ca, rate=60, seconds=8)
    finally:
        server.stop()
    observations["rotation"] = {k: getattr(result, k) for k in ("requests", "answered", "failures", "reloads")}
    assert result.failures == {} and result.answered == result.requests, result
    assert result.reloads >= 2, result
    assert "dra-bridge-e2e-ca-next" in result.final_issuer, result.final_issuer


@pytest.fixture(scope="module")
def pair(bridge: BridgeServer, kube: Kube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicaPair]:
    with serving_pair(bridge, kube, tmp_path_factory.mktemp("fault-replicas"), LIMITS) as replicas:
        yield replicas


def test_an_apiserver_restart_resyncs_and_nothing_is_decided_from_a_stale_cache(
    pair: ReplicaPair, kube: Kube, bridge: BridgeServer, observations: dict[str, Any]
) -> None:
    ns = kube.namespace("e2e-rf-restart", {TENANT_LABEL: "rf-restart"})
    result = restart_apiserver(pair, "rf-restart", ns, claims=30, down=3.0)
    observations["apiserver restart"] = {k: v for k, v in result.items() if k != "recount"}
    for name in pair.servers:
        assert result["replicas_ready_at_s"][name] is not None, result
        assert result["not_ready"][name]["samples"] > 0, result
        assert result["ready_while_apiserver_down"][name] == 0, result
        status, what = result["claim_review_while_not_ready"][name]
        assert status != 200 or what != "allowed", result
    assert result["created_after"] == 30
    assert result["recount"]["equal"], result["recount"]
    # The session's own server went through the same restart and resyncs too (later tests use it).
    wait_for(lambda: bridge.get("/readyz")[0] == 200, 60, what="the session's server to resync")


def test_a_replica_killed_while_gpu_pods_are_created_loses_only_its_requests_in_flight(
    pair: ReplicaPair, kube: Kube, observations: dict[str, Any]
) -> None:
    ns = kube.namespace("e2e-rf-pods", {TENANT_LABEL: "rf-pods"})
    namespaces_ready(kube, kube.cp, [ns])
    if pair.servers["replica-a"].proc is None:
        pair.servers["replica-a"].start()
    try:
        result = kill_stream(pair, ns, kind="pods", rate=8, seconds=6, victim="replica-a", kill_at=3.0, prefix="g")
    finally:
        # No kubelet: bound Pods hold their GPUs until force-deleted, and later tests need them.
        kube.force_delete_pods(ns)
        wait_for(lambda: not kube.items("resourceclaims", "-n", ns), 120, what=f"the claims of {ns} to go")
    keys = ("created", "failed", "in_flight_at_kill", "sent_to_the_dead_replica_after_kill", "failures")
    observations["pods kill"] = {k: result[k] for k in keys}
    assert result["failed"] <= result["in_flight_at_kill"] + result["sent_to_the_dead_replica_after_kill"], result
    assert result["created"] + result["failed"] == 48
