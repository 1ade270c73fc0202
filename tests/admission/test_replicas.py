"""Quota with two replicas: per-replica reservations over-admit; the shared Lease does not."""

from __future__ import annotations

import threading
import time
from typing import Any, Literal

import pytest

from tests.admission.helpers import request
from tests.admission.test_quota import claim, policy_configmap
from webhook.admission.engine import Admission
from webhook.cluster import Conflict
from webhook.cluster.memory import InMemoryCluster
from webhook.quota.coordination import decode, lease_name
from webhook.quota.enforcement import QuotaEnforcer
from webhook.translate.catalogue import CatalogueIndex
from webhook.translate.deviceclasses import render_device_classes

POLICY = {"tenants": [{"name": "research", "namespaces": ["ml-research"], "limits": {"devices": {"whole.*": 10}}}]}


def replicas(index: CatalogueIndex, mode: Literal["local", "lease"]) -> tuple[InMemoryCluster, list[Admission]]:
    cluster = InMemoryCluster()
    for device_class in render_device_classes(index.catalogue):
        cluster.add_device_class(device_class)
    cluster.add_namespace("ml-research")
    cluster.put_configmap(policy_configmap(POLICY))
    out = []
    for name in ("replica-a", "replica-b"):
        quota = QuotaEnforcer(cluster=cluster, catalogue=lambda: index.catalogue, coordination=mode, replica=name)
        quota.attach()  # each replica has its own watch-fed cache of the same claims
        out.append(Admission(cluster=cluster, catalogue=lambda: index, quota=quota))
    return cluster, out


def race(admissions: list[Admission], contenders: int) -> list[tuple[int, str]]:
    """Contenders alternate between replicas; the claims are stored only after every decision,
    as when the watch has not delivered them yet."""
    barrier = threading.Barrier(contenders)
    results: list[tuple[int, str]] = []
    lock = threading.Lock()

    def contend(i: int) -> None:
        barrier.wait()
        decision = admissions[i % 2].validate(
            request(claim(f"race-{i}"), kind="ResourceClaim", namespace="ml-research", uid=f"u{i}")
        )
        with lock:
            results.append((i, decision.outcome))

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(contenders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


def seed(cluster: InMemoryCluster, admissions: list[Admission], count: int) -> None:
    for i in range(count):
        obj = claim(f"pre-{i}")
        assert (
            admissions[i % 2].validate(request(obj, kind="ResourceClaim", namespace="ml-research")).outcome == "allowed"
        )
        cluster.add_claim(obj)


def test_per_replica_reservations_over_admit(index: CatalogueIndex) -> None:
    """The failure the Lease exists for: each replica only knows its own reservations."""
    cluster, admissions = replicas(index, "local")
    seed(cluster, admissions, 7)
    allowed = [i for i, outcome in race(admissions, 12) if outcome == "allowed"]
    assert len(allowed) == 6  # 3 units left, each replica admitted 3


def test_lease_serialises_replicas_and_admits_exactly_what_fits(index: CatalogueIndex) -> None:
    cluster, admissions = replicas(index, "lease")
    seed(cluster, admissions, 7)
    results = race(admissions, 12)
    allowed = [i for i, outcome in results if outcome == "allowed"]
    assert len(allowed) == 3
    lease = cluster.get_lease(lease_name("research"))
    assert lease is not None
    in_flight = [g for groups in decode(lease).values() for g in groups if g.namespace == "ml-research"]
    # the 7 seeded claims were stored and seen before the race: their groups are accounted for on
    # the next write of each replica; what stays in flight is never more than was admitted
    assert 3 <= sum(g.count for g in in_flight) <= 3 + 7
    assert len(in_flight) <= 2  # one group per replica: one shape, whatever the number of claims
    for i in allowed:  # now the watch delivers them: each is counted once, not as claim + reservation
        cluster.add_claim(claim(f"race-{i}"))
    usage = admissions[0].quota.ledger.committed(["ml-research"])[0]  # type: ignore[union-attr]
    assert usage.matched["whole.*"] == 10
    cluster.delete_claim("ml-research", f"race-{allowed[0]}")
    again = admissions[1].validate(request(claim("after"), kind="ResourceClaim", namespace="ml-research"))
    assert again.outcome == "allowed"  # the freed unit, and only it
    assert (
        admissions[0].validate(request(claim("after-2"), kind="ResourceClaim", namespace="ml-research")).outcome
        == "denied"
    )


def test_dry_run_never_writes_the_lease(index: CatalogueIndex) -> None:
    cluster, admissions = replicas(index, "lease")
    decision = admissions[0].validate(request(claim("d"), kind="ResourceClaim", namespace="ml-research", dry_run=True))
    assert decision.outcome == "allowed"
    assert cluster.get_lease(lease_name("research")) is None


def test_persistent_conflicts_end_in_an_error_not_an_allow(index: CatalogueIndex) -> None:
    cluster, admissions = replicas(index, "lease")

    def always_conflict(_: dict[str, Any]) -> dict[str, Any]:
        raise Conflict("someone else wrote it")

    cluster.put_lease = always_conflict  # type: ignore[method-assign]
    from webhook.errors import ClusterError

    with pytest.raises(ClusterError, match=r"the coordination Lease changed under \d+ attempts within the 2s wait"):
        admissions[0].validate(request(claim("c"), kind="ResourceClaim", namespace="ml-research"))


def test_the_lease_holds_groups_not_records_and_stays_small(index: CatalogueIndex) -> None:
    """500 admissions of one shape, each claim stored after its admission (as the apiserver does):
    the Lease holds the claims in flight, not a record per admission, and does not grow."""
    cluster, admissions = replicas(index, "lease")
    big = {"tenants": [{"name": "research", "namespaces": ["ml-research"], "limits": {"devices": {"whole.*": 100000}}}]}
    cluster.put_configmap(policy_configmap(big))
    sizes = []
    for i in range(500):
        obj = claim(f"c{i:03d}")
        decision = admissions[i % 2].validate(request(obj, kind="ResourceClaim", namespace="ml-research"))
        assert decision.outcome == "allowed"
        cluster.add_claim(obj)
        if i in (9, 499):
            lease = cluster.get_lease(lease_name("research"))
            assert lease is not None
            sizes.append(len(lease["metadata"]["annotations"]["dra-bridge.io/in-flight"]))
    groups = decode(cluster.get_lease(lease_name("research")))
    assert sum(g.count for gs in groups.values() for g in gs) <= 2  # the last admission of each replica
    assert sizes[1] - sizes[0] <= 8
    assert sizes[1] < 2048


def test_names_of_claims_never_stored_are_bounded(index: CatalogueIndex) -> None:
    """500 admissions whose claims never appear: all counted, at most MAX_NAMES names per replica."""
    from webhook.quota.coordination import MAX_NAMES

    cluster, admissions = replicas(index, "lease")
    big = {"tenants": [{"name": "research", "namespaces": ["ml-research"], "limits": {"devices": {"whole.*": 100000}}}]}
    cluster.put_configmap(policy_configmap(big))
    for i in range(2 * MAX_NAMES + 100):
        decision = admissions[0].validate(request(claim(f"c{i}"), kind="ResourceClaim", namespace="ml-research"))
        assert decision.outcome == "allowed"
    (group,) = decode(cluster.get_lease(lease_name("research")))["replica-a"]
    assert group.count == 2 * MAX_NAMES + 100
    assert len(group.names) == MAX_NAMES and group.names[-1] == f"c{2 * MAX_NAMES + 99}"


def test_many_shapes_in_flight_stay_within_the_group_bound(index: CatalogueIndex) -> None:
    from webhook.quota.coordination import MAX_GROUPS

    cluster, admissions = replicas(index, "lease")
    big = {"tenants": [{"name": "research", "namespaces": ["ml-research"], "limits": {"devices": {"whole.*": 100000}}}]}
    cluster.put_configmap(policy_configmap(big))
    for i in range(MAX_GROUPS + 20):  # every claim another count: another shape
        obj = claim(f"c{i}", device_class="shared.hami-core.dra-bridge.io", capacity={"memory": f"{i + 1}Gi"})
        assert admissions[0].validate(request(obj, kind="ResourceClaim", namespace="ml-research")).outcome == "allowed"
    groups = decode(cluster.get_lease(lease_name("research")))["replica-a"]
    assert len(groups) == MAX_GROUPS
    assert groups[0].namespace == ""  # the oldest merged into one that only expires


def test_admissions_that_arrive_together_share_one_read_and_one_write(index: CatalogueIndex) -> None:
    cluster, admissions = replicas(index, "lease")
    big = {"tenants": [{"name": "research", "namespaces": ["ml-research"], "limits": {"devices": {"whole.*": 1000}}}]}
    cluster.put_configmap(policy_configmap(big))
    quota = admissions[0].quota
    assert quota is not None and quota.coordinator is not None
    original = cluster.get_lease
    gate = threading.Event()
    reads = []

    def slow_read(name: str) -> Any:  # the first read waits until every contender has queued
        reads.append(name)
        if len(reads) == 1:
            gate.wait(timeout=10)
        return original(name)

    cluster.get_lease = slow_read  # type: ignore[method-assign]
    threads = [
        threading.Thread(
            target=admissions[0].validate,
            args=(request(claim(f"b{i}"), kind="ResourceClaim", namespace="ml-research", uid=f"b{i}"),),
        )
        for i in range(20)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while len(quota.coordinator._queue("research").waiting) < 19 and time.monotonic() < deadline:
        time.sleep(0.01)
    gate.set()
    for t in threads:
        t.join(timeout=30)
    assert quota.coordinator.batches == 2 and quota.coordinator.writes == 2  # the first alone, then 19 together
    assert sum(g.count for g in decode(cluster.get_lease(lease_name("research")))["replica-a"]) == 20


def test_a_killed_replicas_in_flight_charges_expire(index: CatalogueIndex) -> None:
    cluster, admissions = replicas(index, "lease")
    seed(cluster, admissions, 7)
    now = [time.time()]
    for admission in admissions:
        assert admission.quota is not None and admission.quota.coordinator is not None
        admission.quota.coordinator._clock = lambda: now[0]
    for i in range(3):  # replica-b admits 3 and dies before any of them is stored
        assert (
            admissions[1].validate(request(claim(f"lost-{i}"), kind="ResourceClaim", namespace="ml-research")).outcome
            == "allowed"
        )
    assert (
        admissions[0].validate(request(claim("x"), kind="ResourceClaim", namespace="ml-research")).outcome == "denied"
    )
    now[0] += 31  # the TTL
    assert (
        admissions[0].validate(request(claim("y"), kind="ResourceClaim", namespace="ml-research")).outcome == "allowed"
    )


def test_a_claim_whose_group_its_replica_dropped_does_not_cancel_a_newer_admission(index: CatalogueIndex) -> None:
    """Seen on the real control plane (tests/e2e/test_replicas.py): replica-b admits f; replica-a
    admits r1; f is stored; replica-b, seeing f, drops f's group from the Lease. Matched by charge
    alone, replica-a's sighting of f (after r1 was admitted) cancelled r1 instead, and one claim
    more than the limit got in. Matched by name, it cannot."""
    cluster, (a, b) = replicas(index, "lease")
    seed(cluster, [a, b], 6)

    def admit(admission: Admission, name: str) -> str:
        return admission.validate(request(claim(name), kind="ResourceClaim", namespace="ml-research")).outcome

    assert admit(b, "f") == "allowed"  # 7
    assert admit(a, "r1") == "allowed"  # 8
    cluster.add_claim(claim("f"))  # both replicas see f appear, after r1 was admitted
    assert admit(b, "r2") == "allowed"  # 9: replica-b's write drops f's group
    assert admit(a, "r3") == "allowed"  # 10
    assert admit(a, "r4") == "denied"
    lease = cluster.get_lease(lease_name("research"))
    names = sorted(n for gs in decode(lease).values() for g in gs for n in g.names)
    assert names == ["r1", "r2", "r3"]


def test_a_replica_that_wrote_last_writes_without_reading_first(index: CatalogueIndex) -> None:
    """The copy of the Lease a replica wrote is what the next batch is judged against: one request
    per batch while no other replica writes; a conflict when one did, then a fresh read."""
    _, (a, b) = replicas(index, "lease")
    for i in range(5):
        assert a.validate(request(claim(f"a{i}"), kind="ResourceClaim", namespace="ml-research")).outcome == "allowed"
    assert a.quota is not None and a.quota.coordinator is not None
    coordinator = a.quota.coordinator
    assert (coordinator.reads, coordinator.writes, coordinator.conflicts) == (1, 5, 0)
    assert b.validate(request(claim("b0"), kind="ResourceClaim", namespace="ml-research")).outcome == "allowed"
    assert a.validate(request(claim("a5"), kind="ResourceClaim", namespace="ml-research")).outcome == "allowed"
    assert (coordinator.reads, coordinator.writes, coordinator.conflicts) == (2, 6, 1)
    # A denial needs no write, so a cached copy never decides it: it is judged again on a fresh read.
    for i in range(3):
        assert a.validate(request(claim(f"c{i}"), kind="ResourceClaim", namespace="ml-research")).outcome == "allowed"
    assert a.validate(request(claim("over"), kind="ResourceClaim", namespace="ml-research")).outcome == "denied"
    assert (coordinator.reads, coordinator.writes) == (3, 9)
