"""``dra-bridge report`` on a folder of realistic manifests: table, JSON, HTML."""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cli.test_convert import MANIFESTS, run
from tests.conftest import POLICIES


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The convert fixtures plus a workload that cannot be converted and a native DeviceClass."""
    root = tmp_path_factory.mktemp("manifests")
    shutil.copytree(MANIFESTS, root / "apps")
    bad = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "half-gpu", "namespace": "ml-research"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"a": "b"}},
            "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {
                    "containers": [{"name": "c", "image": "i", "resources": {"limits": {"nvidia.com/gpu": "0.5"}}}]
                },
            },
        },
    }
    owned = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "llm-finetune-abc-xyz",
            "namespace": "ml-research",
            "ownerReferences": [
                {
                    "kind": "ReplicaSet",
                    "name": "llm-finetune-abc",
                    "controller": True,
                    "apiVersion": "apps/v1",
                    "uid": "u",
                }
            ],
        },
        "spec": {"containers": [{"name": "trainer", "image": "i", "resources": {"limits": {"nvidia.com/gpu": "4"}}}]},
    }
    (root / "more.yaml").write_text(yaml.safe_dump_all([bad, owned]))
    classes = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "DeviceClass",
        "metadata": {"name": "gpu.amd.com"},
        "spec": {"extendedResourceName": "amd.com/gpu"},
    }
    (root.parent / "classes.yaml").write_text(yaml.safe_dump(classes))
    return root


def report_json(folder: Path) -> dict[str, Any]:
    result = run(
        "report",
        "-f",
        str(folder),
        "--policies",
        str(POLICIES),
        "--deviceclasses",
        str(folder.parent / "classes.yaml"),
        "-o",
        "json",
    )
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_every_legacy_workload_is_reported_once(folder: Path) -> None:
    rows = {(r["kind"], r["namespace"], r["name"]): r for r in report_json(folder)["workloads"]}
    assert ("Pod", "ml-research", "llm-finetune-abc-xyz") not in rows  # owned by a controller: its owner is reported
    assert ("ConfigMap", "apps", "settings") not in rows and ("Deployment", "apps", "web") not in rows  # no GPU
    assert len(rows) == 16


def test_what_each_becomes_and_the_totals(folder: Path) -> None:
    data = report_json(folder)
    rows = {r["name"]: r for r in data["workloads"]}
    finetune = rows["llm-finetune"]
    assert finetune["tenant"] == "research" and finetune["status"] == "convertible"
    assert finetune["becomes"] == "trainer: 4 whole devices (nvidia)"
    assert finetune["replicas"] == 2 and finetune["gpus"] == 8
    assert finetune["memory"] == 2 * 4 * 80 * 2**30  # whole GPUs at the class memory the example policy declares
    assert rows["notebook"]["tenant"] == "research" and rows["notebook"]["gpus"] == 1
    research = next(t for t in data["tenants"] if t["tenant"] == "research")
    assert research["workloads"] == 3 and research["gpus"] == 8 + 1 + 0
    assert data["byLegacyName"]["nvidia.com/gpu"] == 4


def test_cannot_convert_native_and_opted_out_are_explained(folder: Path) -> None:
    data = report_json(folder)
    rows = {r["name"]: r for r in data["workloads"]}
    assert rows["half-gpu"]["status"] == "cannot-convert"
    assert rows["half-gpu"]["becomes"] == "container 'c': nvidia.com/gpu: 0.5 is not a whole number"
    assert (
        rows["rocm-bench"]["status"] == "native"
        and rows["rocm-bench"]["becomes"] == "served natively: amd.com/gpu by gpu.amd.com"
    )
    assert rows["opted-out"]["status"] == "opted-out"
    assert data["nativeDeviceClasses"] == {"amd.com/gpu": "gpu.amd.com"}


def test_which_names_have_a_native_path_and_what_declaring_one_would_gain(folder: Path) -> None:
    data = report_json(folder)
    paths = data["nativePaths"]
    assert paths["amd.com/gpu"] == "native"  # a DeviceClass serves it already
    assert paths["nvidia.com/gpu"] == "possible" and paths["google.com/tpu"] == "possible"
    assert paths["nvidia.com/gpumem"] == "convert" and paths["nvidia.com/mig-1g.5gb"] == "convert"
    assert paths["gpu-fraction"] == "convert"  # an annotation: no extended resource at all
    whole_only = [
        r["name"] for r in data["workloads"]
        if r["status"] == "convertible" and all(paths[n] == "possible" for n in r["legacy"])
    ]  # fmt: skip
    assert data["wholeDevicesOnly"] == len(whole_only) > 0


def test_table(folder: Path) -> None:
    result = run("report", "-f", str(folder), "--policies", str(POLICIES))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["TENANT", "NAMESPACE", "WORKLOAD", "REPLICAS"]
    assert "Cannot be converted:" in lines
    assert any(line.strip().startswith("Deployment/ml-research/half-gpu: container 'c'") for line in lines)


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.bars = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "rect" and ("class", "bar") in attrs:
            self.bars += 1


def test_html_page_with_a_chart(folder: Path) -> None:
    result = run("report", "-f", str(folder), "--policies", str(POLICIES), "-o", "html")
    assert result.returncode == 0, result.stderr
    parser = _Collector()
    parser.feed(result.stdout)
    tenants = len(report_json(folder)["tenants"])
    assert parser.bars == tenants and "svg" in parser.tags and parser.tags.count("table") == 3
    assert "<script" not in result.stdout  # a static page: nothing to execute


def test_unreadable_input_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("a: [")
    result = run("report", "-f", str(tmp_path))
    assert result.returncode == 1 and "not valid YAML" in result.stderr and result.stdout == ""


FLEET = Path(__file__).resolve().parents[1] / "fixtures" / "fleet"


def test_the_fleet_from_a_clusters_objects() -> None:
    result = run("report", "-f", str(FLEET), "--policies", str(POLICIES), "-o", "json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    fleet = data["fleet"]
    pools = {p["name"]: p for p in fleet["pools"]}
    assert {n: p["mode"] for n, p in pools.items()} == {
        "a100-pool": "device-plugin",
        "h100-pool": "dra",
        "cpu-pool": "none",
    }
    assert pools["a100-pool"]["workloads"] == ["Deployment/ml-research/llm-finetune", "Pod/data-science/notebook"]
    assert pools["a100-pool"]["legacyGpus"] == 9 and pools["a100-pool"]["devicePlugins"] == ["nvidia.com/gpu"]
    assert pools["h100-pool"]["drivers"] == ["gpu.nvidia.com"] and pools["h100-pool"]["claims"] == 3
    capacity = {(c["pool"], c["sku"], c["kind"]): (c["allocated"], c["allocatable"]) for c in fleet["capacity"]}
    assert capacity == {
        ("a100-pool", "NVIDIA-A100-SXM4-80GB", "device-plugin"): (9, 16),
        ("h100-pool", "NVIDIA H100 80GB HBM3", "dra"): (5, 16),
    }
    tenants = {t["tenant"]: t for t in fleet["tenants"]}
    assert tenants["research"] == {
        "tenant": "research", "legacyWorkloads": 2, "legacyGpus": 9, "claims": 1, "draDevices": 1
    }  # fmt: skip
    assert tenants["namespace:serving"]["draDevices"] == 4
    # The Pods a Deployment owns are its, not workloads of their own.
    assert {(r["kind"], r["name"]) for r in data["workloads"]} == {("Deployment", "llm-finetune"), ("Pod", "notebook")}


def test_the_fleet_in_the_table_and_the_page() -> None:
    table = run("report", "-f", str(FLEET), "--policies", str(POLICIES))
    assert table.returncode == 0, table.stderr
    assert "Fleet (node pools):" in table.stdout
    assert "  a100-pool: Deployment/ml-research/llm-finetune, Pod/data-science/notebook" in table.stdout
    page = run("report", "-f", str(FLEET), "--policies", str(POLICIES), "-o", "html")
    assert page.returncode == 0, page.stderr
    parser = _Collector()
    parser.feed(page.stdout)
    assert parser.tags.count("svg") == 2 and parser.tags.count("table") == 6
    assert page.stdout.count('class="used"') == 2 and "<script" not in page.stdout


def test_a_pool_label_of_ones_own() -> None:
    result = run("report", "-f", str(FLEET), "--pool-label", "kubernetes.io/hostname", "-o", "json")
    assert result.returncode == 0, result.stderr
    fleet = json.loads(result.stdout)["fleet"]
    assert fleet["poolLabels"] == ["kubernetes.io/hostname"]
    assert [p["name"] for p in fleet["pools"]] == ["a100-0", "a100-1", "cpu-0", "h100-0", "h100-1"]


def test_manifests_without_nodes_have_no_fleet(folder: Path) -> None:
    assert "fleet" not in report_json(folder)
