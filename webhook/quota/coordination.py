"""Quota across replicas: in-flight charges serialised through a conditional update of a shared Lease.

The apiserver's own quota keeps totals in the shared object and serialises concurrent admissions
through a conditional update of it; dra-bridge does the same with one coordination Lease per tenant in
its own namespace (``dra-bridge-quota-<hash of the tenant>``). Stored claims need no coordination:
every replica sees them through its watch. What replicas must share is what they admitted that is
not stored yet, so the Lease holds, per replica, its in-flight charges grouped by namespace and
charge: a burst of 256 claims of one shape is one group of count 256 (at most ``MAX_GROUPS`` per
replica; beyond that the oldest merge into one group that only expires). A group lists the names of
its claims not seen stored yet, and a claim seen appearing accounts for an admission of the same
namespace and name only: matched by charge alone, a claim whose group its own replica had already
dropped (it saw the claim first) would cancel a newer admission of the same shape, and one more
claim than fits would get in. The names are those of the claims in flight (admitted, not yet seen
stored by the replica that admitted them): a few at a steady rate, at most ``MAX_NAMES`` per
replica; an admission without a name (or past that bound) is matched by namespace and charge.

Admissions of one tenant that arrive together on a replica are decided as one batch: one fresh read
of the Lease, every admission of the batch judged in order against the same totals (stored claims
from the watch cache, plus every replica's in-flight groups not yet accounted for by a claim seen
appearing since, matched by namespace and name), and one conditional write. On a
conflict the batch is decided again against the new totals, with a short jittered back-off, until
``wait`` seconds (or the request's own deadline) pass; then every admission of the batch fails with
an error the webhook's failurePolicy decides: never an unchecked allow, never an endless loop. In-flight
groups expire after the TTL, so the charge of a claim that never appeared (refused by a later
admission step, timed out) returns by itself; a deleted claim leaves the watch cache at once.
A dry-run admission reads but never writes.

With two or more replicas, each tenant has one owner (``webhook.quota.replicas``): a reserving
admission that reaches another replica is handed to the owner (``DecidedElsewhere``) when the
request allows it, so one replica writes each Lease and its copy stays current. The Lease still
serialises whoever writes it: ownership saves conflicts, it is not what keeps the totals exact.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any

from webhook.cluster import ClusterPort, Conflict
from webhook.errors import ClusterError
from webhook.inline import DecidedElsewhere, deadline, forwardable, may_block
from webhook.labels import INFLIGHT_ANNOTATION, MANAGED_BY, MANAGED_BY_LABEL, TENANT_ANNOTATION
from webhook.quota.charge import ZERO, Charge
from webhook.quota.replicas import Member
from webhook.quota.usage import Observation, UsageLedger

MAX_GROUPS = 64  # per replica in one Lease: a bound on its size whatever the variety of shapes in flight
MAX_NAMES = 256  # per replica: beyond, the oldest admissions stay counted but unnamed (matched by charge)
MERGED = ""  # the namespace of a merged group: it matches no claim and only expires


@dataclass(frozen=True)
class Group:
    """In-flight admissions of one replica with the same namespace and charge."""

    namespace: str
    charge: Charge
    count: int
    created: float  # wall clock of the oldest
    expires: float  # wall clock of the newest one's expiry
    names: tuple[str, ...] = ()  # claims of the group not seen stored yet (count - len(names) are unnamed)

    def total(self) -> Charge:
        return self.charge.times(self.count)


@dataclass
class _Admission:
    namespace: str
    namespaces: tuple[str, ...]
    requested: Charge
    fits: Callable[[Charge], bool]
    reserve: bool
    deadline: float  # time.monotonic
    name: str = ""
    outcome: tuple[bool, Charge] | None = None
    error: BaseException | None = None

    @property
    def done(self) -> bool:
        return self.outcome is not None or self.error is not None


@dataclass
class _Queue:
    """The admissions of one tenant waiting on this replica, and whether a batch is being decided."""

    cond: threading.Condition = field(default_factory=threading.Condition)
    waiting: list[_Admission] = field(default_factory=list)
    busy: bool = False


class LeaseCoordinator:
    def __init__(
        self,
        cluster: ClusterPort,
        ledger: UsageLedger,
        *,
        namespace: str,
        replica: str,
        ttl: float = 30.0,
        wait: float = 2.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        owner: Callable[[str], Member | None] | None = None,
    ) -> None:
        self._cluster = cluster
        self._owner = owner  # the replica that decides a tenant, None for this one
        self._ledger = ledger
        self._namespace = namespace
        self._replica = replica
        self._ttl = ttl
        self._wait = wait
        self._clock = clock
        self._monotonic = monotonic
        self._queues: dict[str, _Queue] = {}
        self._queues_lock = threading.Lock()
        # The Lease as this replica last wrote or read it, per tenant: a batch is judged against it
        # and written conditionally on its resourceVersion, so a replica that wrote last pays one
        # request per batch instead of a read and a write; a conflict means another replica wrote
        # since, and the batch is judged again against a fresh read.
        self._known: dict[str, dict[str, Any] | None] = {}
        self.conflicts = 0
        self.batches = 0
        self.writes = 0
        self.reads = 0

    def admit(
        self,
        *,
        tenant: str,
        namespace: str,
        namespaces: Iterable[str],
        requested: Charge,
        fits: Callable[[Charge], bool],
        reserve: bool,
        name: str = "",
    ) -> tuple[bool, Charge]:
        if reserve and self._owner is not None and forwardable():
            owner = self._owner(tenant)
            if owner is not None:
                raise DecidedElsewhere(owner.replica, owner.address, f"it decides the quota of tenant {tenant}")
        may_block(f"GET and PUT the quota Lease of tenant {tenant}")  # before queueing: inline runs leave here
        now = self._monotonic()
        limit = now + self._wait
        caller = deadline()
        item = _Admission(namespace, tuple(namespaces), requested, fits, reserve, min(limit, caller or limit), name)
        queue = self._queue(tenant)
        with queue.cond:
            queue.waiting.append(item)
            while not item.done and queue.busy:
                queue.cond.wait(timeout=max(0.0, item.deadline - self._monotonic()) + 0.05)
            if not item.done:  # this thread decides the batch: everything waiting, itself included
                batch, queue.waiting, queue.busy = queue.waiting, [], True
        if not item.done:
            try:
                self._decide(tenant, batch)
            finally:
                with queue.cond:
                    queue.busy = False
                    queue.cond.notify_all()
        if item.error is not None:
            raise item.error
        assert item.outcome is not None
        return item.outcome

    def _queue(self, tenant: str) -> _Queue:
        with self._queues_lock:
            found = self._queues.get(tenant)
            if found is None:
                found = self._queues[tenant] = _Queue()
            return found

    # -- one batch -----------------------------------------------------------------------------
    def _decide(self, tenant: str, batch: list[_Admission]) -> None:
        self.batches += 1
        attempts = 0
        try:
            while True:
                attempts += 1
                cached = attempts == 1 and self._known.get(tenant) is not None
                if cached:
                    lease = self._known[tenant]
                else:
                    lease = self._cluster.get_lease(lease_name(tenant))
                    self.reads += 1
                    self._known[tenant] = lease
                outcomes, mine = self._judge(lease, batch)
                if mine is None:  # nothing reserved: nothing to write, so no write confirms the copy
                    if cached:
                        continue  # judged again against a fresh read
                    break
                try:
                    self._known[tenant] = self._cluster.put_lease(self._lease(tenant, lease, mine))
                    self.writes += 1
                    break
                except Conflict:
                    self._known.pop(tenant, None)
                    self.conflicts += 1
                    left = min(a.deadline for a in batch) - self._monotonic()
                    if left <= 0:
                        raise ClusterError(
                            f"quota for tenant {tenant}: the coordination Lease changed under {attempts} attempts "
                            f"within the {self._wait:g}s wait; the webhook's failurePolicy decides"
                        ) from None
                    time.sleep(min(left, random.uniform(0.002, 0.02 * min(attempts, 5))))
        except BaseException as err:  # every admission of the batch gets the same error
            for item in batch:
                item.error = err
            return
        for item, outcome in zip(batch, outcomes, strict=True):
            item.outcome = outcome

    def _judge(
        self, lease: dict[str, Any] | None, batch: list[_Admission]
    ) -> tuple[list[tuple[bool, Charge]], dict[str, list[Group]] | None]:
        """Every admission of the batch against the same fresh totals, in arrival order; the
        Lease's new in-flight groups when something was reserved, else None."""
        now = self._clock()
        groups = {replica: [g for g in gs if g.expires > now] for replica, gs in decode(lease).items()}
        wanted = tuple(sorted({ns for item in batch for ns in item.namespaces}))
        committed, observed = self._ledger.committed(wanted)
        remaining = unaccounted(groups, observed)
        usage = committed + sum((g.total() for gs in remaining.values() for g in gs), ZERO)
        mine = list(remaining.get(self._replica, ()))
        outcomes: list[tuple[bool, Charge]] = []
        reserved = False
        for item in batch:
            judged = usage
            ok = item.fits(judged)
            outcomes.append((ok, judged))
            if ok and item.reserve:
                usage = usage + item.requested
                names = (item.name,) if item.name else ()
                mine = _add(mine, Group(item.namespace, item.requested, 1, now, now + self._ttl, names))
                reserved = True
        if not reserved:
            return outcomes, None
        return outcomes, {**remaining, self._replica: _bounded(mine)}

    def _lease(self, tenant: str, current: dict[str, Any] | None, groups: dict[str, list[Group]]) -> dict[str, Any]:
        metadata: dict[str, Any] = {
            "name": lease_name(tenant),
            "namespace": self._namespace,
            "labels": {MANAGED_BY_LABEL: MANAGED_BY},
            "annotations": {TENANT_ANNOTATION: tenant, INFLIGHT_ANNOTATION: encode(groups)},
        }
        if current is not None:
            metadata["resourceVersion"] = current["metadata"]["resourceVersion"]
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": {"holderIdentity": self._replica, "leaseDurationSeconds": int(self._ttl)},
        }


def lease_name(tenant: str) -> str:
    return f"dra-bridge-quota-{hashlib.sha256(tenant.encode()).hexdigest()[:16]}"


def unaccounted(groups: dict[str, list[Group]], observed: list[Observation]) -> dict[str, list[Group]]:
    """Each replica's in-flight groups less the claims seen appearing since they were admitted: a
    named admission by the claim of its namespace and name (and charge); an unnamed one by any
    claim of the same namespace and charge not matched otherwise, oldest groups first."""
    by_name = {(o.namespace, o.name): o for o in observed if o.name}
    used: set[tuple[str, str]] = set()
    left: dict[str, list[Group]] = {}
    for replica, gs in groups.items():
        out = []
        for group in gs:
            names = []
            for name in group.names:
                seen = by_name.get((group.namespace, name))
                if seen is not None and seen.charge == group.charge and seen.at >= group.created:
                    used.add((group.namespace, name))
                else:
                    names.append(name)
            gone = len(group.names) - len(names)
            out.append(replace(group, names=tuple(names), count=group.count - gone) if gone else group)
        left[replica] = out
    unmatched = [o for o in observed if (o.namespace, o.name) not in used]
    order = sorted(((g.created, replica, i) for replica, gs in left.items() for i, g in enumerate(gs)))
    for _, replica, i in order:
        group = left[replica][i]
        unnamed = group.count - len(group.names)
        if group.namespace == MERGED or unnamed <= 0:
            continue
        matched = 0
        for seen in list(unmatched):
            if matched == unnamed:
                break
            if seen.namespace == group.namespace and seen.charge == group.charge and seen.at >= group.created:
                unmatched.remove(seen)
                matched += 1
        if matched:
            left[replica][i] = replace(group, count=group.count - matched)
    return {replica: [g for g in gs if g.count > 0] for replica, gs in left.items() if any(g.count > 0 for g in gs)}


def _add(groups: list[Group], new: Group) -> list[Group]:
    for i, group in enumerate(groups):
        if group.namespace == new.namespace and group.charge == new.charge:
            groups[i] = replace(
                group,
                count=group.count + new.count,
                expires=max(group.expires, new.expires),
                names=group.names + new.names,
            )
            return groups
    return [*groups, new]


def _bounded(groups: list[Group]) -> list[Group]:
    """At most ``MAX_GROUPS``: the oldest merge into one that only expires (it is never matched);
    at most ``MAX_NAMES`` names: the oldest groups' names go first (their counts stay)."""
    excess = sum(len(g.names) for g in groups) - MAX_NAMES
    if excess > 0:
        trimmed = []
        for group in sorted(groups, key=lambda g: g.created):
            cut = min(excess, len(group.names))
            excess -= cut
            trimmed.append(replace(group, names=group.names[cut:]) if cut else group)
        groups = trimmed
    if len(groups) <= MAX_GROUPS:
        return groups
    ordered = sorted(groups, key=lambda g: g.created)
    cut = len(groups) - MAX_GROUPS + 1
    old, kept = ordered[:cut], ordered[cut:]
    merged = Group(
        MERGED,
        sum((g.total() for g in old), ZERO),
        1,
        min(g.created for g in old),
        max(g.expires for g in old),
    )
    return [merged, *kept]


def encode(groups: dict[str, list[Group]]) -> str:
    return json.dumps(
        {
            replica: [
                {
                    "namespace": g.namespace,
                    "count": g.count,
                    "created": g.created,
                    "expires": g.expires,
                    "charge": _charge_to_json(g.charge),
                    **({"names": list(g.names)} if g.names else {}),
                }
                for g in gs
            ]
            for replica, gs in sorted(groups.items())
            if gs
        },
        separators=(",", ":"),
        sort_keys=True,
    )


def decode(lease: dict[str, Any] | None) -> dict[str, list[Group]]:
    if lease is None:
        return {}
    text = ((lease.get("metadata") or {}).get("annotations") or {}).get(INFLIGHT_ANNOTATION, "{}")
    try:
        items = json.loads(text)
        return {
            str(replica): [
                Group(
                    namespace=str(g["namespace"]),
                    charge=_charge_from_json(g["charge"]),
                    count=int(g["count"]),
                    created=float(g["created"]),
                    expires=float(g["expires"]),
                    names=tuple(str(n) for n in g.get("names", ())),
                )
                for g in groups
            ]
            for replica, groups in items.items()
        }
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ClusterError(f"Lease {lease['metadata'].get('name')}: unreadable in-flight charges: {err}") from None


def _charge_to_json(charge: Charge) -> dict[str, Any]:
    return {
        "devices": dict(charge.devices),
        "memory": str(charge.memory),
        "compute": str(charge.compute),
        "claims": charge.claims,
        "profiles": dict(charge.profiles),
        "matched": dict(charge.matched),
        "totalDevices": charge.total_devices,
    }


def _charge_from_json(data: dict[str, Any]) -> Charge:
    return Charge(
        devices={str(k): int(v) for k, v in data["devices"].items()},
        memory=Fraction(data["memory"]),
        compute=Fraction(data["compute"]),
        claims=int(data["claims"]),
        profiles={str(k): int(v) for k, v in data["profiles"].items()},
        matched={str(k): int(v) for k, v in data["matched"].items()},
        total_devices=int(data["totalDevices"]),
    )
