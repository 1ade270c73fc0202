"""Which replica decides a tenant's quota: the live replicas, and one owner per tenant.

Two replicas that write the same tenant's coordination Lease are serialised by its conditional
update, and the one that loses goes round again: at 100 claims per second through two replicas a
quarter of the batches did, and the p99 of a claim's admission was three times the median's tenfold
(bench/replicas.py). So each tenant has one owner among the live replicas, chosen by rendezvous
hashing (the replica whose hash of tenant and name is highest; a replica joining or leaving moves
only the tenants it gains or held), and a replica that does not own a tenant hands that tenant's
reserving admissions to the owner (``webhook.inline.DecidedElsewhere``; the HTTP layer sends the
review). One writer per Lease: its copy of the Lease stays current, and a batch costs one write.

Ownership is a matter of speed, never of correctness: the Lease stays the point where admissions
are serialised, so two replicas that disagree for a moment about who owns a tenant (one just
started, one just died, a peer unreachable) still never over-admit; they only conflict again.

Membership: each replica keeps a Lease of its own (``dra-bridge-replica-<hash of its name>``,
labelled ``REPLICA_LABEL``) that names the address its peers reach it at, renewed every third of
its duration (by the server, off the request path); a replica whose Lease was not renewed within
its duration has left. A peer that could not be reached is passed over for ``backoff`` seconds (its
tenants are decided here meanwhile). On shutdown a replica withdraws its address first. Replica
names are Pod names, new at every rollout, so a membership Lease not renewed for ``forget_after``
seconds (an hour) is deleted by whichever replica lists it, conditionally on the version it read.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from webhook.cluster import ClusterPort, Conflict
from webhook.labels import ADDRESS_ANNOTATION, MANAGED_BY, MANAGED_BY_LABEL, REPLICA_ANNOTATION, REPLICA_LABEL


@dataclass(frozen=True)
class Member:
    replica: str
    address: str  # https://host:port of its webhook server
    expires: float  # wall clock: renewed by then, or gone


class Replicas:
    def __init__(
        self,
        cluster: ClusterPort,
        *,
        replica: str,
        address: str,
        duration: float = 15.0,
        backoff: float = 5.0,
        forget_after: float = 3600.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not address:
            raise ValueError(f"replica {replica}: a peer address is needed to share tenants with other replicas")
        self.replica = replica
        self.address = address
        self.duration = duration
        self._cluster = cluster
        self._backoff = backoff
        self._forget_after = forget_after
        self._clock = clock
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._members: dict[str, Member] = {}
        self._passed_over: dict[str, float] = {}  # replica -> monotonic time until it is tried again
        self._written: dict[str, Any] | None = None  # this replica's membership Lease as last written
        self.renewals = 0

    @property
    def interval(self) -> float:
        """How often ``renew`` runs: three renewals fit in a Lease's duration."""
        return self.duration / 3

    # -- membership (blocking I/O: the server's background task) ----------------------------------
    def renew(self) -> None:
        """Write this replica's membership Lease, then read everyone's."""
        self._write(self.address)
        now = self._clock()
        members = {}
        for lease in self._cluster.list_leases(REPLICA_LABEL):
            member = member_of(lease)
            if member is not None and member.expires > now:
                members[member.replica] = member
            elif _stale(lease, now, self._forget_after):
                meta = lease["metadata"]
                self._cluster.delete_lease(meta["name"], resource_version=meta["resourceVersion"])
        with self._lock:
            self._members = members
        self.renewals += 1

    def leave(self) -> None:
        """Withdraw this replica's address: its peers stop forwarding to it at their next renewal."""
        self._write("")

    def _write(self, address: str) -> None:
        lease = self._lease(address, self._written)
        try:
            self._written = self._cluster.put_lease(lease)
        except Conflict:  # written elsewhere (a restart of this replica under the same name): once more
            current = self._cluster.get_lease(membership_lease_name(self.replica))
            self._written = self._cluster.put_lease(self._lease(address, current))

    def _lease(self, address: str, current: dict[str, Any] | None) -> dict[str, Any]:
        metadata: dict[str, Any] = {
            "name": membership_lease_name(self.replica),
            "labels": {MANAGED_BY_LABEL: MANAGED_BY, REPLICA_LABEL: "true"},
            "annotations": {REPLICA_ANNOTATION: self.replica, ADDRESS_ANNOTATION: address},
        }
        if current is not None:
            metadata["resourceVersion"] = current["metadata"]["resourceVersion"]
        renewed = datetime.fromtimestamp(self._clock(), UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": {
                "holderIdentity": self.replica,
                "leaseDurationSeconds": max(1, round(self.duration)),
                "renewTime": renewed,
            },
        }

    # -- ownership (in memory: the request path) ---------------------------------------------------
    def owner(self, tenant: str) -> Member | None:
        """The replica that decides ``tenant``'s reserving admissions; None when it is this one."""
        now, at = self._clock(), self._monotonic()
        with self._lock:
            candidates = [
                m
                for m in self._members.values()
                if m.replica != self.replica and m.expires > now and self._passed_over.get(m.replica, 0.0) <= at
            ]
        chosen = owner_among(tenant, [self.replica, *(m.replica for m in candidates)])
        return next((m for m in candidates if m.replica == chosen), None)

    def unreachable(self, replica: str) -> None:
        """``replica`` did not answer: its tenants are decided here for ``backoff`` seconds."""
        with self._lock:
            self._passed_over[replica] = self._monotonic() + self._backoff

    def members(self) -> list[Member]:
        with self._lock:
            return sorted(self._members.values(), key=lambda m: m.replica)


def membership_lease_name(replica: str) -> str:
    return f"dra-bridge-replica-{hashlib.sha256(replica.encode()).hexdigest()[:16]}"


def member_of(lease: dict[str, Any]) -> Member | None:
    """The live replica a membership Lease names, None when it names none (no address, unreadable)."""
    meta = lease.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    spec = lease.get("spec") or {}
    replica, address = annotations.get(REPLICA_ANNOTATION), annotations.get(ADDRESS_ANNOTATION)
    at, duration = _renewed_at(lease), spec.get("leaseDurationSeconds")
    if not (isinstance(replica, str) and replica and isinstance(address, str) and address):
        return None
    if at is None or not isinstance(duration, int) or isinstance(duration, bool):
        return None
    return Member(replica, address, at + duration)


def _renewed_at(lease: dict[str, Any]) -> float | None:
    """``spec.renewTime`` on the wall clock, None when missing or unreadable."""
    renewed = (lease.get("spec") or {}).get("renewTime")
    if not isinstance(renewed, str):
        return None
    try:
        return datetime.fromisoformat(renewed.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _stale(lease: dict[str, Any], now: float, forget_after: float) -> bool:
    """Renewed more than ``forget_after`` seconds ago (or never readably): a replica long gone."""
    at = _renewed_at(lease)
    return at is None or at + forget_after < now


def owner_among(tenant: str, replicas: Iterable[str]) -> str:
    """Rendezvous hashing: the replica whose hash with ``tenant`` is highest."""
    return max(replicas, key=lambda replica: hashlib.sha256(f"{tenant}\0{replica}".encode()).digest())
