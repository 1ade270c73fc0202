"""The AdmissionReview wire format (admission.k8s.io/v1), typed at the boundary.

Only the envelope is modelled; the objects inside travel as plain dicts so fields this code does not
know survive untouched.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from webhook.admission.jsonpatch import Patch


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class GroupVersionKind(_Wire):
    group: str = ""
    version: str = ""
    kind: str


class UserInfo(_Wire):
    username: str = ""
    uid: str = ""
    groups: list[str] = Field(default_factory=list)


class AdmissionRequest(_Wire):
    uid: str = Field(min_length=1)
    kind: GroupVersionKind
    resource: dict[str, Any] = Field(default_factory=dict)
    sub_resource: str = Field(default="", alias="subResource")
    name: str = ""
    namespace: str = ""
    operation: Literal["CREATE", "UPDATE", "DELETE", "CONNECT"]
    user_info: UserInfo = Field(default_factory=UserInfo, alias="userInfo")
    object: dict[str, Any] | None = None
    old_object: dict[str, Any] | None = Field(default=None, alias="oldObject")
    dry_run: bool = Field(default=False, alias="dryRun")

    @property
    def object_name(self) -> str:
        """``name``, or ``generateName`` followed by ``*`` for objects that have no name yet."""
        meta = (self.object or {}).get("metadata") or {}
        return self.name or meta.get("name") or (f"{meta['generateName']}*" if meta.get("generateName") else "")


class AdmissionReview(_Wire):
    api_version: Literal["admission.k8s.io/v1"] = Field(alias="apiVersion")
    kind: Literal["AdmissionReview"]
    request: AdmissionRequest | None = None


# What dra-bridge answers is built here, never parsed: plain dataclasses (building and dumping
# pydantic models was a tenth of a small Pod's mutate, in process).
@dataclass(frozen=True, slots=True)
class Status:
    code: int
    message: str
    reason: str = ""

    def to_wire(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class AdmissionResponse:
    uid: str
    allowed: bool
    status: Status | None = None
    patch_type: Literal["JSONPatch"] | None = None
    patch: str | None = None
    warnings: list[str] | None = None
    audit_annotations: dict[str, str] | None = None

    def to_wire(self) -> dict[str, Any]:
        """The ``response`` of an admission.k8s.io/v1 AdmissionReview (unset fields left out)."""
        wire: dict[str, Any] = {"uid": self.uid, "allowed": self.allowed}
        if self.status is not None:
            wire["status"] = self.status.to_wire()
        if self.patch_type is not None:
            wire["patchType"] = self.patch_type
        if self.patch is not None:
            wire["patch"] = self.patch
        if self.warnings is not None:
            wire["warnings"] = self.warnings
        if self.audit_annotations is not None:
            wire["auditAnnotations"] = self.audit_annotations
        return wire


def with_audit_annotations(response: AdmissionResponse, notes: dict[str, str]) -> AdmissionResponse:
    """``response`` with ``auditAnnotations`` set to ``notes``."""
    return AdmissionResponse(
        uid=response.uid,
        allowed=response.allowed,
        status=response.status,
        patch_type=response.patch_type,
        patch=response.patch,
        warnings=response.warnings,
        audit_annotations=notes,
    )


def allowed(uid: str, *, warnings: list[str] | None = None) -> AdmissionResponse:
    return AdmissionResponse(uid=uid, allowed=True, warnings=warnings or None)


def encode_patch(patch: Patch) -> str | None:
    """A JSON Patch as the response carries it (base64 of its JSON); None for no change."""
    if not patch:
        return None
    return base64.b64encode(json.dumps(patch, separators=(",", ":")).encode()).decode()


def patched(uid: str, patch: Patch | str | None, *, warnings: list[str] | None = None) -> AdmissionResponse:
    """Allowed with ``patch`` (operations, or already encoded by ``encode_patch``)."""
    encoded = patch if isinstance(patch, str) or patch is None else encode_patch(patch)
    if encoded is None:
        return allowed(uid, warnings=warnings)
    return AdmissionResponse(
        uid=uid,
        allowed=True,
        patch_type="JSONPatch",
        patch=encoded,
        warnings=warnings or None,
    )


def denied(uid: str, message: str, *, reason: str, code: int) -> AdmissionResponse:
    return AdmissionResponse(
        uid=uid,
        allowed=False,
        status=Status(code=code, message=message, reason=reason),
    )


def review_response(response: AdmissionResponse) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response.to_wire(),
    }
