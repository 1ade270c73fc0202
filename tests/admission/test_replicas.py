"""Quota with two replicas: per-replica reservations over-admit; the shared Lease does not."""

from __future__ import annotations

import threading
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

POLICY = {"tenants": [{"name": "research", "namespaces": ["ml-research"], "limits": {"devices": {"whole.*": 10}}}]}


def replicas(index: CatalogueIndex, mode: Literal["local", "lease"]) -> tuple[InMemoryCluster, list[Admission]]:
    cluster = InMemoryCluster()
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
    assert lease is not None and len([r for r in decode(lease) if r.namespace == "ml-research"]) == 3 + 7
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

    with pytest.raises(ClusterError, match="lost the Lease update 8 times"):
        admissions[0].validate(request(claim("c"), kind="ResourceClaim", namespace="ml-research"))
