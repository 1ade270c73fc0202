"""The apiserver's client certificate: clientAuth only, signed by the CA the server trusts, never outliving it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from webhook.certs.issue import CertificateError, create_ca, create_client_cert, create_serving_cert


def test_a_client_certificate_is_for_client_auth_and_signed_by_the_ca() -> None:
    now = datetime.now(UTC)
    ca = create_ca(common_name="client-ca", now=now)
    client = create_client_cert(ca=ca, common_name="kube-apiserver", now=now)
    cert = client.certificate
    assert cert.issuer == ca.certificate.subject
    assert cert.subject.rfc4514_string() == "CN=kube-apiserver"
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    cert.verify_directly_issued_by(ca.certificate)
    assert cert.not_valid_after_utc <= ca.certificate.not_valid_after_utc
    long = create_client_cert(ca=ca, common_name="x", valid_for=timedelta(days=100_000), now=now)
    assert long.certificate.not_valid_after_utc == ca.certificate.not_valid_after_utc


def test_only_a_ca_signs_and_names_are_checked() -> None:
    ca = create_ca(common_name="client-ca")
    leaf = create_serving_cert(ca=ca, dns_names=["localhost"])
    with pytest.raises(CertificateError):
        create_client_cert(ca=leaf, common_name="kube-apiserver")
    with pytest.raises(ValueError):
        create_client_cert(ca=ca, common_name="")
