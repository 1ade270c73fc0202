"""Unit tests for webhook.certs.rotate: renewal checks, CA bundles and the two-phase CA rollover.

The rollover test also runs real TLS handshakes on 127.0.0.1 so that "the API
server trusts this" is checked by OpenSSL, not by our own reading of the
certificates.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.verification import VerificationError

from tests.unit.certs.support import SVC_NAMES, T0, sans, verify
from webhook.certs.files import CERT_FILE, KEY_FILE, write_pair
from webhook.certs.issue import CertificateError, KeyPair, create_ca, create_serving_cert
from webhook.certs.rotate import RotationPhase, ca_bundle, needs_renewal, rotate
from webhook.serving.tls import server_ssl_context

# --------------------------------------------------------------------------
# needs_renewal


def test_needs_renewal_renew_before_boundary() -> None:
    # 60 days lifetime: renew_before (30d) is beyond the 1/3 mark (20d), so it decides.
    leaf = create_serving_cert(ca=create_ca(now=T0), dns_names=["a"], valid_for=timedelta(days=60), now=T0)
    boundary = leaf.not_after - timedelta(days=30)
    tick = timedelta(microseconds=1)
    assert not needs_renewal(leaf.cert_pem, now=boundary - tick, renew_before=timedelta(days=30))
    assert needs_renewal(leaf.cert_pem, now=boundary, renew_before=timedelta(days=30))
    assert not needs_renewal(leaf.cert_pem, now=T0, renew_before=timedelta(days=30))


def test_needs_renewal_one_third_lifetime_boundary() -> None:
    leaf = create_serving_cert(ca=create_ca(now=T0), dns_names=["a"], valid_for=timedelta(days=90), now=T0)
    cert = leaf.certificate
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    third = lifetime / 3
    assert third * 3 == lifetime  # precondition: exact boundary is representable
    boundary = cert.not_valid_after_utc - third
    tick = timedelta(microseconds=1)
    # renew_before is tiny, so only the 1/3 rule can fire.
    assert not needs_renewal(leaf.cert_pem, now=boundary, renew_before=timedelta(seconds=1))
    assert needs_renewal(leaf.cert_pem, now=boundary + tick, renew_before=timedelta(seconds=1))


def test_needs_renewal_expired_and_not_yet_valid() -> None:
    leaf = create_serving_cert(ca=create_ca(now=T0), dns_names=["a"], now=T0)
    assert needs_renewal(leaf.cert_pem, now=leaf.not_after + timedelta(days=1), renew_before=timedelta(0))
    assert not needs_renewal(leaf.cert_pem, now=T0 - timedelta(days=30), renew_before=timedelta(days=30))


# --------------------------------------------------------------------------
# ca_bundle


def test_ca_bundle_dedupes_keeps_order_and_drops_expired_only_with_now() -> None:
    old = create_ca(valid_for=timedelta(days=10), now=T0)
    new = create_ca(now=T0)
    bundle = ca_bundle(old.cert_pem, new.cert_pem, old.cert_pem, old.cert_pem + new.cert_pem)
    assert bundle == old.cert_pem + new.cert_pem
    # A bundle argument is split and merged like individual PEMs.
    assert ca_bundle(bundle, new.cert_pem) == bundle
    later = T0 + timedelta(days=11)
    assert ca_bundle(old.cert_pem, new.cert_pem) == old.cert_pem + new.cert_pem
    assert ca_bundle(old.cert_pem, new.cert_pem, now=later) == new.cert_pem
    assert ca_bundle(old.cert_pem, now=later) == b""
    assert ca_bundle() == b""
    assert ca_bundle(b"", b"  \n") == b""
    with pytest.raises(CertificateError):
        ca_bundle(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")


# --------------------------------------------------------------------------
# rotate


def _issuer_of(leaf: KeyPair, *cas: KeyPair) -> KeyPair:
    for ca in cas:
        try:
            leaf.certificate.verify_directly_issued_by(ca.certificate)
        except Exception:  # wrong issuer surfaces as several exception types
            continue
        return ca
    raise AssertionError("leaf not issued by any given CA")


def _bundle_serials(pem: bytes) -> list[int]:
    return [c.serial_number for c in x509.load_pem_x509_certificates(pem)] if pem else []


def test_rotate_first_start_issues_leaf_and_bundle() -> None:
    ca = create_ca(now=T0)
    r = rotate(ca=ca, serving=None, dns_names=SVC_NAMES, now=T0)
    assert r.phase is RotationPhase.STEADY
    assert r.serving_changed and r.bundle_changed
    assert r.ca is ca and r.next_ca is None
    assert r.ca_bundle == ca.cert_pem
    assert _issuer_of(r.serving, ca) is ca
    verify(r.serving, trust=[ca], name=SVC_NAMES[2], at=T0)


def test_rotate_steady_keeps_fresh_leaf_and_renews_old_one() -> None:
    ca = create_ca(now=T0)
    leaf = create_serving_cert(ca=ca, dns_names=SVC_NAMES, now=T0)
    same = rotate(ca=ca, serving=leaf, dns_names=SVC_NAMES, now=T0 + timedelta(days=1), published_bundle=ca.cert_pem)
    assert same.phase is RotationPhase.STEADY
    assert same.serving is leaf and not same.serving_changed and not same.bundle_changed

    # One year leaf: the 1/3 rule fires ~122 days before expiry, before renew_before.
    early = rotate(ca=ca, serving=leaf, dns_names=SVC_NAMES, now=leaf.not_after - timedelta(days=125))
    assert early.serving is leaf
    due = rotate(ca=ca, serving=leaf, dns_names=SVC_NAMES, now=leaf.not_after - timedelta(days=120))
    assert due.serving_changed and due.phase is RotationPhase.STEADY
    assert due.serving.certificate.serial_number != leaf.certificate.serial_number
    assert _issuer_of(due.serving, ca) is ca

    renamed = rotate(ca=ca, serving=leaf, dns_names=[*SVC_NAMES, "extra"], now=T0 + timedelta(days=1))
    assert renamed.serving_changed
    assert sans(renamed.serving)[0] == [*SVC_NAMES, "extra"]

    foreign = create_serving_cert(ca=create_ca(now=T0), dns_names=SVC_NAMES, now=T0)
    replaced = rotate(ca=ca, serving=foreign, dns_names=SVC_NAMES, now=T0 + timedelta(days=1))
    assert replaced.serving_changed and _issuer_of(replaced.serving, ca) is ca


def test_rotate_ca_rollover_two_phases() -> None:
    old = create_ca(valid_for=timedelta(days=400), now=T0)
    t1 = old.not_after - timedelta(days=89)
    # A leaf recent enough that only the CA, not the leaf, is due.
    leaf0 = create_serving_cert(ca=old, dns_names=SVC_NAMES, now=t1 - timedelta(days=10))
    published = old.cert_pem

    # Outside ca_renew_before: nothing happens to the CA.
    t_before = old.not_after - timedelta(days=91)
    r = rotate(ca=old, serving=leaf0, dns_names=SVC_NAMES, now=t_before, published_bundle=published)
    assert r.phase is RotationPhase.STEADY and r.next_ca is None and r.serving is leaf0

    # Phase 1: new CA created, bundle old+new, old leaf kept.
    p1 = rotate(ca=old, serving=leaf0, dns_names=SVC_NAMES, now=t1, published_bundle=published)
    assert p1.phase is RotationPhase.PUBLISH_BUNDLE
    assert p1.next_ca is not None
    new = p1.next_ca
    assert p1.ca is old
    assert p1.serving is leaf0 and not p1.serving_changed
    assert p1.bundle_changed
    assert _bundle_serials(p1.ca_bundle) == [old.certificate.serial_number, new.certificate.serial_number]
    assert new.not_after > old.not_after

    # Bundle not yet published: still phase 1, same pending CA, still the old leaf.
    p1b = rotate(
        ca=old, serving=leaf0, next_ca=new, dns_names=SVC_NAMES, now=t1 + timedelta(hours=1), published_bundle=published
    )
    assert p1b.phase is RotationPhase.PUBLISH_BUNDLE
    assert p1b.next_ca is new and p1b.serving is leaf0
    assert p1b.ca_bundle == p1.ca_bundle

    # Phase 2 once the bundle containing the new CA is published.
    published = p1.ca_bundle
    t2 = t1 + timedelta(hours=2)
    p2 = rotate(ca=old, serving=leaf0, next_ca=new, dns_names=SVC_NAMES, now=t2, published_bundle=published)
    assert p2.phase is RotationPhase.NEW_LEAF
    assert p2.ca is new and p2.next_ca is None
    assert p2.serving_changed and _issuer_of(p2.serving, old, new) is new
    assert set(_bundle_serials(p2.ca_bundle)) == {old.certificate.serial_number, new.certificate.serial_number}
    assert not p2.bundle_changed
    # During the overlap: old leaf verifies with the old CA, new leaf with the new CA,
    # and both with the published bundle.
    bundle_cas = [old, new]
    verify(leaf0, trust=[old], name=SVC_NAMES[2], at=t2)
    verify(p2.serving, trust=[new], name=SVC_NAMES[2], at=t2)
    verify(leaf0, trust=bundle_cas, name=SVC_NAMES[2], at=t2)
    verify(p2.serving, trust=bundle_cas, name=SVC_NAMES[2], at=t2)
    with pytest.raises(VerificationError):
        verify(p2.serving, trust=[old], name=SVC_NAMES[2], at=t2)

    # Later steady calls keep the old CA in the bundle until it expires...
    t3 = old.not_after - timedelta(days=1)
    s3 = rotate(ca=new, serving=p2.serving, dns_names=SVC_NAMES, now=t3, published_bundle=published)
    assert s3.phase is RotationPhase.STEADY and s3.serving is p2.serving
    assert old.certificate.serial_number in _bundle_serials(s3.ca_bundle)
    assert not s3.bundle_changed
    # ...and drop it afterwards.
    t4 = old.not_after + timedelta(seconds=1)
    s4 = rotate(ca=new, serving=p2.serving, dns_names=SVC_NAMES, now=t4, published_bundle=published)
    assert s4.ca_bundle == new.cert_pem and s4.bundle_changed


def test_rotate_phase1_renews_leaf_with_old_ca_when_it_must() -> None:
    old = create_ca(valid_for=timedelta(days=400), now=T0)
    leaf0 = create_serving_cert(ca=old, dns_names=SVC_NAMES, valid_for=timedelta(days=30), now=T0)
    t1 = old.not_after - timedelta(days=60)  # leaf0 long expired, CA in rollover window
    p1 = rotate(ca=old, serving=leaf0, dns_names=SVC_NAMES, now=t1, published_bundle=old.cert_pem)
    assert p1.phase is RotationPhase.PUBLISH_BUNDLE
    assert p1.serving_changed
    # The new CA is not published yet, so only the old CA may sign.
    assert _issuer_of(p1.serving, old) is old
    assert p1.serving.not_after == old.not_after
    # Clamped to the CA: reissuing again would not help, so the next call keeps it.
    assert p1.next_ca is not None
    again = rotate(
        ca=old,
        serving=p1.serving,
        next_ca=p1.next_ca,
        dns_names=SVC_NAMES,
        now=old.not_after - timedelta(days=10),
        published_bundle=old.cert_pem,
    )
    assert again.phase is RotationPhase.PUBLISH_BUNDLE and again.serving is p1.serving


def test_rotate_with_expired_ca_replaces_everything_at_once() -> None:
    old = create_ca(valid_for=timedelta(days=10), now=T0)
    leaf0 = create_serving_cert(ca=old, dns_names=SVC_NAMES, now=T0)
    t = old.not_after + timedelta(days=1)
    r = rotate(ca=old, serving=leaf0, dns_names=SVC_NAMES, now=t, published_bundle=old.cert_pem)
    assert r.phase is RotationPhase.NEW_LEAF
    assert r.ca is not old and r.next_ca is None
    assert r.ca_bundle == r.ca.cert_pem
    verify(r.serving, trust=[r.ca], name=SVC_NAMES[0], at=t)


def test_rotate_rejects_mismatched_ca() -> None:
    ca = create_ca(now=T0)
    other = create_ca(now=T0)
    with pytest.raises(CertificateError, match="does not match"):
        rotate(ca=KeyPair(cert_pem=ca.cert_pem, key_pem=other.key_pem), serving=None, dns_names=["a"], now=T0)


# Real TLS handshakes during the rollover overlap ----------------------------


@contextmanager
def _tls_server(directory: Path) -> Iterator[int]:
    """Serve TLS on 127.0.0.1 with the production context built from ``directory``."""
    context = server_ssl_context(cert_file=directory / CERT_FILE, key_file=directory / KEY_FILE)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    stop = threading.Event()
    errors: list[BaseException] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(5)
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"ok")
            except (ssl.SSLError, OSError):
                conn.close()  # the client rejected us: that is a test outcome, not an error
            except BaseException as exc:  # pragma: no cover - surfaced below
                conn.close()
                errors.append(exc)

    thread = threading.Thread(target=serve, name="tls-test-server", daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()
    assert not thread.is_alive()
    assert not errors


def _client_accepts(port: int, trusted_pem: bytes) -> bool:
    """True if a client trusting exactly ``trusted_pem`` completes TLS and reads the greeting."""
    context = ssl.create_default_context(cadata=trusted_pem.decode())
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                data = b""
                while len(data) < 2:
                    chunk = tls.recv(2 - len(data))
                    if not chunk:
                        break
                    data += chunk
                return data == b"ok"
        except ssl.SSLCertVerificationError:
            return False


def test_rollover_overlap_with_real_tls_clients(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    names = ["localhost"]
    old = create_ca(common_name="rollover-ca", now=now)
    leaf0 = create_serving_cert(ca=old, dns_names=names, ip_addresses=["127.0.0.1"], now=now)
    rotate_args: dict[str, Any] = {
        "dns_names": names,
        "ip_addresses": ["127.0.0.1"],
        # A 10-year CA is "near expiry" under an 11-year window: forces rollover at real "now",
        # which OpenSSL's verification (using the real clock) needs.
        "ca_renew_before": timedelta(days=4100),
    }

    p1 = rotate(ca=old, serving=leaf0, now=now, published_bundle=old.cert_pem, **rotate_args)
    assert p1.phase is RotationPhase.PUBLISH_BUNDLE and p1.next_ca is not None
    new = p1.next_ca
    bundle = p1.ca_bundle

    write_pair(tmp_path / "p1", ca=p1.ca, serving=p1.serving)
    with _tls_server(tmp_path / "p1") as port:
        # Phase 1 serves the old leaf: API servers with the stale bundle (old CA
        # only) and with the published bundle both accept.
        assert _client_accepts(port, old.cert_pem)
        assert _client_accepts(port, bundle)
        # Why the new leaf must wait: a client trusting only the new CA rejects it.
        assert not _client_accepts(port, new.cert_pem)

    p2 = rotate(ca=old, serving=p1.serving, next_ca=new, now=now, published_bundle=bundle, **rotate_args)
    assert p2.phase is RotationPhase.NEW_LEAF
    write_pair(tmp_path / "p2", ca=p2.ca, serving=p2.serving)
    with _tls_server(tmp_path / "p2") as port:
        # Phase 2 serves the new leaf: accepted with the published bundle and by
        # a client trusting only the new CA (the bundle after the old CA expires).
        assert _client_accepts(port, p2.ca_bundle)
        assert _client_accepts(port, bundle)
        assert _client_accepts(port, new.cert_pem)
        # A client that never got the bundle (old CA only) would fail: this is
        # exactly why phase 2 is gated on publication.
        assert not _client_accepts(port, old.cert_pem)
