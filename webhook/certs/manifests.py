"""Kubernetes objects for the webhook's certificates: the TLS Secret and the caBundle patch.

:func:`secret_manifest` renders the ``kubernetes.io/tls`` Secret the server's
pod mounts; :func:`patch_ca_bundle` sets the published ``caBundle`` on every
webhook of a Mutating/ValidatingWebhookConfiguration.  Both are pure and check
their input first, so a garbled certificate never reaches the cluster.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Mapping
from typing import Any

from webhook.certs.files import CA_FILE, CERT_FILE, KEY_FILE
from webhook.certs.issue import DNS_LABEL, KeyPair, load_certs, service_dns_names, validate_pair

__all__ = ["patch_ca_bundle", "secret_manifest"]

_DNS_SUBDOMAIN_MAX = 253

_WEBHOOK_KINDS = frozenset({"MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"})


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _check_dns_subdomain(field_name: str, value: str) -> None:
    if not value or len(value) > _DNS_SUBDOMAIN_MAX or not all(DNS_LABEL.fullmatch(part) for part in value.split(".")):
        raise ValueError(f"invalid {field_name} {value!r}: must be a DNS-1123 subdomain")


def secret_manifest(*, name: str, namespace: str, pair: KeyPair, ca: KeyPair) -> dict[str, Any]:
    """A ``kubernetes.io/tls`` Secret holding ``tls.crt``, ``tls.key`` and ``ca.crt``."""
    _check_dns_subdomain("name", name)
    service_dns_names("placeholder", namespace)  # validates namespace as a DNS label
    validate_pair(pair.cert_pem, pair.key_pem)
    load_certs(ca.cert_pem, what="CA certificate")
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
    load_certs(ca_bundle_pem, what="CA bundle")
    encoded = _b64(ca_bundle_pem)
    patched: dict[str, Any] = copy.deepcopy(dict(config))
    for webhook in patched.get("webhooks") or []:
        client_config = webhook.get("clientConfig")
        if client_config is None:
            client_config = webhook["clientConfig"] = {}
        client_config["caBundle"] = encoded
    return patched
