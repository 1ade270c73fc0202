"""Quota across replicas: reservations serialised through a conditional update of a shared Lease.

The apiserver's own quota serialises concurrent admissions through a conditional update of the
ResourceQuota object. dra-bridge does the same with one coordination Lease per tenant in its own
namespace (``dra-bridge-quota-<hash of the tenant>``). Its annotation holds every replica's live
reservations. To admit a claim a replica:

1. reads the Lease fresh (never from a cache);
2. computes usage = stored claims (from its watch cache) + the Lease's unexpired reservations that
   no claim it has seen appear since can account for (matched one to one by namespace and charge,
   so a claim is never counted twice once the watch delivers it);
3. if the claim fits, writes the Lease back with its reservation added, conditional on the
   resourceVersion it read; on a conflict it starts again from 1 (a few attempts, then an error so
   the failurePolicy decides: never an unchecked allow).

Reservations carry wall-clock times and expire after the TTL; each write drops expired ones. A
dry-run admission reads but never writes.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from webhook.cluster import ClusterPort, Conflict
from webhook.errors import ClusterError
from webhook.labels import MANAGED_BY, MANAGED_BY_LABEL, RESERVATIONS_ANNOTATION, TENANT_ANNOTATION
from webhook.quota.charge import ZERO, Charge
from webhook.quota.usage import Observation, UsageLedger


@dataclass(frozen=True)
class Reservation:
    id: str
    replica: str
    namespace: str
    charge: Charge
    created: float
    expires: float


class LeaseCoordinator:
    def __init__(
        self,
        cluster: ClusterPort,
        ledger: UsageLedger,
        *,
        namespace: str,
        replica: str,
        ttl: float = 30.0,
        attempts: int = 8,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._cluster = cluster
        self._ledger = ledger
        self._namespace = namespace
        self._replica = replica
        self._ttl = ttl
        self._attempts = attempts
        self._clock = clock
        self.conflicts = 0

    def admit(
        self,
        *,
        tenant: str,
        namespace: str,
        namespaces: Iterable[str],
        requested: Charge,
        fits: Callable[[Charge], bool],
        reserve: bool,
    ) -> tuple[bool, Charge]:
        wanted = tuple(namespaces)
        for _ in range(self._attempts):
            lease = self._cluster.get_lease(lease_name(tenant))
            now = self._clock()
            reservations = [r for r in decode(lease) if r.expires > now]
            committed, observed = self._ledger.committed(wanted)
            usage = committed + pending(reservations, observed, namespaces=wanted)
            if not fits(usage):
                return False, usage
            if not reserve:
                return True, usage
            mine = Reservation(uuid.uuid4().hex[:12], self._replica, namespace, requested, now, now + self._ttl)
            try:
                self._cluster.put_lease(self._lease(tenant, lease, [*reservations, mine]))
            except Conflict:
                self.conflicts += 1
                continue
            return True, usage
        raise ClusterError(f"quota for tenant {tenant}: lost the Lease update {self._attempts} times in a row")

    def _lease(self, tenant: str, current: dict[str, Any] | None, reservations: list[Reservation]) -> dict[str, Any]:
        metadata: dict[str, Any] = {
            "name": lease_name(tenant),
            "namespace": self._namespace,
            "labels": {MANAGED_BY_LABEL: MANAGED_BY},
            "annotations": {TENANT_ANNOTATION: tenant, RESERVATIONS_ANNOTATION: encode(reservations)},
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


def pending(reservations: list[Reservation], observed: list[Observation], *, namespaces: Iterable[str]) -> Charge:
    """Reservations not yet accounted for by a claim seen appearing after they were made."""
    wanted = set(namespaces)
    unmatched = list(observed)
    total = ZERO
    for reservation in sorted(reservations, key=lambda r: r.created):
        if reservation.namespace not in wanted:
            continue
        match = next(
            (
                o
                for o in unmatched
                if o.namespace == reservation.namespace
                and o.charge == reservation.charge
                and o.at >= reservation.created
            ),
            None,
        )
        if match is not None:
            unmatched.remove(match)
            continue
        total = total + reservation.charge
    return total


def encode(reservations: list[Reservation]) -> str:
    return json.dumps(
        [
            {
                "id": r.id,
                "replica": r.replica,
                "namespace": r.namespace,
                "created": r.created,
                "expires": r.expires,
                "charge": _charge_to_json(r.charge),
            }
            for r in reservations
        ],
        separators=(",", ":"),
        sort_keys=True,
    )


def decode(lease: dict[str, Any] | None) -> list[Reservation]:
    if lease is None:
        return []
    text = ((lease.get("metadata") or {}).get("annotations") or {}).get(RESERVATIONS_ANNOTATION, "[]")
    try:
        items = json.loads(text)
        return [
            Reservation(
                id=str(i["id"]),
                replica=str(i["replica"]),
                namespace=str(i["namespace"]),
                charge=_charge_from_json(i["charge"]),
                created=float(i["created"]),
                expires=float(i["expires"]),
            )
            for i in items
        ]
    except (ValueError, KeyError, TypeError) as err:
        raise ClusterError(f"Lease {lease['metadata'].get('name')}: unreadable reservations: {err}") from None


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
