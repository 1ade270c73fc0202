from __future__ import annotations

import base64
import json
from typing import Any

from webhook.admission.review import AdmissionRequest


def review(
    obj: dict[str, Any] | None,
    *,
    kind: str = "Pod",
    operation: str = "CREATE",
    dry_run: bool = False,
    namespace: str = "team-a",
    uid: str = "uid-1",
) -> dict[str, Any]:
    group, version = {
        "Pod": ("", "v1"),
        "ResourceClaimTemplate": ("resource.k8s.io", "v1"),
        "ResourceClaim": ("resource.k8s.io", "v1"),
    }.get(kind, ("", "v1"))
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": group, "version": version, "kind": kind},
            "resource": {"group": group, "version": version, "resource": kind.lower() + "s"},
            "namespace": namespace,
            "operation": operation,
            "userInfo": {"username": "alice", "groups": ["team-a"]},
            "object": obj,
            "dryRun": dry_run,
        },
    }


def request(obj: dict[str, Any] | None, **kw: Any) -> AdmissionRequest:
    return AdmissionRequest.model_validate(review(obj, **kw)["request"])


def decode_patch(encoded: str) -> list[dict[str, Any]]:
    patch: list[dict[str, Any]] = json.loads(base64.b64decode(encoded))
    return patch
