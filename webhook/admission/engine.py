"""The admission engine: an AdmissionRequest in, a ``Decision`` out, no HTTP.

``Admission.mutate`` rewrites legacy GPU requests on Pod CREATE; ``Admission.validate`` refuses
objects that must not be stored. Business code raises; ``_decide`` turns a ``Denial`` into a refusal
with the user's message and the status its class declares (``webhook.errors``), anything else
propagates and the HTTP layer answers as ``webhook.errors.failure_of`` says.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from webhook.admission.converted import Converted, convert
from webhook.admission.decision import Decision, Webhook
from webhook.admission.nodes import NodePools
from webhook.admission.review import AdmissionRequest, allowed, denied, patched
from webhook.admission.templates import PlannedTemplates, TemplateProvisioner
from webhook.cluster import ClusterPort
from webhook.errors import (
    Denial,
    InvalidPolicy,
    MalformedReview,
    NotReady,
    TemplateTampered,
    TenantMove,
    TooLarge,
    Unconverted,
    code_of,
)
from webhook.labels import (
    CATALOGUE_KEY,
    CATALOGUE_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    POLICY_KEY,
    POLICY_LABEL,
    SPEC_HASH_LABEL,
)
from webhook.quota.enforcement import QuotaEnforcer, QuotaResult
from webhook.quota.figure import QuotaFigure
from webhook.quota.policy import PolicyError, PolicySource
from webhook.translate.catalogue import CatalogueError, CatalogueIndex, parse_document
from webhook.translate.claims import native_claims, spec_hash
from webhook.translate.rewrite import RewritePlan, opted_out, rewrite_pod

MAX_WARNING = 120
DEVICECLASS_RESOURCE_PREFIX = "deviceclass.resource.kubernetes.io/"


@dataclass(frozen=True)
class AdmissionSettings:
    leave_native: bool = True  # KEP-5004: leave names a DeviceClass serves natively, and warn
    require_conversion: bool = True  # validate: refuse Pods that still carry convertible legacy requests
    tenant_admin_groups: frozenset[str] = frozenset({"system:masters"})  # may move namespaces between tenants
    # The work one review may cost: a Pod's containers are converted one by one (a 15,000-container
    # Pod took 2 s); Pods with more are refused with a message rather than stalling other reviews.
    max_containers: int = 500


class Admission:
    def __init__(
        self,
        *,
        cluster: ClusterPort,
        catalogue: Callable[[], CatalogueIndex],
        settings: AdmissionSettings | None = None,
        provisioner: TemplateProvisioner | None = None,
        quota: QuotaEnforcer | None = None,
        catalogue_documents: Callable[[], list[dict[str, Any]]] | None = None,
        nodes: NodePools | None = None,
    ) -> None:
        self._cluster = cluster
        self._catalogue = catalogue
        self._settings = settings or AdmissionSettings()
        self.templates = provisioner or TemplateProvisioner(cluster)
        self.quota = quota
        self._catalogue_documents = catalogue_documents or (lambda: [])
        self._planned = PlannedTemplates()
        self.nodes = nodes

    # -- mutate ------------------------------------------------------------------------------
    def mutate(self, request: AdmissionRequest) -> Decision:
        return _decide("mutate", request, self._mutate, tenant=lambda: self._tenant_name(request.namespace))

    def _mutate(self, request: AdmissionRequest) -> Decision:
        if request.kind.kind != "Pod" or request.operation != "CREATE" or request.sub_resource:
            return _allow("mutate", request, "not-a-pod-create")
        pod = _object(request)
        self._bounded(pod)
        namespace = _namespace(request, pod)
        self._require_ready()
        # The namespace's labels, read once: opt-out, rollout and tenant are decided from one reading
        labels = self._cluster.namespace_labels(namespace)
        if self._skipped(pod, labels):
            return _allow("mutate", request, "opt-out")
        rollout = self._rollout(namespace, labels)
        if rollout == "off":
            return _allow("mutate", request, "rollout-off")
        native = self._cluster.native_extended_resources() if self._settings.leave_native else {}
        index = self._catalogue()
        converted = convert(pod, index=index, namespace=namespace, native=native)
        warnings = [_short(f"dra-bridge: {w}") for w in converted.warnings]
        if not converted.changed:
            reason = "native-extended-resource" if converted.warnings else "no-legacy-request"
            return _allow("mutate", request, reason, warnings=warnings)
        left = self._left_for_device_plugin(pod, converted)
        if left is not None:
            warnings.append(_short(f"dra-bridge: {left}"))
            return Decision(
                webhook="mutate",
                response=allowed(request.uid, warnings=warnings),
                outcome="allowed",
                reason="left-for-device-plugin",
                message=left,
                tenant=self._tenant_name(namespace, labels),
            )
        if rollout == "observe":
            plan = rewrite_pod(pod, index=index, namespace=namespace, native=native)
            return self._observed(request, plan, namespace, labels, warnings)
        for template in converted.templates:  # a dry run's Pod is checked against what the real create makes
            self._planned.remember(template)
        created = tuple(
            t["metadata"]["name"] for t in converted.templates if self.templates.ensure(t, dry_run=request.dry_run)
        )
        warnings.extend(_short(f"dra-bridge: {summary}") for summary in converted.summaries)
        return Decision(
            webhook="mutate",
            response=patched(request.uid, converted.patch, warnings=warnings),
            outcome="patched",
            reason="converted",
            message=converted.message,
            conversions=converted.conversions,
            templates_created=created,
            tenant=self._tenant_name(namespace, labels),
        )

    def _left_for_device_plugin(self, pod: dict[str, Any], converted: Converted) -> str | None:
        """Why the Pod is left for a device plugin (it may run only on nodes a device plugin serves,
        none of them with the DRA drivers its claims would need), or None: convert it."""
        if self.nodes is None:
            return None
        if self.nodes.serving(pod, drivers=converted.drivers, legacy=converted.legacy) != "device-plugin":
            return None
        return (
            f"left for the device plugin: the nodes this Pod may run on advertise {', '.join(sorted(converted.legacy))} "
            "and publish no devices of the DRA drivers its claims would need"
        )

    def _rollout(self, namespace: str, labels: Mapping[str, str] | None) -> str:
        """convert, observe or off: the namespace's setting, else its tenant's (policy ConfigMaps);
        ``labels`` are the namespace's."""
        if self.quota is None:
            return "convert"
        return self.quota.policies.current.rollout_for(namespace, labels)

    def _observed(
        self,
        request: AdmissionRequest,
        plan: RewritePlan,
        namespace: str,
        labels: Mapping[str, str] | None,
        warnings: list[str],
    ) -> Decision:
        """Observe mode: admit the Pod unchanged; say what would be converted and what quota would say."""
        for c in plan.conversions:
            legacy = ",".join(f"{k}={v}" for k, v in sorted(c.legacy.items()))
            warnings.append(_short(f"dra-bridge (observe): would convert {c.container}: {legacy} -> {c.summary}"))
        figures: tuple[QuotaFigure, ...] = ()
        version = None
        if self.quota is not None:
            result = self.quota.check_pod(
                namespace=namespace,
                new_claims=[(t.get("spec") or {}).get("spec") or {} for t in plan.templates],
                existing_claims=[],
                missing=[],
                rule_input=_rule_base(request, pod=plan.pod),
            )
            figures, version = result.figures, result.policy_version
            if result.denied:
                warnings.append(_short(f"dra-bridge (observe): quota would refuse it: {result.message}"))
        return Decision(
            webhook="mutate",
            response=allowed(request.uid, warnings=warnings),
            outcome="allowed",
            reason="observed",
            message="; ".join(f"would convert {c.container}: {c.summary}" for c in plan.conversions),
            conversions=plan.conversions,
            tenant=self._tenant_name(namespace, labels),
            quota=figures,
            policy_version=version,
        )

    def _tenant_name(self, namespace: str, labels: Mapping[str, str] | None = None) -> str | None:
        """The tenant a namespace belongs to, for the audit log and metrics (None without a policy);
        ``labels``, the namespace's, when the caller has read them."""
        if self.quota is None or not namespace:
            return None
        if labels is None:
            tenant = self.quota.tenant_of(namespace)
        else:
            tenant = self.quota.policies.current.tenant_for(namespace, labels)
        return tenant.name if tenant is not None else None

    def _require_ready(self) -> None:
        """Never decide from caches that have not synced: the failurePolicy decides instead."""
        ready, detail = self._cluster.ready()
        if not ready:
            raise NotReady(f"caches have not synced yet ({detail})")

    def _bounded(self, pod: dict[str, Any]) -> None:
        spec = pod.get("spec") or {}
        count = sum(len(spec.get(field) or ()) for field in ("initContainers", "containers", "ephemeralContainers"))
        if count > self._settings.max_containers:
            raise TooLarge(
                f"the Pod has {count} containers; dra-bridge decides Pods of at most {self._settings.max_containers} "
                "(DRA_BRIDGE_MAX_POD_CONTAINERS) so that no one review holds up the others"
            )

    def _skipped(self, pod: dict[str, Any], namespace_labels: Mapping[str, str] | None) -> bool:
        """Whether the Pod or its namespace (``namespace_labels``) opted out of conversion."""
        return opted_out((pod.get("metadata") or {}).get("labels")) or opted_out(namespace_labels)

    # -- validate ----------------------------------------------------------------------------
    def validate(self, request: AdmissionRequest) -> Decision:
        return _decide("validate", request, self._validate, tenant=lambda: self._tenant_name(request.namespace))

    def _validate(self, request: AdmissionRequest) -> Decision:
        kind = request.kind.kind
        if request.operation not in ("CREATE", "UPDATE") or request.sub_resource:
            return _allow("validate", request, "not-checked")
        if kind in ("Pod", "ResourceClaim", "ResourceClaimTemplate", "ConfigMap", "Namespace"):
            self._require_ready()
        if kind == "Pod" and request.operation == "CREATE":
            return self._validate_pod(request)
        if kind == "ResourceClaim" and request.operation == "CREATE":
            return self._validate_claim(request)
        if kind == "ResourceClaimTemplate":
            return self._validate_template(request)
        if kind == "ConfigMap":
            return self._validate_configmap(request)
        if kind == "Namespace" and not request.namespace:
            return self._validate_namespace(request)
        return _allow("validate", request, "not-checked")

    def _validate_namespace(self, request: AdmissionRequest) -> Decision:
        """Moving a namespace between tenants is an admin act, refused to anyone else and recorded."""
        if self.quota is None:
            return _allow("validate", request, "not-checked")
        namespace = _object(request)
        name = request.name or str((namespace.get("metadata") or {}).get("name", ""))
        new = _labels(namespace)
        old = _labels(request.old_object or {})
        policy_set = self.quota.policies.current
        # A new namespace starts where its name alone puts it (an explicit list, else the default).
        before = policy_set.tenant_for(name, old if request.operation == "UPDATE" else {})
        after = policy_set.tenant_for(name, new)
        was = before.name if before is not None else "none"
        becomes = after.name if after is not None else "none"
        if was == becomes:
            return _allow("validate", request, "tenant-unchanged")
        user = request.user_info
        admins = self._settings.tenant_admin_groups
        move = f"namespace {name}: from tenant {was} to tenant {becomes}"
        if user.username not in admins and not admins.intersection(user.groups):
            raise TenantMove(
                f"{move} is an admin act (the labels that decide a namespace's tenant); user {user.username!r} "
                f"is in none of the groups {', '.join(sorted(admins))}"
            )
        return Decision(
            webhook="validate",
            response=allowed(request.uid),
            outcome="allowed",
            reason="tenant-moved",
            message=f"{move} by {user.username}",
            tenant=becomes if after is not None else None,
            policy_version=policy_set.version,
        )

    def _validate_pod(self, request: AdmissionRequest) -> Decision:
        pod = _object(request)
        self._bounded(pod)
        namespace = _namespace(request, pod)
        labels = self._cluster.namespace_labels(namespace)
        skipped = self._skipped(pod, labels)  # opting out skips conversion, never quota
        native = self._cluster.native_extended_resources() if self._settings.leave_native else {}
        if self._settings.require_conversion and not skipped and self._rollout(namespace, labels) == "convert":
            converted = convert(pod, index=self._catalogue(), namespace=namespace, native=native)
            if converted.changed and self._left_for_device_plugin(pod, converted) is None:
                names = sorted(converted.legacy | set(converted.removed_annotations))
                raise Unconverted(
                    f"Pod still carries legacy GPU requests ({', '.join(names)}) that dra-bridge converts to DRA "
                    "claims; the mutating webhook did not run. Retry, or label the Pod dra-bridge.io/ignore=true "
                    "to keep them"
                )
        if self.quota is None:
            return _allow("validate", request, "opt-out" if skipped else "no-legacy-request")
        new_claims, existing, missing = self._pod_claims(pod, namespace, native)
        result = self.quota.check_pod(
            namespace=namespace,
            new_claims=new_claims,
            existing_claims=existing,
            missing=missing,
            rule_input=_rule_base(request, pod=pod),
        )
        return self._quota_decision(request, result, allowed_reason="within-quota")

    def _pod_claims(
        self, pod: dict[str, Any], namespace: str, native: Mapping[str, str]
    ) -> tuple[list[dict[str, Any]], list[str], list[str]]:
        """Every claim a Pod will use, however it is named: the specs of the claims it will produce
        (from its templates, and from the extended resources a DeviceClass serves natively, which
        kube-scheduler turns into a claim), the names of the claims it names that exist, and what
        it names that does not exist yet."""
        spec = pod.get("spec") or {}
        new_claims: list[dict[str, Any]] = []
        existing: list[str] = []
        missing: list[str] = []
        for entry in spec.get("resourceClaims") or ():
            template_name = entry.get("resourceClaimTemplateName")
            claim_name = entry.get("resourceClaimName")
            if template_name:
                template = self._cluster.get_template(namespace, template_name) or self._planned.get(
                    (namespace, template_name)
                )
                if template is None:
                    missing.append(f"ResourceClaimTemplate {template_name}")
                else:
                    new_claims.append((template.get("spec") or {}).get("spec") or {})
            elif claim_name:
                if self.quota is not None and self.quota.ledger.charge_of(namespace, claim_name) is not None:
                    existing.append(claim_name)
                else:
                    missing.append(f"ResourceClaim {claim_name}")
        # Every DeviceClass is also requestable as deviceclass.resource.kubernetes.io/<class> (KEP-5004).
        implicit = {
            name: name.removeprefix(DEVICECLASS_RESOURCE_PREFIX)
            for c in (*(spec.get("initContainers") or ()), *(spec.get("containers") or ()))
            for name in ((c.get("resources") or {}).get("limits") or {})
            if str(name).startswith(DEVICECLASS_RESOURCE_PREFIX)
        }
        if native or implicit:
            new_claims.extend(native_claims(pod, {**implicit, **native}))
        return new_claims, existing, missing

    def _validate_claim(self, request: AdmissionRequest) -> Decision:
        claim = _object(request)
        if self.quota is None:
            return _allow("validate", request, "no-policy")
        result = self.quota.check_claim(
            namespace=_namespace(request, claim),
            name=str((claim.get("metadata") or {}).get("name") or request.name or ""),
            claim_spec=claim.get("spec") or {},
            rule_input=_rule_base(request, claim=claim),
            dry_run=request.dry_run,
        )
        return self._quota_decision(request, result, allowed_reason="within-quota")

    def _validate_template(self, request: AdmissionRequest) -> Decision:
        template = _object(request)
        labels = (template.get("metadata") or {}).get("labels") or {}
        claim_spec = (template.get("spec") or {}).get("spec") or {}
        if labels.get(MANAGED_BY_LABEL) == MANAGED_BY and labels.get(SPEC_HASH_LABEL) != spec_hash(claim_spec):
            raise TemplateTampered(
                f"ResourceClaimTemplate {request.namespace}/{request.object_name} is managed by dra-bridge and named "
                "after its content; its spec cannot differ from its dra-bridge.io/spec-hash label. "
                "Remove the app.kubernetes.io/managed-by label to manage it yourself"
            )
        if self.quota is None:
            return _allow("validate", request, "no-policy")
        result = self.quota.check_template(
            namespace=_namespace(request, template),
            claim_spec=claim_spec,
            rule_input=_rule_base(request, claim={"metadata": template.get("metadata") or {}, "spec": claim_spec}),
        )
        return self._quota_decision(request, result, allowed_reason="within-quota")

    def _validate_configmap(self, request: AdmissionRequest) -> Decision:
        """Policy and catalogue ConfigMaps are refused when the admin saves a malformed one."""
        configmap = _object(request)
        meta = configmap.get("metadata") or {}
        labels = meta.get("labels") or {}
        data = configmap.get("data") or {}
        name = request.name or str(meta.get("name", ""))
        if labels.get(POLICY_LABEL) == "true":
            if POLICY_KEY not in data:
                raise InvalidPolicy(f"ConfigMap {name}: a policy ConfigMap needs the data key {POLICY_KEY!r}")
            if self.quota is not None:
                try:
                    self.quota.policies.validate(PolicySource(name=name, version="proposed"), str(data[POLICY_KEY]))
                except PolicyError as err:
                    raise InvalidPolicy(f"policy rejected: {err}") from None
            return _allow("validate", request, "policy-valid")
        if labels.get(CATALOGUE_LABEL) == "true":
            if CATALOGUE_KEY not in data:
                raise InvalidPolicy(f"ConfigMap {name}: a catalogue ConfigMap needs the data key {CATALOGUE_KEY!r}")
            from webhook.translate.catalogue import build_catalogue

            try:
                proposed = parse_document(str(data[CATALOGUE_KEY]), origin=f"ConfigMap {name}")
                build_catalogue([*self._catalogue_documents(), proposed])
            except CatalogueError as err:
                raise InvalidPolicy(f"catalogue rejected: {err}") from None
            return _allow("validate", request, "catalogue-valid")
        return _allow("validate", request, "not-checked")

    def _quota_decision(self, request: AdmissionRequest, result: QuotaResult, *, allowed_reason: str) -> Decision:
        figures = tuple(result.figures)
        tenant = result.tenant.name if result.tenant else None
        if result.denied:
            return Decision(
                webhook="validate",
                response=denied(request.uid, result.message, reason="Forbidden", code=403),
                outcome="denied",
                reason="quota-exceeded",
                message=result.message,
                tenant=tenant,
                quota=figures,
                policy_version=result.policy_version,
                release=result.release,
            )
        reason = allowed_reason if result.tenant is not None else "no-tenant-policy"
        return Decision(
            webhook="validate",
            response=allowed(request.uid),
            outcome="allowed",
            reason=reason,
            tenant=tenant,
            quota=figures,
            policy_version=result.policy_version,
            release=result.release,
        )


def _namespace(request: AdmissionRequest, obj: dict[str, Any]) -> str:
    return request.namespace or (obj.get("metadata") or {}).get("namespace") or "default"


def _rule_base(
    request: AdmissionRequest, *, pod: dict[str, Any] | None = None, claim: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The variables a CEL rule sees besides ``tenant``: the claim, the Pod, the request."""
    claim_view = {}
    if claim is not None:
        meta = claim.get("metadata") or {}
        claim_view = {
            "name": meta.get("name") or meta.get("generateName") or "",
            "labels": meta.get("labels") or {},
            "spec": claim.get("spec") or {},
        }
    return {
        "claim": claim_view,
        "pod": pod,
        "request": {
            "user": request.user_info.username,
            "groups": list(request.user_info.groups),
            "namespace": request.namespace,
            "operation": request.operation,
            "kind": request.kind.kind,
        },
    }


def _labels(obj: Mapping[str, Any]) -> dict[str, str]:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, Mapping) else {}


def _object(request: AdmissionRequest) -> dict[str, Any]:
    if request.object is None:
        raise MalformedReview(f"request.object is required for {request.operation} of {request.kind.kind}")
    return request.object


def _allow(webhook: Webhook, request: AdmissionRequest, reason: str, *, warnings: list[str] | None = None) -> Decision:
    return Decision(webhook=webhook, response=allowed(request.uid, warnings=warnings), outcome="allowed", reason=reason)


def _decide(
    webhook: Webhook,
    request: AdmissionRequest,
    handler: Callable[[AdmissionRequest], Decision],
    *,
    tenant: Callable[[], str | None],
) -> Decision:
    try:
        return handler(request)
    except Denial as err:
        return Decision(
            webhook=webhook,
            response=denied(request.uid, str(err), reason=err.reason, code=err.code),
            outcome="denied",
            reason=code_of(err),
            message=str(err),
            tenant=tenant(),
        )


def _short(text: str) -> str:
    return text if len(text) <= MAX_WARNING else text[: MAX_WARNING - 3] + "..."
