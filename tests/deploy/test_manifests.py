"""The rendered deployment (``kustomize build deploy`` and every overlay): schema-valid, safe, least privilege.

Each test states one property an operator relies on; most run over the base and every overlay, so an
overlay cannot quietly weaken the base.
"""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, assert_valid
from tests.deploy.conftest import DEPLOY, find, find_all, targets
from webhook.certs.issue import service_dns_names
from webhook.cluster.kube import CLUSTER_ACCESS, NAMESPACE_ACCESS, REPORT_ACCESS
from webhook.serving.settings import Settings
from webhook.translate.quantity import parse_quantity

Docs = list[dict[str, Any]]
TARGETS = targets()
NAMESPACE = "dra-bridge"
# Kinds without a schema in kubernetes-validate; checked field by field in the cert-manager test.
CRD_KINDS = {("cert-manager.io/v1", "Issuer"), ("cert-manager.io/v1", "Certificate")}
UVICORN_GRACEFUL_SHUTDOWN = 20  # webhook/serving/server.py: timeout_graceful_shutdown


@pytest.fixture(params=TARGETS)
def docs(request: pytest.FixtureRequest, renders: dict[str, Docs]) -> Docs:
    return renders[request.param]


def deployment(docs: Docs) -> dict[str, Any]:
    return find(docs, "Deployment", "dra-bridge")


def pod_spec(docs: Docs) -> dict[str, Any]:
    spec: dict[str, Any] = deployment(docs)["spec"]["template"]["spec"]
    return spec


def webhook_container(docs: Docs) -> dict[str, Any]:
    containers = pod_spec(docs)["containers"]
    assert [c["name"] for c in containers] == ["webhook"]
    container: dict[str, Any] = containers[0]
    return container


def pod_labels(docs: Docs) -> dict[str, str]:
    labels: dict[str, str] = deployment(docs)["spec"]["template"]["metadata"]["labels"]
    return labels


def all_webhooks(docs: Docs) -> Iterator[tuple[str, dict[str, Any]]]:
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        for config in find_all(docs, kind):
            for webhook in config["webhooks"]:
                yield kind, webhook


def validating(docs: Docs) -> dict[str, dict[str, Any]]:
    config = find(docs, "ValidatingWebhookConfiguration", "dra-bridge")
    return {w["name"]: w for w in config["webhooks"]}


def mutating(docs: Docs) -> dict[str, Any]:
    config = find(docs, "MutatingWebhookConfiguration", "dra-bridge")
    assert len(config["webhooks"]) == 1
    webhook: dict[str, Any] = config["webhooks"][0]
    return webhook


# --------------------------------------------------------------------------- schema


def test_every_object_is_schema_valid_for_1_34_and_1_37(docs: Docs) -> None:
    assert len(docs) > 15
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
            continue
        assert_valid(doc)


def test_no_object_appears_twice(docs: Docs) -> None:
    keys = [(d["apiVersion"], d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs]
    assert len(keys) == len(set(keys))


def test_every_namespaced_object_lives_in_the_webhook_namespace(docs: Docs) -> None:
    cluster_scoped = {
        "Namespace",
        "ClusterRole",
        "ClusterRoleBinding",
        "DeviceClass",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    }
    for doc in docs:
        namespace = doc["metadata"].get("namespace")
        if doc["kind"] in cluster_scoped:
            assert namespace is None, doc["kind"]
        else:
            assert namespace == NAMESPACE, (doc["kind"], doc["metadata"]["name"])


# --------------------------------------------------------------------------- availability


def test_two_replicas_that_never_drop_below_two_during_a_rollout(docs: Docs) -> None:
    spec = deployment(docs)["spec"]
    assert spec["replicas"] >= 2
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_pdb_keeps_one_replica_and_selects_the_pods(docs: Docs) -> None:
    pdb = find(docs, "PodDisruptionBudget", "dra-bridge")
    assert pdb["spec"]["minAvailable"] == 1
    assert deployment(docs)["spec"]["replicas"] > pdb["spec"]["minAvailable"], "a drain must be able to evict one"
    selector = pdb["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels(docs).items()
    assert deployment(docs)["spec"]["selector"]["matchLabels"] == selector


def test_replicas_spread_over_nodes_and_zones(docs: Docs) -> None:
    spec = pod_spec(docs)
    terms = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    hostname = [t for t in terms if t["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"]
    assert hostname, "no preferred anti-affinity by hostname"
    assert hostname[0]["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= pod_labels(docs).items()
    spread = {c["topologyKey"]: c for c in spec["topologySpreadConstraints"]}
    assert {"topology.kubernetes.io/zone", "kubernetes.io/hostname"} <= spread.keys()
    for constraint in spread.values():
        assert constraint["whenUnsatisfiable"] == "ScheduleAnyway"  # a one-zone cluster must still schedule
        assert constraint["labelSelector"]["matchLabels"].items() <= pod_labels(docs).items()


def test_no_priority_class_reserved_for_kube_system(docs: Docs) -> None:
    assert pod_spec(docs).get("priorityClassName") not in ("system-cluster-critical", "system-node-critical")


def test_graceful_drain_outlasts_prestop_and_uvicorn_shutdown(docs: Docs) -> None:
    spec = pod_spec(docs)
    pre_stop = webhook_container(docs)["lifecycle"]["preStop"]
    assert set(pre_stop) == {"sleep"}, "preStop must not need a shell or binaries in the image"
    sleep = pre_stop["sleep"]["seconds"]
    assert sleep >= 5, "endpoints need a few seconds to drop the Pod"
    assert spec["terminationGracePeriodSeconds"] > sleep + UVICORN_GRACEFUL_SHUTDOWN


def test_uvicorn_graceful_shutdown_is_still_twenty_seconds() -> None:
    # terminationGracePeriodSeconds above is derived from it; a change there must revisit the Deployment.
    source = (ROOT / "webhook" / "serving" / "server.py").read_text(encoding="utf-8")
    assert f"timeout_graceful_shutdown={UVICORN_GRACEFUL_SHUTDOWN}" in source


# --------------------------------------------------------------------------- container


def test_probes_use_healthz_and_readyz_over_https_on_8443(docs: Docs) -> None:
    container = webhook_container(docs)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"https": 8443}
    expected = {"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/healthz"}
    for probe, path in expected.items():
        get = container[probe]["httpGet"]
        assert (get["path"], get["scheme"], ports.get(get["port"], get["port"])) == (path, "HTTPS", 8443), probe


def test_probe_and_webhook_paths_are_served_by_the_app(base: Docs) -> None:
    from webhook.serving.http import create_app
    from webhook.serving.metrics import Metrics

    def unused(_request: Any) -> Any:
        raise AssertionError("not called: only the routes are read")

    app = create_app(mutate=unused, validate=unused, metrics=Metrics(), readiness=lambda: (True, {}))
    routes = {getattr(r, "path", None) for r in app.routes}
    used = {webhook_container(base)[p]["httpGet"]["path"] for p in ("livenessProbe", "readinessProbe")}
    used |= {w["clientConfig"]["service"]["path"] for _, w in all_webhooks(base)}
    assert used <= routes, used - routes


def test_resources_have_requests_and_a_memory_limit(docs: Docs) -> None:
    resources = webhook_container(docs)["resources"]
    assert {"cpu", "memory"} <= resources["requests"].keys()
    limit = parse_quantity(resources["limits"]["memory"])
    assert parse_quantity(resources["requests"]["memory"]) <= limit <= parse_quantity("2Gi")


def test_runs_non_root_read_only_without_privileges(docs: Docs) -> None:
    spec = pod_spec(docs)
    pod_security = spec["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert isinstance(pod_security["runAsUser"], int) and pod_security["runAsUser"] > 0
    assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in [*spec["containers"], *spec.get("initContainers", [])]:
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert security.get("privileged") is not True
        assert security.get("runAsUser", pod_security["runAsUser"]) != 0
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")


def test_namespace_enforces_the_restricted_pod_security_standard(docs: Docs) -> None:
    labels = find(docs, "Namespace", NAMESPACE)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_env_names_and_values_are_settings(docs: Docs) -> None:
    env = webhook_container(docs)["env"]
    values: dict[str, Any] = {}
    pod_ip = "10.244.1.7"
    for var in env:
        if var["name"] == "POD_IP":  # only to build the peer address from
            assert var["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
            continue
        assert var["name"].startswith("DRA_BRIDGE_"), var["name"]
        field = var["name"].removeprefix("DRA_BRIDGE_").lower()
        assert field in Settings.model_fields, f"{var['name']} is not a setting of webhook/serving/settings.py"
        if "valueFrom" in var:  # only the downward API: the Pod's namespace, or its name as the replica id
            downward = {"namespace": "metadata.namespace", "replica": "metadata.name"}
            assert var["valueFrom"] == {"fieldRef": {"fieldPath": downward[field]}}
            values[field] = NAMESPACE if field == "namespace" else "dra-bridge-7d9f-abcde"
        else:
            values[field] = var["value"].replace("$(POD_IP)", pod_ip)  # as the kubelet expands it
    settings = Settings(**values)  # the values parse
    assert settings.port == 8443
    assert settings.namespace == NAMESPACE
    assert settings.quota_coordination == "lease"  # two replicas: exact quota needs the shared Lease
    assert settings.peer_address == f"https://{pod_ip}:{settings.port}"  # each tenant decided by one replica
    assert settings.audit_file.startswith("/var/log/dra-bridge/")


def test_the_audit_log_has_a_volume_large_enough_for_its_rotation(docs: Docs) -> None:
    container = webhook_container(docs)
    env = {v["name"]: v.get("value") for v in container["env"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    from webhook.translate.quantity import parse_quantity

    volume = volumes[mounts["/var/log/dra-bridge"]]
    needed = int(env["DRA_BRIDGE_AUDIT_MAX_BYTES"]) * (int(env["DRA_BRIDGE_AUDIT_MAX_FILES"]) + 1)
    assert parse_quantity(volume["emptyDir"]["sizeLimit"]) >= needed  # else the kubelet evicts the Pod


def test_certificates_come_from_the_tls_secret_without_subpath(docs: Docs) -> None:
    container = webhook_container(docs)
    cert_dir = next(v["value"] for v in container["env"] if v["name"] == "DRA_BRIDGE_CERT_DIR")
    volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    mount = mounts[cert_dir]
    assert "subPath" not in mount, "subPath mounts never see Secret updates: rotation would need a restart"
    assert mount["readOnly"] is True
    assert volumes[mount["name"]]["secret"]["secretName"] == "dra-bridge-tls"
    assert volumes[mount["name"]]["secret"]["defaultMode"] & 0o007 == 0, "keys not world-readable"


def test_image_tag_is_the_package_version(docs: Docs) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    assert webhook_container(docs)["image"].endswith(f":{version}")


def test_service_sends_443_to_the_https_port_of_the_pods(docs: Docs) -> None:
    service = find(docs, "Service", "dra-bridge")
    assert service["spec"]["selector"].items() <= pod_labels(docs).items()
    [port] = service["spec"]["ports"]
    assert port["port"] == 443
    ports = {p["name"]: p["containerPort"] for p in webhook_container(docs)["ports"]}
    assert ports.get(port["targetPort"], port["targetPort"]) == 8443


# --------------------------------------------------------------------------- RBAC

# What the adapter declares it uses; tests/unit/cluster/test_kube_adapter.py records every call it makes
# and checks that it is exactly this.
CLUSTER_RULES = {key: set(verbs) for key, verbs in CLUSTER_ACCESS.items()}
NAMESPACE_RULES = {key: set(verbs) for key, verbs in NAMESPACE_ACCESS.items()}


def granted(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert set(rule) <= {"apiGroups", "resources", "verbs"}, f"unexpected rule fields {sorted(rule)}"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def test_rbac_grants_exactly_what_the_cluster_adapter_uses(docs: Docs) -> None:
    assert [r["metadata"]["name"] for r in find_all(docs, "ClusterRole")] == ["dra-bridge", "dra-bridge-report"]
    assert [(r["metadata"]["name"], r["metadata"]["namespace"]) for r in find_all(docs, "Role")] == [
        ("dra-bridge", NAMESPACE)
    ]
    assert granted(find(docs, "ClusterRole", "dra-bridge")) == CLUSTER_RULES
    assert granted(find(docs, "Role")) == NAMESPACE_RULES


def test_the_report_role_covers_what_report_cluster_reads(docs: Docs) -> None:
    role = granted(find(docs, "ClusterRole", "dra-bridge-report"))
    needed = {**{k: set(v) for k, v in REPORT_ACCESS.items()}}
    for (group, resource), verbs in {**CLUSTER_ACCESS, **NAMESPACE_ACCESS}.items():
        if verbs & {"list", "watch"} and resource not in ("leases",):
            needed.setdefault((group, resource), set()).update(verbs & {"list", "watch"})
    for key, verbs in needed.items():
        assert verbs <= role.get(key, set()), key
    assert not any(verbs - {"list", "watch"} for verbs in role.values())  # read-only


def test_rbac_has_no_wildcards_and_no_secrets(docs: Docs) -> None:
    for role in [*find_all(docs, "ClusterRole"), *find_all(docs, "Role")]:
        for (group, resource), verbs in granted(role).items():
            assert "*" not in (group, resource) and "*" not in verbs
            assert resource != "secrets"
            assert not verbs & {"escalate", "bind", "impersonate", "patch", "deletecollection"}


def test_bindings_give_the_roles_to_the_pods_service_account(docs: Docs) -> None:
    account = pod_spec(docs)["serviceAccountName"]
    find(docs, "ServiceAccount", account)
    subject = {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}
    for kind, role_kind in (("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")):
        [binding] = find_all(docs, kind)
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": "dra-bridge"}
        assert binding["subjects"] == [subject]


# --------------------------------------------------------------------------- webhook configurations

SYSTEM_NAMESPACES = {"kube-system", "kube-node-lease", "kube-public", NAMESPACE}


def test_every_webhook_is_v1_fast_and_points_at_the_service(docs: Docs) -> None:
    service = find(docs, "Service", "dra-bridge")
    for kind, webhook in all_webhooks(docs):
        assert webhook["admissionReviewVersions"] == ["v1"]
        assert 1 <= webhook["timeoutSeconds"] <= 5, webhook["name"]
        assert webhook["matchPolicy"] == "Equivalent"
        target = webhook["clientConfig"]["service"]
        assert (target["name"], target["namespace"], target["port"]) == (
            service["metadata"]["name"],
            service["metadata"]["namespace"],
            service["spec"]["ports"][0]["port"],
        )
        expected_path = "/mutate" if kind == "MutatingWebhookConfiguration" else "/validate"
        assert target["path"] == expected_path
        assert "url" not in webhook["clientConfig"]


def test_the_base_leaves_the_ca_bundle_to_be_published(base: Docs) -> None:
    for _, webhook in all_webhooks(base):
        assert not webhook["clientConfig"].get("caBundle"), webhook["name"]


def test_mutating_webhook_settings(docs: Docs) -> None:
    webhook = mutating(docs)
    assert webhook["rules"] == [
        {
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "operations": ["CREATE"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }
    ]
    assert webhook["failurePolicy"] == "Ignore"  # the validating Pod check (Fail) is the backstop
    assert webhook["sideEffects"] == "NoneOnDryRun"
    assert webhook["reinvocationPolicy"] == "IfNeeded"
    assert webhook["timeoutSeconds"] <= 3


def rule_summary(webhook: dict[str, Any]) -> list[tuple[str, str, tuple[str, ...]]]:
    return [
        (group, resource, tuple(rule["operations"]))
        for rule in webhook["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    ]


def test_validating_webhooks_cover_pods_claims_templates_and_policy_configmaps(base: Docs) -> None:
    hooks = validating(base)
    assert {name: rule_summary(w) for name, w in hooks.items()} == {
        "pods.validate.dra-bridge.io": [("", "pods", ("CREATE",))],
        "resourceclaims.validate.dra-bridge.io": [("resource.k8s.io", "resourceclaims", ("CREATE",))],
        "resourceclaimtemplates.validate.dra-bridge.io": [
            ("resource.k8s.io", "resourceclaimtemplates", ("CREATE", "UPDATE"))
        ],
        "policies.validate.dra-bridge.io": [("", "configmaps", ("CREATE", "UPDATE"))],
        "catalogues.validate.dra-bridge.io": [("", "configmaps", ("CREATE", "UPDATE"))],
        "namespaces.validate.dra-bridge.io": [("", "namespaces", ("CREATE", "UPDATE"))],
    }
    for name, webhook in hooks.items():
        assert webhook["failurePolicy"] == ("Ignore" if name == "namespaces.validate.dra-bridge.io" else "Fail")
        assert webhook["sideEffects"] == "None"
        assert webhook["timeoutSeconds"] == 5


def test_configmap_webhooks_see_only_labelled_configmaps_of_the_webhook_namespace(docs: Docs) -> None:
    hooks = validating(docs)
    labels = {
        "policies.validate.dra-bridge.io": "dra-bridge.io/policy",
        "catalogues.validate.dra-bridge.io": "dra-bridge.io/catalogue",
    }
    for name, label in labels.items():
        webhook = hooks[name]
        assert webhook["namespaceSelector"] == {
            "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": [NAMESPACE]}]
        }
        assert webhook["objectSelector"] == {"matchLabels": {label: "true"}}


def test_workload_webhooks_skip_system_namespaces_and_only_conversion_skips_opted_out_ones(docs: Docs) -> None:
    for _, webhook in all_webhooks(docs):
        if webhook["name"].split(".")[0] in ("policies", "catalogues"):
            continue
        expressions = webhook["namespaceSelector"]["matchExpressions"]
        by_key = {e["key"]: e for e in expressions}
        names = by_key["kubernetes.io/metadata.name"]
        assert names["operator"] == "NotIn" and set(names["values"]) == SYSTEM_NAMESPACES, webhook["name"]
        assert "matchLabels" not in webhook["namespaceSelector"]
        if webhook["name"] == "pods.mutate.dra-bridge.io":
            assert by_key["dra-bridge.io/ignore"] == {
                "key": "dra-bridge.io/ignore",
                "operator": "NotIn",
                "values": ["true"],
            }
        else:  # opting out skips conversion, never quota
            assert "dra-bridge.io/ignore" not in by_key, webhook["name"]
            assert "objectSelector" not in webhook, webhook["name"]


def test_pod_webhooks_honour_the_pod_opt_out_label_and_share_one_match_condition(docs: Docs) -> None:
    pods = [mutating(docs), validating(docs)["pods.validate.dra-bridge.io"]]
    assert pods[0]["objectSelector"] == {
        "matchExpressions": [{"key": "dra-bridge.io/ignore", "operator": "NotIn", "values": ["true"]}]
    }
    assert [c["name"] for c in pods[0]["matchConditions"]] == ["legacy-gpu-request"]
    assert [c["name"] for c in pods[1]["matchConditions"]] == ["legacy-gpu-request-or-claim-templates"]
    # the validating webhook sees every Pod the mutating one does, and Pods that claim through templates
    assert pods[1]["matchConditions"][0]["expression"].startswith(pods[0]["matchConditions"][0]["expression"])


# --------------------------------------------------------------------------- shipped content


def test_base_ships_the_generated_device_classes_unchanged(base: Docs) -> None:
    generated = [
        d for d in yaml.safe_load_all((DEPLOY / "deviceclasses" / "deviceclasses.yaml").read_text("utf-8")) if d
    ]
    rendered = {d["metadata"]["name"]: d for d in find_all(base, "DeviceClass")}
    assert sorted(rendered) == sorted(d["metadata"]["name"] for d in generated)
    for expected in generated:
        actual = copy.deepcopy(rendered[expected["metadata"]["name"]])
        assert actual["metadata"]["labels"].pop("app.kubernetes.io/part-of") == "dra-bridge"
        assert actual == expected


def test_base_ships_the_catalogue_but_no_quota_policy(base: Docs) -> None:
    configmaps = {d["metadata"]["name"]: d for d in find_all(base, "ConfigMap")}
    shipped = yaml.safe_load((ROOT / "policies" / "catalogue.yaml").read_text("utf-8"))
    catalogue = configmaps.pop(shipped["metadata"]["name"])
    assert catalogue["data"] == shipped["data"]
    assert catalogue["metadata"]["labels"]["dra-bridge.io/catalogue"] == "true"
    assert configmaps == {}, "example quota policies limit every namespace: only overlays/quota-example ships them"


def test_quota_example_overlay_adds_only_the_example_policies(renders: dict[str, Docs]) -> None:
    added = [d for d in renders["deploy/overlays/quota-example"] if d not in renders["deploy"]]
    assert added, "the overlay adds nothing"
    for doc in added:
        assert doc["kind"] == "ConfigMap"
        assert doc["metadata"]["labels"]["dra-bridge.io/policy"] == "true"


# --------------------------------------------------------------------------- overlays


def test_permissive_overlay_changes_exactly_the_pod_check_and_require_conversion(renders: dict[str, Docs]) -> None:
    base, permissive = renders["deploy"], renders["deploy/overlays/permissive"]
    expected = copy.deepcopy(base)
    validating(expected)["pods.validate.dra-bridge.io"]["failurePolicy"] = "Ignore"
    for var in webhook_container(expected)["env"]:
        if var["name"] == "DRA_BRIDGE_REQUIRE_CONVERSION":
            var["value"] = "false"
    # A strategic merge patch may reorder env entries; their order carries no meaning.
    for docs in (expected, permissive := copy.deepcopy(permissive)):
        webhook_container(docs)["env"].sort(key=lambda var: var["name"])
    assert permissive == expected


def test_cert_manager_overlay_issues_the_mounted_secret_and_injects_its_ca(renders: dict[str, Docs]) -> None:
    docs = renders["deploy/overlays/cert-manager"]
    certificates = {d["metadata"]["name"]: d for d in find_all(docs, "Certificate")}
    issuers = {d["metadata"]["name"]: d for d in find_all(docs, "Issuer")}
    serving = certificates["dra-bridge-serving"]["spec"]
    assert serving["secretName"] == "dra-bridge-tls"
    assert serving["dnsNames"] == service_dns_names("dra-bridge", NAMESPACE)
    assert "server auth" in serving["usages"]
    ca_issuer = issuers[serving["issuerRef"]["name"]]["spec"]["ca"]
    ca = next(c["spec"] for c in certificates.values() if c["spec"].get("secretName") == ca_issuer["secretName"])
    assert ca["isCA"] is True
    assert ca["privateKey"]["rotationPolicy"] == "Never", "a renewed CA must still verify the current leaf"
    assert "selfSigned" in issuers[ca["issuerRef"]["name"]]["spec"]
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        annotations = find(docs, kind, "dra-bridge")["metadata"]["annotations"]
        assert annotations["cert-manager.io/inject-ca-from"] == f"{NAMESPACE}/dra-bridge-serving"
    # Everything else is the base.
    base = [
        d
        for d in renders["deploy"]
        if d["kind"] not in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
    ]
    assert [
        d
        for d in docs
        if (d["apiVersion"], d["kind"]) not in CRD_KINDS
        and d["kind"] not in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
    ] == base


def test_readme_documents_every_overlay() -> None:
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    for target in TARGETS[1:]:
        assert Path(target).name in readme, target
    # type/name pairs: `kubectl delete TYPE NAME TYPE NAME` would read the second TYPE as a name.
    assert "kubectl delete mutatingwebhookconfiguration/dra-bridge validatingwebhookconfiguration/dra-bridge" in readme
