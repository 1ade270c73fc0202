"""Prometheus metrics in the text exposition format, without a client library.

Counters and histograms with labels, safe across threads, rendered on ``GET /metrics``. Recording
is a dict update under a lock: cheap enough for the request path.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for types: the metrics module stays free of the quota core at run time
    from webhook.quota.enforcement import QuotaEnforcer

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def _labels(names: Sequence[str], values: Sequence[str]) -> str:
    if not names:
        return ""
    pairs = ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True))
    return "{" + pairs + "}"


def _number(value: float) -> str:
    """Exact in the exposition format: ``{:g}`` keeps six digits, so a counter past a million or a
    memory figure in bytes would move in steps."""
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Counter:
    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        self.name, self.help, self.label_names = name, help_text, tuple(labels)
        self._values: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + amount

    def value(self, *labels: str) -> float:
        with self._lock:
            return self._values.get(labels, 0.0)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        with self._lock:
            for key, value in sorted(self._values.items()):
                lines.append(f"{self.name}{_labels(self.label_names, key)} {_number(value)}")
        return lines


class Gauge(Counter):
    def set(self, *labels: str, value: float) -> None:
        with self._lock:
            self._values[labels] = value

    def replace(self, values: Mapping[tuple[str, ...], float]) -> None:
        """All label sets at once: label sets not given disappear (a tenant removed from the policy)."""
        with self._lock:
            self._values = dict(values)

    def render(self) -> list[str]:
        return [line.replace(" counter", " gauge") if line.startswith("# TYPE") else line for line in super().render()]


class Histogram:
    def __init__(
        self, name: str, help_text: str, labels: Sequence[str] = (), buckets: Sequence[float] = LATENCY_BUCKETS
    ) -> None:
        self.name, self.help, self.label_names = name, help_text, tuple(labels)
        self.buckets = tuple(buckets)
        self._counts: dict[tuple[str, ...], list[int]] = {}
        self._sums: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()

    def observe(self, value: float, *labels: str) -> None:
        position = bisect.bisect_left(self.buckets, value)
        with self._lock:
            counts = self._counts.get(labels)
            if counts is None:  # not setdefault: its default would be built on every observation
                counts = self._counts[labels] = [0] * (len(self.buckets) + 1)
            counts[position] += 1
            self._sums[labels] = self._sums.get(labels, 0.0) + value

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        with self._lock:
            for key, counts in sorted(self._counts.items()):
                running = 0
                for bound, count in zip((*self.buckets, float("inf")), counts, strict=True):
                    running += count
                    le = "+Inf" if bound == float("inf") else f"{bound:g}"
                    lines.append(f"{self.name}_bucket{_labels((*self.label_names, 'le'), (*key, le))} {running}")
                lines.append(f"{self.name}_sum{_labels(self.label_names, key)} {self._sums[key]:.6f}")
                lines.append(f"{self.name}_count{_labels(self.label_names, key)} {running}")
        return lines


class Metrics:
    """Every metric dra-bridge exports."""

    def __init__(self) -> None:
        self.decisions = Counter(
            "dra_bridge_admission_decisions_total",
            "Admission decisions by webhook, outcome (allowed, patched, denied, error), reason and tenant.",
            ("webhook", "outcome", "reason", "tenant"),
        )
        self.latency = Histogram(
            "dra_bridge_admission_duration_seconds", "Time to decide one AdmissionReview.", ("webhook",)
        )
        self.conversions = Counter(
            "dra_bridge_conversions_total", "Legacy GPU requests converted, by legacy name.", ("legacy_name",)
        )
        self.observed = Counter(
            "dra_bridge_observed_conversions_total",
            "Legacy GPU requests observe mode admitted unchanged that would have been converted, by legacy name.",
            ("legacy_name",),
        )
        self.templates_created = Counter(
            "dra_bridge_templates_created_total", "ResourceClaimTemplates created by dra-bridge."
        )
        self.templates_collected = Counter(
            "dra_bridge_templates_collected_total", "Unreferenced managed templates deleted."
        )
        self.forwards = Counter(
            "dra_bridge_quota_forwards_total",
            "Reviews handed to the replica that owns their tenant's quota, by outcome (answered; "
            "unreachable, status-<code> or no-time: decided here instead), and those received from one.",
            ("webhook", "outcome"),
        )
        self.rejected_requests = Counter(
            "dra_bridge_rejected_http_requests_total", "HTTP requests refused before admission, by reason.", ("reason",)
        )
        self.slow_connections_closed = Counter(
            "dra_bridge_slow_connections_closed_total",
            "Connections closed because a request's headers or body did not arrive in time, by stage.",
            ("stage",),
        )
        self.ready = Gauge("dra_bridge_ready", "1 when caches and policies have synced.")
        self.audit_write_failures = Counter(
            "dra_bridge_audit_write_failures_total",
            "Decisions answered 500 because their audit record could not be written.",
            ("webhook",),
        )
        self.moved_to_thread = Counter(
            "dra_bridge_decisions_moved_to_thread_total",
            "Decisions started on the event loop that needed the cluster and were made again on a thread.",
            ("webhook",),
        )
        self.cert_reloads = Counter("dra_bridge_certificate_reloads_total", "Serving certificate reloads.")
        self.policy_errors = Gauge(
            "dra_bridge_policy_errors", "Policy ConfigMaps rejected at load (the last good version stays active)."
        )

        self.policy_reloads = Gauge(
            "dra_bridge_policy_reloads_total", "Policy document loads since start, by result (ok, failed).", ("result",)
        )
        self.loop_lag = Gauge(
            "dra_bridge_event_loop_lag_seconds", "How late the event loop runs a timer: the wait before a decision."
        )
        self.gc_frozen = Gauge(
            "dra_bridge_gc_frozen_objects", "Objects the cyclic garbage collector no longer walks (frozen)."
        )
        self.gc_settle_seconds = Gauge(
            "dra_bridge_gc_settle_seconds", "Pause of the latest collect-and-freeze (webhook/serving/collector.py)."
        )
        self.claims_cached = Gauge("dra_bridge_claims_cached", "ResourceClaims in the usage cache.")
        self.quota_usage = Gauge(
            "dra_bridge_quota_usage",
            "A tenant's usage per limited dimension (devices/<class or glob>, memory in bytes, compute in percent "
            "of one GPU, claims), from the claim cache at scrape time.",
            ("tenant", "dimension"),
        )
        self.quota_limit = Gauge(
            "dra_bridge_quota_limit",
            "A tenant's limit per dimension, in the units of dra_bridge_quota_usage.",
            ("tenant", "dimension"),
        )
        self.replicas = Gauge(
            "dra_bridge_replicas",
            "Replicas sharing out the tenants' quota decisions that this one knows alive (itself included).",
        )
        self.quota_lease = Gauge(
            "dra_bridge_quota_lease_operations_total",
            "Quota coordination through the tenants' Leases since start: batches decided, Lease reads, "
            "writes, and writes that lost to another replica (conflicts).",
            ("operation",),
        )
        self.cert_not_after = Gauge(
            "dra_bridge_certificate_not_after_timestamp_seconds",
            "Expiry of the serving certificate being served, in seconds since the epoch.",
        )
        self.collectors: list[Callable[[], None]] = []  # refresh gauges from their sources at scrape time

    def render(self) -> str:
        for collect in self.collectors:
            collect()
        lines: list[str] = []
        for metric in vars(self).values():
            if isinstance(metric, Counter | Histogram):
                lines.extend(metric.render())
        return "\n".join(lines) + "\n"


def quota_figures(enforcer: QuotaEnforcer) -> Iterable[tuple[str, str, float, float]]:
    """(tenant, dimension, used, limit) for every limited dimension of every named tenant.

    Namespaces in no tenant (the policy's ``default``, one pool per namespace) are left out: one
    series per namespace would grow without bound.
    """
    for tenant in enforcer.policies.current.tenants:
        namespaces = enforcer.members(tenant)
        usage = enforcer.ledger.usage(namespaces) if namespaces else None
        limits = tenant.limits
        for pattern, limit in limits.devices.items():
            yield tenant.name, f"devices/{pattern}", float(usage.matched.get(pattern, 0) if usage else 0), float(limit)
        if limits.memory is not None:
            yield tenant.name, "memory", float(usage.memory if usage else 0), float(limits.memory)
        if limits.compute is not None:
            yield tenant.name, "compute", float(usage.compute if usage else 0), float(limits.compute)
        if limits.claims is not None:
            yield tenant.name, "claims", float(usage.claims if usage else 0), float(limits.claims)


def collect_quota(metrics: Metrics, enforcer: QuotaEnforcer) -> Callable[[], None]:
    """A collector that refreshes the per-tenant usage and limit gauges when /metrics is scraped."""

    def collect() -> None:
        figures = list(quota_figures(enforcer))
        metrics.quota_usage.replace({(t, d): used for t, d, used, _ in figures})
        metrics.quota_limit.replace({(t, d): limit for t, d, _, limit in figures})

    return collect


def collect_certificate(metrics: Metrics, not_after: Callable[[], datetime | None]) -> Callable[[], None]:
    """A collector that exports the serving certificate's expiry (``CertificateReloader.not_after``)."""

    def collect() -> None:
        when = not_after()
        if when is not None:
            metrics.cert_not_after.set(value=when.timestamp())

    return collect
