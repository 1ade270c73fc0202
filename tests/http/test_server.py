"""The envelope over real TLS: status codes, uid echo, base64 JSONPatch, probes, metrics."""

from __future__ import annotations

import base64
import json
import ssl

import httpx
import pytest

from tests.admission.helpers import review
from tests.conftest import assert_valid, container, pod
from tests.http.conftest import LiveServer
from webhook.admission.jsonpatch import apply


def test_mutate_round_trip_over_tls(live_server: LiveServer) -> None:
    original = pod(container("train", limits={"nvidia.com/gpu": "1"}))
    with live_server.client() as client:
        response = client.post("/mutate", json=review(original, uid="abc-123"))
    assert response.status_code == 200
    body = response.json()
    assert body["apiVersion"] == "admission.k8s.io/v1" and body["kind"] == "AdmissionReview"
    answer = body["response"]
    assert answer["uid"] == "abc-123" and answer["allowed"] is True and answer["patchType"] == "JSONPatch"
    patched = apply(original, json.loads(base64.b64decode(answer["patch"])))
    assert_valid(patched)
    assert all(len(w) <= 120 for w in answer["warnings"])


def test_denial_carries_status(live_server: LiveServer) -> None:
    with live_server.client() as client:
        answer = client.post("/mutate", json=review(pod(container(limits={"nvidia.com/gpu": "-2"})))).json()["response"]
    assert answer["allowed"] is False
    assert answer["status"]["code"] == 422
    assert "nvidia.com/gpu: -2 is negative" in answer["status"]["message"]
    assert "patch" not in answer and "patchType" not in answer


def test_no_gpu_no_patch(live_server: LiveServer) -> None:
    with live_server.client() as client:
        answer = client.post("/mutate", json=review(pod(container()))).json()["response"]
    assert answer == {
        "uid": "uid-1",
        "allowed": True,
        "auditAnnotations": {"decision": "allowed", "reason": "no-legacy-request"},
    }


@pytest.mark.parametrize(
    ("content", "headers", "status", "fragment"),
    [
        (b"{not json", {"content-type": "application/json"}, 400, "not JSON"),
        (b"[]", {"content-type": "application/json"}, 400, "JSON object"),
        (
            b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}',
            {"content-type": "application/json"},
            400,
            "no request",
        ),
        (
            b'{"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {}}',
            {"content-type": "application/json"},
            400,
            "apiVersion",
        ),
        (
            b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": "x"}}',
            {"content-type": "application/json"},
            400,
            "request.kind",
        ),
        (b"{}", {"content-type": "text/plain"}, 400, "Content-Type must be application/json"),
        (b"\xff\xfe", {"content-type": "application/json"}, 400, "not JSON"),
        (b"{" + b" " * (70 * 1024) + b"}", {"content-type": "application/json"}, 413, "over the limit"),
    ],
)
def test_malformed_requests_get_4xx_with_a_message(
    live_server: LiveServer, content: bytes, headers: dict[str, str], status: int, fragment: str
) -> None:
    with live_server.client() as client:
        for path in ("/mutate", "/validate"):
            response = client.post(path, content=content, headers=headers)
            assert response.status_code == status, response.text
            assert fragment in response.json()["message"]


def test_missing_object_is_400(live_server: LiveServer) -> None:
    with live_server.client() as client:
        response = client.post("/mutate", json=review(None))
    assert response.status_code == 400 and "request.object is required" in response.json()["message"]


def test_unexpected_kind_is_allowed_unchanged(live_server: LiveServer) -> None:
    with live_server.client() as client:
        answer = client.post("/mutate", json=review({"metadata": {"name": "x"}}, kind="Service")).json()["response"]
    assert answer == {
        "uid": "uid-1",
        "allowed": True,
        "auditAnnotations": {"decision": "allowed", "reason": "not-a-pod-create"},
    }


def test_probes_and_metrics(live_server: LiveServer) -> None:
    with live_server.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["ready"] is True
        client.post("/mutate", json=review(pod(container(limits={"amd.com/gpu": "1"}))))
        text = client.get("/metrics").text
    assert 'dra_bridge_conversions_total{legacy_name="amd.com/gpu"}' in text
    assert (
        'dra_bridge_admission_decisions_total{webhook="mutate",outcome="patched",reason="converted",tenant="namespace:team-a"}'
        in text
    )
    assert "dra_bridge_admission_duration_seconds_bucket" in text


def test_plain_http_is_refused(live_server: LiveServer) -> None:
    with pytest.raises(httpx.HTTPError):
        httpx.get(live_server.url.replace("https", "http") + "/healthz", timeout=5)


def test_server_certificate_is_checked(live_server: LiveServer) -> None:
    with pytest.raises((httpx.ConnectError, ssl.SSLError)):
        httpx.get(live_server.url + "/healthz", verify=True, timeout=5)  # the system store does not know the dev CA


def test_quota_denial_from_the_example_policy(live_server: LiveServer) -> None:
    """The README's curl: a claim for two whole GPUs in a namespace with the default limits."""
    claim = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": "two-gpus", "namespace": "default"},
        "spec": {
            "devices": {
                "requests": [{"name": "gpu", "exactly": {"deviceClassName": "whole.nvidia.dra-bridge.io", "count": 2}}]
            }
        },
    }
    with live_server.client() as client:
        answer = client.post("/validate", json=review(claim, kind="ResourceClaim", namespace="default")).json()[
            "response"
        ]
    assert answer["allowed"] is False and answer["status"]["code"] == 403
    assert answer["status"]["message"] == (
        "tenant namespace:default (default limits): devices per claim: requested 2, in use 0, limit 1: "
        "over by 1 [policy gpu-quota-example@1]; "
        "tenant namespace:default (default limits): memory: requested 160Gi, in use 0, limit 48Gi: "
        "over by 112Gi [policy gpu-quota-example@1]"
    )
    assert answer["auditAnnotations"]["tenant"] == "namespace:default"


def test_readyz_reports_the_policy_version(live_server: LiveServer) -> None:
    with live_server.client() as client:
        body = client.get("/readyz").json()
    assert body["ready"] is True and body["policyVersion"] == "gpu-quota-example@1"


def test_decisions_are_counted_by_tenant(live_server: LiveServer) -> None:
    claim = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": "one", "namespace": "ml-research"},
        "spec": {
            "devices": {
                "requests": [
                    {
                        "name": "g",
                        "exactly": {
                            "deviceClassName": "shared.hami-core.dra-bridge.io",
                            "capacity": {"requests": {"memory": "1Gi"}},
                        },
                    }
                ]
            }
        },
    }
    with live_server.client() as client:
        assert client.post("/validate", json=review(claim, kind="ResourceClaim", namespace="ml-research")).json()[
            "response"
        ]["allowed"]
        text = client.get("/metrics").text
    assert (
        'dra_bridge_admission_decisions_total{webhook="validate",outcome="allowed",reason="within-quota",tenant="research"} 1'
        in text
    )
