"""The rendered base applied to a real kube-apiserver, with no webhook server behind it.

That is the outage case, and it shows the apiserver's own reading of the configuration: it accepts
every object (it compiles the ``matchConditions`` CEL and checks its cost), skips Pods without GPU
requests and the excluded or opted-out namespaces and Pods, refuses a GPU Pod that nothing
converted (the validating webhook fails closed while the mutating one is ignored), and the
emergency exit in deploy/README.md lets Pods through again.

Needs the control plane of tests/e2e (``tests/e2e/build-control-plane.sh``); skipped when it has
not been built, since building Kubernetes takes far longer than these tests.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, container, pod
from tests.deploy.conftest import render
from tests.e2e.controlplane import DRA_FEATURE_GATES, ControlPlane, KubectlError

pytestmark = pytest.mark.e2e

BUILD_SCRIPT = ROOT / "tests" / "e2e" / "build-control-plane.sh"
README = ROOT / "deploy" / "README.md"
GPU = {"nvidia.com/gpu": "1"}


def control_plane_bin() -> Path | None:
    match = re.search(r'^DEFAULT_K8S_VERSION="([^"]+)"', BUILD_SCRIPT.read_text("utf-8"), re.M)
    assert match, "tests/e2e/build-control-plane.sh no longer pins DEFAULT_K8S_VERSION"
    version = os.environ.get("K8S_VERSION", match.group(1))
    cache = Path(os.environ.get("DRA_BRIDGE_CACHE", Path.home() / ".cache" / "dra-bridge"))
    bin_dir = cache / "k8s" / version / "bin"
    return bin_dir if (bin_dir / "kube-apiserver").is_file() else None


def cli(*args: str, stdin: str | None = None) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "webhook", *args], input=stdin, capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def readme_block(heading: str) -> str:
    """The first ``sh`` block under ``## heading`` in deploy/README.md."""
    readme = README.read_text("utf-8")
    section = readme[readme.index(f"\n## {heading}\n") :]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match, f"no sh block under {heading}"
    return match.group(1)


def run_readme_block(cp: ControlPlane, heading: str, certs_dir: Path) -> subprocess.CompletedProcess[str]:
    """Run it as an operator would: bash, `dra-bridge` and `kubectl` on PATH, from the repository root."""
    script = readme_block(heading).replace("./dra-bridge-certs", str(certs_dir))
    tools = os.pathsep.join([str(Path(sys.executable).parent), str(cp.bin_dir), os.environ.get("PATH", "")])
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env={**os.environ, "PATH": tools, "KUBECONFIG": str(cp.kubeconfig)},
    )


@pytest.fixture(scope="module")
def certs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("operator") / "dra-bridge-certs"


@pytest.fixture(scope="module")
def cluster(kustomize: Path, certs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    bin_dir = control_plane_bin()
    if bin_dir is None:
        pytest.skip("no control plane binaries: run tests/e2e/build-control-plane.sh")
    if shutil.which("dra-bridge", path=str(Path(sys.executable).parent)) is None:
        pytest.fail("the dra-bridge command is not installed beside this Python (pip install -e .)")
    # Endpoint routing: the apiserver resolves the webhook Service through its Endpoints, and there
    # are none (no kubelet), so a webhook call fails at once without dialing anything. The default
    # ClusterIP routing would dial the Service's ClusterIP, an address not on this machine.
    cp = ControlPlane(
        bin_dir, tmp_path_factory.mktemp("apiserver"), DRA_FEATURE_GATES, ["--enable-aggregator-routing=true"]
    )
    cp.start()
    try:
        install = run_readme_block(cp, "Install", certs_dir)
        assert install.returncode == 0, f"the README's Install commands failed:\n{install.stderr}"
        for namespace, labels in (("team-a", {}), ("opted-out", {"dra-bridge.io/ignore": "true"})):
            cp.kubectl("create", "-f", "-", input=yaml.safe_dump(namespace_manifest(namespace, labels)))
            wait_for_default_service_account(cp, namespace)
        yield cp
    finally:
        cp.stop()


def namespace_manifest(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def wait_for_default_service_account(cp: ControlPlane, namespace: str) -> None:
    deadline = time.monotonic() + 60
    while cp.kubectl("get", "serviceaccount", "default", "-n", namespace, check=False).returncode != 0:
        assert time.monotonic() < deadline, f"no default ServiceAccount in {namespace}"
        time.sleep(0.5)


def create_pod(
    cp: ControlPlane, name: str, namespace: str, obj: dict[str, Any], *extra: str
) -> subprocess.CompletedProcess[str]:
    obj["metadata"].update(name=name, namespace=namespace)
    return cp.kubectl("create", *extra, "-f", "-", input=yaml.safe_dump(obj), check=False)


def test_every_object_of_the_base_is_accepted(cluster: ControlPlane) -> None:
    for resource in (
        "mutatingwebhookconfiguration/dra-bridge",
        "validatingwebhookconfiguration/dra-bridge",
        "clusterrole/dra-bridge",
        "deviceclass/whole.nvidia.dra-bridge.io",
    ):
        cluster.kubectl("get", resource)
    for resource in (
        "deployment/dra-bridge",
        "service/dra-bridge",
        "poddisruptionbudget/dra-bridge",
        "role/dra-bridge",
    ):
        cluster.kubectl("get", "-n", "dra-bridge", resource)
    stored = cluster.kubectl_json("get", "mutatingwebhookconfiguration", "dra-bridge")
    assert stored["webhooks"][0]["matchConditions"][0]["name"] == "legacy-gpu-request"
    secret = cluster.kubectl_json("get", "-n", "dra-bridge", "secret", "dra-bridge-tls")
    assert secret["type"] == "kubernetes.io/tls"
    assert "kubectl.kubernetes.io/last-applied-configuration" not in secret["metadata"].get("annotations", {})


def published_bundles(cp: ControlPlane) -> set[str]:
    return {
        w["clientConfig"].get("caBundle", "")
        for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration")
        for w in cp.kubectl_json("get", kind, "dra-bridge")["webhooks"]
    }


def test_install_published_the_ca_and_reapplying_the_base_keeps_it(
    cluster: ControlPlane, certs_dir: Path, kustomize: Path
) -> None:
    expected = {base64.b64encode((certs_dir / "ca-bundle.crt").read_bytes()).decode()}
    assert published_bundles(cluster) == expected
    # Re-applying all of deploy/ would send the catalogue ConfigMap through its webhook, absent here
    # (see "Failure modes" in deploy/README.md): re-apply the objects whose caBundle is at stake.
    webhook_configs = [d for d in render(kustomize, "deploy") if d["kind"].endswith("WebhookConfiguration")]
    cluster.kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump_all(webhook_configs))
    assert published_bundles(cluster) == expected
    # Client-side apply too, also after another caBundle replace (what every rotation does).
    for _ in range(2):
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(webhook_configs))
        assert published_bundles(cluster) == expected
        live = cluster.kubectl(
            "get", "mutatingwebhookconfiguration/dra-bridge", "validatingwebhookconfiguration/dra-bridge", "-o", "yaml"
        ).stdout
        patched = cli("certs", "patch", "--dir", str(certs_dir), "-f", "-", stdin=live)
        cluster.kubectl("replace", "-f", "-", input=patched)


def test_the_readme_rotation_commands_run_and_report_the_phase(cluster: ControlPlane, certs_dir: Path) -> None:
    before = (certs_dir / "tls.crt").read_bytes()
    proc = run_readme_block(cluster, "Certificate rotation", certs_dir)
    assert proc.returncode == 0, proc.stderr
    assert "phase steady: nothing to renew" in proc.stderr
    assert "publish:" not in proc.stderr  # the published bundle was read back and matches
    assert (certs_dir / "tls.crt").read_bytes() == before


def test_pods_without_gpu_requests_never_reach_the_webhook(cluster: ControlPlane) -> None:
    proc = create_pod(cluster, "cpu-only", "team-a", pod(container(limits={"cpu": "100m"})))
    assert proc.returncode == 0, proc.stderr


def test_an_unconverted_gpu_pod_is_refused_while_the_webhook_is_down(cluster: ControlPlane) -> None:
    for name, obj in (
        ("gpu", pod(container(limits=dict(GPU)))),
        ("kai", pod(container(), annotations={"gpu-fraction": "0.5"})),
        ("init", pod(container(), initContainers=[container("i", limits={"amd.com/gpu": "1"})])),
    ):
        proc = create_pod(cluster, name, "team-a", obj)
        assert proc.returncode != 0, f"{name} was admitted"
        assert "pods.validate.dra-bridge.io" in proc.stderr, proc.stderr
        assert_not_dialed(proc.stderr)
    dry_run = create_pod(cluster, "gpu-dry", "team-a", pod(container(limits=dict(GPU))), "--dry-run=server")
    assert dry_run.returncode != 0 and "pods.validate.dra-bridge.io" in dry_run.stderr


def assert_not_dialed(error: str) -> None:
    """The webhook call failed on the missing endpoints, before any connection was attempted."""
    assert "endpoints" in error, error
    assert "dial" not in error and "tls:" not in error, error


def test_system_namespaces_are_never_sent_and_opted_out_pods_only_to_quota(cluster: ControlPlane) -> None:
    for name, namespace, obj in (
        ("gpu-system", "kube-system", pod(container(limits=dict(GPU)))),
        ("gpu-own", "dra-bridge", restricted_gpu_pod()),
    ):
        proc = create_pod(cluster, name, namespace, obj)
        assert proc.returncode == 0, f"{namespace}/{name}: {proc.stderr}"
    # Opting out skips conversion (the mutating webhook, Ignore, is not called), never quota: the
    # validating webhook (Fail) is, so with no endpoints the Pod is refused by it alone.
    for name, namespace, obj in (
        ("gpu-opted-out-ns", "opted-out", pod(container(limits=dict(GPU)))),
        ("gpu-opted-out-pod", "team-a", labelled(pod(container(limits=dict(GPU))), {"dra-bridge.io/ignore": "true"})),
    ):
        proc = create_pod(cluster, name, namespace, obj)
        assert proc.returncode != 0 and "pods.validate.dra-bridge.io" in proc.stderr, proc.stderr
        assert "pods.mutate.dra-bridge.io" not in proc.stderr


def test_policy_configmaps_are_checked_and_other_configmaps_are_not(cluster: ControlPlane) -> None:
    plain = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "plain", "namespace": "dra-bridge"}}
    cluster.kubectl("create", "-f", "-", input=yaml.safe_dump(plain))
    policy = labelled(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "quota", "namespace": "dra-bridge"}},
        {"dra-bridge.io/policy": "true"},
    )
    with pytest.raises(KubectlError, match=r"policies\.validate\.dra-bridge\.io") as refused:
        cluster.kubectl("create", "-f", "-", input=yaml.safe_dump(policy))
    assert_not_dialed(refused.value.stderr)


def test_the_emergency_exit_lets_gpu_pods_through(cluster: ControlPlane) -> None:
    # Last: it removes the webhooks. The exact command deploy/README.md gives.
    readme = (ROOT / "deploy" / "README.md").read_text("utf-8")
    command = "kubectl delete mutatingwebhookconfiguration/dra-bridge validatingwebhookconfiguration/dra-bridge"
    assert command in readme
    cluster.kubectl(*command.split()[1:])
    proc = create_pod(cluster, "gpu-after-exit", "team-a", pod(container(limits=dict(GPU))))
    assert proc.returncode == 0, proc.stderr


def labelled(obj: dict[str, Any], labels: dict[str, str]) -> dict[str, Any]:
    obj["metadata"].setdefault("labels", {}).update(labels)
    return obj


def restricted_gpu_pod() -> dict[str, Any]:
    """A GPU Pod that the dra-bridge namespace's "restricted" Pod Security level admits."""
    gpu = container(limits=dict(GPU))
    gpu["securityContext"] = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    return pod(
        gpu, securityContext={"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}}
    )
