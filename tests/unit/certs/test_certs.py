"""Unit tests for webhook.certs.pki: CA/leaf creation, renewal, rotation, files and manifests.

The rotation test also runs real TLS handshakes on 127.0.0.1 so that "the API
server trusts this" is checked by OpenSSL, not by our own reading of the
certificates.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
import socket
import ssl
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from webhook.certs import pki as certs
from webhook.certs.pki import (
    CertificateError,
    KeyPair,
    RotationPhase,
    ca_bundle,
    create_ca,
    create_serving_cert,
    ensure_dev_certs,
    load_pair,
    needs_renewal,
    patch_ca_bundle,
    rotate,
    secret_manifest,
    service_dns_names,
    validate_pair,
    write_pair,
)
from webhook.serving.tls import server_ssl_context

T0 = datetime(2030, 1, 1, tzinfo=UTC)
SVC_NAMES = service_dns_names("dra-bridge", "kube-system")


def _verify(leaf: KeyPair, *, trust: list[KeyPair], name: str, at: datetime) -> None:
    """Verify with cryptography's RFC 5280 / CABF path validator (raises VerificationError)."""
    subject: x509.DNSName | x509.IPAddress
    try:
        subject = x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        subject = x509.DNSName(name)
    verifier = PolicyBuilder().store(Store([p.certificate for p in trust])).time(at).build_server_verifier(subject)
    verifier.verify(leaf.certificate, [])


def _sans(pair: KeyPair) -> tuple[list[str], list[str]]:
    san = pair.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return (
        san.get_values_for_type(x509.DNSName),
        [str(ip) for ip in san.get_values_for_type(x509.IPAddress)],
    )


# --------------------------------------------------------------------------
# CA and leaf


def test_ca_is_p256_ca_with_pathlen_zero_and_cert_signing_usage() -> None:
    ca = create_ca(now=T0)
    cert = ca.certificate
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert isinstance(cert.public_key().curve, ec.SECP256R1)  # type: ignore[union-attr]
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign and not ku.digital_signature
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dra-bridge-ca"
    assert ca.not_after == T0 + timedelta(days=3650)
    assert cert.not_valid_before_utc <= T0
    cert.verify_directly_issued_by(cert)  # self-signed
    validate_pair(ca.cert_pem, ca.key_pem)


def test_serving_cert_has_service_sans_and_verifies_against_ca() -> None:
    ca = create_ca(now=T0)
    leaf = create_serving_cert(ca=ca, dns_names=SVC_NAMES, ip_addresses=["10.0.0.7", "::1"], now=T0)
    cert = leaf.certificate

    assert SVC_NAMES == [
        "dra-bridge",
        "dra-bridge.kube-system",
        "dra-bridge.kube-system.svc",
        "dra-bridge.kube-system.svc.cluster.local",
    ]
    assert _sans(leaf) == (SVC_NAMES, ["10.0.0.7", "::1"])
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dra-bridge"
    assert cert.issuer == ca.certificate.subject
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert validate_pair(leaf.cert_pem, leaf.key_pem).serial_number == cert.serial_number
    assert leaf.not_after == T0 + timedelta(days=365)

    for name in [*SVC_NAMES, "10.0.0.7", "::1"]:
        _verify(leaf, trust=[ca], name=name, at=T0)
    with pytest.raises(VerificationError):
        _verify(leaf, trust=[ca], name="other.kube-system.svc", at=T0)
    with pytest.raises(VerificationError):
        _verify(leaf, trust=[create_ca(now=T0)], name=SVC_NAMES[0], at=T0)
    with pytest.raises(VerificationError):  # expired
        _verify(leaf, trust=[ca], name=SVC_NAMES[0], at=T0 + timedelta(days=366))


def test_leaf_is_clamped_to_ca_expiry() -> None:
    ca = create_ca(valid_for=timedelta(days=10), now=T0)
    leaf = create_serving_cert(ca=ca, dns_names=["a"], now=T0)
    assert leaf.not_after == ca.not_after


def test_serving_cert_refuses_non_ca_expired_ca_and_bad_input() -> None:
    ca = create_ca(now=T0)
    leaf = create_serving_cert(ca=ca, dns_names=["a"], now=T0)
    with pytest.raises(CertificateError, match="not a CA"):
        create_serving_cert(ca=leaf, dns_names=["b"], now=T0)
    with pytest.raises(CertificateError, match="expired"):
        create_serving_cert(ca=ca, dns_names=["b"], now=ca.not_after)
    with pytest.raises(ValueError, match="at least one"):
        create_serving_cert(ca=ca, dns_names=[], now=T0)
    with pytest.raises(ValueError, match=re.escape("'300.1.1.1'")):
        create_serving_cert(ca=ca, dns_names=["a"], ip_addresses=["300.1.1.1"], now=T0)
    with pytest.raises(TypeError):
        create_serving_cert(ca=ca, dns_names="a", now=T0)
    with pytest.raises(ValueError, match="timezone-aware"):
        create_ca(now=datetime(2030, 1, 1))


def test_key_mismatch_and_garbage_raise_certificate_error() -> None:
    ca = create_ca(now=T0)
    a = create_serving_cert(ca=ca, dns_names=["a"], now=T0)
    b = create_serving_cert(ca=ca, dns_names=["b"], now=T0)
    with pytest.raises(CertificateError, match="does not match certificate"):
        validate_pair(a.cert_pem, b.key_pem)
    with pytest.raises(CertificateError, match="does not match"):
        KeyPair(cert_pem=a.cert_pem, key_pem=b.key_pem).validate()
    with pytest.raises(CertificateError, match="certificate PEM"):
        validate_pair(a.cert_pem[:80], a.key_pem)
    with pytest.raises(CertificateError, match="private key"):
        validate_pair(a.cert_pem, a.key_pem[:60])
    with pytest.raises(CertificateError, match="does not match"):
        # A CA signing with a key that is not its own must not produce certificates.
        create_serving_cert(ca=KeyPair(cert_pem=ca.cert_pem, key_pem=a.key_pem), dns_names=["x"], now=T0)


def test_keypair_repr_hides_private_key() -> None:
    ca = create_ca(now=T0)
    assert b"PRIVATE KEY" in ca.key_pem
    assert "PRIVATE" not in repr(ca)
    assert "key_pem" not in repr(ca)


# --------------------------------------------------------------------------
# service_dns_names


@pytest.mark.parametrize(
    ("service", "namespace", "bad_field", "bad_value"),
    [
        ("Dra-Bridge", "ns", "service", "Dra-Bridge"),
        ("", "ns", "service", ""),
        ("-svc", "ns", "service", "-svc"),
        ("svc-", "ns", "service", "svc-"),
        ("svc.x", "ns", "service", "svc.x"),
        ("s" * 64, "ns", "service", "s" * 64),
        ("svc", "kube_system", "namespace", "kube_system"),
        ("svc", "ns.sub", "namespace", "ns.sub"),
        ("svc", "", "namespace", ""),
    ],
)
def test_service_dns_names_rejects_non_labels(service: str, namespace: str, bad_field: str, bad_value: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        service_dns_names(service, namespace)
    message = str(excinfo.value)
    assert f"invalid {bad_field} {bad_value!r}" in message


def test_service_dns_names_accepts_63_char_labels() -> None:
    names = service_dns_names("s" * 63, "n1")
    assert names[0] == "s" * 63
    assert names[-1] == "s" * 63 + ".n1.svc.cluster.local"


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
    _verify(r.serving, trust=[ca], name=SVC_NAMES[2], at=T0)


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
    assert _sans(renamed.serving)[0] == [*SVC_NAMES, "extra"]

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
    _verify(leaf0, trust=[old], name=SVC_NAMES[2], at=t2)
    _verify(p2.serving, trust=[new], name=SVC_NAMES[2], at=t2)
    _verify(leaf0, trust=bundle_cas, name=SVC_NAMES[2], at=t2)
    _verify(p2.serving, trust=bundle_cas, name=SVC_NAMES[2], at=t2)
    with pytest.raises(VerificationError):
        _verify(p2.serving, trust=[old], name=SVC_NAMES[2], at=t2)

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
    _verify(r.serving, trust=[r.ca], name=SVC_NAMES[0], at=t)


def test_rotate_rejects_mismatched_ca() -> None:
    ca = create_ca(now=T0)
    other = create_ca(now=T0)
    with pytest.raises(CertificateError, match="does not match"):
        rotate(ca=KeyPair(cert_pem=ca.cert_pem, key_pem=other.key_pem), serving=None, dns_names=["a"], now=T0)


# Real TLS handshakes during the rollover overlap ----------------------------


@contextmanager
def _tls_server(directory: Path) -> Iterator[int]:
    """Serve TLS on 127.0.0.1 with the production context built from ``directory``."""
    context = server_ssl_context(cert_file=directory / certs.CERT_FILE, key_file=directory / certs.KEY_FILE)
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


# --------------------------------------------------------------------------
# Files and dev certs


def test_write_pair_and_load_pair_round_trip(tmp_path: Path) -> None:
    ca = create_ca(now=T0)
    leaf = create_serving_cert(ca=ca, dns_names=["a"], now=T0)
    target = tmp_path / "tls"
    write_pair(target, ca=ca, serving=leaf)
    assert sorted(p.name for p in target.iterdir()) == ["ca.crt", "tls.crt", "tls.key"]  # no temp files left
    assert stat.S_IMODE((target / "tls.key").stat().st_mode) == 0o600
    assert (target / "ca.crt").read_bytes() == ca.cert_pem  # the CA key is never written
    stored = load_pair(target)
    assert stored.ca_cert_pem == ca.cert_pem
    assert stored.serving == leaf

    # Overwriting replaces files (new inode: readers never see a partial file).
    inode = (target / "tls.crt").stat().st_ino
    leaf2 = create_serving_cert(ca=ca, dns_names=["a"], now=T0)
    write_pair(target, ca=ca, serving=leaf2)
    assert (target / "tls.crt").stat().st_ino != inode
    assert load_pair(target).serving == leaf2


def test_write_pair_refuses_mismatched_pair_and_load_pair_detects_one(tmp_path: Path) -> None:
    ca = create_ca(now=T0)
    a = create_serving_cert(ca=ca, dns_names=["a"], now=T0)
    b = create_serving_cert(ca=ca, dns_names=["b"], now=T0)
    with pytest.raises(CertificateError, match="does not match"):
        write_pair(tmp_path, ca=ca, serving=KeyPair(cert_pem=a.cert_pem, key_pem=b.key_pem))
    assert list(tmp_path.iterdir()) == []
    write_pair(tmp_path, ca=ca, serving=a)
    (tmp_path / "tls.key").write_bytes(b.key_pem)
    with pytest.raises(CertificateError, match="does not match"):
        load_pair(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_pair(tmp_path / "missing")


def test_ensure_dev_certs_creates_then_reuses(tmp_path: Path) -> None:
    target = tmp_path / "dev"
    assert ensure_dev_certs(target, now=T0) == target
    first = load_pair(target)
    assert _sans(first.serving) == (["localhost"], ["127.0.0.1", "::1"])
    ca_cert = x509.load_pem_x509_certificate(first.ca_cert_pem)
    first.serving.certificate.verify_directly_issued_by(ca_cert)
    assert stat.S_IMODE((target / "tls.key").stat().st_mode) == 0o600

    ensure_dev_certs(target, now=T0 + timedelta(days=30))
    assert load_pair(target) == first

    # Less than a day left: regenerated.
    ensure_dev_certs(target, now=first.serving.not_after - timedelta(hours=12))
    second = load_pair(target)
    assert second.serving != first.serving and second.ca_cert_pem != first.ca_cert_pem


@pytest.mark.parametrize("damage", ["hosts", "ips", "corrupt-key", "mismatched-key", "foreign-ca", "missing"])
def test_ensure_dev_certs_regenerates_unusable_files(tmp_path: Path, damage: str) -> None:
    ensure_dev_certs(tmp_path, now=T0)
    first = load_pair(tmp_path)
    hosts: tuple[str, ...] = ("localhost",)
    ips: tuple[str, ...] = ("127.0.0.1", "::1")
    if damage == "hosts":
        hosts = ("localhost", "dev.example")
    elif damage == "ips":
        ips = ("127.0.0.1",)
    elif damage == "corrupt-key":
        (tmp_path / "tls.key").write_bytes(first.serving.key_pem[:40])
    elif damage == "mismatched-key":
        other = create_serving_cert(ca=create_ca(now=T0), dns_names=["localhost"], now=T0)
        (tmp_path / "tls.key").write_bytes(other.key_pem)
    elif damage == "foreign-ca":
        (tmp_path / "ca.crt").write_bytes(create_ca(now=T0).cert_pem)
    else:
        os.remove(tmp_path / "ca.crt")
    ensure_dev_certs(tmp_path, hosts=hosts, ips=ips, now=T0)
    again = load_pair(tmp_path)
    assert again.serving != first.serving
    dns, addrs = _sans(again.serving)
    assert dns == list(hosts) and addrs == list(ips)
    again.serving.certificate.verify_directly_issued_by(x509.load_pem_x509_certificate(again.ca_cert_pem))


# --------------------------------------------------------------------------
# Manifests


def test_secret_manifest() -> None:
    ca = create_ca(now=T0)
    leaf = create_serving_cert(ca=ca, dns_names=SVC_NAMES, now=T0)
    secret = secret_manifest(name="dra-bridge-tls", namespace="kube-system", pair=leaf, ca=ca)
    assert secret["apiVersion"] == "v1" and secret["kind"] == "Secret"
    assert secret["type"] == "kubernetes.io/tls"
    assert secret["metadata"] == {"name": "dra-bridge-tls", "namespace": "kube-system"}
    data = {k: base64.b64decode(v, validate=True) for k, v in secret["data"].items()}
    assert data == {"tls.crt": leaf.cert_pem, "tls.key": leaf.key_pem, "ca.crt": ca.cert_pem}
    with pytest.raises(ValueError, match="name 'Bad_Name'"):
        secret_manifest(name="Bad_Name", namespace="kube-system", pair=leaf, ca=ca)
    with pytest.raises(ValueError, match=re.escape("namespace 'a.b'")):
        secret_manifest(name="ok", namespace="a.b", pair=leaf, ca=ca)


@pytest.mark.parametrize("kind", ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"])
def test_patch_ca_bundle_sets_every_webhook(kind: str) -> None:
    old = create_ca(now=T0)
    new = create_ca(now=T0)
    bundle = ca_bundle(old.cert_pem, new.cert_pem)
    config: dict[str, Any] = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": kind,
        "metadata": {"name": "dra-bridge"},
        "webhooks": [
            {"name": "a.dra-bridge.io", "clientConfig": {"service": {"name": "dra-bridge", "namespace": "ns"}}},
            {"name": "b.dra-bridge.io", "clientConfig": {"url": "https://x", "caBundle": "c3RhbGU="}},
            {"name": "c.dra-bridge.io"},
        ],
    }
    patched = patch_ca_bundle(config, bundle)
    assert [base64.b64decode(w["clientConfig"]["caBundle"]) for w in patched["webhooks"]] == [bundle] * 3
    assert patched["webhooks"][0]["clientConfig"]["service"] == {"name": "dra-bridge", "namespace": "ns"}
    # The input is untouched (deep copy).
    assert "caBundle" not in config["webhooks"][0]["clientConfig"]
    assert config["webhooks"][1]["clientConfig"]["caBundle"] == "c3RhbGU="
    assert "clientConfig" not in config["webhooks"][2]
    patched["metadata"]["name"] = "changed"
    assert config["metadata"]["name"] == "dra-bridge"


def test_patch_ca_bundle_errors() -> None:
    bundle = create_ca(now=T0).cert_pem
    with pytest.raises(ValueError, match="'Deployment'"):
        patch_ca_bundle({"kind": "Deployment", "webhooks": []}, bundle)
    with pytest.raises(ValueError, match="None"):
        patch_ca_bundle({"webhooks": []}, bundle)
    with pytest.raises(ValueError, match="empty"):
        patch_ca_bundle({"kind": "MutatingWebhookConfiguration", "webhooks": []}, b"")
    with pytest.raises(CertificateError):
        patch_ca_bundle({"kind": "MutatingWebhookConfiguration", "webhooks": []}, b"not a pem")
    # No webhooks at all is a valid (if useless) configuration.
    assert patch_ca_bundle({"kind": "ValidatingWebhookConfiguration"}, bundle) == {
        "kind": "ValidatingWebhookConfiguration"
    }
