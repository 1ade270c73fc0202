"""Only the apiserver is a caller: the NetworkPolicy opens only the webhook port, the client-auth
overlay makes the server require the apiserver's client certificate, and deploy/apiserver/ holds the
apiserver's side of it."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.deploy.conftest import DEPLOY, find, targets
from tests.deploy.test_manifests import Docs, deployment, pod_labels, pod_spec, webhook_container
from webhook.serving.settings import Settings


@pytest.fixture(params=targets())
def docs(request: pytest.FixtureRequest, renders: dict[str, Docs]) -> Docs:
    return renders[request.param]


def test_the_network_policy_admits_only_the_webhook_port_of_the_webhook_pods(docs: Docs) -> None:
    policy = find(docs, "NetworkPolicy", "dra-bridge")["spec"]
    labels = pod_labels(docs)
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["policyTypes"] == ["Ingress"]
    [rule] = policy["ingress"]
    assert "from" not in rule  # the apiserver's address is not selectable portably; the port is the gate
    [port] = rule["ports"]
    named = {p["name"]: p["containerPort"] for p in webhook_container(docs)["ports"]}
    assert port["protocol"] == "TCP" and named[port["port"]] == 8443


def test_probes_reach_the_port_the_policy_opens(docs: Docs) -> None:
    container = webhook_container(docs)
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] in ("https", 8443)


def client_auth(renders: dict[str, Docs]) -> Docs:
    return renders["deploy/overlays/client-auth"]


def test_the_client_auth_overlay_requires_a_client_certificate_from_a_mounted_ca(renders: dict[str, Docs]) -> None:
    docs = client_auth(renders)
    container = webhook_container(docs)
    env = {v["name"]: v.get("value") for v in container["env"]}
    ca_file = env["DRA_BRIDGE_CLIENT_CA_FILE"]
    assert Settings(client_ca_file=ca_file).client_ca_file is not None
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    mount = mounts[ca_file.rsplit("/", 1)[0]]
    assert "subPath" not in mount and mount["readOnly"] is True  # a rotated CA reaches the server's reloader
    volume = {v["name"]: v for v in pod_spec(docs)["volumes"]}[mount["name"]]
    assert volume["configMap"]["name"] == "dra-bridge-client-ca"
    assert volume["configMap"]["items"] == [{"key": "ca.crt", "path": ca_file.rsplit("/", 1)[1]}]


def test_the_client_auth_overlay_changes_nothing_else(renders: dict[str, Docs]) -> None:
    base, docs = renders["deploy"], client_auth(renders)
    assert [d for d in docs if d["kind"] != "Deployment"] == [d for d in base if d["kind"] != "Deployment"]
    ours, theirs = deployment(docs), deployment(base)
    assert ours["spec"]["replicas"] == theirs["spec"]["replicas"]


def load(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((DEPLOY / "apiserver" / name).read_text(encoding="utf-8"))
    return document


def test_the_apiserver_admission_configuration_gives_both_webhook_plugins_the_kubeconfig() -> None:
    config = load("admission-config.yaml")
    assert (config["apiVersion"], config["kind"]) == ("apiserver.config.k8s.io/v1", "AdmissionConfiguration")
    plugins = {p["name"]: p["configuration"] for p in config["plugins"]}
    assert set(plugins) == {"ValidatingAdmissionWebhook", "MutatingAdmissionWebhook"}
    for configuration in plugins.values():
        assert (configuration["apiVersion"], configuration["kind"]) == (
            "apiserver.config.k8s.io/v1",
            "WebhookAdmissionConfiguration",
        )
        assert configuration["kubeConfigFile"].endswith("/webhook-kubeconfig.yaml")


def test_the_webhook_kubeconfig_names_the_service_the_webhooks_call(base: Docs) -> None:
    kubeconfig = load("webhook-kubeconfig.yaml")
    [user] = kubeconfig["users"]
    services = set()
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        for hook in find(base, kind, "dra-bridge")["webhooks"]:
            service = hook["clientConfig"]["service"]
            port = service.get("port", 443)
            services.add(f"{service['name']}.{service['namespace']}.svc" + ("" if port == 443 else f":{port}"))
    assert services == {user["name"]}
    assert set(user["user"]) == {"client-certificate", "client-key"}


def test_the_readme_documents_the_apiserver_side() -> None:
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    assert "--admission-control-config-file" in readme and "apiserver/" in readme
