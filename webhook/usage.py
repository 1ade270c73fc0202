"""Live GPU usage per namespace, from the cluster's ResourceClaims, with reservations.

The cluster port feeds claim events (``observe``/``forget``); each claim is reduced to its charge
basis once, and per-namespace totals are updated in O(1). A tenant's usage is the sum over its
namespaces (a handful), so a decision never lists anything.

Admissions in flight are reserved: ``admit`` checks usage plus reservations and, if the claim fits,
reserves its charge under the same lock, so concurrent admissions in one replica never over-admit.
A reservation is confirmed when the claim shows up in the cache (matched by namespace and charge)
and expires after a TTL if it never does (another admission plugin refused the claim). Dry-run
admissions are checked but never reserved.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from webhook.charge import ZERO, Basis, Charge, ClassResolver, basis, charge

ClaimKey = tuple[str, str]  # (namespace, name)


@dataclass
class _Reservation:
    namespace: str
    charge: Charge
    expires: float


@dataclass(slots=True)
class _Claim:
    namespace: str
    basis: Basis
    charge: Charge


@dataclass(frozen=True, slots=True)
class Observation:
    """A claim the cache saw appear, kept for one reservation TTL so that reservations made by
    other replicas can be matched to it (by namespace and charge) and not counted twice."""

    namespace: str
    charge: Charge
    at: float  # wall clock, comparable across replicas


@dataclass
class UsageLedger:
    classes: ClassResolver
    reservation_ttl: float = 30.0
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time
    _claims: dict[ClaimKey, _Claim] = field(default_factory=dict)
    # One basis and one charge per distinct claim shape: the claims of one template share them, so
    # 100,000 claims cost a dict entry each, not 100,000 copies of the same numbers.
    _shapes: dict[Basis, tuple[Basis, Charge]] = field(default_factory=dict)
    _by_namespace: dict[str, Charge] = field(default_factory=dict)
    # Live reservations per namespace (insertion order = expiry order, the TTL being constant), their
    # per-namespace sum, and one FIFO of expiry times: a decision costs O(its namespaces), whatever
    # the number of reservations in flight elsewhere.
    _reservations: dict[str, dict[int, _Reservation]] = field(default_factory=dict)
    _reserved: dict[str, Charge] = field(default_factory=dict)
    _expiry: deque[tuple[float, str, int]] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _next_token: int = 0
    # Claims seen appearing within the last TTL, per namespace, oldest first (for LeaseCoordinator).
    _observations: dict[str, deque[Observation]] = field(default_factory=dict)

    # -- the cache side ------------------------------------------------------------------------
    def observe(self, namespace: str, name: str, claim_spec: dict[str, object]) -> None:
        """A claim was added or changed (its spec is immutable, so this is mostly an add)."""
        claim_basis = basis(claim_spec)
        with self._lock:
            shape = self._shapes.get(claim_basis)
            if shape is None:
                shape = self._shapes[claim_basis] = (claim_basis, charge(claim_basis, classes=self.classes))
            claim_basis, new = shape
            old = self._claims.get((namespace, name))
            if old is not None:
                self._add(namespace, ZERO - old.charge)
            self._claims[(namespace, name)] = _Claim(namespace, claim_basis, new)
            self._add(namespace, new)
            if old is None:
                self._confirm(namespace, new)
                seen = self._observations.setdefault(namespace, deque())
                seen.append(Observation(namespace, new, self.wall_clock()))
                self._trim(seen)

    def forget(self, namespace: str, name: str) -> None:
        """A claim was deleted: its usage is released."""
        with self._lock:
            old = self._claims.pop((namespace, name), None)
            if old is not None:
                self._add(namespace, ZERO - old.charge)

    def reprice(self, classes: ClassResolver) -> None:
        """The policy's class facts changed: recompute every claim's charge (O(claims), on reload only)."""
        with self._lock:
            self.classes = classes
            self._by_namespace.clear()
            self._shapes = {b: (b, charge(b, classes=classes)) for b in self._shapes}
            for (namespace, _), claim in self._claims.items():
                claim.charge = self._shapes[claim.basis][1]
                self._add(namespace, claim.charge)

    # -- the admission side --------------------------------------------------------------------
    def usage(self, namespaces: Iterable[str]) -> Charge:
        with self._lock:
            self._expire()
            return self._usage(namespaces)

    def admit(
        self,
        *,
        namespace: str,
        namespaces: Iterable[str],
        requested: Charge,
        fits: Callable[[Charge], bool],
        reserve: bool,
    ) -> tuple[bool, Charge]:
        """Atomically: compute usage (claims + live reservations) of the tenant's ``namespaces``,
        ask ``fits(usage)``, and reserve ``requested`` in ``namespace`` if it fits and ``reserve``.
        Returns (fits, the usage it was judged against)."""
        with self._lock:
            self._expire()
            current = self._usage(namespaces)
            ok = fits(current)
            if ok and reserve:
                self._next_token += 1
                expires = self.clock() + self.reservation_ttl
                self._reservations.setdefault(namespace, {})[self._next_token] = _Reservation(
                    namespace, requested, expires
                )
                self._reserved[namespace] = self._reserved.get(namespace, ZERO) + requested
                self._expiry.append((expires, namespace, self._next_token))
            return ok, current

    def committed(self, namespaces: Iterable[str]) -> tuple[Charge, list[Observation]]:
        """Usage of stored claims only (no reservations), and the claims seen appearing lately."""
        wanted = set(namespaces)
        with self._lock:
            total = ZERO
            for ns in wanted:
                total = total + self._by_namespace.get(ns, ZERO)
            recent: list[Observation] = []
            for ns in wanted:
                seen = self._observations.get(ns)
                if seen:
                    self._trim(seen)
                    recent.extend(seen)
        return total, recent

    @property
    def claim_count(self) -> int:
        with self._lock:
            return len(self._claims)

    @property
    def reservation_count(self) -> int:
        with self._lock:
            self._expire()
            return sum(len(r) for r in self._reservations.values())

    # -- internals (lock held) -----------------------------------------------------------------
    def _usage(self, namespaces: Iterable[str]) -> Charge:
        wanted = set(namespaces)
        total = ZERO
        for ns in wanted:
            total = total + self._by_namespace.get(ns, ZERO) + self._reserved.get(ns, ZERO)
        return total

    def _add(self, namespace: str, delta: Charge) -> None:
        updated = self._by_namespace.get(namespace, ZERO) + delta
        if updated.claims <= 0 and not updated.devices and not updated.memory and not updated.compute:
            self._by_namespace.pop(namespace, None)
        else:
            self._by_namespace[namespace] = updated

    def _trim(self, seen: deque[Observation]) -> None:
        horizon = self.wall_clock() - self.reservation_ttl
        while seen and seen[0].at <= horizon:
            seen.popleft()

    def _confirm(self, namespace: str, observed: Charge) -> None:
        """The claim a reservation was for has appeared: it is counted as usage now."""
        pending = self._reservations.get(namespace) or {}
        token = next((t for t, r in pending.items() if r.charge == observed), None)  # oldest first
        if token is not None:
            self._release(namespace, token)

    def _expire(self) -> None:
        now = self.clock()
        while self._expiry and self._expiry[0][0] <= now:
            _, namespace, token = self._expiry.popleft()
            self._release(namespace, token)  # a no-op if it was confirmed already

    def _release(self, namespace: str, token: int) -> None:
        pending = self._reservations.get(namespace)
        reservation = pending.pop(token, None) if pending is not None else None
        if reservation is None:
            return
        left = self._reserved[namespace] - reservation.charge
        if pending:
            self._reserved[namespace] = left
        else:
            del self._reservations[namespace], self._reserved[namespace]
