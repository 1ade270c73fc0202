"""The Grafana dashboard and the PrometheusRule in deploy/monitoring/ use only metrics the server
exports, and the per-tenant quota and certificate gauges carry the figures they chart."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import POLICIES, ROOT
from webhook.cluster.memory import InMemoryCluster
from webhook.serving.metrics import collect_certificate
from webhook.serving.server import Runtime, build_runtime, dev_cluster
from webhook.serving.settings import Settings

MONITORING = ROOT / "deploy" / "monitoring"
DASHBOARD = MONITORING / "grafana-dashboard.json"
RULES = MONITORING / "prometheus-rule.yaml"
METRIC = re.compile(r"\b(dra_bridge_[a-z0-9_]+)")
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Runtime:
    cluster: InMemoryCluster = dev_cluster(POLICIES)
    cluster.add_namespace("ml-research")
    cluster.add_claim(
        {
            "metadata": {"name": "c1", "namespace": "ml-research", "resourceVersion": "1"},
            "spec": {
                "devices": {
                    "requests": [
                        {"name": "g", "exactly": {"deviceClassName": "whole.nvidia.dra-bridge.io", "count": 3}}
                    ]
                }
            },
        }
    )
    audit = tmp_path_factory.mktemp("audit") / "audit.log"
    runtime = build_runtime(Settings(dev=True, policies_dir=POLICIES, audit_file=str(audit)), cluster=cluster)
    cluster.start()
    return runtime


def exported(runtime: Runtime) -> dict[str, str]:
    """Metric name -> type, from the # TYPE lines of GET /metrics (present even before a first value)."""
    text = runtime.metrics.render()
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))


def series_names(exports: dict[str, str]) -> set[str]:
    names = set(exports)
    names |= {name + suffix for name, kind in exports.items() if kind == "histogram" for suffix in HISTOGRAM_SERIES}
    return names


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    exprs += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    assert document["apiVersion"] == "monitoring.coreos.com/v1" and document["kind"] == "PrometheusRule"
    return [rule for group in document["spec"]["groups"] for rule in group["rules"]]


@pytest.mark.parametrize("source", ["dashboard", "rules"])
def test_every_metric_used_is_exported(runtime: Runtime, source: str) -> None:
    exprs = dashboard_expressions() if source == "dashboard" else [r["expr"] for r in rules()]
    used = {name for expr in exprs for name in METRIC.findall(expr)}
    assert len(used) >= 8, used  # the regex still finds the metrics
    unknown = used - series_names(exported(runtime))
    assert not unknown, f"{source} uses metrics the server does not export: {sorted(unknown)}"


def test_the_dashboard_covers_what_operators_watch() -> None:
    text = " ".join(dashboard_expressions())
    for metric in (
        "dra_bridge_admission_decisions_total",
        "dra_bridge_admission_duration_seconds_bucket",
        "dra_bridge_rejected_http_requests_total",
        "dra_bridge_quota_usage",
        "dra_bridge_quota_limit",
        "dra_bridge_policy_errors",
        "dra_bridge_ready",
        "dra_bridge_certificate_not_after_timestamp_seconds",
    ):
        assert metric in text, metric
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["targets"] and all(t["expr"].count("(") == t["expr"].count(")") for t in panel["targets"])


def test_the_rules_cover_the_failure_modes() -> None:
    by_name = {r["alert"]: r for r in rules()}
    assert set(by_name) == {
        "DraBridgeAdmissionErrors",
        "DraBridgeLatencyNearTimeout",
        "DraBridgeSheddingLoad",
        "DraBridgeCacheNotSynced",
        "DraBridgePolicyErrors",
        "DraBridgeAuditWriteFailures",
        "DraBridgeCertificateExpiresSoon",
        "DraBridgeTenantNearQuota",
    }
    assert "14 * 86400" in by_name["DraBridgeCertificateExpiresSoon"]["expr"]
    for rule in by_name.values():
        assert rule["labels"]["severity"] in ("info", "warning", "critical")
        assert rule["annotations"]["summary"] and rule["expr"].count("(") == rule["expr"].count(")")


def test_quota_gauges_show_each_tenant_against_its_limits(runtime: Runtime) -> None:
    text = runtime.metrics.render()
    assert 'dra_bridge_quota_usage{tenant="research",dimension="devices/whole.*.dra-bridge.io"} 3' in text
    assert 'dra_bridge_quota_limit{tenant="research",dimension="devices/whole.*.dra-bridge.io"} 8' in text
    assert f'dra_bridge_quota_usage{{tenant="research",dimension="memory"}} {240 * 2**30}' in text
    assert 'dra_bridge_quota_usage{tenant="inference",dimension="memory"} 0' in text


def test_certificate_expiry_gauge(runtime: Runtime) -> None:
    when = datetime(2030, 1, 1, tzinfo=UTC)
    runtime.metrics.collectors.append(collect_certificate(runtime.metrics, lambda: when))
    try:
        text = runtime.metrics.render()
    finally:
        runtime.metrics.collectors.pop()
    assert f"dra_bridge_certificate_not_after_timestamp_seconds {int(when.timestamp())}" in text


def test_the_server_wires_the_certificate_gauge() -> None:
    source = (ROOT / "webhook" / "serving" / "server.py").read_text()
    assert "collect_certificate(runtime.metrics, lambda: reloader.not_after)" in source
    assert Path(DASHBOARD).is_file()
