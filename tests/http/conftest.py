"""A real dra-bridge server over TLS on 127.0.0.1, with certificates from the project's own code."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import POLICIES
from webhook.certs.files import ensure_dev_certs
from webhook.cluster.memory import InMemoryCluster
from webhook.serving.server import Runtime, build_runtime, dev_cluster, uvicorn_server
from webhook.serving.settings import Settings
from webhook.serving.tls import server_ssl_context


@dataclass
class LiveServer:
    url: str
    ca: Path
    runtime: Runtime
    cluster: InMemoryCluster

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=ssl.create_default_context(cafile=str(self.ca)), timeout=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    certs = ensure_dev_certs(tmp_path_factory.mktemp("certs"))
    cluster = dev_cluster(POLICIES)  # what `serve --dev` runs: the example policies loaded
    cluster.add_namespace("team-a")
    audit_file = tmp_path_factory.mktemp("audit") / "audit.log"  # not the dev default beside the checkout
    settings = Settings(dev=True, policies_dir=POLICIES, max_body_bytes=64 * 1024, audit_file=str(audit_file))
    runtime = build_runtime(settings, cluster=cluster)
    context = server_ssl_context(cert_file=certs / "tls.crt", key_file=certs / "tls.key")
    port = free_port()
    server = uvicorn_server(runtime.app, context, host="127.0.0.1", port=port, log_level="warning")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.02)
    yield LiveServer(url=f"https://localhost:{port}", ca=certs / "ca.crt", runtime=runtime, cluster=cluster)
    server.should_exit = True
    thread.join(timeout=15)
