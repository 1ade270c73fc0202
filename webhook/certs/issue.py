"""Key pairs and the certificates the webhook serves with: a private CA and TLS serving certificates.

The Kubernetes API server only talks to an admission webhook over TLS and only
trusts the PEM bundle published in the webhook configuration's
``clientConfig.caBundle``.  This module creates the private CA (ECDSA P-256)
and the serving certificates it signs, checks that a certificate and key
belong together, and holds the parsing, naming and subjectAltName helpers the
other certificate modules share: :mod:`webhook.certs.rotate` (renewal and CA
rollover), :mod:`webhook.certs.files` (the files the server loads) and
:mod:`webhook.certs.manifests` (the Secret and caBundle patches).

Everything here is pure: no I/O, and no clock reads unless ``now`` is omitted.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    PrivateKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "DEFAULT_CA_VALIDITY",
    "DEFAULT_SERVING_VALIDITY",
    "DNS_LABEL",
    "CertificateError",
    "KeyPair",
    "cert_to_pem",
    "create_ca",
    "create_serving_cert",
    "fingerprint",
    "issued_by",
    "load_certs",
    "resolve_now",
    "san_set",
    "service_dns_names",
    "validate_pair",
    "wanted_sans",
]

DEFAULT_CA_VALIDITY = timedelta(days=3650)
DEFAULT_SERVING_VALIDITY = timedelta(days=365)

# Certificates start slightly in the past so that an API server whose clock
# lags ours a little does not reject a freshly issued certificate as
# "not yet valid".
_BACKDATE = timedelta(minutes=5)

# X.520 caps commonName at 64 characters; longer names live only in the SAN
# (which is what TLS clients check anyway).
_MAX_CN_LENGTH = 64

# One DNS-1123 label (lowercase alphanumerics or '-', alphanumeric at both ends).
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class CertificateError(Exception):
    """A PEM could not be parsed, or a certificate and key do not belong together."""


@dataclass(frozen=True)
class KeyPair:
    """A PEM certificate (optionally followed by its chain) and its PEM private key."""

    cert_pem: bytes
    # Kept out of repr so a logged KeyPair never leaks the private key.
    key_pem: bytes = field(repr=False)

    @property
    def certificate(self) -> x509.Certificate:
        """The first (leaf) certificate of ``cert_pem``."""
        return load_certs(self.cert_pem, what="certificate")[0]

    @property
    def not_after(self) -> datetime:
        """Expiry of the leaf certificate, timezone-aware UTC."""
        return self.certificate.not_valid_after_utc

    def private_key(self) -> PrivateKeyTypes:
        """The parsed private key."""
        return _load_key(self.key_pem)

    def validate(self) -> x509.Certificate:
        """Check that both PEMs parse and the key matches; return the leaf certificate."""
        return validate_pair(self.cert_pem, self.key_pem)


# --------------------------------------------------------------------------
# Parsing helpers


def load_certs(pem: bytes, *, what: str) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle; :class:`CertificateError` naming ``what`` if it does not parse."""
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise CertificateError(f"cannot parse {what} PEM: {exc}") from exc
    if not certs:  # pragma: no cover - cryptography raises on empty input already
        raise CertificateError(f"no certificate found in {what} PEM")
    return certs


def _load_key(pem: bytes) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        # TypeError: the key is encrypted; we never use passphrases.
        raise CertificateError(f"cannot parse private key PEM: {exc}") from exc
    except Exception as exc:  # unsupported key algorithms raise their own types
        raise CertificateError(f"cannot load private key PEM: {exc}") from exc


def _spki(key: Any) -> bytes:
    der: bytes = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return der


def validate_pair(cert_pem: bytes, key_pem: bytes) -> x509.Certificate:
    """Parse a certificate PEM and key PEM and check the key belongs to the leaf.

    Returns the leaf certificate.  Raises :class:`CertificateError` when either
    PEM is unreadable (e.g. a half-written file) or the key does not match.
    """
    cert = load_certs(cert_pem, what="certificate")[0]
    key = _load_key(key_pem)
    if _spki(cert.public_key()) != _spki(key.public_key()):
        raise CertificateError(
            "private key does not match certificate "
            f"(subject {cert.subject.rfc4514_string()!r}, serial {cert.serial_number:x})"
        )
    return cert


def _signing_key(pair: KeyPair) -> CertificateIssuerPrivateKeyTypes:
    validate_pair(pair.cert_pem, pair.key_pem)
    key = pair.private_key()
    if not isinstance(
        key,
        ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey,
    ):
        raise CertificateError(f"CA key type {type(key).__name__} cannot sign certificates")
    return key


def _hash_for(key: CertificateIssuerPrivateKeyTypes) -> hashes.SHA256 | None:
    # EdDSA signs the message itself; passing a hash is an error for it.
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return None
    return hashes.SHA256()


def resolve_now(now: datetime | None) -> datetime:
    """``now`` if it is timezone-aware, the current UTC time if it is None; a naive datetime is a ValueError."""
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        # A naive datetime is ambiguous against certificates' UTC times.
        raise ValueError(f"now must be timezone-aware, got naive {now.isoformat()}")
    return now


def fingerprint(cert: x509.Certificate) -> bytes:
    """The SHA-256 fingerprint that identifies a certificate in a bundle."""
    return cert.fingerprint(hashes.SHA256())


def cert_to_pem(cert: x509.Certificate) -> bytes:
    """One certificate as PEM."""
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return bc.ca


def issued_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    """Whether ``ca_cert`` directly signed ``cert``."""
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


# --------------------------------------------------------------------------
# Creation


def create_ca(
    *,
    common_name: str = "dra-bridge-ca",
    valid_for: timedelta = DEFAULT_CA_VALIDITY,
    now: datetime | None = None,
) -> KeyPair:
    """Create a self-signed ECDSA P-256 CA that may sign leaf certificates only (pathlen 0)."""
    now = resolve_now(now)
    if valid_for <= timedelta(0):
        raise ValueError(f"valid_for must be positive, got {valid_for}")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + valid_for)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert_pem=cert_to_pem(cert), key_pem=_key_pem(key))


def _parse_ips(ip_addresses: Sequence[str]) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    parsed: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for ip in ip_addresses:
        try:
            parsed.append(ipaddress.ip_address(ip))
        except ValueError as exc:
            raise ValueError(f"invalid ip_addresses entry {ip!r}: not an IP address") from exc
    return parsed


def create_serving_cert(
    *,
    ca: KeyPair,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str] = (),
    valid_for: timedelta = DEFAULT_SERVING_VALIDITY,
    now: datetime | None = None,
) -> KeyPair:
    """Issue an ECDSA P-256 TLS server certificate for ``dns_names``/``ip_addresses``.

    The certificate never outlives the CA that signs it: a leaf valid past its
    issuer's expiry would fail verification from that moment anyway, and
    :func:`webhook.certs.rotate.needs_renewal` should see its real usable lifetime.
    """
    if isinstance(dns_names, str):
        # A bare string is a Sequence[str] of characters; catch that mistake.
        raise TypeError("dns_names must be a sequence of names, not a single string")
    if not dns_names:
        raise ValueError("dns_names must contain at least one name")
    ips = _parse_ips(ip_addresses)
    cn = dns_names[0]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if len(cn) <= _MAX_CN_LENGTH else [])
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    sans.extend(x509.IPAddress(ip) for ip in ips)
    # Critical when the subject is empty, as RFC 5280 4.2.1.6 requires.
    san = (x509.SubjectAlternativeName(sans), not subject)
    return _issue_leaf(ca, subject, ExtendedKeyUsageOID.SERVER_AUTH, [san], valid_for=valid_for, now=now)


def create_client_cert(
    *,
    ca: KeyPair,
    common_name: str,
    valid_for: timedelta = DEFAULT_SERVING_VALIDITY,
    now: datetime | None = None,
) -> KeyPair:
    """Issue an ECDSA P-256 TLS client certificate (``clientAuth``) for ``common_name``.

    For the apiserver's side of client-certificate verification: the certificate it presents to the
    webhook (deploy/apiserver/webhook-kubeconfig.yaml), signed by the CA the server is given as
    ``--client-ca``. Like a serving certificate, it never outlives its CA.
    """
    if not common_name or len(common_name) > _MAX_CN_LENGTH:
        raise ValueError(f"common_name must have 1 to {_MAX_CN_LENGTH} characters, got {common_name!r}")
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    return _issue_leaf(ca, subject, ExtendedKeyUsageOID.CLIENT_AUTH, [], valid_for=valid_for, now=now)


def _issue_leaf(
    ca: KeyPair,
    subject: x509.Name,
    usage: x509.ObjectIdentifier,
    extensions: Sequence[tuple[x509.ExtensionType, bool]],
    *,
    valid_for: timedelta,
    now: datetime | None,
) -> KeyPair:
    """A leaf certificate signed by ``ca``: a new P-256 key, ``usage`` as its extended key usage,
    never valid past the CA; ``extensions`` are (extension, critical) pairs added to it."""
    now = resolve_now(now)
    if valid_for <= timedelta(0):
        raise ValueError(f"valid_for must be positive, got {valid_for}")
    ca_key = _signing_key(ca)
    ca_cert = ca.certificate
    if not _is_ca(ca_cert):
        raise CertificateError(f"issuer {ca_cert.subject.rfc4514_string()!r} is not a CA certificate")
    if now >= ca_cert.not_valid_after_utc:
        raise CertificateError(f"CA {ca_cert.subject.rfc4514_string()!r} expired at {ca_cert.not_valid_after_utc}")
    key = ec.generate_private_key(ec.SECP256R1())
    try:
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
            ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        )
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(min(now + valid_for, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    cert = builder.add_extension(aki, critical=False).sign(ca_key, _hash_for(ca_key))
    return KeyPair(cert_pem=cert_to_pem(cert), key_pem=_key_pem(key))


# --------------------------------------------------------------------------
# Names


def service_dns_names(service: str, namespace: str) -> list[str]:
    """The names the API server may use for ``service`` in ``namespace``.

    Returns ``[svc, svc.ns, svc.ns.svc, svc.ns.svc.cluster.local]``.
    """
    for field_name, value in (("service", service), ("namespace", namespace)):
        if not isinstance(value, str) or len(value) > 63 or not DNS_LABEL.fullmatch(value):
            raise ValueError(
                f"invalid {field_name} {value!r}: must be a DNS-1123 label "
                "(1-63 lowercase alphanumerics or '-', starting and ending alphanumeric)"
            )
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    ]


def _san(cert: x509.Certificate) -> x509.SubjectAlternativeName | None:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None


def dns_names(cert: x509.Certificate) -> list[str]:
    """The certificate's subjectAltName DNS names, in the order they were written."""
    san = _san(cert)
    return san.get_values_for_type(x509.DNSName) if san is not None else []


def san_set(cert: x509.Certificate) -> frozenset[str]:
    """The certificate's subjectAltName entries as ``dns:NAME`` and ``ip:ADDRESS`` strings."""
    san = _san(cert)
    if san is None:
        return frozenset()
    ips = {f"ip:{ip}" for ip in san.get_values_for_type(x509.IPAddress)}
    return frozenset({f"dns:{n}" for n in dns_names(cert)} | ips)


def wanted_sans(dns_names: Sequence[str], ip_addresses: Sequence[str]) -> frozenset[str]:
    """What :func:`san_set` returns for a certificate issued for exactly these names and addresses."""
    return frozenset({f"dns:{n}" for n in dns_names} | {f"ip:{ip}" for ip in _parse_ips(ip_addresses)})
