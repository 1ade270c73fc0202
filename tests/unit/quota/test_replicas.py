"""Which replica decides which tenant: membership Leases and rendezvous ownership."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from webhook.cluster.memory import InMemoryCluster
from webhook.labels import REPLICA_LABEL
from webhook.quota.replicas import Member, Replicas, member_of, membership_lease_name

TENANTS = [f"tenant-{i}" for i in range(300)]


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def fleet(cluster: InMemoryCluster, clock: Clock, names: list[str]) -> dict[str, Replicas]:
    out = {
        name: Replicas(cluster, replica=name, address=f"https://{name}:8443", duration=15, clock=clock, monotonic=clock)
        for name in names
    }
    for _ in range(2):  # the first round writes every Lease, the second reads them all
        for replicas in out.values():
            replicas.renew()
    return out


def owners(replicas: Replicas) -> dict[str, str]:
    """tenant -> the replica ``replicas`` sends it to (its own name when it decides it)."""
    return {t: (m.replica if (m := replicas.owner(t)) is not None else replicas.replica) for t in TENANTS}


def test_every_replica_agrees_on_one_owner_per_tenant_and_the_tenants_spread() -> None:
    clock = Clock()
    views = [owners(r) for r in fleet(InMemoryCluster(), clock, ["replica-a", "replica-b", "replica-c"]).values()]
    assert views[0] == views[1] == views[2]
    shares = Counter(views[0].values())
    assert set(shares) == {"replica-a", "replica-b", "replica-c"}
    assert min(shares.values()) > 60  # 300 tenants over 3: none starved


def test_a_replica_joining_takes_tenants_only_for_itself() -> None:
    clock, cluster = Clock(), InMemoryCluster()
    before = owners(fleet(cluster, clock, ["replica-a", "replica-b"])["replica-a"])
    after = owners(fleet(cluster, clock, ["replica-a", "replica-b", "replica-c"])["replica-a"])
    moved = {t for t in TENANTS if before[t] != after[t]}
    assert moved and all(after[t] == "replica-c" for t in moved)


def test_a_replica_whose_lease_runs_out_owns_nothing() -> None:
    clock, cluster = Clock(), InMemoryCluster()
    replicas = fleet(cluster, clock, ["replica-a", "replica-b"])
    assert "replica-b" in owners(replicas["replica-a"]).values()
    clock.now += 16  # replica-b stopped renewing (killed); replica-a has not read the Leases again
    assert set(owners(replicas["replica-a"]).values()) == {"replica-a"}


def test_a_replica_that_leaves_is_dropped_at_the_next_renewal() -> None:
    clock, cluster = Clock(), InMemoryCluster()
    replicas = fleet(cluster, clock, ["replica-a", "replica-b"])
    replicas["replica-b"].leave()
    assert "replica-b" in owners(replicas["replica-a"]).values()  # not read yet
    replicas["replica-a"].renew()
    assert set(owners(replicas["replica-a"]).values()) == {"replica-a"}
    assert [m.replica for m in replicas["replica-a"].members()] == ["replica-a"]


def test_an_unreachable_peer_is_passed_over_for_the_backoff_then_tried_again() -> None:
    clock, cluster = Clock(), InMemoryCluster()
    both = fleet(cluster, clock, ["replica-a", "replica-b"])
    replicas = both["replica-a"]
    theirs = [t for t, owner in owners(replicas).items() if owner == "replica-b"]
    replicas.unreachable("replica-b")
    assert all(replicas.owner(t) is None for t in theirs)
    clock.now += 5.1
    both["replica-b"].renew()
    replicas.renew()
    assert [replicas.owner(t) for t in theirs] == [Member("replica-b", "https://replica-b:8443", clock.now + 15)] * len(
        theirs
    )


def test_a_restarted_replica_takes_over_its_own_lease() -> None:
    """Same name, no copy of the Lease it wrote before: it reads it once and writes on top."""
    clock, cluster = Clock(), InMemoryCluster()
    fleet(cluster, clock, ["replica-a"])
    again = Replicas(cluster, replica="replica-a", address="https://elsewhere:8443", clock=clock, monotonic=clock)
    again.renew()
    lease = cluster.get_lease(membership_lease_name("replica-a"))
    assert lease is not None and member_of(lease) == Member("replica-a", "https://elsewhere:8443", clock.now + 15)


def test_the_lease_of_a_replica_gone_for_an_hour_is_deleted_and_no_other() -> None:
    """Replica names are Pod names, new at every rollout: without this, every rollout leaves Leases."""
    clock, cluster = Clock(), InMemoryCluster()
    replicas = fleet(cluster, clock, ["old-pod", "replica-a", "replica-b"])
    replicas["replica-b"].leave()  # withdrew its address: not a member, but not gone for an hour either
    clock.now += 3000
    replicas["replica-a"].renew()
    names = {m["metadata"]["name"] for m in cluster.list_leases(REPLICA_LABEL)}
    assert names == {membership_lease_name(n) for n in ("old-pod", "replica-a", "replica-b")}
    clock.now += 700  # old-pod and replica-b last renewed 3,700 s ago
    replicas["replica-a"].renew()
    assert [m["metadata"]["name"] for m in cluster.list_leases(REPLICA_LABEL)] == [membership_lease_name("replica-a")]


def test_no_address_no_membership() -> None:
    with pytest.raises(ValueError, match="replica-a: a peer address is needed"):
        Replicas(InMemoryCluster(), replica="replica-a", address="")


@pytest.mark.parametrize(
    "change",
    [
        {"annotations": {}},
        {"annotations": {"dra-bridge.io/replica": "x", "dra-bridge.io/peer-address": ""}},
        {"spec": {"renewTime": "yesterday", "leaseDurationSeconds": 15}},
        {"spec": {"renewTime": None, "leaseDurationSeconds": 15}},
        {"spec": {"renewTime": "2027-01-15T08:00:00.000000Z", "leaseDurationSeconds": True}},
        {"spec": {"renewTime": "2027-01-15T08:00:00.000000Z", "leaseDurationSeconds": "15"}},
    ],
)
def test_a_membership_lease_that_names_no_live_replica_is_ignored(change: dict[str, Any]) -> None:
    lease: dict[str, Any] = {
        "metadata": {
            "name": "m",
            "labels": {REPLICA_LABEL: "true"},
            "annotations": change.get(
                "annotations", {"dra-bridge.io/replica": "x", "dra-bridge.io/peer-address": "https://x:1"}
            ),
        },
        "spec": change.get("spec", {"renewTime": "2027-01-15T08:00:00.000000Z", "leaseDurationSeconds": 15}),
    }
    assert member_of(lease) is None
