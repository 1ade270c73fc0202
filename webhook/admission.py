"""The admission engine: an AdmissionRequest in, a ``Decision`` out, no HTTP.

``Admission.mutate`` rewrites legacy GPU requests on Pod CREATE; ``Admission.validate`` refuses
objects that must not be stored. Business code raises; ``_decide`` is the one place that maps the
error hierarchy to verdicts: a ``Denial`` is a refusal with the user's message, anything else
propagates so the HTTP layer answers with an error and the cluster's failurePolicy decides.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from webhook.catalogue import CatalogueIndex
from webhook.claims import MANAGED_BY, MANAGED_BY_LABEL, SPEC_HASH_LABEL, spec_hash
from webhook.cluster import ClusterPort
from webhook.errors import Denial, MalformedReview, TranslationError
from webhook.jsonpatch import diff
from webhook.review import AdmissionRequest, AdmissionResponse, allowed, denied, patched
from webhook.rewrite import Conversion, opted_out, rewrite_pod
from webhook.templates import TemplateProvisioner

Outcome = Literal["allowed", "patched", "denied"]
MAX_WARNING = 120


@dataclass(frozen=True)
class QuotaFigure:
    """One quota dimension of a decision: what was asked, what was in use, the limit, who set it."""

    dimension: str  # "devices/<class>", "memory", "compute", "claims", "perPod.memory", ...
    requested: str
    used: str
    limit: str
    policy: str  # ConfigMap name and version that set the limit


@dataclass(frozen=True)
class Decision:
    """What the webhook decided and why: the response plus the facts metrics and audit need."""

    webhook: Literal["mutate", "validate"]
    response: AdmissionResponse
    outcome: Outcome
    reason: str  # a short machine code: converted, no-legacy-request, opt-out, invalid-request, ...
    message: str = ""
    conversions: tuple[Conversion, ...] = ()
    templates_created: tuple[str, ...] = ()
    tenant: str | None = None
    quota: tuple[QuotaFigure, ...] = ()
    policy_version: str | None = None  # the active policy set's version (resourceVersions or a hash)
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AdmissionSettings:
    leave_native: bool = True  # KEP-5004: leave names a DeviceClass serves natively, and warn
    require_conversion: bool = True  # validate: refuse Pods that still carry convertible legacy requests


class Admission:
    def __init__(
        self,
        *,
        cluster: ClusterPort,
        catalogue: Callable[[], CatalogueIndex],
        settings: AdmissionSettings | None = None,
        provisioner: TemplateProvisioner | None = None,
    ) -> None:
        self._cluster = cluster
        self._catalogue = catalogue
        self._settings = settings or AdmissionSettings()
        self.templates = provisioner or TemplateProvisioner(cluster)

    # -- mutate ------------------------------------------------------------------------------
    def mutate(self, request: AdmissionRequest) -> Decision:
        return _decide("mutate", request, self._mutate)

    def _mutate(self, request: AdmissionRequest) -> Decision:
        if request.kind.kind != "Pod" or request.operation != "CREATE" or request.sub_resource:
            return _allow("mutate", request, "not-a-pod-create")
        pod = _object(request)
        namespace = request.namespace or (pod.get("metadata") or {}).get("namespace") or "default"
        if self._skipped(pod, namespace):
            return _allow("mutate", request, "opt-out")
        native = self._cluster.native_extended_resources() if self._settings.leave_native else {}
        plan = rewrite_pod(pod, index=self._catalogue(), namespace=namespace, native=native)
        warnings = [_short(f"dra-bridge: {w}") for w in plan.warnings]
        if not plan.changed:
            reason = "native-extended-resource" if plan.warnings else "no-legacy-request"
            return _allow("mutate", request, reason, warnings=warnings)
        created = tuple(
            t["metadata"]["name"] for t in plan.templates if self.templates.ensure(t, dry_run=request.dry_run)
        )
        patch = diff(pod, plan.pod)
        for c in plan.conversions:
            legacy = ",".join(f"{k}={v}" for k, v in sorted(c.legacy.items()))
            warnings.append(_short(f"dra-bridge: {c.container}: {legacy} -> {c.summary}"))
        audit = {"converted": "; ".join(f"{c.container}:{c.template}" for c in plan.conversions)}
        return Decision(
            webhook="mutate",
            response=patched(request.uid, patch, warnings=warnings, audit=audit),
            outcome="patched",
            reason="converted",
            message="; ".join(f"{c.container}: {c.summary}" for c in plan.conversions),
            conversions=plan.conversions,
            templates_created=created,
        )

    def _skipped(self, pod: dict[str, Any], namespace: str) -> bool:
        labels = (pod.get("metadata") or {}).get("labels")
        return opted_out(labels) or opted_out(self._cluster.namespace_labels(namespace))

    # -- validate ----------------------------------------------------------------------------
    def validate(self, request: AdmissionRequest) -> Decision:
        return _decide("validate", request, self._validate)

    def _validate(self, request: AdmissionRequest) -> Decision:
        kind = request.kind.kind
        if request.operation not in ("CREATE", "UPDATE") or request.sub_resource:
            return _allow("validate", request, "not-checked")
        if kind == "Pod" and request.operation == "CREATE":
            return self._validate_pod(request)
        if kind == "ResourceClaimTemplate":
            return self._validate_template(request)
        return _allow("validate", request, "not-checked")

    def _validate_pod(self, request: AdmissionRequest) -> Decision:
        pod = _object(request)
        namespace = request.namespace or (pod.get("metadata") or {}).get("namespace") or "default"
        if not self._settings.require_conversion or self._skipped(pod, namespace):
            return _allow("validate", request, "opt-out")
        native = self._cluster.native_extended_resources() if self._settings.leave_native else {}
        plan = rewrite_pod(pod, index=self._catalogue(), namespace=namespace, native=native)
        if plan.changed:
            names = sorted({k for c in plan.conversions for k in c.legacy} | set(plan.removed_annotations))
            raise Unconverted(
                f"Pod still carries legacy GPU requests ({', '.join(names)}) that dra-bridge converts to DRA claims; "
                "the mutating webhook did not run. Retry, or label the Pod dra-bridge.io/ignore=true to keep them"
            )
        return _allow("validate", request, "no-legacy-request")

    def _validate_template(self, request: AdmissionRequest) -> Decision:
        template = _object(request)
        labels = (template.get("metadata") or {}).get("labels") or {}
        if labels.get(MANAGED_BY_LABEL) != MANAGED_BY:
            return _allow("validate", request, "not-managed")
        claim_spec = (template.get("spec") or {}).get("spec") or {}
        if labels.get(SPEC_HASH_LABEL) != spec_hash(claim_spec):
            raise TemplateTampered(
                f"ResourceClaimTemplate {request.namespace}/{request.object_name} is managed by dra-bridge and named "
                "after its content; its spec cannot differ from its dra-bridge.io/spec-hash label. "
                "Remove the app.kubernetes.io/managed-by label to manage it yourself"
            )
        return _allow("validate", request, "managed-template-intact")


class Unconverted(Denial):
    reason = "Forbidden"
    code = 403


class TemplateTampered(Denial):
    reason = "Forbidden"
    code = 403


def _object(request: AdmissionRequest) -> dict[str, Any]:
    if request.object is None:
        raise MalformedReview(f"request.object is required for {request.operation} of {request.kind.kind}")
    return request.object


def _allow(
    webhook: Literal["mutate", "validate"], request: AdmissionRequest, reason: str, *, warnings: list[str] | None = None
) -> Decision:
    return Decision(webhook=webhook, response=allowed(request.uid, warnings=warnings), outcome="allowed", reason=reason)


def _decide(
    webhook: Literal["mutate", "validate"], request: AdmissionRequest, handler: Callable[[AdmissionRequest], Decision]
) -> Decision:
    try:
        return handler(request)
    except Denial as err:
        reason = "invalid-request" if isinstance(err, TranslationError) else _code(type(err).__name__)
        return Decision(
            webhook=webhook,
            response=denied(request.uid, str(err), reason=err.reason, code=err.code, audit={"denied": reason}),
            outcome="denied",
            reason=reason,
            message=str(err),
        )


def _code(name: str) -> str:
    """``TemplateConflict`` -> ``template-conflict``."""
    return "".join(f"-{ch.lower()}" if ch.isupper() else ch for ch in name).lstrip("-")


def _short(text: str) -> str:
    return text if len(text) <= MAX_WARNING else text[: MAX_WARNING - 3] + "..."
