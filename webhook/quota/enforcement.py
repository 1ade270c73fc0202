"""Quota enforcement: the live policy set, usage, and the checks for claims, templates and Pods.

``PolicyStore`` keeps the last good document of every policy ConfigMap (a bad edit never replaces
it; the error shows in ``/readyz``, a metric and the log). ``QuotaEnforcer`` joins the store, the
usage ledger and the tenant index, and answers the admission engine's questions. The tenant index
(namespace -> tenant) is rebuilt only when the policy or the namespaces change, so a decision costs
a few dict lookups and the sum over the tenant's namespaces.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from webhook.cluster import ClusterPort, EventType
from webhook.labels import POLICY_KEY
from webhook.quota.charge import ZERO, Charge, Pricer, basis, charge
from webhook.quota.check import check, describe_tenant, violations
from webhook.quota.coordination import LeaseCoordinator
from webhook.quota.devices import DeviceShape, models_of
from webhook.quota.figure import QuotaFigure
from webhook.quota.inventory import Inventory
from webhook.quota.policy import (
    PolicyError,
    PolicySet,
    PolicySource,
    QuotaPolicy,
    Tenant,
    build_policy_set,
    parse_policy_document,
)
from webhook.quota.replicas import Replicas
from webhook.quota.usage import UsageLedger
from webhook.translate.catalogue import Catalogue

log = logging.getLogger("dra_bridge.quota")


class PolicyStore:
    """Policy documents by ConfigMap name; the merged set is rebuilt on every change."""

    def __init__(self, *, on_change: Callable[[PolicySet], None] | None = None) -> None:
        self._documents: dict[str, tuple[PolicySource, QuotaPolicy]] = {}
        self._errors: dict[str, str] = {}
        self._current = PolicySet()
        self._lock = threading.Lock()
        self._on_change = on_change
        self.synced = False
        self.reloads_ok = 0
        self.reloads_failed = 0

    @property
    def current(self) -> PolicySet:
        return self._current

    @property
    def errors(self) -> dict[str, str]:
        with self._lock:
            return dict(self._errors)

    def put(self, source: PolicySource, text: str) -> None:
        """A document was added or edited; a bad one keeps the last good version of that name."""
        with self._lock:
            try:
                policy = parse_policy_document(text, origin=source.name)
                candidate = {**self._documents, source.name: (source, policy)}
                merged = build_policy_set([candidate[k] for k in sorted(candidate)])
            except PolicyError as err:
                self._errors[source.name] = str(err)
                self.reloads_failed += 1
                log.error("policy %s rejected, the last good version stays active: %s", source, err)
                return
            self._documents = candidate
            self._errors.pop(source.name, None)
            self._current = merged
            self.reloads_ok += 1
            log.info("policy %s loaded; active policy version %s", source, merged.version)
        if self._on_change is not None:
            self._on_change(merged)

    def remove(self, name: str) -> None:
        with self._lock:
            self._errors.pop(name, None)
            if name not in self._documents:
                return
            remaining = {k: v for k, v in self._documents.items() if k != name}
            merged = build_policy_set([remaining[k] for k in sorted(remaining)])
            self._documents, self._current = remaining, merged
        if self._on_change is not None:
            self._on_change(merged)

    def validate(self, source: PolicySource, text: str) -> None:
        """Would this document be accepted alongside the others? Raises ``PolicyError`` if not."""
        policy = parse_policy_document(text, origin=source.name)
        with self._lock:
            candidate = {**self._documents, source.name: (source, policy)}
        build_policy_set([candidate[k] for k in sorted(candidate)])

    def on_configmap(self, event: EventType, configmap: dict[str, Any]) -> None:
        meta = configmap.get("metadata") or {}
        name = str(meta.get("name"))
        if event == "DELETED":
            self.remove(name)
            return
        data = configmap.get("data") or {}
        source = PolicySource(name=name, version=str(meta.get("resourceVersion", "?")))
        if POLICY_KEY not in data:
            with self._lock:
                self._errors[name] = f"{name}: ConfigMap has no data key {POLICY_KEY!r}"
            return
        self.put(source, str(data[POLICY_KEY]))


@dataclass(frozen=True)
class QuotaResult:
    tenant: Tenant | None
    figures: tuple[QuotaFigure, ...]
    denied: tuple[QuotaFigure, ...]
    policy_version: str
    release: Callable[[], None] | None = None  # gives the reservation back if the decision is not answered

    @property
    def message(self) -> str:
        return "; ".join(f.message for f in self.denied)


class QuotaEnforcer:
    def __init__(
        self,
        *,
        cluster: ClusterPort,
        catalogue: Callable[[], Catalogue],
        reservation_ttl: float = 30.0,
        coordination_wait: float = 2.0,
        coordination: Literal["local", "lease"] = "local",
        namespace: str = "dra-bridge",
        replica: str = "local",
        inventory: Inventory | None = None,
        replicas: Replicas | None = None,
    ) -> None:
        self._cluster = cluster
        self.replicas = replicas  # with a Lease: the replica that decides each tenant
        self._catalogue = catalogue
        self.inventory = inventory or Inventory()
        self.inventory.set_models(self._models())
        self.policies = PolicyStore(on_change=self._policy_changed)
        self.ledger = UsageLedger(
            pricer=self._pricer(PolicySet()),
            reservation_ttl=reservation_ttl,
            track_observations=coordination == "lease",  # only the Lease coordinator matches them
        )
        self._index_lock = threading.Lock()
        self._index_key: tuple[str, int] | None = None
        self._tenant_namespaces: dict[str, tuple[str, ...]] = {}
        self.coordinator = (
            LeaseCoordinator(
                cluster,
                self.ledger,
                namespace=namespace,
                replica=replica,
                ttl=reservation_ttl,
                wait=coordination_wait,
                owner=replicas.owner if replicas is not None else None,
            )
            if coordination == "lease"
            else None
        )

    # -- wiring ------------------------------------------------------------------------------
    def attach(self) -> None:
        """Subscribe to the cluster's claims and policy ConfigMaps (before ``cluster.start``)."""
        self._cluster.watch("deviceclasses", self.inventory.on_device_class)
        self._cluster.watch("resourceslices", self.inventory.on_slice)
        self._cluster.watch("resourceclaims", self.on_claim)
        self._cluster.watch("policy-configmaps", self.policies.on_configmap)

    def on_claim(self, event: EventType, claim: dict[str, Any]) -> None:
        meta = claim.get("metadata") or {}
        namespace, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
        if event == "DELETED":
            self.ledger.forget(namespace, name)
        else:
            self.ledger.observe(namespace, name, claim.get("spec") or {})

    def _pricer(self, policy_set: PolicySet) -> Pricer:
        declared = {name: facts.memory for name, facts in policy_set.classes.items()}
        patterns = {p for t in (*policy_set.tenants, policy_set.default) if t is not None for p in t.limits.devices}
        return Pricer(self._catalogue(), self.inventory.snapshot(), declared_memory=declared, device_patterns=patterns)

    def _models(self) -> list[DeviceShape]:
        return models_of((d.driver, d.models) for d in self._catalogue().drivers)

    def reprice(self) -> None:
        """Price every claim again by the current policy, catalogue and inventory."""
        self.ledger.reprice(self._pricer(self.policies.current))

    def refresh(self) -> None:
        """Reprice once the inventory moved on: on the first decision after a change, not per
        ResourceSlice event (a node's slices arrive one by one; at start-up, thousands)."""
        if self.ledger.pricer.generation != self.inventory.generation:
            self.reprice()

    def usage(self, namespaces: Iterable[str]) -> Charge:
        """What the namespaces hold now, priced by the current inventory."""
        self.refresh()
        return self.ledger.usage(namespaces)

    def catalogue_changed(self, *_: object) -> None:
        """The catalogue changed (``CatalogueStore.subscribe``): its known models and its drivers
        price every claim again (``set_models`` reprices through the inventory's subscription)."""
        self.inventory.set_models(self._models())

    def _policy_changed(self, policy_set: PolicySet) -> None:
        self.ledger.reprice(self._pricer(policy_set))
        with self._index_lock:
            self._index_key = None

    # -- tenants -----------------------------------------------------------------------------
    def tenant_of(self, namespace: str) -> Tenant | None:
        return self.policies.current.tenant_for(namespace, self._cluster.namespace_labels(namespace))

    def namespaces_of(self, tenant: Tenant, namespace: str) -> tuple[str, ...]:
        """The namespaces whose usage counts for ``tenant``; a default tenant is one namespace."""
        if tenant.is_default:
            return (namespace,)
        found = self.members(tenant)
        return found if namespace in found else (*found, namespace)

    def members(self, tenant: Tenant) -> tuple[str, ...]:
        """The known namespaces of a (non-default) tenant, from an index rebuilt only on change."""
        policy_set = self.policies.current
        key = (policy_set.version, self._cluster.namespace_generation)
        with self._index_lock:
            if key != self._index_key:
                grouped: dict[str, list[str]] = {}
                for ns, labels in self._cluster.namespaces().items():
                    owner = policy_set.tenant_for(ns, labels)
                    if owner is not None and not owner.is_default:
                        grouped.setdefault(owner.name, []).append(ns)
                self._tenant_namespaces = {k: tuple(sorted(v)) for k, v in grouped.items()}
                self._index_key = key
            return self._tenant_namespaces.get(tenant.name, ())

    # -- checks ------------------------------------------------------------------------------
    def check_claim(
        self,
        *,
        namespace: str,
        claim_spec: Mapping[str, Any],
        rule_input: dict[str, Any],
        dry_run: bool,
        name: str = "",
    ) -> QuotaResult:
        """A ResourceClaim being created: charged against the tenant's totals, reserved if it fits."""
        tenant = self.tenant_of(namespace)
        version = self.policies.current.version
        if tenant is None:
            return QuotaResult(None, (), (), version)
        self.refresh()
        requested = charge(basis(claim_spec), pricer=self.ledger.pricer)
        namespaces = self.namespaces_of(tenant, namespace)
        figures: list[QuotaFigure] = []

        def fits(usage: Charge) -> bool:
            figures[:] = check(
                requested,
                tenant=tenant,
                usage=usage,
                scope="claim",
                rule_input=self._rule_input(rule_input, tenant, usage, requested) if tenant.rules else None,
            )
            return not violations(figures)

        if self.coordinator is not None:  # two or more replicas: serialise through the tenant's Lease
            self.coordinator.admit(
                tenant=tenant.name,
                namespace=namespace,
                namespaces=namespaces,
                requested=requested,
                fits=fits,
                reserve=not dry_run,
                name=name,
            )
            release = None  # the Lease's reservation expires after its TTL
        else:
            _, _, token = self.ledger.admit(
                namespace=namespace, namespaces=namespaces, requested=requested, fits=fits, reserve=not dry_run
            )
            release = functools.partial(self.ledger.release, namespace, token) if token is not None else None
        return QuotaResult(tenant, tuple(figures), tuple(violations(figures)), version, release)

    def check_template(
        self, *, namespace: str, claim_spec: Mapping[str, Any], rule_input: dict[str, Any]
    ) -> QuotaResult:
        """A ResourceClaimTemplate: static checks only (classes, profiles, per-claim maxima, rules);
        its claims are charged when they are created. Never reserved."""
        tenant = self.tenant_of(namespace)
        version = self.policies.current.version
        if tenant is None:
            return QuotaResult(tenant, (), (), version)
        self.refresh()
        requested = charge(basis(claim_spec), pricer=self.ledger.pricer)
        figures = check(
            requested,
            tenant=tenant,
            usage=ZERO,
            scope="template",
            per_claim=(requested,),
            rule_input=self._rule_input(rule_input, tenant, ZERO, requested) if tenant.rules else None,
        )
        return QuotaResult(tenant, tuple(figures), tuple(violations(figures)), version)

    def check_pod(
        self,
        *,
        namespace: str,
        new_claims: Sequence[Mapping[str, Any]],
        existing_claims: Sequence[str],
        missing: Sequence[str],
        rule_input: dict[str, Any],
    ) -> QuotaResult:
        """A Pod: the claims it will produce (its templates, the extended resources the scheduler
        maps natively) against the tenant's totals; those and the claims it names that exist
        already against the per-Pod maxima and the rules. ``missing`` names claims or templates that
        do not exist yet: a tenant with per-Pod limits or rules cannot have them checked later, so
        the Pod is refused until they exist."""
        tenant = self.tenant_of(namespace)
        version = self.policies.current.version
        if tenant is None or not (new_claims or existing_claims or missing):
            return QuotaResult(tenant, (), (), version)
        policy = str(tenant.source)
        if missing and (tenant.limits.per_pod is not None or tenant.rules):
            figure = QuotaFigure(
                "perPod.unknown", "-", "-", "-", policy, True,
                f"{describe_tenant(tenant)}: the Pod names {', '.join(missing)}, which does not exist yet; per-Pod "
                f"limits and Pod rules are checked when the Pod is created, so create it first [policy {policy}]",
            )  # fmt: skip
            return QuotaResult(tenant, (figure,), (figure,), version)
        self.refresh()
        per_claim = tuple(charge(basis(spec), pricer=self.ledger.pricer) for spec in new_claims)
        total = sum(per_claim, ZERO)
        held = sum((self.ledger.charge_of(namespace, name) or ZERO for name in existing_claims), ZERO)
        usage = self.ledger.usage(self.namespaces_of(tenant, namespace))
        whole_pod = total + held
        figures = check(
            total,
            tenant=tenant,
            usage=usage,
            scope="pod",
            per_claim=per_claim,
            rule_input=self._rule_input(rule_input, tenant, usage, whole_pod) if tenant.rules else None,
            pod_charge=whole_pod,
        )
        return QuotaResult(tenant, tuple(figures), tuple(violations(figures)), version)

    @staticmethod
    def _rule_input(base: dict[str, Any], tenant: Tenant, usage: Charge, requested: Charge) -> dict[str, Any]:
        limits = tenant.limits
        return {
            **base,
            "claim": {**base.get("claim", {}), "charge": requested.as_cel()},
            "tenant": {
                "name": tenant.name,
                "usage": usage.as_cel(),
                "limits": {
                    "memory": int(limits.memory) if limits.memory is not None else None,
                    "compute": int(limits.compute) if limits.compute is not None else None,
                    "claims": limits.claims,
                    "devices": dict(limits.devices),
                },
            },
        }

    # -- readiness ---------------------------------------------------------------------------
    def ready(self) -> tuple[bool, dict[str, Any]]:
        cluster_ready, detail = self._cluster.ready()
        errors = self.policies.errors
        out: dict[str, Any] = {
            "cluster": detail,
            "policyVersion": self.policies.current.version,
            "claimsCached": self.ledger.claim_count,
        }
        if errors:
            out["policyErrors"] = errors
        return cluster_ready, out
