"""The runtime's wiring: the catalogue held once, its consumers told when it changes."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import POLICIES
from webhook.cluster.memory import InMemoryCluster
from webhook.serving.server import build_runtime
from webhook.serving.settings import Settings

ACME = {
    "apiVersion": "dra-bridge.io/v1alpha1",
    "kind": "TranslationCatalogue",
    "drivers": [
        {
            "name": "acme",
            "driver": "gpu.acme.example.com",
            "whole": {},
            "models": [{"attributes": {"model": {"string": "acme-1"}}, "capacity": {"memory": {"value": "300Gi"}}}],
        }
    ],
}


def catalogue_configmap(document: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "catalogue-acme",
            "namespace": "dra-bridge",
            "labels": {"dra-bridge.io/catalogue": "true"},
        },
        "data": {"catalogue.yaml": yaml.safe_dump(document)},
    }


def test_a_catalogue_edit_reprices_the_claims_already_counted(tmp_path: Path) -> None:
    cluster = InMemoryCluster()
    cluster.add_namespace("team-a")
    runtime = build_runtime(
        Settings(dev=True, policies_dir=POLICIES, audit_file=str(tmp_path / "audit.log")), cluster=cluster
    )
    cluster.start()
    claim = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": "c1", "namespace": "team-a"},
        "spec": {
            "devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "whole.acme.dra-bridge.io"}}]}
        },
    }
    cluster.add_claim(claim)
    quota = runtime.admission.quota
    assert quota is not None
    before = quota.usage(("team-a",)).memory
    cluster.put_configmap(catalogue_configmap(ACME))
    assert runtime.catalogue.index.catalogue.driver("acme") is not None
    # A class nobody created is charged at the worst GPU known: now the new driver's model.
    assert before != 300 * 2**30
    assert quota.usage(("team-a",)).memory == 300 * 2**30


def test_the_dev_server_takes_resource_slices_and_device_classes_from_a_folder(tmp_path: Path) -> None:
    from webhook.serving.server import dev_cluster

    inventory = tmp_path / "inventory"
    inventory.mkdir()
    gpu = {"attributes": {"type": {"string": "gpu"}}, "capacity": {"memory": {"value": "141Gi"}}}
    (inventory / "slices.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "List",  # as kubectl get -o yaml writes it
                "items": [
                    {
                        "apiVersion": "resource.k8s.io/v1",
                        "kind": "ResourceSlice",
                        "metadata": {"name": "node-1-gpu"},
                        "spec": {
                            "driver": "gpu.nvidia.com",
                            "nodeName": "node-1",
                            "pool": {"name": "node-1", "resourceSliceCount": 1, "generation": 1},
                            "devices": [{"name": "gpu-0", **gpu}],
                        },
                    },
                ],
            }
        )
    )
    cluster = dev_cluster(POLICIES, inventory)
    runtime = build_runtime(
        Settings(dev=True, policies_dir=POLICIES, audit_file=str(tmp_path / "a.log")), cluster=cluster
    )
    cluster.start()
    claim = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": "c1", "namespace": "team-a"},
        "spec": {
            "devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "whole.nvidia.dra-bridge.io"}}]}
        },
    }
    cluster.add_claim(claim)
    quota = runtime.admission.quota
    assert quota is not None
    assert quota.usage(("team-a",)).memory == 141 * 2**30  # the published H200, not the catalogue's 80Gi model
    (inventory / "bad.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    with pytest.raises(
        ValueError, match=r"bad.yaml: document 0: kind 'ConfigMap' is neither a ResourceSlice nor a DeviceClass"
    ):
        dev_cluster(POLICIES, inventory)


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("https://10.0.0.1:8443", "https://10.0.0.1:8443"),
        ("https://fd00::1:8443", "https://[fd00::1]:8443"),  # status.podIP on an IPv6 cluster
        ("https://[fd00::1]:8443/", "https://[fd00::1]:8443"),
        ("", ""),
    ],
)
def test_the_peer_address_is_a_url_the_peers_can_use(given: str, kept: str) -> None:
    assert Settings(peer_address=given).peer_address == kept


@pytest.mark.parametrize("bad", ["http://10.0.0.1:8443", "https://10.0.0.1", "10.0.0.1:8443", "https://x:1/validate"])
def test_a_peer_address_that_is_no_https_host_and_port_is_refused_naming_it(bad: str) -> None:
    with pytest.raises(ValueError, match=f"peer_address '{re.escape(bad)}': expected https://<host or IP>:<port>"):
        Settings(peer_address=bad)


def test_the_switch_interval_is_the_interpreters_unless_set() -> None:
    from webhook.serving.server import switch_interval

    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)
        assert switch_interval(Settings()) == pytest.approx(0.005)  # left as it is
        assert switch_interval(Settings(gil_switch_interval_seconds=0.0005)) == pytest.approx(0.0005)
    finally:
        sys.setswitchinterval(before)
