"""What the certificate tests share: a fixed instant, the service's names, path verification and SAN reading."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime

from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store

from webhook.certs.issue import KeyPair, service_dns_names

T0 = datetime(2030, 1, 1, tzinfo=UTC)
SVC_NAMES = service_dns_names("dra-bridge", "kube-system")


def verify(leaf: KeyPair, *, trust: list[KeyPair], name: str, at: datetime) -> None:
    """Verify with cryptography's RFC 5280 / CABF path validator (raises VerificationError)."""
    subject: x509.DNSName | x509.IPAddress
    try:
        subject = x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        subject = x509.DNSName(name)
    verifier = PolicyBuilder().store(Store([p.certificate for p in trust])).time(at).build_server_verifier(subject)
    verifier.verify(leaf.certificate, [])


def sans(pair: KeyPair) -> tuple[list[str], list[str]]:
    san = pair.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return (
        san.get_values_for_type(x509.DNSName),
        [str(ip) for ip in san.get_values_for_type(x509.IPAddress)],
    )
