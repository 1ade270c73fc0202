"""Certificate authority, serving certificate and caBundle handling for the webhook.

The Kubernetes API server only talks to an admission webhook over TLS and only
trusts the PEM bundle published in the webhook configuration's
``clientConfig.caBundle``.  This module owns everything about those
certificates: creating a private CA and serving certificates (ECDSA P-256),
deciding when they must be renewed, the two-phase CA rollover, writing and
reading the ``ca.crt``/``tls.crt``/``tls.key`` files the server loads, and
rendering the Secret and caBundle patches for the cluster.

Everything here is pure (no network, no clock reads unless ``now`` is
omitted) except :func:`write_pair`, :func:`load_pair` and
:func:`ensure_dev_certs`, which touch only the directory they are given.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import enum
import ipaddress
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

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
    "CA_FILE",
    "CERT_FILE",
    "KEY_FILE",
    "CertificateError",
    "KeyPair",
    "RotationPhase",
    "RotationResult",
    "StoredPair",
    "ca_bundle",
    "create_ca",
    "create_serving_cert",
    "ensure_dev_certs",
    "load_pair",
    "needs_renewal",
    "patch_ca_bundle",
    "rotate",
    "secret_manifest",
    "service_dns_names",
    "validate_pair",
    "write_pair",
]

CA_FILE = "ca.crt"
CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"

DEFAULT_CA_VALIDITY = timedelta(days=3650)
DEFAULT_SERVING_VALIDITY = timedelta(days=365)

# Certificates start slightly in the past so that an API server whose clock
# lags ours a little does not reject a freshly issued certificate as
# "not yet valid".
_BACKDATE = timedelta(minutes=5)

# X.520 caps commonName at 64 characters; longer names live only in the SAN
# (which is what TLS clients check anyway).
_MAX_CN_LENGTH = 64

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN_MAX = 253

_WEBHOOK_KINDS = frozenset({"MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"})

# ensure_dev_certs reuses files only if they stay valid at least this long,
# so a dev server started now does not hit an expiry mid-session.
_DEV_MIN_REMAINING = timedelta(days=1)
_DEV_CA_VALIDITY = timedelta(days=365)
_DEV_SERVING_VALIDITY = timedelta(days=90)


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
        return _load_certs(self.cert_pem, what="certificate")[0]

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


class StoredPair(NamedTuple):
    """What :func:`load_pair` reads back: the CA certificate and the serving pair."""

    ca_cert_pem: bytes
    serving: KeyPair


class RotationPhase(enum.Enum):
    """Where :func:`rotate` left the rotation; see its docstring."""

    STEADY = "steady"
    PUBLISH_BUNDLE = "publish-bundle"
    NEW_LEAF = "new-leaf"


@dataclass(frozen=True)
class RotationResult:
    """Outcome of one :func:`rotate` step.

    ``ca`` is the CA that signed ``serving``; ``next_ca`` is the CA being rolled
    in (only during :attr:`RotationPhase.PUBLISH_BUNDLE`) and must be persisted
    by the caller and passed back to the next :func:`rotate` call.
    ``ca_bundle`` is what must be published as the webhook's caBundle.
    """

    phase: RotationPhase
    ca: KeyPair
    serving: KeyPair
    ca_bundle: bytes
    next_ca: KeyPair | None = None
    serving_changed: bool = False
    bundle_changed: bool = False


# --------------------------------------------------------------------------
# Parsing helpers


def _load_certs(pem: bytes, *, what: str) -> list[x509.Certificate]:
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
    cert = _load_certs(cert_pem, what="certificate")[0]
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


def _resolve_now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        # A naive datetime is ambiguous against certificates' UTC times.
        raise ValueError(f"now must be timezone-aware, got naive {now.isoformat()}")
    return now


def _fingerprint(cert: x509.Certificate) -> bytes:
    return cert.fingerprint(hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
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


# --------------------------------------------------------------------------
# Creation


def create_ca(
    *,
    common_name: str = "dra-bridge-ca",
    valid_for: timedelta = DEFAULT_CA_VALIDITY,
    now: datetime | None = None,
) -> KeyPair:
    """Create a self-signed ECDSA P-256 CA that may sign leaf certificates only (pathlen 0)."""
    now = _resolve_now(now)
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
    return KeyPair(cert_pem=_pem(cert), key_pem=_key_pem(key))


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
    :func:`needs_renewal` should see its real usable lifetime.
    """
    now = _resolve_now(now)
    if isinstance(dns_names, str):
        # A bare string is a Sequence[str] of characters; catch that mistake.
        raise TypeError("dns_names must be a sequence of names, not a single string")
    if not dns_names:
        raise ValueError("dns_names must contain at least one name")
    if valid_for <= timedelta(0):
        raise ValueError(f"valid_for must be positive, got {valid_for}")
    ips = _parse_ips(ip_addresses)
    ca_key = _signing_key(ca)
    ca_cert = ca.certificate
    if not _is_ca(ca_cert):
        raise CertificateError(f"issuer {ca_cert.subject.rfc4514_string()!r} is not a CA certificate")
    if now >= ca_cert.not_valid_after_utc:
        raise CertificateError(f"CA {ca_cert.subject.rfc4514_string()!r} expired at {ca_cert.not_valid_after_utc}")

    key = ec.generate_private_key(ec.SECP256R1())
    cn = dns_names[0]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if len(cn) <= _MAX_CN_LENGTH else [])
    try:
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
            ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        )
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    sans.extend(x509.IPAddress(ip) for ip in ips)
    not_after = min(now + valid_for, ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
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
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        # Critical when the subject is empty, as RFC 5280 4.2.1.6 requires.
        .add_extension(x509.SubjectAlternativeName(sans), critical=not subject)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(aki, critical=False)
        .sign(ca_key, _hash_for(ca_key))
    )
    return KeyPair(cert_pem=_pem(cert), key_pem=_key_pem(key))


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
    now = _resolve_now(now)
    if not common_name or len(common_name) > _MAX_CN_LENGTH:
        raise ValueError(f"common_name must have 1 to {_MAX_CN_LENGTH} characters, got {common_name!r}")
    if valid_for <= timedelta(0):
        raise ValueError(f"valid_for must be positive, got {valid_for}")
    ca_key = _signing_key(ca)
    ca_cert = ca.certificate
    if not _is_ca(ca_cert):
        raise CertificateError(f"issuer {ca_cert.subject.rfc4514_string()!r} is not a CA certificate")
    if now >= ca_cert.not_valid_after_utc:
        raise CertificateError(f"CA {ca_cert.subject.rfc4514_string()!r} expired at {ca_cert.not_valid_after_utc}")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
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
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, _hash_for(ca_key))
    )
    return KeyPair(cert_pem=_pem(cert), key_pem=_key_pem(key))


def service_dns_names(service: str, namespace: str) -> list[str]:
    """The names the API server may use for ``service`` in ``namespace``.

    Returns ``[svc, svc.ns, svc.ns.svc, svc.ns.svc.cluster.local]``.
    """
    for field_name, value in (("service", service), ("namespace", namespace)):
        if not isinstance(value, str) or len(value) > 63 or not _DNS_LABEL.fullmatch(value):
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


# --------------------------------------------------------------------------
# Renewal and bundles


def needs_renewal(cert_pem: bytes, *, now: datetime, renew_before: timedelta) -> bool:
    """Whether the (first) certificate in ``cert_pem`` should be replaced at ``now``.

    True when at most ``renew_before`` of validity remains, or when less than a
    third of its total lifetime remains, whichever comes first.  The
    one-third rule keeps short-lived certificates (where ``renew_before`` may
    exceed the lifetime or leave no margin) renewing with headroom.
    """
    now = _resolve_now(now)
    cert = _load_certs(cert_pem, what="certificate")[0]
    not_after = cert.not_valid_after_utc
    remaining = not_after - now
    lifetime = not_after - cert.not_valid_before_utc
    return remaining <= renew_before or remaining * 3 < lifetime


def ca_bundle(*cas: bytes, now: datetime | None = None) -> bytes:
    """Concatenate CA PEMs (each may itself be a bundle), dropping duplicates.

    Order of first appearance is kept.  Expired certificates are dropped only
    when ``now`` is given, so the function stays pure by default.
    """
    if now is not None:
        now = _resolve_now(now)
    seen: set[bytes] = set()
    out: list[bytes] = []
    for pem in cas:
        if not pem.strip():
            continue
        for cert in _load_certs(pem, what="CA"):
            fp = _fingerprint(cert)
            if fp in seen:
                continue
            seen.add(fp)
            if now is not None and cert.not_valid_after_utc <= now:
                continue
            out.append(_pem(cert))
    return b"".join(out)


def _bundle_fingerprints(pem: bytes) -> frozenset[bytes]:
    if not pem.strip():
        return frozenset()
    return frozenset(_fingerprint(c) for c in _load_certs(pem, what="CA bundle"))


def _san_set(cert: x509.Certificate) -> frozenset[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return frozenset()
    dns = {f"dns:{n}" for n in san.get_values_for_type(x509.DNSName)}
    ips = {f"ip:{ip}" for ip in san.get_values_for_type(x509.IPAddress)}
    return frozenset(dns | ips)


def _wanted_sans(dns_names: Sequence[str], ip_addresses: Sequence[str]) -> frozenset[str]:
    return frozenset({f"dns:{n}" for n in dns_names} | {f"ip:{ip}" for ip in _parse_ips(ip_addresses)})


def _issued_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _leaf_usable(
    serving: KeyPair | None,
    *,
    signer: KeyPair,
    wanted: frozenset[str],
    now: datetime,
    renew_before: timedelta,
) -> bool:
    """Whether ``serving`` may keep being served under ``signer``."""
    if serving is None:
        return False
    try:
        leaf = serving.validate()
    except CertificateError:
        return False
    signer_cert = signer.certificate
    if not _issued_by(leaf, signer_cert) or _san_set(leaf) != wanted:
        return False
    if leaf.not_valid_after_utc <= now:
        return False
    if not needs_renewal(serving.cert_pem, now=now, renew_before=renew_before):
        return True
    # Due for renewal, but a replacement from this CA would expire at the same
    # moment (leaves are clamped to their CA); reissuing would only churn.
    return leaf.not_valid_after_utc >= signer_cert.not_valid_after_utc


def rotate(
    *,
    ca: KeyPair,
    serving: KeyPair | None,
    dns_names: Sequence[str],
    now: datetime,
    renew_before: timedelta = timedelta(days=30),
    ca_renew_before: timedelta = timedelta(days=90),
    next_ca: KeyPair | None = None,
    published_bundle: bytes = b"",
    ip_addresses: Sequence[str] = (),
) -> RotationResult:
    """Decide and perform one step of serving-certificate and CA rotation.

    Call it periodically (and at start-up) with the current state; persist and
    publish what it returns, then call it again later.  It is deterministic in
    its inputs except for the fresh keys it generates.

    Inputs: ``ca`` is the CA that signs the served leaf, ``serving`` the leaf
    being served (None at first start), ``next_ca`` the CA being rolled in as
    returned by a previous phase-1 result, and ``published_bundle`` the
    caBundle *as currently published* in the webhook configuration(s), read
    back from the cluster: it is the proof that the API server can trust a CA.

    Steady state (:attr:`RotationPhase.STEADY`): the CA has more than
    ``ca_renew_before`` left.  The leaf is reissued by ``ca`` when it is
    missing, does not match ``dns_names``/``ip_addresses``, is not signed by
    ``ca``, or :func:`needs_renewal` says so (``renew_before`` or 1/3 of its
    lifetime).

    CA rollover, two phases, so the API server never sees a leaf it cannot
    verify:

    * Phase 1, :attr:`RotationPhase.PUBLISH_BUNDLE` -- "publish bundle
      (old+new CA), keep old leaf".  Entered when ``ca`` is within
      ``ca_renew_before`` of expiry: a new CA is created and returned as
      ``next_ca``; ``ca_bundle`` holds old and new CA; the old leaf keeps being
      served (reissued by the *old* CA only if it must be).  The phase repeats
      (same ``next_ca``) until ``published_bundle`` contains the new CA.
    * Phase 2, :attr:`RotationPhase.NEW_LEAF` -- "new leaf signed by new CA".
      Entered on the first call where ``next_ca`` is in ``published_bundle``:
      a new leaf is signed by the new CA, which becomes ``ca``.  The old CA
      stays in ``ca_bundle`` until it expires (every later call keeps the
      unexpired CAs from ``published_bundle``), so API servers that still hold
      the old leaf's chain in flight keep working.

    If ``ca`` has already expired there is nothing to overlap with: a new CA
    (``next_ca`` if given) signs a new leaf at once and the result is phase 2.

    ``ca_bundle`` always contains the CA of the served leaf, the CA being
    rolled in, and every unexpired CA of ``published_bundle``;
    ``bundle_changed`` says whether it differs from ``published_bundle``.
    """
    now = _resolve_now(now)
    if isinstance(dns_names, str):
        raise TypeError("dns_names must be a sequence of names, not a single string")
    wanted = _wanted_sans(dns_names, ip_addresses)
    ca.validate()
    if next_ca is not None:
        next_ca.validate()
    published = _bundle_fingerprints(published_bundle)

    def issue(signer: KeyPair) -> KeyPair:
        return create_serving_cert(ca=signer, dns_names=dns_names, ip_addresses=ip_addresses, now=now)

    def result(
        phase: RotationPhase,
        *,
        signer: KeyPair,
        leaf: KeyPair,
        pending: KeyPair | None,
    ) -> RotationResult:
        parts = [signer.cert_pem]
        if pending is not None:
            parts.append(pending.cert_pem)
        if signer is not ca:
            # After a rollover the old CA must stay until it expires.
            parts.append(ca.cert_pem)
        parts.append(published_bundle)
        bundle = ca_bundle(*parts, now=now)
        return RotationResult(
            phase=phase,
            ca=signer,
            serving=leaf,
            ca_bundle=bundle,
            next_ca=pending,
            serving_changed=leaf is not serving,
            bundle_changed=_bundle_fingerprints(bundle) != published,
        )

    ca_not_after = ca.not_after
    if now >= ca_not_after:
        new_ca = next_ca
        if new_ca is None or new_ca.not_after <= now:
            new_ca = create_ca(common_name=_common_name(ca), now=now)
        return result(RotationPhase.NEW_LEAF, signer=new_ca, leaf=issue(new_ca), pending=None)

    if next_ca is None and now >= ca_not_after - ca_renew_before:
        next_ca = create_ca(common_name=_common_name(ca), now=now)

    if next_ca is not None:
        if _fingerprint(next_ca.certificate) in published:
            return result(RotationPhase.NEW_LEAF, signer=next_ca, leaf=issue(next_ca), pending=None)
        leaf = serving
        if leaf is None or not _leaf_usable(leaf, signer=ca, wanted=wanted, now=now, renew_before=renew_before):
            leaf = issue(ca)
        return result(RotationPhase.PUBLISH_BUNDLE, signer=ca, leaf=leaf, pending=next_ca)

    leaf = serving
    if leaf is None or not _leaf_usable(leaf, signer=ca, wanted=wanted, now=now, renew_before=renew_before):
        leaf = issue(ca)
    return result(RotationPhase.STEADY, signer=ca, leaf=leaf, pending=None)


def _common_name(pair: KeyPair) -> str:
    attrs = pair.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = attrs[0].value if attrs else "dra-bridge-ca"
    return value if isinstance(value, str) else value.decode()


# --------------------------------------------------------------------------
# Files


def atomic_write(path: Path, data: bytes, *, mode: int) -> None:
    # Readers (the TLS reloader, kubelet-style consumers) must see either the
    # old or the new file, never a prefix: write a temp file in the same
    # directory (same filesystem, so os.replace is atomic), fsync, rename.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600; set the final mode before any byte is written
        # so a key is never briefly readable by others.
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _fsync_dir(directory: Path) -> None:
    # Makes the renames themselves durable across a crash.
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(dir_fd)
    except OSError:  # pragma: no cover - some filesystems refuse directory fsync
        pass
    finally:
        os.close(dir_fd)


def write_pair(directory: Path, *, ca: KeyPair, serving: KeyPair) -> None:
    """Atomically write ``ca.crt``, ``tls.crt`` and ``tls.key`` (0600) into ``directory``.

    Only the CA *certificate* is written: the CA key never needs to be next to
    the serving files.  Each file is replaced atomically, but the three are not
    one transaction, so readers must tolerate a momentarily mismatched
    cert/key (``tls.CertificateReloader`` does).  ``tls.crt`` is written before
    ``tls.key``; the pair is validated first so a bad pair never reaches disk.
    """
    validate_pair(serving.cert_pem, serving.key_pem)
    _load_certs(ca.cert_pem, what="CA certificate")
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(directory / CA_FILE, ca.cert_pem, mode=0o644)
    atomic_write(directory / CERT_FILE, serving.cert_pem, mode=0o644)
    atomic_write(directory / KEY_FILE, serving.key_pem, mode=0o600)
    _fsync_dir(directory)


def load_pair(directory: Path) -> StoredPair:
    """Read back what :func:`write_pair` wrote; raise :class:`CertificateError` if unusable.

    Missing files raise :class:`FileNotFoundError`.
    """
    ca_pem = (directory / CA_FILE).read_bytes()
    cert_pem = (directory / CERT_FILE).read_bytes()
    key_pem = (directory / KEY_FILE).read_bytes()
    _load_certs(ca_pem, what=f"{directory / CA_FILE}")
    serving = KeyPair(cert_pem=cert_pem, key_pem=key_pem)
    serving.validate()
    return StoredPair(ca_cert_pem=ca_pem, serving=serving)


def ensure_dev_certs(
    directory: Path,
    *,
    hosts: Sequence[str] = ("localhost",),
    ips: Sequence[str] = ("127.0.0.1", "::1"),
    now: datetime | None = None,
) -> Path:
    """Make sure ``directory`` holds a usable local-development CA and serving pair.

    Used by ``dra-bridge serve --dev``.  Existing files are reused when they
    parse, the key matches, the leaf is signed by ``ca.crt``, its names are
    exactly ``hosts`` + ``ips``, and leaf and CA stay valid for at least one
    more day; otherwise a throwaway CA and serving certificate are created and
    written.  Returns ``directory``.
    """
    now = _resolve_now(now)
    wanted = _wanted_sans(hosts, ips)
    if _dev_certs_reusable(directory, wanted=wanted, now=now):
        return directory
    ca = create_ca(common_name="dra-bridge-dev-ca", valid_for=_DEV_CA_VALIDITY, now=now)
    serving = create_serving_cert(ca=ca, dns_names=hosts, ip_addresses=ips, valid_for=_DEV_SERVING_VALIDITY, now=now)
    write_pair(directory, ca=ca, serving=serving)
    return directory


def _dev_certs_reusable(directory: Path, *, wanted: frozenset[str], now: datetime) -> bool:
    try:
        stored = load_pair(directory)
        ca_cert = _load_certs(stored.ca_cert_pem, what="CA")[0]
    except (OSError, CertificateError):
        return False
    leaf = stored.serving.certificate
    horizon = now + _DEV_MIN_REMAINING
    return (
        _san_set(leaf) == wanted
        and _issued_by(leaf, ca_cert)
        and leaf.not_valid_before_utc <= now
        and leaf.not_valid_after_utc >= horizon
        and ca_cert.not_valid_after_utc >= horizon
    )


# --------------------------------------------------------------------------
# Kubernetes manifests


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _check_dns_subdomain(field_name: str, value: str) -> None:
    if not value or len(value) > _DNS_SUBDOMAIN_MAX or not all(_DNS_LABEL.fullmatch(part) for part in value.split(".")):
        raise ValueError(f"invalid {field_name} {value!r}: must be a DNS-1123 subdomain")


def secret_manifest(*, name: str, namespace: str, pair: KeyPair, ca: KeyPair) -> dict[str, Any]:
    """A ``kubernetes.io/tls`` Secret holding ``tls.crt``, ``tls.key`` and ``ca.crt``."""
    _check_dns_subdomain("name", name)
    service_dns_names("placeholder", namespace)  # validates namespace as a DNS label
    validate_pair(pair.cert_pem, pair.key_pem)
    _load_certs(ca.cert_pem, what="CA certificate")
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": "kubernetes.io/tls",
        "data": {
            CERT_FILE: _b64(pair.cert_pem),
            KEY_FILE: _b64(pair.key_pem),
            CA_FILE: _b64(ca.cert_pem),
        },
    }


def patch_ca_bundle(config: Mapping[str, Any], ca_bundle_pem: bytes) -> dict[str, Any]:
    """Return a deep copy of a webhook configuration with every caBundle set.

    Works on ``MutatingWebhookConfiguration`` and
    ``ValidatingWebhookConfiguration`` dicts; any other kind raises
    :class:`ValueError`.  The bundle must contain at least one certificate:
    publishing an empty or garbled caBundle would make every admission call
    fail.
    """
    kind = config.get("kind")
    if kind not in _WEBHOOK_KINDS:
        raise ValueError(f"cannot patch caBundle of kind {kind!r}: expected one of {sorted(_WEBHOOK_KINDS)}")
    if not ca_bundle_pem.strip():
        raise ValueError("ca_bundle_pem is empty")
    _load_certs(ca_bundle_pem, what="CA bundle")
    encoded = _b64(ca_bundle_pem)
    patched: dict[str, Any] = copy.deepcopy(dict(config))
    for webhook in patched.get("webhooks") or []:
        client_config = webhook.get("clientConfig")
        if client_config is None:
            client_config = webhook["clientConfig"] = {}
        client_config["caBundle"] = encoded
    return patched
