"""Unit tests for webhook.certs.issue: CA and serving certificate creation, pair validation, service names."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import VerificationError

from tests.unit.certs.support import SVC_NAMES, T0, sans, verify
from webhook.certs.issue import (
    CertificateError,
    KeyPair,
    create_ca,
    create_serving_cert,
    service_dns_names,
    validate_pair,
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
    assert sans(leaf) == (SVC_NAMES, ["10.0.0.7", "::1"])
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
        verify(leaf, trust=[ca], name=name, at=T0)
    with pytest.raises(VerificationError):
        verify(leaf, trust=[ca], name="other.kube-system.svc", at=T0)
    with pytest.raises(VerificationError):
        verify(leaf, trust=[create_ca(now=T0)], name=SVC_NAMES[0], at=T0)
    with pytest.raises(VerificationError):  # expired
        verify(leaf, trust=[ca], name=SVC_NAMES[0], at=T0 + timedelta(days=366))


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
