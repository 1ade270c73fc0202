"""Overload: past ``max_concurrency`` connections and requests in flight, new requests get 503 at
once (the webhook's failurePolicy decides) instead of queueing until the apiserver gives up."""

from __future__ import annotations

import ssl
import threading
import time
from pathlib import Path

import httpx

from tests.admission.helpers import review
from tests.conftest import POLICIES, container, pod
from tests.http.conftest import free_port
from webhook.certs import ensure_dev_certs
from webhook.server import build_runtime, dev_cluster, uvicorn_server
from webhook.settings import Settings
from webhook.tls import server_ssl_context


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
