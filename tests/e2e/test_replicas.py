"""Two dra-bridge replicas behind one address (a round-robin TLS pass-through proxy), quota
coordinated through the tenant's Lease, on the real control plane: a scaled-down bench/replicas.py.

- 300 claims of one tenant from 8 clients: none fails, the Lease annotation stays small;
- 20 claims racing for the last 4 units: exactly 4 are admitted;
- a replica SIGKILLed while claims flow: only requests in flight at the kill fail (failurePolicy Fail);
- after each, both replicas' usage gauges equal the charges of the claims that exist.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.helpers import BridgeServer, Kube
from tests.e2e.replicas import (
    TENANT_LABEL,
    ReplicaPair,
    kill_stream,
    lease_operations,
    load,
    namespaces_ready,
    race,
    recount,
    serving_pair,
)

pytestmark = pytest.mark.e2e

LIMITS = {"rp-load": 100_000, "rp-race": 10, "rp-kill": 100_000}


@pytest.fixture(scope="module")
def pair(
    bridge: BridgeServer, kube: Kube, tmp_path_factory: pytest.TempPathFactory, observations: dict[str, Any]
) -> Iterator[ReplicaPair]:
    with serving_pair(bridge, kube, tmp_path_factory.mktemp("replicas"), LIMITS) as replicas:
        try:
            yield replicas
        finally:
            for name, server in replicas.servers.items():
                observations[f"replicas {name} log"] = str(server.log)


def tenant_namespace(kube: Kube, tenant: str) -> str:
    return kube.namespace(f"e2e-{tenant}", {TENANT_LABEL: tenant})


def test_claims_of_one_tenant_from_eight_clients_all_pass_and_usage_recounts(
    pair: ReplicaPair, kube: Kube, observations: dict[str, Any]
) -> None:
    ns = tenant_namespace(kube, "rp-load")
    before = lease_operations(pair)
    result = load(pair, ns, "rp-load", claims=300, rate=0, clients=8, prefix="c")
    writes = {
        name: ops.get("writes", 0.0) - before.get(name, {}).get("writes", 0.0)
        for name, ops in lease_operations(pair).items()
    }
    observations["replicas load"] = {k: result[k] for k in ("created", "failed", "rate", "latency_ms", "lease")}
    assert result["failed"] == 0, result["failures"]
    assert result["lease"]["samples"] > 0
    # A handful of groups (two replicas, one shape): never a list that grows with the claims.
    assert result["lease"]["bytes_max"] < 2048, result["lease"]
    assert sum(pair.proxy.accepted.values()) >= 2 and len(pair.proxy.accepted) == 2, pair.proxy.accepted
    # One replica decides the tenant: the other hands its half over, and only the owner writes the Lease.
    forwards = pair.forwards()
    observations["replicas load forwards"] = {"forwards": forwards, "lease writes": writes}
    assert sorted(v.get("answered", 0) > 0 for v in forwards.values()) == [False, True], forwards
    assert sorted(v.get("received", 0) > 0 for v in forwards.values()) == [False, True], forwards
    assert sorted(w > 0 for w in writes.values()) == [False, True], writes
    usage = recount(pair, "rp-load", [ns])
    assert usage["equal"] and usage["expected"] == 300, usage


def test_twenty_claims_racing_for_the_last_four_units_admit_exactly_four(
    pair: ReplicaPair, kube: Kube, observations: dict[str, Any]
) -> None:
    ns = tenant_namespace(kube, "rp-race")
    result = race(pair, ns, limit=LIMITS["rp-race"], left=4, racers=20)
    observations["replicas race"] = {k: result[k] for k in ("created", "refused_by_quota", "other_errors")}
    assert result["created"] == 4, result
    assert result["refused_by_quota"] == 16, result
    usage = recount(pair, "rp-race", [ns])
    assert usage["equal"] and usage["expected"] == LIMITS["rp-race"], usage


def test_a_replica_killed_mid_stream_loses_only_what_it_had_in_flight(
    pair: ReplicaPair, kube: Kube, observations: dict[str, Any]
) -> None:
    ns = tenant_namespace(kube, "rp-kill")
    namespaces_ready(kube, kube.cp, [ns])
    result = kill_stream(pair, ns, kind="claims", rate=10, seconds=6, victim="replica-b", kill_at=3.0, prefix="k")
    keys = ("created", "failed", "in_flight_at_kill", "sent_to_the_dead_replica_after_kill", "failures")
    observations["replicas kill"] = {k: result[k] for k in keys}
    # Lost: what the replica had in flight, and what the apiserver sent on its connections before it
    # saw them close (the same race a Service's endpoints have); never anything else.
    assert result["failed"] <= result["in_flight_at_kill"] + result["sent_to_the_dead_replica_after_kill"], result
    assert result["created"] + result["failed"] == 60
    usage = recount(pair, "rp-kill", [ns])
    assert usage["equal"] and usage["expected"] == result["created"], usage
    # Restarted, the replica recounts the same usage from its own watch.
    pair.servers["replica-b"].start()
    usage = recount(pair, "rp-kill", [ns])
    assert usage["equal"] and set(usage["replicas"]) == {"replica-a", "replica-b"}, usage
