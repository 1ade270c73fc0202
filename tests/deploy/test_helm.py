"""The Helm chart (deploy/helm/dra-bridge) renders what the kustomize base and overlays render.

helm comes from ``deploy/hack/ensure-helm.sh`` (built once with ``go install`` into the dra-bridge
cache, never into the repository). Without Go and without a cached binary the tests skip, unless
``DRA_BRIDGE_E2E=require`` (set by .ci/run) makes that a failure. The chart is linted, every
object it renders is validated against the Kubernetes schemas, its renders are compared object by
object with ``kustomize build`` of the base and each overlay (after dropping Helm's own labels and
parsing the YAML inside ConfigMaps), and the default render is applied server-side to the real
kube-apiserver of tests/e2e.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import POLICIES, assert_valid
from tests.deploy.conftest import DEPLOY
from tests.e2e.controlplane import DRA_FEATURE_GATES, ControlPlane

CHART = DEPLOY / "helm" / "dra-bridge"
ENSURE_HELM = DEPLOY / "hack" / "ensure-helm.sh"
GO_MISSING = 3  # ensure-helm.sh's exit code when Go is not installed
NAMESPACE = "dra-bridge"
HELM_LABELS = ("helm.sh/chart", "app.kubernetes.io/instance")
CRD_KINDS = {("cert-manager.io/v1", "Issuer"), ("cert-manager.io/v1", "Certificate")}

Docs = list[dict[str, Any]]


def quota_example_values() -> dict[str, Any]:
    """values.yaml ``policies`` carrying policies/quota-example.yaml, as a user would write them."""
    configmap = yaml.safe_load((POLICIES / "quota-example.yaml").read_text())
    return {"policies": {configmap["metadata"]["name"]: yaml.safe_load(configmap["data"]["policy.yaml"])}}


# kustomize target -> the chart values that mean the same (the base creates its Namespace; the
# chart does when asked, since `helm install --create-namespace` creates it otherwise)
EQUIVALENTS: dict[str, dict[str, Any]] = {
    "deploy": {"createNamespace": True},
    "deploy/overlays/permissive": {"createNamespace": True, "permissive": True},
    "deploy/overlays/cert-manager": {"createNamespace": True, "certManager": {"enabled": True}},
    "deploy/overlays/quota-example": {"createNamespace": True, **quota_example_values()},
}


@pytest.fixture(scope="session")
def helm() -> Path:
    proc = subprocess.run(
        ["bash", str(ENSURE_HELM)],
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "BUILD_JOBS": os.environ.get("BUILD_JOBS", "2")},
    )
    if proc.returncode == GO_MISSING and os.environ.get("DRA_BRIDGE_E2E") != "require":
        pytest.skip(f"no helm: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, f"{ENSURE_HELM} failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    binary = Path(proc.stdout.strip().splitlines()[-1])
    assert binary.is_file(), binary
    return binary


def helm_template(helm: Path, values: dict[str, Any], tmp_path: Path) -> Docs:
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    proc = subprocess.run(
        [str(helm), "template", "dra-bridge", str(CHART), "--namespace", NAMESPACE, "-f", str(values_file)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"helm template failed:\n{proc.stderr}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d is not None]


@pytest.fixture(scope="module")
def chart_renders(helm: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Docs]:
    return {
        target: helm_template(helm, values, tmp_path_factory.mktemp("values")) for target, values in EQUIVALENTS.items()
    }


def key(doc: dict[str, Any]) -> tuple[str, str, str, str]:
    meta = doc["metadata"]
    return doc["apiVersion"], doc["kind"], meta.get("namespace", ""), meta["name"]


def normalised(doc: dict[str, Any], *, in_base: bool = True) -> dict[str, Any]:
    """The object without Helm's release labels, with YAML inside ConfigMaps parsed (comments and
    layout of an embedded document are not part of what it says) and containers' env in name order
    (a kustomize patch moves the variables it sets to the front; none refers to another). Objects
    an overlay adds do not get the base's part-of label from kustomize; the chart labels them too."""
    doc = yaml.safe_load(yaml.safe_dump(doc))  # a deep copy with plain types
    labels = doc["metadata"].get("labels") or {}
    for name in HELM_LABELS if in_base else (*HELM_LABELS, "app.kubernetes.io/part-of"):
        labels.pop(name, None)
    for container in (doc.get("spec") or {}).get("template", {}).get("spec", {}).get("containers", []):
        container["env"] = sorted(container.get("env", []), key=lambda e: e["name"])
    if not labels:
        doc["metadata"].pop("labels", None)
    if doc["kind"] == "ConfigMap":
        doc["data"] = {k: yaml.safe_load(v) if k.endswith(".yaml") else v for k, v in (doc.get("data") or {}).items()}
    return doc


def test_the_chart_lints(helm: Path) -> None:
    proc = subprocess.run([str(helm), "lint", "--strict", str(CHART)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


def test_the_chart_carries_exact_copies_of_the_catalogue_and_deviceclasses() -> None:
    fix = "run deploy/hack/sync-policies.sh"
    for copy, source in (
        (CHART / "files" / "catalogue.yaml", POLICIES / "catalogue.yaml"),
        (CHART / "files" / "deviceclasses.yaml", DEPLOY / "deviceclasses" / "deviceclasses.yaml"),
    ):
        assert copy.read_bytes() == source.read_bytes(), f"{copy} differs from {source}: {fix}"
    assert sorted(p.name for p in (CHART / "files").glob("catalogue*.yaml")) == sorted(
        p.name for p in POLICIES.glob("catalogue*.yaml")
    ), fix


@pytest.mark.parametrize("target", sorted(EQUIVALENTS))
def test_every_object_is_schema_valid(chart_renders: dict[str, Docs], target: str) -> None:
    docs = chart_renders[target]
    assert len({key(d) for d in docs}) == len(docs), "an object appears twice"
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) not in CRD_KINDS:
            assert_valid(doc)


@pytest.mark.parametrize("target", sorted(EQUIVALENTS))
def test_the_chart_renders_what_kustomize_renders(
    chart_renders: dict[str, Docs], renders: dict[str, Docs], target: str
) -> None:
    base = {key(d) for d in renders["deploy"]}
    chart = {key(d): normalised(d, in_base=key(d) in base) for d in chart_renders[target]}
    kustomized = {key(d): normalised(d, in_base=key(d) in base) for d in renders[target]}
    assert sorted(chart) == sorted(kustomized), "the chart and kustomize render different objects"
    for name, expected in kustomized.items():
        assert chart[name] == expected, f"{name} differs from `kustomize build {target}`"


def test_values_change_what_they_say(helm: Path, tmp_path: Path) -> None:
    """A check that the comparison is not vacuous: other values render other objects."""
    docs = helm_template(
        helm,
        {
            "replicas": 3,
            "image": {"repository": "registry.example/dra-bridge", "tag": "1.2.3"},
            "caBundle": "Q0E=",
            "createNamespace": False,
            "deviceClasses": False,
        },
        tmp_path,
    )
    kinds = {d["kind"] for d in docs}
    assert "Namespace" not in kinds and "DeviceClass" not in kinds
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/dra-bridge:1.2.3"
    hooks = [h for d in docs if d["kind"].endswith("WebhookConfiguration") for h in d["webhooks"]]
    assert len(hooks) == 7 and all(h["clientConfig"]["caBundle"] == "Q0E=" for h in hooks)


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    from tests.deploy.test_apiserver import control_plane_bin

    bin_dir = control_plane_bin()
    if bin_dir is None:
        if os.environ.get("DRA_BRIDGE_E2E") == "require":
            pytest.fail("no control plane binaries: run tests/e2e/build-control-plane.sh")
        pytest.skip("no control plane binaries: run tests/e2e/build-control-plane.sh")
    with ControlPlane(bin_dir, tmp_path_factory.mktemp("helm-apiserver"), DRA_FEATURE_GATES) as cp:
        yield cp


@pytest.mark.e2e
def test_the_render_is_accepted_by_server_side_apply(
    chart_renders: dict[str, Docs], control_plane: ControlPlane
) -> None:
    docs = chart_renders["deploy"]
    namespace = [d for d in docs if d["kind"] == "Namespace"]
    others = [d for d in docs if d["kind"] != "Namespace"]
    cp = control_plane
    cp.kubectl("create", "namespace", "helm-dry-run")  # namespaced objects need their namespace to exist
    for doc in others:
        if doc["metadata"].get("namespace"):
            doc["metadata"]["namespace"] = "helm-dry-run"
    proc = cp.kubectl(
        "apply",
        "--server-side",
        "--dry-run=server",
        "-o",
        "name",
        "-f",
        "-",
        input=yaml.safe_dump_all([*namespace, *others]),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    applied = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(applied) == len(docs), proc.stdout


@pytest.mark.e2e
def test_helm_install_as_the_readme_shows(helm: Path, control_plane: ControlPlane, tmp_path: Path) -> None:
    """deploy/README.md's "Install with Helm" block, run by bash with helm, kubectl and dra-bridge on PATH."""
    text = (DEPLOY / "README.md").read_text(encoding="utf-8")
    section = text[text.index("\n## Install with Helm\n") :]
    block = section[section.index("```sh\n") + 6 : section.index("\n```", section.index("```sh\n"))]
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "kubectl").symlink_to(control_plane.bin_dir / "kubectl")
    (tools / "helm").symlink_to(helm)
    (tools / "dra-bridge").symlink_to(Path(sys.executable).parent / "dra-bridge")
    env = {
        **os.environ,
        "PATH": f"{tools}:{os.environ['PATH']}",
        "KUBECONFIG": str(control_plane.kubeconfig),
        "HELM_CACHE_HOME": str(tmp_path / "helm-cache"),
        "HELM_CONFIG_HOME": str(tmp_path / "helm-config"),
        "HELM_DATA_HOME": str(tmp_path / "helm-data"),
    }
    workdir = tmp_path / "operator"
    workdir.mkdir()
    (workdir / "deploy").symlink_to(DEPLOY)
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block], cwd=workdir, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"{block}\n{proc.stdout}\n{proc.stderr}"
    cp = control_plane
    assert cp.kubectl("get", "deployment/dra-bridge", "-n", "dra-bridge", "-o", "name").stdout.strip()
    labels = cp.kubectl_json("get", "namespace", "dra-bridge")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    hooks = cp.kubectl_json("get", "validatingwebhookconfiguration", "dra-bridge")["webhooks"]
    bundle = subprocess.run(
        [sys.executable, "-m", "webhook", "certs", "ca-bundle", "--dir", str(workdir / "dra-bridge-certs")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert hooks and all(h["clientConfig"]["caBundle"] == bundle for h in hooks)
    assert cp.kubectl("get", "secret/dra-bridge-tls", "-n", "dra-bridge", "-o", "name").stdout.strip()
    assert len(cp.kubectl("get", "deviceclasses", "-o", "name").stdout.split()) == 11


def test_ensure_helm_uses_the_cached_binary_without_go(helm: Path) -> None:
    # PATH empty but for bash's own needs: the fast path needs nothing but the cached binary.
    cache = helm.parents[3]
    env = {"HOME": os.environ["HOME"], "DRA_BRIDGE_CACHE": str(cache), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(["bash", str(ENSURE_HELM)], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(helm)


def test_ensure_helm_without_go_exits_3_with_the_reason(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "DRA_BRIDGE_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(["bash", str(ENSURE_HELM)], capture_output=True, text=True, timeout=60, env=env)
    if proc.returncode != GO_MISSING:  # Go installed in /usr/bin: the reason cannot be shown here
        pytest.skip("Go is on the system PATH")
    assert "Go is not installed" in proc.stderr


def test_ensure_helm_rejects_a_version_that_is_not_a_plain_release(tmp_path: Path) -> None:
    env = {**os.environ, "DRA_BRIDGE_CACHE": str(tmp_path), "HELM_VERSION": "latest"}
    proc = subprocess.run(["bash", str(ENSURE_HELM)], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 1 and "HELM_VERSION must look like" in proc.stderr
