"""Quota through the engine: claims, templates, Pods, policy ConfigMaps, races, reloads."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import yaml

from tests.admission.helpers import request
from tests.conftest import POLICIES, container, pod
from webhook.admission.engine import Admission
from webhook.cluster.memory import InMemoryCluster
from webhook.quota.enforcement import QuotaEnforcer
from webhook.translate.catalogue import CatalogueIndex
from webhook.translate.deviceclasses import render_device_classes
from webhook.translate.rewrite import rewrite_pod

GPU_CLASS = "whole.nvidia.dra-bridge.io"


def policy_configmap(body: dict[str, Any], name: str = "gpu-quota") -> dict[str, Any]:
    document = {"apiVersion": "dra-bridge.io/v1alpha1", "kind": "QuotaPolicy", **body}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "dra-bridge", "labels": {"dra-bridge.io/policy": "true"}},
        "data": {"policy.yaml": yaml.safe_dump(document)},
    }


def claim(
    name: str,
    *,
    namespace: str = "ml-research",
    count: int = 1,
    device_class: str = GPU_CLASS,
    capacity: dict[str, str] | None = None,
) -> dict[str, Any]:
    exactly: dict[str, Any] = {"deviceClassName": device_class, "count": count}
    if capacity:
        exactly["capacity"] = {"requests": capacity}
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"devices": {"requests": [{"name": "gpu", "exactly": exactly}]}},
    }


class Env:
    def __init__(
        self, index: CatalogueIndex, policy: dict[str, Any] | None = None, clock: list[float] | None = None
    ) -> None:
        self.cluster = InMemoryCluster()
        for device_class in render_device_classes(index.catalogue):
            self.cluster.add_device_class(device_class)
        for ns in ("ml-research", "data-science", "sandbox"):
            self.cluster.add_namespace(ns)
        self.cluster.add_namespace("serving", {"dra-bridge.io/tenant": "inference"})
        self.quota = QuotaEnforcer(cluster=self.cluster, catalogue=lambda: index.catalogue)
        if clock is not None:
            self.quota.ledger.clock = lambda: clock[0]
        self.quota.attach()
        if policy is not None:
            self.cluster.put_configmap(policy_configmap(policy))
        self.admission = Admission(cluster=self.cluster, catalogue=lambda: index, quota=self.quota)

    def create_claim(self, obj: dict[str, Any], **kw: Any) -> Any:
        """What the apiserver does: ask the webhook, then store the claim if allowed."""
        decision = self.admission.validate(
            request(obj, kind="ResourceClaim", namespace=obj["metadata"]["namespace"], **kw)
        )
        if decision.outcome == "allowed" and not kw.get("dry_run"):
            self.cluster.add_claim(obj)
        return decision


RESEARCH = {
    "classes": {GPU_CLASS: {"memory": "80Gi"}},
    "tenants": [
        {
            "name": "research",
            "namespaces": ["ml-research", "data-science"],
            "limits": {
                "devices": {"whole.*": 4},
                "memory": "400Gi",
                "claims": 10,
                "perClaim": {"devices": 3},
                "perPod": {"devices": 3},
            },
        },
        {"name": "inference", "limits": {"memory": "8Gi"}, "allowedClasses": ["shared.*"]},
    ],
    "tenantLabel": "dra-bridge.io/tenant",
    "default": {"limits": {"devices": {"*": 1}}},
}


def test_within_quota_is_allowed_with_figures(index: CatalogueIndex) -> None:
    env = Env(index, RESEARCH)
    decision = env.create_claim(claim("a", count=2))
    assert decision.outcome == "allowed" and decision.tenant == "research"
    dims = {f.dimension: f for f in decision.quota}
    assert dims["devices/whole.*"].requested == "2" and dims["devices/whole.*"].limit == "4"
    assert dims["memory"].requested == "160Gi"
    assert decision.policy_version == "gpu-quota@1"


def test_denial_says_who_what_and_by_how_much(index: CatalogueIndex) -> None:
    env = Env(index, RESEARCH)
    assert env.create_claim(claim("a", count=3)).outcome == "allowed"
    decision = env.create_claim(claim("b", namespace="data-science", count=2))  # same tenant, other namespace
    assert decision.outcome == "denied" and decision.reason == "quota-exceeded"
    status = decision.response.status
    assert status is not None and status.code == 403
    assert status.message == (
        "tenant research: devices/whole.*: requested 2, in use 3, limit 4: over by 1 [policy gpu-quota@1]"
    )
    from webhook.audit.log import audit_annotations

    notes = audit_annotations(decision)
    assert notes["decision"] == "denied" and notes["reason"] == "quota-exceeded" and notes["tenant"] == "research"
    assert notes["quota"] == "devices/whole.*: requested 2, used 3, limit 4 (gpu-quota@1)"


def test_per_claim_maximum_and_memory(index: CatalogueIndex) -> None:
    env = Env(index, RESEARCH)
    decision = env.create_claim(claim("big", count=4))
    assert decision.outcome == "denied"
    assert "perClaim.devices" not in decision.message  # the message uses plain words
    assert "devices per claim: requested 4, in use 0, limit 3: over by 1" in decision.message


def test_memory_quota_counts_capacity_requests(index: CatalogueIndex) -> None:
    env = Env(index, RESEARCH)
    shared = "shared.hami-core.dra-bridge.io"
    assert (
        env.create_claim(claim("s1", namespace="serving", device_class=shared, capacity={"memory": "6Gi"})).outcome
        == "allowed"
    )
    decision = env.create_claim(claim("s2", namespace="serving", device_class=shared, capacity={"memory": "4Gi"}))
    assert decision.outcome == "denied"
    assert "tenant inference: memory: requested 4Gi, in use 6Gi, limit 8Gi: over by 2Gi" in decision.message


def test_allowed_classes(index: CatalogueIndex) -> None:
    env = Env(index, RESEARCH)
    decision = env.create_claim(claim("w", namespace="serving"))
    assert decision.outcome == "denied"
    assert "DeviceClass whole.nvidia.dra-bridge.io is not allowed (allowed: shared.*)" in decision.message


def test_default_limits_apply_per_namespace(index: CatalogueIndex) -> None:
    env = Env(index, RESEARCH)
    assert env.create_claim(claim("a", namespace="sandbox")).outcome == "allowed"
    decision = env.create_claim(claim("b", namespace="sandbox"))
    assert decision.outcome == "denied" and decision.tenant == "namespace:sandbox"
    assert "tenant namespace:sandbox (default limits)" in decision.message


def test_no_policy_means_no_quota(index: CatalogueIndex) -> None:
    env = Env(index, None)
    decision = env.create_claim(claim("a", count=30))
    assert decision.outcome == "allowed" and decision.reason == "no-tenant-policy"


def test_deletion_releases_usage(index: CatalogueIndex) -> None:
    env = Env(index, RESEARCH)
    for name in ("a", "b"):
        assert env.create_claim(claim(name, count=2)).outcome == "allowed"
    assert env.create_claim(claim("c")).outcome == "denied"
    env.cluster.delete_claim("ml-research", "a")
    assert env.create_claim(claim("c")).outcome == "allowed"


def test_dry_run_is_checked_but_never_charged(index: CatalogueIndex) -> None:
    env = Env(index, RESEARCH)
    for _ in range(5):
        assert env.create_claim(claim("d", count=3), dry_run=True).outcome == "allowed"
    assert env.quota.ledger.reservation_count == 0
    assert env.create_claim(claim("real", count=3)).outcome == "allowed"


def test_reservation_expires_when_the_claim_never_appears(index: CatalogueIndex) -> None:
    now = [0.0]
    env = Env(index, RESEARCH, clock=now)
    decision = env.admission.validate(request(claim("ghost", count=3), kind="ResourceClaim", namespace="ml-research"))
    assert decision.outcome == "allowed"  # reserved, but never stored (another plugin refused it)
    assert env.create_claim(claim("x", count=2)).outcome == "denied"
    now[0] += 31
    assert env.create_claim(claim("x", count=2)).outcome == "allowed"


def test_reservation_is_confirmed_not_double_counted(index: CatalogueIndex) -> None:
    env = Env(index, RESEARCH)
    assert env.create_claim(claim("a", count=2)).outcome == "allowed"
    assert env.quota.ledger.reservation_count == 0  # the claim appeared: its reservation became usage
    assert env.create_claim(claim("b", count=2)).outcome == "allowed"


def test_parallel_admissions_racing_for_the_last_units_admit_exactly_what_fits(index: CatalogueIndex) -> None:
    policy = {
        "tenants": [
            {"name": "research", "namespaces": ["ml-research"], "limits": {"devices": {"whole.*": 10}, "claims": 1000}}
        ]
    }
    env = Env(index, policy)
    for i in range(7):
        assert env.create_claim(claim(f"pre-{i}")).outcome == "allowed"  # 3 units left
    barrier = threading.Barrier(24)
    outcomes: list[str] = []
    lock = threading.Lock()

    def contender(i: int) -> None:
        barrier.wait()
        decision = env.admission.validate(
            request(claim(f"race-{i}"), kind="ResourceClaim", namespace="ml-research", uid=f"u{i}")
        )
        with lock:
            outcomes.append(decision.outcome)

    threads = [threading.Thread(target=contender, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert outcomes.count("allowed") == 3 and outcomes.count("denied") == 21


def test_template_static_checks(index: CatalogueIndex) -> None:
    env = Env(index, RESEARCH)
    template = rewrite_pod(
        pod(container(limits={"nvidia.com/gpu": "4"})), index=index, namespace="ml-research"
    ).templates[0]
    decision = env.admission.validate(request(template, kind="ResourceClaimTemplate", namespace="ml-research"))
    assert decision.outcome == "denied" and "devices per claim: requested 4" in decision.message
    small = rewrite_pod(pod(container(limits={"nvidia.com/gpu": "1"})), index=index, namespace="ml-research").templates[
        0
    ]
    assert (
        env.admission.validate(request(small, kind="ResourceClaimTemplate", namespace="ml-research")).outcome
        == "allowed"
    )


def test_pod_is_checked_for_the_claims_its_templates_will_produce(index: CatalogueIndex) -> None:
    env = Env(index, RESEARCH)
    assert env.create_claim(claim("held", count=3)).outcome == "allowed"
    legacy = pod(container("train", limits={"nvidia.com/gpu": "2"}))
    legacy["metadata"]["namespace"] = "ml-research"
    mutated = env.admission.mutate(request(legacy, namespace="ml-research"))
    assert mutated.outcome == "patched"
    plan = rewrite_pod(legacy, index=index, namespace="ml-research")
    decision = env.admission.validate(request(plan.pod, namespace="ml-research"))
    assert decision.outcome == "denied"
    assert "tenant research: devices/whole.*: requested 2, in use 3, limit 4: over by 1" in decision.message


def test_pod_per_pod_maximum(index: CatalogueIndex) -> None:
    env = Env(index, RESEARCH)
    two = pod(
        container("a", limits={"nvidia.com/gpu": "2"}), initContainers=[container("b", limits={"nvidia.com/gpu": "2"})]
    )
    plan = rewrite_pod(two, index=index, namespace="ml-research")
    for template in plan.templates:
        env.cluster.create_template(template)
    decision = env.admission.validate(request(plan.pod, namespace="ml-research"))
    assert decision.outcome == "denied" and "devices per Pod: requested 4" in decision.message


def test_cel_rule_with_its_own_message(index: CatalogueIndex) -> None:
    policy = {
        "tenants": [
            {
                "name": "research",
                "namespaces": ["ml-research"],
                "rules": [
                    {
                        "name": "max-two",
                        "expression": "claim.charge.totalDevices <= 2 || request.user == 'admin'",
                        "message": "at most two GPUs per claim unless you are admin",
                    },
                    {
                        "name": "broken",
                        "expression": "claim.spec.devices.requests.all(r, r.exactly.count < 100)",
                        "message": "never fails",
                    },
                ],
            }
        ]
    }
    env = Env(index, policy)
    decision = env.create_claim(claim("big", count=3))
    assert decision.outcome == "denied"
    assert (
        "tenant research: rule max-two: at most two GPUs per claim unless you are admin [policy gpu-quota@1]"
        in decision.message
    )
    ok = env.admission.validate(
        request(claim("big2", count=3), kind="ResourceClaim", namespace="ml-research").model_copy(
            update={"user_info": request(None).user_info.model_copy(update={"username": "admin"})}
        )
    )
    assert ok.outcome == "allowed"
    first_available = claim("fa")
    request_spec = first_available["spec"]["devices"]["requests"][0]
    request_spec["firstAvailable"] = [dict(request_spec.pop("exactly"), name="x")]
    failing = env.create_claim(first_available)  # no 'exactly': the rule errors, and fails closed
    assert failing.outcome == "denied" and "rule broken could not be evaluated" in failing.message


def test_policy_configmap_edit_takes_effect_and_bad_edit_keeps_last_good(index: CatalogueIndex) -> None:
    env = Env(index, RESEARCH)
    assert env.create_claim(claim("a", count=3)).outcome == "allowed"
    assert env.create_claim(claim("b", count=2)).outcome == "denied"
    raised = {**RESEARCH, "tenants": [{**RESEARCH["tenants"][0], "limits": {"devices": {"whole.*": 8}}}]}  # type: ignore[index,dict-item]
    env.cluster.put_configmap(policy_configmap(raised))
    assert env.create_claim(claim("b", count=2)).outcome == "allowed"
    broken = policy_configmap(raised)
    broken["data"]["policy.yaml"] = (
        "apiVersion: dra-bridge.io/v1alpha1\nkind: QuotaPolicy\ntenants: [{name: research, limits: {memory: lots}}]"
    )
    env.cluster.put_configmap(broken)
    ready, detail = env.quota.ready()
    assert ready and "gpu-quota" in detail["policyErrors"]
    assert "limits.memory" in detail["policyErrors"]["gpu-quota"]
    assert env.create_claim(claim("c", count=3)).outcome == "allowed"  # the last good (8 devices) still applies
    assert env.create_claim(claim("d", count=1)).outcome == "denied"


def test_malformed_policy_configmap_is_refused_at_save(index: CatalogueIndex) -> None:
    env = Env(index, RESEARCH)
    broken = policy_configmap(
        {"tenants": [{"name": "x", "rules": [{"name": "r", "expression": "claim.>", "message": "m"}]}]}, name="other"
    )
    decision = env.admission.validate(request(broken, kind="ConfigMap", namespace="dra-bridge"))
    assert (
        decision.outcome == "denied" and decision.response.status is not None and decision.response.status.code == 422
    )
    assert "other: tenants[x].rules[r].expression: does not parse" in decision.message
    clash = policy_configmap({"tenants": [{"name": "research"}]}, name="other")
    assert (
        "tenant 'research' is already defined in gpu-quota"
        in env.admission.validate(request(clash, kind="ConfigMap", namespace="dra-bridge")).message
    )
    assert (
        env.admission.validate(request(policy_configmap(RESEARCH), kind="ConfigMap", namespace="dra-bridge")).outcome
        == "allowed"
    )


def test_malformed_catalogue_configmap_is_refused_at_save(index: CatalogueIndex) -> None:
    env = Env(index, None)
    catalogue_cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "catalogue-extra", "labels": {"dra-bridge.io/catalogue": "true"}},
        "data": {
            "catalogue.yaml": "apiVersion: dra-bridge.io/v1alpha1\nkind: TranslationCatalogue\nsources: [{name: x, target: nowhere}]"
        },
    }
    from webhook.translate.catalogue import parse_document

    env.admission = Admission(
        cluster=env.cluster,
        catalogue=lambda: index,
        quota=env.quota,
        catalogue_documents=lambda: [parse_document((POLICIES / "catalogue.yaml").read_text(), origin="default")],
    )
    decision = env.admission.validate(request(catalogue_cm, kind="ConfigMap", namespace="dra-bridge"))
    assert decision.outcome == "denied" and "sources[x].target: unknown target 'nowhere'" in decision.message


def test_namespace_relabel_moves_usage_to_the_new_tenant(index: CatalogueIndex) -> None:
    env = Env(index, RESEARCH)
    env.cluster.add_namespace("lab", {"dra-bridge.io/tenant": "research"})
    assert env.create_claim(claim("a", namespace="lab", count=3)).outcome == "allowed"
    assert env.create_claim(claim("b", count=2)).outcome == "denied"  # lab's usage counts for research
    env.cluster.add_namespace("lab", {})
    assert env.create_claim(claim("b", count=1)).outcome == "allowed"


# -- every path: what a tenant can try with kubectl ----------------------------------------------
def namespace_review(
    name: str, labels: dict[str, str], old: dict[str, str] | None, *, user: str, groups: list[str]
) -> Any:
    from webhook.admission.review import AdmissionRequest

    def obj(lbls: dict[str, str]) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": lbls}}

    return AdmissionRequest.model_validate(
        {
            "uid": "ns-1",
            "kind": {"group": "", "version": "v1", "kind": "Namespace"},
            "resource": {"group": "", "version": "v1", "resource": "namespaces"},
            "name": name,
            "operation": "UPDATE" if old is not None else "CREATE",
            "userInfo": {"username": user, "groups": groups},
            "object": obj(labels),
            "oldObject": obj(old) if old is not None else None,
        }
    )


def test_moving_a_namespace_between_tenants_is_an_admin_act(index: CatalogueIndex) -> None:
    env = Env(index, RESEARCH)
    move = namespace_review("sandbox", {"dra-bridge.io/tenant": "inference"}, {}, user="alice", groups=["team-a"])
    denied = env.admission.validate(move)
    assert denied.outcome == "denied" and denied.reason == "tenant-move"
    assert "namespace sandbox: from tenant namespace:sandbox to tenant inference is an admin act" in denied.message
    joined = namespace_review("new-ns", {"dra-bridge.io/tenant": "inference"}, None, user="alice", groups=["team-a"])
    assert env.admission.validate(joined).outcome == "denied"  # creating into a tenant is a move too
    admin = namespace_review(
        "sandbox", {"dra-bridge.io/tenant": "inference"}, {}, user="root", groups=["system:masters"]
    )
    decision = env.admission.validate(admin)
    assert decision.outcome == "allowed" and decision.reason == "tenant-moved"
    assert decision.message == "namespace sandbox: from tenant namespace:sandbox to tenant inference by root"
    unrelated = namespace_review("sandbox", {"team": "x"}, {}, user="alice", groups=["team-a"])
    assert env.admission.validate(unrelated).reason == "tenant-unchanged"
    plain = namespace_review("brand-new", {"team": "x"}, None, user="alice", groups=["team-a"])
    assert env.admission.validate(plain).outcome == "allowed"


def gpu_pod_with_claims(*claims: dict[str, Any], labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    obj = pod(container())
    obj["metadata"]["labels"] = labels or {}
    obj["spec"]["resourceClaims"] = list(claims)
    obj["spec"].update(spec)
    return obj


PER_POD = {
    "tenants": [
        {
            "name": "research",
            "namespaces": ["ml-research"],
            "limits": {"perPod": {"devices": 2}, "devices": {"kind:gpu": 10}},
        }
    ]
}


def test_opting_out_skips_conversion_never_quota(index: CatalogueIndex) -> None:
    env = Env(index, PER_POD)
    for i in range(3):
        env.cluster.add_claim(claim(f"held-{i}"))
    obj = gpu_pod_with_claims(
        *({"name": f"c{i}", "resourceClaimName": f"held-{i}"} for i in range(3)),
        labels={"dra-bridge.io/ignore": "true"},
    )
    decision = env.admission.validate(request(obj, namespace="ml-research"))
    assert decision.outcome == "denied"
    assert "perPod.devices" in {f.dimension for f in decision.quota}


def test_a_pod_naming_claims_that_do_not_exist_yet_is_refused_under_per_pod_limits(index: CatalogueIndex) -> None:
    env = Env(index, PER_POD)
    obj = gpu_pod_with_claims({"name": "later", "resourceClaimTemplateName": "made-after-the-pod"})
    decision = env.admission.validate(request(obj, namespace="ml-research"))
    assert decision.outcome == "denied"
    assert "ResourceClaimTemplate made-after-the-pod, which does not exist yet" in decision.message


def test_a_natively_mapped_name_is_checked_at_pod_admission(index: CatalogueIndex) -> None:
    env = Env(index, PER_POD)
    env.cluster.add_device_class(
        {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "DeviceClass",
            "metadata": {"name": "gpu.nvidia.com"},
            "spec": {
                "selectors": [
                    {
                        "cel": {
                            "expression": "device.driver == 'gpu.nvidia.com' && device.attributes['gpu.nvidia.com'].type == 'gpu'"
                        }
                    }
                ],
                "extendedResourceName": "nvidia.com/gpu",
            },
        }
    )
    obj = pod(container(limits={"nvidia.com/gpu": "3"}))
    decision = env.admission.validate(request(obj, namespace="ml-research"))
    assert decision.outcome == "denied"
    assert "devices per Pod: requested 3" in decision.message


def test_a_dry_run_pod_gets_the_answer_the_real_create_gets(index: CatalogueIndex) -> None:
    from tests.admission.helpers import decode_patch
    from webhook.admission.jsonpatch import apply

    env = Env(index, PER_POD)
    answers = []
    for dry_run in (True, False):
        obj = pod(container(limits={"nvidia.com/gpu": "3"}))
        mutated = env.admission.mutate(request(obj, namespace="ml-research", dry_run=dry_run))
        patched = apply(obj, decode_patch(mutated.response.patch or ""))
        answers.append(env.admission.validate(request(patched, namespace="ml-research", dry_run=dry_run)))
    assert [a.outcome for a in answers] == ["denied", "denied"]
    assert answers[0].message == answers[1].message


def test_a_decision_that_cannot_be_recorded_gives_its_reservation_back(index: CatalogueIndex) -> None:
    from webhook.audit.log import AuditLog
    from webhook.errors import AuditWriteError

    class Broken:
        def write(self, line: str) -> None:
            raise AuditWriteError("disk full")

        def close(self) -> None:
            return None

    env = Env(index, RESEARCH)
    audited = AuditLog(Broken()).audited("validate", env.admission.validate)  # type: ignore[arg-type]
    with pytest.raises(AuditWriteError):
        audited(request(claim("c1"), kind="ResourceClaim", namespace="ml-research"))
    assert env.quota.ledger.reservation_count == 0


# -- rollout: observe, then convert ------------------------------------------------------------------
OBSERVE = {
    "tenants": [
        {
            "name": "research",
            "namespaces": ["ml-research", "data-science"],
            "rollout": "observe",
            "limits": {"devices": {"kind:gpu": 1}},
        }
    ],
    "rolloutNamespaces": {"data-science": "convert", "sandbox": "off"},
    "default": {"limits": {"devices": {"*": 4}}},
}


def test_observe_admits_unchanged_and_says_what_would_happen(index: CatalogueIndex) -> None:
    env = Env(index, OBSERVE)
    obj = pod(container("train", limits={"nvidia.com/gpu": "2"}))
    decision = env.admission.mutate(request(obj, namespace="ml-research"))
    assert decision.outcome == "allowed" and decision.reason == "observed"
    assert decision.response.patch is None and not env.cluster.managed_templates()
    warnings = decision.response.warnings or []
    assert any(
        w.startswith("dra-bridge (observe): would convert train: nvidia.com/gpu=2 -> 2 whole devices") for w in warnings
    )
    assert any(w.startswith("dra-bridge (observe): quota would refuse it: tenant research") for w in warnings)
    assert [c.container for c in decision.conversions] == ["train"]
    # the validating webhook does not refuse what observe mode let through unconverted
    assert env.admission.validate(request(obj, namespace="ml-research")).outcome == "allowed"


def test_rollout_per_namespace_overrides_the_tenant(index: CatalogueIndex) -> None:
    env = Env(index, OBSERVE)
    obj = pod(container("train", limits={"nvidia.com/gpu": "1"}))
    assert env.admission.mutate(request(obj, namespace="data-science")).reason == "converted"
    off = env.admission.mutate(request(obj, namespace="sandbox"))
    assert off.reason == "rollout-off" and not off.response.warnings
    assert env.admission.validate(request(obj, namespace="sandbox")).outcome == "allowed"
    # convert mode keeps the backstop: an unconverted legacy Pod is refused
    assert env.admission.validate(request(obj, namespace="data-science")).outcome == "denied"


def test_the_audit_summary_shows_what_observe_mode_saw(index: CatalogueIndex, tmp_path: Any) -> None:
    from webhook.audit.log import AuditLog, open_audit_log
    from webhook.audit.reader import Filter, parse_line, read_lines, summarise

    env = Env(index, OBSERVE)
    path = tmp_path / "audit.log"
    log: AuditLog = open_audit_log(str(path))
    mutate = log.audited("mutate", env.admission.mutate)
    for i in range(3):
        mutate(request(pod(container("train", limits={"nvidia.com/gpu": "2"})), namespace="ml-research", uid=f"u{i}"))
    log.close()
    summary = summarise((parse_line(line) for line in read_lines(path)), Filter())
    research = summary.tenants["research"]
    assert (research.observed_pods, research.observed_devices, research.observed_quota_denials) == (3, 6, 3)
    assert research.converted_devices == 0  # observed is not converted


def test_a_device_class_asked_for_as_an_extended_resource_is_checked_at_pod_admission(index: CatalogueIndex) -> None:
    """KEP-5004: every DeviceClass is requestable as deviceclass.resource.kubernetes.io/<class>."""
    env = Env(index, PER_POD)
    obj = pod(container(limits={"deviceclass.resource.kubernetes.io/whole.nvidia.dra-bridge.io": "3"}))
    decision = env.admission.validate(request(obj, namespace="ml-research"))
    assert decision.outcome == "denied" and "devices per Pod: requested 3" in decision.message


class _Relabelled(InMemoryCluster):
    """A namespace whose tenant label changes between any two reads (an admin relabelling it while
    Pods are being created)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def namespace_labels(self, name: str) -> Any:
        self.reads += 1
        team = "convert-team" if self.reads % 2 else "observe-team"
        return {"dra-bridge.io/tenant": team} if name == "shared" else super().namespace_labels(name)


def test_a_pod_is_decided_from_one_reading_of_its_namespace(index: CatalogueIndex) -> None:
    """Opt-out, rollout and the tenant recorded all come from the same labels: a namespace being
    relabelled never yields a decision that is one tenant's rollout charged to another."""
    cluster = _Relabelled()
    cluster.add_namespace("shared")
    quota = QuotaEnforcer(cluster=cluster, catalogue=lambda: index.catalogue)
    quota.attach()
    cluster.put_configmap(
        policy_configmap(
            {
                "tenants": [
                    {"name": "convert-team", "rollout": "convert", "limits": {"devices": {"*": 8}}},
                    {"name": "observe-team", "rollout": "observe", "limits": {"devices": {"*": 8}}},
                ],
                "tenantLabel": "dra-bridge.io/tenant",
            }
        )
    )
    admission = Admission(cluster=cluster, catalogue=lambda: index, quota=quota)
    seen = set()
    for n in range(4):  # the reads before each decision shift which reading comes first
        cluster.reads = n
        decision = admission.mutate(request(pod(container("t", limits={"nvidia.com/gpu": "1"})), namespace="shared"))
        seen.add((decision.reason, decision.tenant))
    assert seen == {("converted", "convert-team"), ("observed", "observe-team")}
