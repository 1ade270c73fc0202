"""Unit tests for webhook.certs.manifests: the TLS Secret and the caBundle patch."""

from __future__ import annotations

import base64
import re
from typing import Any

import pytest

from tests.unit.certs.support import SVC_NAMES, T0
from webhook.certs.issue import CertificateError, create_ca, create_serving_cert
from webhook.certs.manifests import patch_ca_bundle, secret_manifest
from webhook.certs.rotate import ca_bundle

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
