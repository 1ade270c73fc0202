"""Slow and half-sent connections to a real TLS server are closed after their time limit and do not
crowd out genuine reviews (webhook/serving/guard.py)."""

from __future__ import annotations

import contextlib
import json
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.admission.helpers import review
from tests.conftest import POLICIES, container, pod
from tests.fuzz.test_fuzz import ListSink
from tests.http.conftest import free_port
from webhook.audit.log import AuditLog
from webhook.certs.files import ensure_dev_certs
from webhook.serving.guard import Limits
from webhook.serving.server import Runtime, build_runtime, dev_cluster, uvicorn_server
from webhook.serving.settings import Settings
from webhook.serving.tls import server_ssl_context

LIMIT = 5.0  # seconds, for the handshake, the headers and the body (the defaults)
PER_KIND = 100  # connections of each slow kind: 400 in all
MAX_CONCURRENCY = 150  # below the slow connections' count: were they counted, genuine reviews would get 503
APISERVER_TIMEOUT = 10.0


@dataclass
class Server:
    port: int
    ca: Path
    runtime: Runtime
    sink: ListSink
    closed: dict[str, int]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    certs = ensure_dev_certs(tmp_path / "certs")
    sink = ListSink()
    runtime = build_runtime(
        Settings(dev=True, policies_dir=POLICIES), cluster=dev_cluster(POLICIES), audit=AuditLog(sink)
    )
    closed: dict[str, int] = {}

    def on_timeout(stage: str) -> None:
        closed[stage] = closed.get(stage, 0) + 1

    context = server_ssl_context(cert_file=certs / "tls.crt", key_file=certs / "tls.key")
    port = free_port()
    uvicorn = uvicorn_server(
        runtime.app,
        context,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        max_concurrency=MAX_CONCURRENCY,
        limits=Limits(handshake_timeout=LIMIT, header_timeout=LIMIT, body_timeout=LIMIT),
        on_timeout=on_timeout,  # type: ignore[arg-type]
    )
    thread = threading.Thread(target=uvicorn.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not uvicorn.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.02)
    yield Server(port=port, ca=certs / "ca.crt", runtime=runtime, sink=sink, closed=closed)
    uvicorn.should_exit = True
    thread.join(timeout=30)


def tls(port: int, context: ssl.SSLContext) -> ssl.SSLSocket:
    return context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="localhost")


def open_slow_connections(port: int, context: ssl.SSLContext) -> dict[str, list[socket.socket]]:
    body = json.dumps(review(pod(container()), uid="uid-half-sent")).encode()
    slow: dict[str, list[socket.socket]] = {"no-handshake": [], "no-request": [], "half-headers": [], "half-body": []}
    for number in range(PER_KIND):
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        raw.sendall(b"\x16\x03\x01")  # the first bytes of a ClientHello, and no more
        slow["no-handshake"].append(raw)
        slow["no-request"].append(tls(port, context))
        headers = tls(port, context)
        headers.sendall(b"POST /validate HTTP/1.1\r\nHost: localhost\r\nContent-Type: appl")
        slow["half-headers"].append(headers)
        half = tls(port, context)
        uid = f"uid-half-body-{number}".encode()
        start = body.replace(b"uid-half-sent", uid)[:200]
        half.sendall(
            b"POST /validate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body) + 100}\r\n\r\n".encode()
            + start
        )
        slow["half-body"].append(half)
    return slow


def closed_by_server(sock: socket.socket, until: float) -> bool:
    """True once the server closes ``sock`` (EOF or reset) before ``until``."""
    while time.monotonic() < until:
        readable, _, _ = select.select([sock], [], [], max(0.0, until - time.monotonic()))
        if not readable:
            return False
        try:
            data = sock.recv(4096)
        except ssl.SSLWantReadError:
            continue
        except (OSError, ssl.SSLError):
            return True
        if not data:
            return True
    return False


def test_half_sent_connections_are_closed_in_time_and_genuine_reviews_are_answered(server: Server) -> None:
    client_context = ssl.create_default_context(cafile=str(server.ca))
    slow = open_slow_connections(server.port, client_context)
    all_open = time.monotonic()
    try:
        # genuine reviews while every slow connection is (or may be) still open
        answered = []
        with httpx.Client(
            base_url=f"https://localhost:{server.port}", verify=client_context, timeout=APISERVER_TIMEOUT
        ) as client:
            for number in range(20):
                body = review(pod(container(limits={"nvidia.com/gpu": "1"})), uid=f"genuine-{number}")
                started = time.monotonic()
                response = client.post("/mutate", json=body)
                answered.append((response.status_code, time.monotonic() - started))
        assert [status for status, _ in answered] == [200] * 20, answered
        assert max(seconds for _, seconds in answered) < APISERVER_TIMEOUT

        # every slow connection is closed by the server: its limit after it was opened, plus generous slack
        until = all_open + LIMIT + 15
        still_open = {kind: sum(not closed_by_server(s, until) for s in socks) for kind, socks in slow.items()}
        assert still_open == {kind: 0 for kind in slow}, still_open
    finally:
        for socks in slow.values():
            for sock in socks:
                sock.close()
    assert server.closed.get("headers", 0) >= 2 * PER_KIND and server.closed.get("body", 0) >= PER_KIND
    # the half-sent bodies are recorded (uid read from the part that arrived); the genuine ones too
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        records = server.sink.records()
        if sum(r["reason"] == "incomplete-body" for r in records) >= PER_KIND:
            break
        time.sleep(0.1)
    uids = {str(r["uid"]) for r in records if r["reason"] == "incomplete-body"}
    assert uids == {f"uid-half-body-{n}" for n in range(PER_KIND)}
    assert {f"genuine-{n}" for n in range(20)} <= {str(r["uid"]) for r in records}


def test_headers_past_the_size_limit_close_the_connection(server: Server) -> None:
    context = ssl.create_default_context(cafile=str(server.ca))
    sock = tls(server.port, context)
    try:
        sock.sendall(b"POST /validate HTTP/1.1\r\nHost: localhost\r\n")
        filler = b"X-Filler: " + b"a" * 1000 + b"\r\n"
        with contextlib.suppress(OSError, ssl.SSLError):  # the server may close while more are on their way
            for _ in range(200):  # 200 KB of headers, past the 64 KiB limit
                sock.sendall(filler)
        assert closed_by_server(sock, time.monotonic() + APISERVER_TIMEOUT)
    finally:
        sock.close()
    assert server.closed.get("header-size") == 1
