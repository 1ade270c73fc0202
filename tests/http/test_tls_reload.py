"""Live certificate reload through uvicorn: rotation under load, and bad pairs never applied.

uvicorn (0.54) runs in a background thread on 127.0.0.1 with the production
``server_ssl_context`` handed over via ``ssl_context_factory``; requests use
httpx with a fresh connection each, verifying against the CA bundle.
``CertificateReloader.check()`` is executed on uvicorn's own event loop, as in
production, where ``run()`` is a task on that loop.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from webhook.certs.files import CA_FILE, CERT_FILE, KEY_FILE, write_pair
from webhook.certs.issue import KeyPair, create_ca, create_serving_cert
from webhook.certs.rotate import ca_bundle
from webhook.serving.tls import CertificateReloader, server_ssl_context

T = TypeVar("T")

HOST = "127.0.0.1"
DEADLINE_S = 60.0  # upper bound for any wait in this module; never reached when healthy


async def _app(
    scope: dict[str, Any], receive: Callable[[], Awaitable[Any]], send: Callable[[Any], Awaitable[None]]
) -> None:
    assert scope["type"] == "http"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


class UvicornThread:
    """uvicorn on its own event loop in a daemon thread, bound to an ephemeral port."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.config = uvicorn.Config(
            _app,
            host=HOST,
            port=0,
            ssl_context_factory=lambda _config, _default: context,
            lifespan="off",
            log_level="warning",
            access_log=False,
            loop="asyncio",
        )
        self.server = uvicorn.Server(self.config)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="uvicorn-test", daemon=True)
        self.port = 0

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.serve())

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + DEADLINE_S
        while not self.server.started:
            assert self.thread.is_alive(), "uvicorn thread died during startup"
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.005)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the server's event loop thread and return its result."""

        async def invoke() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(invoke(), self.loop).result(timeout=DEADLINE_S)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=DEADLINE_S)
        assert not self.thread.is_alive(), "uvicorn did not stop"
        self.loop.close()

    @property
    def url(self) -> str:
        return f"https://{HOST}:{self.port}/"


@dataclass
class Setup:
    directory: Path
    ca1: KeyPair
    ca2: KeyPair
    bundle: bytes
    initial: KeyPair
    context: ssl.SSLContext
    reloader: CertificateReloader
    server: UvicornThread

    @property
    def cert_file(self) -> Path:
        return self.directory / CERT_FILE

    @property
    def key_file(self) -> Path:
        return self.directory / KEY_FILE

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.bundle.decode())

    def new_leaf(self, ca: KeyPair | None = None) -> KeyPair:
        return create_serving_cert(
            ca=ca or self.ca1, dns_names=["localhost"], ip_addresses=[HOST], now=datetime.now(UTC)
        )

    def check(self) -> bool:
        return self.server.call(self.reloader.check)

    def served_serial(self) -> int:
        """Serial of the certificate the server presents on a new raw TLS connection."""
        with (
            socket.create_connection((HOST, self.server.port), timeout=10) as raw,
            self.client_context().wrap_socket(raw, server_hostname=HOST) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).serial_number


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    now = datetime.now(UTC)
    ca1 = create_ca(common_name="reload-ca-1", now=now)
    ca2 = create_ca(common_name="reload-ca-2", now=now)
    initial = create_serving_cert(ca=ca1, dns_names=["localhost"], ip_addresses=[HOST], now=now)
    directory = tmp_path / "tls"
    write_pair(directory, ca=ca1, serving=initial)
    context = server_ssl_context(cert_file=directory / CERT_FILE, key_file=directory / KEY_FILE)
    reloader = CertificateReloader(
        context, cert_file=directory / CERT_FILE, key_file=directory / KEY_FILE, interval=0.01
    )
    server = UvicornThread(context)
    server.start()
    try:
        # The premise of live reload: uvicorn serves from our very context object.
        assert server.config.ssl is context
        yield Setup(
            directory=directory,
            ca1=ca1,
            ca2=ca2,
            bundle=ca_bundle(ca1.cert_pem, ca2.cert_pem),
            initial=initial,
            context=context,
            reloader=reloader,
            server=server,
        )
    finally:
        server.stop()


def _replace(path: Path, data: bytes) -> None:
    """Atomically replace one file, the way a careless rotator might (no pair consistency)."""
    tmp = path.with_name(f".{path.name}.test-tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _serial(pair: KeyPair) -> int:
    return pair.certificate.serial_number


class _Gate:
    """Hands out request tickets in batches so rotations happen between and during requests."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.allowed = 0
        self.issued = 0
        self.completed = 0
        self.cond = threading.Condition()

    def release(self, upto: int) -> None:
        with self.cond:
            self.allowed = min(upto, self.total)
            self.cond.notify_all()

    def take(self) -> int | None:
        deadline = time.monotonic() + DEADLINE_S
        with self.cond:
            while self.issued >= self.allowed and self.issued < self.total:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self.cond.wait(timeout=remaining):
                    raise TimeoutError("no request ticket released in time")
            if self.issued >= self.total:
                return None
            self.issued += 1
            return self.issued

    def done(self) -> None:
        with self.cond:
            self.completed += 1
            self.cond.notify_all()

    def wait_completed(self, count: int) -> None:
        deadline = time.monotonic() + DEADLINE_S
        with self.cond:
            while self.completed < count:
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"only {self.completed}/{count} requests completed in time"
                self.cond.wait(timeout=remaining)


def test_rotation_under_load_drops_no_requests(setup: Setup) -> None:
    total = 200
    batch = 40
    workers = 4
    gate = _Gate(total)
    failures: list[str] = []
    seen_serials: list[int] = []
    lock = threading.Lock()
    client_ctx = setup.client_context()

    def worker() -> None:
        while (ticket := gate.take()) is not None:
            try:
                # A new client per request: every request is a new TCP connection and TLS handshake.
                with httpx.Client(verify=client_ctx, timeout=10.0) as client:
                    response = client.get(setup.server.url, headers={"x-ticket": str(ticket)})
                    ssl_object = response.extensions["network_stream"].get_extra_info("ssl_object")
                    der = ssl_object.getpeercert(True)  # C method: binary_form is positional-only
                with lock:
                    if response.status_code != 200 or response.text != "ok":
                        failures.append(f"#{ticket}: HTTP {response.status_code} {response.text!r}")
                    seen_serials.append(x509.load_der_x509_certificate(der).serial_number)
            except Exception as exc:  # every failure is recorded, then asserted on
                with lock:
                    failures.append(f"#{ticket}: {type(exc).__name__}: {exc}")
            finally:
                gate.done()

    served = [_serial(setup.initial)]
    last_leaf = setup.initial
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="load") as pool:
        futures = [pool.submit(worker) for _ in range(workers)]
        try:
            released = batch
            gate.release(released)
            # Rotate with requests in flight: half-way through each batch, before
            # releasing the next one. The third rotation switches to the second CA.
            for rotation in range(4):
                gate.wait_completed(released - batch // 2)
                leaf = setup.new_leaf(setup.ca2 if rotation >= 2 else setup.ca1)
                write_pair(setup.directory, ca=setup.ca1, serving=leaf)
                assert setup.check() is True
                assert setup.served_serial() == _serial(leaf)
                served.append(_serial(leaf))
                last_leaf = leaf
                released += batch
                gate.release(released)
            gate.release(total)
            gate.wait_completed(total)
        finally:
            gate.release(total)  # never leave workers blocked if an assertion fired
            for future in futures:
                future.result(timeout=DEADLINE_S)

    assert failures == []
    assert gate.completed == total and len(seen_serials) == total
    assert len(set(served)) == 5
    assert setup.reloader.reloads == 4 and setup.reloader.failures == 0
    # Every certificate generation was actually served to some request, and nothing else was.
    assert set(seen_serials) == set(served)
    assert setup.reloader.not_after == last_leaf.not_after


def test_unchanged_files_do_not_reload(setup: Setup) -> None:
    assert setup.check() is False
    # Rewriting identical content changes the inode but not the certificate.
    write_pair(setup.directory, ca=setup.ca1, serving=setup.initial)
    assert setup.check() is False
    assert setup.reloader.reloads == 0 and setup.reloader.failures == 0
    assert setup.reloader.not_after == setup.initial.not_after


def test_mismatched_or_partial_pair_is_never_applied(setup: Setup) -> None:
    old_serial = _serial(setup.initial)
    new = setup.new_leaf()
    reloader = setup.reloader

    def still_serving_old() -> None:
        assert setup.served_serial() == old_serial
        with httpx.Client(verify=setup.client_context(), timeout=10.0) as client:
            assert client.get(setup.server.url).text == "ok"

    # New certificate next to the old key (a rotator that wrote tls.crt first).
    _replace(setup.cert_file, new.cert_pem)
    assert setup.check() is False
    still_serving_old()
    assert reloader.failures == 1 and reloader.reloads == 0
    assert reloader.last_error is not None and "does not match" in reloader.last_error
    # Retried on the next check, but the same bad state is counted once.
    assert setup.check() is False
    assert reloader.failures == 1
    still_serving_old()

    # Half-written certificate file.
    _replace(setup.cert_file, new.cert_pem[: len(new.cert_pem) // 2])
    assert setup.check() is False
    assert reloader.failures == 2
    still_serving_old()

    # Key file missing for a moment.
    _replace(setup.cert_file, new.cert_pem)
    setup.key_file.unlink()
    assert setup.check() is False
    assert reloader.failures == 3
    still_serving_old()
    assert reloader.not_after == setup.initial.not_after

    # The pair becomes consistent: applied.
    _replace(setup.key_file, new.key_pem)
    assert setup.check() is True
    assert setup.served_serial() == _serial(new)
    assert reloader.reloads == 1 and reloader.failures == 3
    assert reloader.last_error is None
    assert reloader.not_after == new.not_after


def test_failed_load_restores_previous_pair(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """If OpenSSL rejects a pair mid-load, the context is put back, not left half-loaded."""
    context = setup.context
    real_load = context.load_cert_chain
    calls: list[str] = []
    other_key = setup.directory / "other.key"
    other_key.write_bytes(setup.new_leaf().key_pem)

    def failing_once(certfile: Any, keyfile: Any = None, password: Any = None) -> None:
        calls.append(str(certfile))
        if len(calls) == 1:
            # What a real failure does: the new certificate is installed, its key
            # is not, and the context can no longer complete handshakes.
            real_load(certfile, other_key)
        real_load(certfile, keyfile)

    monkeypatch.setattr(context, "load_cert_chain", failing_once)
    new = setup.new_leaf()
    write_pair(setup.directory, ca=setup.ca1, serving=new)
    assert setup.check() is False
    assert len(calls) == 2  # the failed load, then the restore of the previous pair
    assert setup.reloader.failures == 1 and setup.reloader.reloads == 0
    assert setup.served_serial() == _serial(setup.initial)

    monkeypatch.undo()
    assert setup.check() is True
    assert setup.served_serial() == _serial(new)


def test_run_polls_until_stopped(setup: Setup) -> None:
    stop_holder: list[asyncio.Event] = []

    async def start() -> None:
        stop_holder.append(asyncio.Event())
        await setup.reloader.run(stop_holder[0])

    running = asyncio.run_coroutine_threadsafe(start(), setup.server.loop)
    new = setup.new_leaf(setup.ca2)
    write_pair(setup.directory, ca=setup.ca2, serving=new)
    deadline = time.monotonic() + DEADLINE_S
    while setup.served_serial() != _serial(new):
        assert time.monotonic() < deadline, "run() never applied the rotated certificate"
        assert not running.done(), "run() exited early"
        time.sleep(0.01)
    assert setup.reloader.reloads == 1
    setup.server.loop.call_soon_threadsafe(stop_holder[0].set)
    running.result(timeout=DEADLINE_S)
    # write_pair replaces tls.crt and tls.key one after the other; a poll that
    # lands in between sees a mismatched pair, skips it and applies it later.
    assert setup.reloader.failures in (0, 1)
    assert setup.reloader.last_error is None


def _client_cert(ca: KeyPair) -> KeyPair:
    """A clientAuth certificate, as an API server would present to the webhook."""
    ca_key = ca.private_key()
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return KeyPair(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )


def _client_context(server_ca: Path, client: KeyPair, directory: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=server_ca.read_text())
    serial = client.certificate.serial_number
    (directory / f"client-{serial}.crt").write_bytes(client.cert_pem)
    (directory / f"client-{serial}.key").write_bytes(client.key_pem)
    context.load_cert_chain(directory / f"client-{serial}.crt", directory / f"client-{serial}.key")
    return context


def _accepted(server: UvicornThread, context: ssl.SSLContext) -> bool:
    with httpx.Client(verify=context, timeout=10.0) as http:
        try:
            return http.get(server.url).text == "ok"
        except httpx.TransportError:
            return False


def test_client_ca_is_required_and_reloaded(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    ca = create_ca(now=now)
    client_ca1 = create_ca(common_name="apiserver-client-ca-1", now=now)
    client_ca2 = create_ca(common_name="apiserver-client-ca-2", now=now)
    leaf = create_serving_cert(ca=ca, dns_names=["localhost"], ip_addresses=[HOST], now=now)
    write_pair(tmp_path, ca=ca, serving=leaf)
    client_ca_file = tmp_path / "client-ca.crt"
    client_ca_file.write_bytes(client_ca1.cert_pem)
    context = server_ssl_context(
        cert_file=tmp_path / CERT_FILE, key_file=tmp_path / KEY_FILE, client_ca_file=client_ca_file
    )
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    reloader = CertificateReloader(
        context, cert_file=tmp_path / CERT_FILE, key_file=tmp_path / KEY_FILE, client_ca_file=client_ca_file
    )
    server = UvicornThread(context)
    server.start()
    try:
        client1 = _client_context(tmp_path / CA_FILE, _client_cert(client_ca1), tmp_path)
        client2 = _client_context(tmp_path / CA_FILE, _client_cert(client_ca2), tmp_path)
        no_cert = ssl.create_default_context(cadata=(tmp_path / CA_FILE).read_text())
        assert _accepted(server, client1)
        assert not _accepted(server, client2)
        assert not _accepted(server, no_cert)

        # A garbled client CA file is not applied.
        _replace(client_ca_file, client_ca2.cert_pem[:50])
        assert server.call(reloader.check) is False
        assert reloader.failures == 1 and reloader.reloads == 0
        assert not _accepted(server, client2)

        # The rolled client CA bundle is picked up without a restart.
        _replace(client_ca_file, ca_bundle(client_ca1.cert_pem, client_ca2.cert_pem))
        assert server.call(reloader.check) is True
        assert reloader.reloads == 1
        assert _accepted(server, client2)
        assert _accepted(server, client1)
        assert server.call(reloader.check) is False
    finally:
        server.stop()
