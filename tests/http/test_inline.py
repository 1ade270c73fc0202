"""Decisions on the event loop, and the move to a thread when one needs the cluster (webhook/inline.py).

The cluster below declares its writes the way the kube adapter's transport does (``may_block``
before any API call), and notes on which thread each write happened.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.admission.helpers import review
from tests.conftest import POLICIES, container, pod
from tests.http.test_error_mapping import post
from webhook.cluster.kube import RestTransport
from webhook.cluster.memory import InMemoryCluster
from webhook.inline import WouldBlock, deciding_inline, may_block
from webhook.serving.server import build_runtime
from webhook.serving.settings import Settings


class _ClusterWithIO(InMemoryCluster):
    def __init__(self) -> None:
        super().__init__()
        self.writers: list[str] = []

    def create_template(self, template: dict[str, Any]) -> dict[str, Any]:
        may_block("POST resourceclaimtemplates")
        self.writers.append(threading.current_thread().name)
        return super().create_template(template)


def _runtime(tmp_path: Path) -> tuple[Any, _ClusterWithIO, Path]:
    cluster = _ClusterWithIO()
    cluster.add_namespace("team-a")
    audit = tmp_path / "audit.log"
    runtime = build_runtime(Settings(dev=True, policies_dir=POLICIES, audit_file=str(audit)), cluster=cluster)
    return runtime, cluster, audit


def _records(audit: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in audit.read_text().splitlines()]


def test_may_block_raises_only_inside_deciding_inline() -> None:
    may_block("GET /api/v1/namespaces")  # outside: I/O may happen
    with deciding_inline(), pytest.raises(WouldBlock, match="GET /api/v1/namespaces"):
        may_block("GET /api/v1/namespaces")
    may_block("GET /api/v1/namespaces")  # the flag is reset on the way out, also after the raise


def test_a_decision_that_needs_a_write_moves_to_a_thread_and_is_recorded_once(tmp_path: Path) -> None:
    runtime, cluster, audit = _runtime(tmp_path)
    first = post(runtime.app, "/mutate", review(pod(container(limits={"nvidia.com/gpu": "1"})), uid="first"))
    assert first.status_code == 200 and first.json()["response"]["patchType"] == "JSONPatch"
    assert len(cluster.writers) == 1 and cluster.writers[0].startswith("decide")  # the executor's threads
    assert 'dra_bridge_decisions_moved_to_thread_total{webhook="mutate"} 1' in runtime.metrics.render()

    # The same shape again: the template is cached, nothing to write, decided on the loop.
    second = post(runtime.app, "/mutate", review(pod(container(limits={"nvidia.com/gpu": "1"})), uid="second"))
    assert second.status_code == 200 and second.json()["response"]["patch"] == first.json()["response"]["patch"]
    assert len(cluster.writers) == 1
    assert 'dra_bridge_decisions_moved_to_thread_total{webhook="mutate"} 1' in runtime.metrics.render()

    records = _records(audit)
    assert [r["uid"] for r in records] == ["first", "second"]  # the abandoned inline run left no record
    assert [r["decision"] for r in records] == ["patched", "patched"]
    assert [r["seq"] for r in records] == [1, 2]
    assert records[0]["conversions"] and records[0]["conversions"] == records[1]["conversions"]


def test_without_inline_decisions_every_one_runs_on_a_thread(tmp_path: Path) -> None:
    from webhook.serving.http import create_app
    from webhook.serving.metrics import Metrics

    threads: list[str] = []

    def decide(_: Any) -> Any:
        threads.append(threading.current_thread().name)
        raise RuntimeError("stop here")

    app = create_app(mutate=decide, validate=decide, metrics=Metrics(), readiness=lambda: (True, {}), inline=False)
    assert post(app, "/mutate", review(pod(container()))).status_code == 500
    app = create_app(mutate=decide, validate=decide, metrics=Metrics(), readiness=lambda: (True, {}))
    assert post(app, "/mutate", review(pod(container()))).status_code == 500
    assert threads[0].startswith("decide") and threads[1] == threading.main_thread().name


def test_the_kube_transport_refuses_io_while_deciding_inline() -> None:
    """The one place the request path reaches the apiserver: no socket is opened inline."""
    from kubernetes import client as k8s_client

    configuration = k8s_client.Configuration()
    configuration.host = "https://127.0.0.1:1"  # nothing listens; reaching it would be an error, not WouldBlock
    transport = RestTransport(k8s_client.ApiClient(configuration))
    path = "/apis/coordination.k8s.io/v1/namespaces/x/leases/y"
    with deciding_inline(), pytest.raises(WouldBlock, match=re.escape(f"GET {path}")):
        transport.request("GET", path)
