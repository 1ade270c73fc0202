"""``dra-bridge policy check`` and ``policy usage``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import POLICIES
from webhook.cli import main
from webhook.cli.policy import run_usage
from webhook.cluster.memory import InMemoryCluster
from webhook.serving.server import catalogue_files
from webhook.translate.catalogue import load_catalogue
from webhook.translate.deviceclasses import render_device_classes


def write(tmp_path: Path, body: dict[str, object], name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"apiVersion": "dra-bridge.io/v1alpha1", "kind": "QuotaPolicy", **body}))
    return path


def test_check_accepts_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "check", str(POLICIES / "quota-example.yaml")]) == 0
    assert "ok: 1 file(s), 2 tenant(s), 1 CEL rule(s) compiled" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (
            {"tenants": [{"name": "a", "limits": {"devices": {"gpu.nvidia.com": 1}}}]},
            "'gpu.nvidia.com' matches no known DeviceClass",
        ),
        (
            {"tenants": [{"name": "a", "allowedClasses": ["whole.amd.dra-bridge.io", "mig.*"]}]},
            "allowedClasses: 'mig.*' matches no known",
        ),
        ({"classes": {"ghost": {"memory": "1Gi"}}}, "classes: 'ghost' is not a known DeviceClass"),
        (
            {"tenants": [{"name": "a", "rules": [{"name": "r", "expression": "pod.x ==", "message": "m"}]}]},
            "rules[r].expression: does not parse",
        ),
    ],
)
def test_check_reports_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], body: dict[str, object], fragment: str
) -> None:
    assert main(["policy", "check", str(write(tmp_path, body))]) == 1
    assert fragment in capsys.readouterr().err


def test_check_knows_classes_from_the_cluster(tmp_path: Path) -> None:
    classes = tmp_path / "classes.yaml"
    classes.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "List",
                "items": [{"kind": "DeviceClass", "metadata": {"name": "gpu.nvidia.com"}}],
            }
        )
    )
    path = write(tmp_path, {"tenants": [{"name": "a", "limits": {"devices": {"gpu.nvidia.com": 1}}}]})
    assert main(["policy", "check", str(path), "--classes-from", str(classes)]) == 0


def test_check_refuses_conflicts_across_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = write(tmp_path, {"tenants": [{"name": "a"}]}, "a.yaml")
    b = write(tmp_path, {"tenants": [{"name": "a"}]}, "b.yaml")
    assert main(["policy", "check", str(a), str(b)]) == 1
    assert "tenant 'a' is already defined" in capsys.readouterr().err


def test_usage_against_a_cluster(capsys: pytest.CaptureFixture[str]) -> None:
    cluster = InMemoryCluster()
    cluster.add_namespace("ml-research")
    for device_class in render_device_classes(load_catalogue(catalogue_files(POLICIES))):
        cluster.add_device_class(device_class)  # as deployed: the unified DeviceClasses exist
    cluster.add_claim(
        {
            "metadata": {"name": "c1", "namespace": "ml-research"},
            "spec": {
                "devices": {
                    "requests": [
                        {"name": "g", "exactly": {"deviceClassName": "whole.nvidia.dra-bridge.io", "count": 3}}
                    ]
                }
            },
        }
    )
    args = argparse.Namespace(policies=POLICIES, tenant="research", timeout=5.0, output="json", namespace="dra-bridge")
    assert run_usage(args, cluster=cluster) == 0
    rows = {r["dimension"]: r for r in json.loads(capsys.readouterr().out)}
    assert (
        rows["devices/whole.*.dra-bridge.io"]["used"] == "3" and rows["devices/whole.*.dra-bridge.io"]["limit"] == "8"
    )
    assert rows["memory"]["used"] == "240Gi" and rows["memory"]["limit"] == "640Gi"
    assert rows["claims"]["used"] == "1"
    args.output = "table"
    assert run_usage(args, cluster=cluster) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["TENANT", "DIMENSION", "USED", "LIMIT", "NAMESPACES", "POLICY"]
