"""Overload: past ``max_concurrency`` connections and requests in flight, new requests get 503 at
once (the webhook's failurePolicy decides) instead of queueing until the apiserver gives up."""

from __future__ import annotations

import ssl
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from tests.admission.helpers import review
from tests.conftest import POLICIES, container, pod
from tests.http.conftest import free_port
from webhook.certs.files import ensure_dev_certs
from webhook.serving.server import build_runtime, dev_cluster, uvicorn_server
from webhook.serving.settings import Settings
from webhook.serving.tls import server_ssl_context


def test_requests_past_the_concurrency_limit_are_shed_with_503(tmp_path: Path) -> None:
    certs = ensure_dev_certs(tmp_path / "certs")
    runtime = build_runtime(
        Settings(dev=True, policies_dir=POLICIES, audit_file=str(tmp_path / "audit.log")), cluster=dev_cluster(POLICIES)
    )
    context = server_ssl_context(cert_file=certs / "tls.crt", key_file=certs / "tls.key")
    port = free_port()
    server = uvicorn_server(runtime.app, context, host="127.0.0.1", port=port, log_level="warning", max_concurrency=2)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.02)
    verify = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    body = review(pod(container(limits={"nvidia.com/gpu": "1"})))
    try:
        with httpx.Client(base_url=f"https://localhost:{port}", verify=verify, timeout=10) as first:
            # uvicorn counts the open connections too: this one (kept alive) fills the second place
            assert first.post("/mutate", json=body).status_code == 200
            with httpx.Client(base_url=f"https://localhost:{port}", verify=verify, timeout=10) as second:
                shed = second.post("/mutate", json=body)
                assert shed.status_code == 503
            # Once the server has seen the shed connection close, there is room again.
            statuses = []
            for _ in range(50):
                statuses.append(first.post("/mutate", json=body).status_code)
                if statuses[-1] == 200:
                    break
                time.sleep(0.02)
            assert statuses[-1] == 200 and set(statuses) <= {200, 503}
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def test_loop_lag_sees_a_loop_that_falls_behind() -> None:
    import asyncio

    from webhook.serving.http import LoopLag

    async def scenario() -> float:
        lag, seen = LoopLag(interval=0.01), []
        monitor = asyncio.create_task(lag.run(seen.append))
        await asyncio.sleep(0.05)
        time.sleep(0.3)  # a handler that holds the loop, as a backlog of decisions does
        assert lag.behind() >= 0.25  # seen from inside the stretch, before the timer can fire
        await asyncio.sleep(0.03)
        monitor.cancel()
        return max(seen)

    # Only lower bounds on a real loop: a busy machine can make the loop later, never earlier.
    # How much a loop that keeps up measures is pinned on a scripted clock below.
    assert asyncio.run(scenario()) >= 0.25


class _ScriptedLoop:
    """The loop's clock, moved by the test; ``time.monotonic`` reads the same clock, as on a real loop."""

    def __init__(self) -> None:
        self.now = 1000.0

    def time(self) -> float:
        return self.now


class _TimerWait:
    """``asyncio.sleep`` as ``LoopLag.run`` sees it: control goes back to whoever drives the coroutine."""

    def __await__(self) -> Any:
        yield


def test_loop_lag_measures_exactly_how_late_its_timer_fires(monkeypatch: pytest.MonkeyPatch) -> None:
    from webhook.serving import http

    loop = _ScriptedLoop()
    monkeypatch.setattr(http, "asyncio", SimpleNamespace(get_running_loop=lambda: loop, sleep=lambda _: _TimerWait()))
    monkeypatch.setattr(http, "time", SimpleNamespace(monotonic=loop.time))
    lag, seen = http.LoopLag(interval=0.01), []
    run = lag.run(seen.append)
    run.send(None)  # the first timer is set
    for _ in range(5):  # a loop that keeps up: every timer fires when it is due
        loop.now += 0.01
        run.send(None)
    assert seen == [0.0] * 5 and lag.behind() == 0.0
    loop.now += 0.01 + 0.3  # a handler holds the loop 0.3 s past the next timer
    assert lag.behind() == pytest.approx(0.3)  # seen from inside the stretch, before the timer can fire
    run.send(None)
    assert seen[-1] == pytest.approx(0.3) and lag.seconds == seen[-1]
    loop.now += 0.01  # caught up again
    run.send(None)
    assert seen[-1] == 0.0
    run.close()
    assert lag.behind() == 0.0  # stopped: nothing is overdue


def test_requests_are_shed_while_the_loop_runs_behind() -> None:
    from tests.http.test_error_mapping import post
    from webhook.serving.http import LoopLag, create_app
    from webhook.serving.metrics import Metrics

    decided: list[str] = []

    def decide(request: Any) -> Any:
        decided.append(request.uid)
        raise RuntimeError("stop here")  # reaching the handler is what this test looks for

    lag, metrics = LoopLag(), Metrics()
    app = create_app(mutate=decide, validate=decide, metrics=metrics, readiness=lambda: (True, {}), lag=lag)
    lag.seconds = 2.5  # as the monitor would note it while the server runs
    shed = post(app, "/validate", review(pod(container())))
    assert shed.status_code == 503 and "requests wait 2.5s before they are decided (limit 1s)" in shed.json()["message"]
    assert decided == [] and 'dra_bridge_rejected_http_requests_total{reason="overloaded"} 1' in metrics.render()
    lag.seconds = 0.2
    assert post(app, "/validate", review(pod(container()))).status_code == 500 and decided == ["uid-1"]
    never = create_app(
        mutate=decide, validate=decide, metrics=Metrics(), readiness=lambda: (True, {}), lag=lag, shed_after=None
    )
    lag.seconds = 60.0
    assert post(never, "/validate", review(pod(container()))).status_code == 500  # shedding off
