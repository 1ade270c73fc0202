"""Only the apiserver is a caller: a real kube-apiserver configured with the shipped
deploy/apiserver/ files presents its client certificate, dra-bridge (``--client-ca``, as
deploy/overlays/client-auth sets it) converts its Pods, and a caller without the certificate is
refused in the TLS handshake.

It starts a control plane of its own (the apiserver reads --admission-control-config-file only at
start, and the webhook's address must be known by then).
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import APISERVER_ARGS
from tests.e2e.controlplane import DRA_FEATURE_GATES, LOOPBACK, ControlPlane
from tests.e2e.helpers import BRIDGE_NAMESPACE, DEVICECLASSES, BridgeServer, Kube, pod, wait_for, webhook_configurations
from webhook.certs.issue import create_ca, create_client_cert

pytestmark = pytest.mark.e2e
APISERVER_FILES = Path(__file__).resolve().parents[2] / "deploy" / "apiserver"


class ClientAuthBridge(BridgeServer):
    """``dra-bridge serve --client-ca``: its own probes present the client certificate too."""

    def __init__(self, *, client_ca: Path, client_cert: Path, client_key: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.client_ca, self.client_cert, self.client_key = client_ca, client_cert, client_key

    def context(self, *, with_certificate: bool = True) -> ssl.SSLContext:
        context = ssl.create_default_context(cadata=self.ca_pem.decode())
        if with_certificate:
            context.load_cert_chain(self.client_cert, self.client_key)
        return context

    def get(self, path: str, *, with_certificate: bool = True) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(
                f"{self.url}{path}", context=self.context(with_certificate=with_certificate), timeout=5
            ) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()


def shipped_apiserver_files(folder: Path, *, webhook_host: str, cert: Path, key: Path) -> Path:
    """deploy/apiserver/ with only the paths and the webhook's host changed (a URL webhook on 127.0.0.1)."""
    kubeconfig = yaml.safe_load((APISERVER_FILES / "webhook-kubeconfig.yaml").read_text())
    [user] = kubeconfig["users"]
    user["name"] = webhook_host
    user["user"] = {"client-certificate": str(cert), "client-key": str(key)}
    (folder / "webhook-kubeconfig.yaml").write_text(yaml.safe_dump(kubeconfig))
    admission = yaml.safe_load((APISERVER_FILES / "admission-config.yaml").read_text())
    for plugin in admission["plugins"]:
        plugin["configuration"]["kubeConfigFile"] = str(folder / "webhook-kubeconfig.yaml")
    (folder / "admission-config.yaml").write_text(yaml.safe_dump(admission))
    return folder / "admission-config.yaml"


@pytest.fixture(scope="module")
def setup(bin_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Kube, ClientAuthBridge]]:
    work = tmp_path_factory.mktemp("client-auth")
    client_ca = create_ca(common_name="dra-bridge-client-ca")
    client = create_client_cert(ca=client_ca, common_name="kube-apiserver")
    (work / "client-ca.crt").write_bytes(client_ca.cert_pem)
    (work / "client.crt").write_bytes(client.cert_pem)
    (work / "client.key").write_bytes(client.key_pem)
    cp_dir = work / "control-plane"
    cp_dir.mkdir()
    bridge = ClientAuthBridge(
        client_ca=work / "client-ca.crt",
        client_cert=work / "client.crt",
        client_key=work / "client.key",
        work_dir=work / "bridge",
        kubeconfig=cp_dir / "admin.kubeconfig",
    )
    config = shipped_apiserver_files(
        work, webhook_host=f"{LOOPBACK}:{bridge.port}", cert=work / "client.crt", key=work / "client.key"
    )
    cp = ControlPlane(
        bin_dir, cp_dir, DRA_FEATURE_GATES, [*APISERVER_ARGS, f"--admission-control-config-file={config}"]
    )
    cp.start()
    kube = Kube(cp)
    try:
        kube.kubectl("apply", "--server-side", "-f", str(DEVICECLASSES))
        kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": BRIDGE_NAMESPACE}})
        with pytest.MonkeyPatch.context() as env:
            env.setenv("DRA_BRIDGE_CLIENT_CA_FILE", str(work / "client-ca.crt"))
            bridge.start()
        kube.apply(webhook_configurations(port=bridge.port, ca_pem=bridge.ca_pem))
        yield kube, bridge
    finally:
        bridge.stop()
        cp.stop()


def test_the_apiserver_presents_its_certificate_and_its_pods_are_converted(
    setup: tuple[Kube, ClientAuthBridge],
) -> None:
    kube, _ = setup
    namespace = kube.namespace("client-auth")
    legacy = json.dumps(pod("trainer", {"nvidia.com/gpu": "1"}))

    def converted() -> bool:
        out = kube.kubectl("create", "-n", namespace, "--dry-run=server", "-o", "json", "-f", "-", input=legacy)
        return bool(json.loads(out.stdout)["spec"].get("resourceClaims"))

    wait_for(converted, 30, what="the apiserver to call the mutating webhook with its client certificate")


def test_a_caller_without_the_certificate_is_refused_in_the_handshake(setup: tuple[Kube, ClientAuthBridge]) -> None:
    _, bridge = setup
    assert bridge.get("/healthz")[0] == 200
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        bridge.get("/healthz", with_certificate=False)
