"""Renewal and rotation of the webhook's certificates: when to reissue, and the two-phase CA rollover.

:func:`needs_renewal` decides when a certificate is due, :func:`ca_bundle`
merges CA PEMs into the bundle published as the webhook's ``caBundle``, and
:func:`rotate` performs one step of serving-certificate renewal and CA
rollover (:class:`RotationPhase`, :class:`RotationResult`).  The certificates
themselves come from :mod:`webhook.certs.issue`.

Everything here is pure (no I/O, no clock reads unless ``now`` is omitted)
except for the fresh keys :func:`rotate` generates.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography.x509.oid import NameOID

from webhook.certs.issue import (
    CertificateError,
    KeyPair,
    cert_to_pem,
    create_ca,
    create_serving_cert,
    fingerprint,
    issued_by,
    load_certs,
    resolve_now,
    san_set,
    wanted_sans,
)

__all__ = [
    "RotationPhase",
    "RotationResult",
    "ca_bundle",
    "needs_renewal",
    "rotate",
]


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
# Renewal and bundles


def needs_renewal(cert_pem: bytes, *, now: datetime, renew_before: timedelta) -> bool:
    """Whether the (first) certificate in ``cert_pem`` should be replaced at ``now``.

    True when at most ``renew_before`` of validity remains, or when less than a
    third of its total lifetime remains, whichever comes first.  The
    one-third rule keeps short-lived certificates (where ``renew_before`` may
    exceed the lifetime or leave no margin) renewing with headroom.
    """
    now = resolve_now(now)
    cert = load_certs(cert_pem, what="certificate")[0]
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
        now = resolve_now(now)
    seen: set[bytes] = set()
    out: list[bytes] = []
    for pem in cas:
        if not pem.strip():
            continue
        for cert in load_certs(pem, what="CA"):
            fp = fingerprint(cert)
            if fp in seen:
                continue
            seen.add(fp)
            if now is not None and cert.not_valid_after_utc <= now:
                continue
            out.append(cert_to_pem(cert))
    return b"".join(out)


def _bundle_fingerprints(pem: bytes) -> frozenset[bytes]:
    if not pem.strip():
        return frozenset()
    return frozenset(fingerprint(c) for c in load_certs(pem, what="CA bundle"))


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
    if not issued_by(leaf, signer_cert) or san_set(leaf) != wanted:
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
    now = resolve_now(now)
    if isinstance(dns_names, str):
        raise TypeError("dns_names must be a sequence of names, not a single string")
    wanted = wanted_sans(dns_names, ip_addresses)
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
        if fingerprint(next_ca.certificate) in published:
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
