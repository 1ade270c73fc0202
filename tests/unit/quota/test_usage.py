"""The usage ledger at scale: the work per claim event and per decision does not grow with the cluster.

Counted in operations, not seconds (no timing assertions): the number of reservations and
observations a decision looks at stays bounded by what happened in its own namespaces.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from webhook.quota.charge import Pricer
from webhook.quota.devices import catalogue_snapshot
from webhook.quota.usage import UsageLedger
from webhook.translate.catalogue import CatalogueIndex

SPEC: dict[str, Any] = {
    "devices": {"requests": [{"name": "g", "exactly": {"deviceClassName": "whole.nvidia.dra-bridge.io", "count": 2}}]}
}


@contextlib.contextmanager
def counted_arithmetic(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Count the additions and subtractions of charges made inside the block (``[count]``)."""
    from webhook.quota import charge as charge_module

    count = [0]
    original = charge_module.Charge._combine

    def counting(self: Any, other: Any, sign: int) -> Any:
        count[0] += 1
        return original(self, other, sign)

    monkeypatch.setattr(charge_module.Charge, "_combine", counting)
    try:
        yield count
    finally:
        monkeypatch.undo()


def test_claims_of_one_shape_share_one_charge(index: CatalogueIndex) -> None:
    ledger = UsageLedger(pricer=Pricer(index.catalogue, catalogue_snapshot(index.catalogue)))
    for i in range(200):
        ledger.observe(f"ns-{i % 10}", f"c{i}", SPEC)
    assert len(ledger._shapes) == 1
    charges = {id(shape[1]) for claims in ledger._claims.values() for shape in claims.values()}
    assert len(charges) == 1  # one object, shared
    assert ledger.usage(["ns-0"]).devices == {"whole.nvidia.dra-bridge.io": 40}


def test_recent_observations_are_kept_per_namespace_and_expire(index: CatalogueIndex) -> None:
    now = [1000.0]
    ledger = UsageLedger(
        pricer=Pricer(index.catalogue, catalogue_snapshot(index.catalogue)),
        reservation_ttl=30,
        wall_clock=lambda: now[0],
    )
    for i in range(1000):
        ledger.observe(f"ns-{i % 100}", f"c{i}", SPEC)
    committed, recent = ledger.committed(["ns-7"])
    assert len(recent) == 10  # only this namespace's, not the cluster's
    assert committed.claims == 10
    now[0] += 31
    assert ledger.committed(["ns-7"])[1] == []
    # Every namespace is trimmed, not only the one read: nothing is left behind in quiet namespaces.
    assert ledger.observation_count == 0 and ledger._observations == {}
    ledger.observe("ns-1", "late", SPEC)
    assert ledger.observation_count == 1 and ledger.claim_count == 1001


def test_observations_are_not_kept_without_lease_coordination(index: CatalogueIndex) -> None:
    ledger = UsageLedger(pricer=Pricer(index.catalogue, catalogue_snapshot(index.catalogue)), track_observations=False)
    for i in range(100):
        ledger.observe(f"ns-{i % 10}", f"c{i}", SPEC)
    assert ledger.observation_count == 0 and ledger.committed(["ns-1"]) == (ledger.usage(["ns-1"]), [])
    assert ledger.claim_count == 100
    ledger.forget("ns-1", "c1")
    assert ledger.claim_count == 99 and ledger.usage(["ns-1"]).claims == 9


def test_reprice_recomputes_each_shape_once(index: CatalogueIndex) -> None:
    ledger = UsageLedger(pricer=Pricer(index.catalogue, catalogue_snapshot(index.catalogue)))
    for i in range(50):
        ledger.observe("ns", f"c{i}", SPEC)
    ledger.reprice(Pricer(index.catalogue, catalogue_snapshot(index.catalogue), device_patterns=["whole.*"]))
    assert ledger.usage(["ns"]).matched == {"whole.*": 100}
    assert len({id(shape[1]) for claims in ledger._claims.values() for shape in claims.values()}) == 1


def test_reprice_sums_each_namespace_as_the_claims_one_by_one(index: CatalogueIndex) -> None:
    shared = {
        "devices": {
            "requests": [
                {
                    "name": "g",
                    "exactly": {
                        "deviceClassName": "shared.hami-core.dra-bridge.io",
                        "capacity": {"requests": {"memory": "1500Mi"}},
                    },
                }
            ]
        }
    }
    specs = [SPEC, shared, {"devices": {"requests": []}}]
    patterns = ["whole.*", "kind:shared"]
    ledger = UsageLedger(pricer=Pricer(index.catalogue, catalogue_snapshot(index.catalogue)))
    fresh = UsageLedger(pricer=Pricer(index.catalogue, catalogue_snapshot(index.catalogue), device_patterns=patterns))
    for i in range(60):
        for each in (ledger, fresh):
            each.observe(f"ns-{i % 4}", f"c{i}", specs[i % 3 if i % 4 else 0])
    ledger.forget("ns-1", "c1")
    fresh.forget("ns-1", "c1")
    ledger.reprice(Pricer(index.catalogue, catalogue_snapshot(index.catalogue), device_patterns=patterns))
    for ns in ("ns-0", "ns-1", "ns-2", "ns-3", "nowhere"):
        assert ledger.usage([ns]) == fresh.usage([ns]), ns
    assert ledger.usage(["ns-0"]).matched == {"whole.*": 30} and ledger.usage(["ns-0"]).claims == 15


def test_a_decision_does_not_walk_other_namespaces_reservations(index: CatalogueIndex, monkeypatch: Any) -> None:
    from webhook.quota import charge as charge_module

    now = [0.0]
    ledger = UsageLedger(
        pricer=Pricer(index.catalogue, catalogue_snapshot(index.catalogue)), reservation_ttl=30, clock=lambda: now[0]
    )
    one = charge_module.Charge(devices={"x": 1}, claims=1)
    for i in range(5000):  # in flight elsewhere, never confirmed yet
        ledger.admit(
            namespace=f"other-{i}", namespaces=[f"other-{i}"], requested=one, fits=lambda _: True, reserve=True
        )
    with counted_arithmetic(monkeypatch) as additions:
        ok, usage, _token = ledger.admit(
            namespace="mine", namespaces=["mine"], requested=one, fits=lambda _: True, reserve=True
        )
    assert ok and usage.claims == 0
    assert additions[0] <= 3  # the namespace's claims and reservations, and the new reservation
    assert ledger.reservation_count == 5001
    now[0] += 31
    assert ledger.reservation_count == 0 and ledger.usage(["other-7"]).claims == 0


def test_a_modified_claim_of_the_same_shape_leaves_the_totals_alone(index: CatalogueIndex) -> None:
    ledger = UsageLedger(pricer=Pricer(index.catalogue, catalogue_snapshot(index.catalogue)))
    ledger.observe("ns", "a", SPEC)
    before = ledger._by_namespace["ns"]
    ledger.observe("ns", "a", SPEC)  # a status update: same spec, same shape
    assert ledger._by_namespace["ns"] is before  # not taken off and added back
    assert ledger.claim_count == 1 and ledger.usage(["ns"]).claims == 1


def test_a_claim_whose_shape_changes_is_counted_once_at_its_new_charge(index: CatalogueIndex) -> None:
    ledger = UsageLedger(pricer=Pricer(index.catalogue, catalogue_snapshot(index.catalogue)))
    ledger.observe("ns", "a", SPEC)
    ledger.observe("ns", "b", SPEC)
    bigger = {
        "devices": {
            "requests": [{"name": "g", "exactly": {"deviceClassName": "whole.nvidia.dra-bridge.io", "count": 3}}]
        }
    }
    ledger.observe("ns", "a", bigger)
    assert ledger.usage(["ns"]).devices == {"whole.nvidia.dra-bridge.io": 5} and ledger.usage(["ns"]).claims == 2
    ledger.forget("ns", "a")
    ledger.forget("ns", "b")
    assert ledger.usage(["ns"]) == ledger.usage([]) and ledger._by_namespace == {}


def test_reservations_that_expire_together_are_given_back_per_charge_not_one_by_one(
    index: CatalogueIndex, monkeypatch: Any
) -> None:
    """A burst of admissions whose claims never appeared expires at once: the decision that finds it
    must not pay a subtraction per reservation (50,000 cost 0.19 s), and the totals stay exact."""
    from webhook.quota import charge as charge_module

    now = [0.0]
    ledger = UsageLedger(
        pricer=Pricer(index.catalogue, catalogue_snapshot(index.catalogue)), reservation_ttl=30, clock=lambda: now[0]
    )
    a = charge_module.Charge(devices={"x": 1}, claims=1)
    b = charge_module.Charge(devices={"y": 2}, claims=1)

    def reserve(namespace: str, charge: Any, times: int) -> None:
        for _ in range(times):
            ledger.admit(
                namespace=namespace, namespaces=[namespace], requested=charge, fits=lambda _: True, reserve=True
            )

    reserve("burst", a, 2000)
    reserve("burst", b, 1000)
    reserve("gone", a, 500)
    now[0] = 10.0
    reserve("burst", a, 3)  # still live when the others expire
    now[0] = 31.0
    with counted_arithmetic(monkeypatch) as combines:
        ok, usage, _token = ledger.admit(
            namespace="burst", namespaces=["burst"], requested=a, fits=lambda _: True, reserve=False
        )
    assert combines[0] <= 6, combines  # per namespace and charge (two), and the usage sum: not 3,500
    assert ok and usage == a.times(3)
    assert ledger.reservation_count == 3 and ledger.usage(["gone"]) == ledger.usage([])
    now[0] = 41.0
    assert ledger.reservation_count == 0 and ledger.usage(["burst"]).claims == 0
