"""``dra-bridge convert`` as a user runs it: a folder of realistic manifests, stdin, errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, assert_valid

MANIFESTS = ROOT / "tests" / "fixtures" / "manifests"


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "webhook", *args], input=stdin, capture_output=True, text=True, cwd=ROOT, timeout=60
    )


@pytest.fixture(scope="module")
def converted() -> tuple[list[dict[str, Any]], str]:
    result = run("convert", "-f", str(MANIFESTS))
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d is not None], result.stdout


def pod_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    kind = doc["kind"]
    if kind == "Pod":
        return [doc["spec"]]
    if kind == "CronJob":
        return [doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]]
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return [doc["spec"]["template"]["spec"]]
    return []


def test_every_output_object_is_schema_valid(converted: tuple[list[dict[str, Any]], str]) -> None:
    docs, _ = converted
    assert len(docs) > 20
    for doc in docs:
        assert_valid(doc)


def test_no_legacy_name_survives_and_every_claim_has_its_template(converted: tuple[list[dict[str, Any]], str]) -> None:
    docs, _ = converted
    templates = {
        (d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs if d["kind"] == "ResourceClaimTemplate"
    }
    legacy_prefixes = (
        "nvidia.com/",
        "volcano.sh/",
        "aliyun.com/",
        "tencent.com/",
        "amd.com/",
        "gpu.intel.com/",
        "google.com/tpu",
    )
    referenced = set()
    for doc in docs:
        if doc["metadata"].get("labels", {}).get("dra-bridge.io/ignore") == "true":
            continue
        for spec in pod_specs(doc):
            for c in [*spec.get("containers", []), *spec.get("initContainers", [])]:
                for section in ("limits", "requests"):
                    names = (c.get("resources") or {}).get(section) or {}
                    assert not [n for n in names if n.startswith(legacy_prefixes)], (doc["metadata"]["name"], c["name"])
            for claim in spec.get("resourceClaims", []):
                referenced.add((doc["metadata"].get("namespace"), claim["resourceClaimTemplateName"]))
    assert referenced == templates


def test_templates_follow_the_objects(converted: tuple[list[dict[str, Any]], str]) -> None:
    docs, _ = converted
    kinds = [d["kind"] for d in docs]
    first_template = kinds.index("ResourceClaimTemplate")
    assert set(kinds[first_template:]) == {"ResourceClaimTemplate"}


def test_untouched_objects_pass_through_unchanged(converted: tuple[list[dict[str, Any]], str]) -> None:
    docs, _ = converted
    originals = [d for d in yaml.safe_load_all((MANIFESTS / "11-untouched.yaml").read_text())]
    for original in originals:
        assert original in docs


def test_kai_annotation_lands_on_the_named_container(converted: tuple[list[dict[str, Any]], str]) -> None:
    docs, _ = converted
    deployment = next(d for d in docs if d["metadata"]["name"] == "chat-small")
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert "resources" not in containers[0]
    assert containers[1]["resources"]["claims"] == [{"name": "gpu-model"}]
    assert "gpu-fraction" not in deployment["spec"]["template"]["metadata"]["annotations"]


def test_converting_the_output_again_changes_nothing(
    converted: tuple[list[dict[str, Any]], str], tmp_path: Path
) -> None:
    _, text = converted
    again = run("convert", "-f", "-", stdin=text)
    assert again.returncode == 0, again.stderr
    assert again.stdout == text


def test_namespace_flag_applies_to_objects_without_one() -> None:
    manifest = yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "x"},
            "spec": {"containers": [{"name": "c", "image": "i", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]},
        }
    )
    with_ns = run("convert", "-f", "-", "-n", "team-b", stdin=manifest)
    template = list(yaml.safe_load_all(with_ns.stdout))[-1]
    assert template["metadata"]["namespace"] == "team-b"
    without = run("convert", "-f", "-", stdin=manifest)
    assert "namespace" not in list(yaml.safe_load_all(without.stdout))[-1]["metadata"]


def test_errors_go_to_stderr_and_nothing_is_half_written(tmp_path: Path) -> None:
    good = (MANIFESTS / "03-hami-percent-pod.yaml").read_text()
    bad = yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "bad"},
            "spec": {"containers": [{"name": "c", "image": "i", "resources": {"limits": {"nvidia.com/gpu": "0.5"}}}]},
        }
    )
    result = run("convert", "-f", "-", stdin=good + "---\n" + bad)
    assert result.returncode == 1
    assert result.stdout == ""
    assert "Pod bad" in result.stderr and "nvidia.com/gpu: 0.5 is not a whole number" in result.stderr


@pytest.mark.parametrize(
    ("args", "stdin", "fragment"),
    [
        (["convert", "-f", "/nonexistent.yaml"], None, "No such file"),
        (["convert", "-f", "-"], "a: [", "not valid YAML"),
        (["deviceclasses", "--drivers", "nvidia,nope"], None, "unknown driver(s) nope"),
    ],
)
def test_cli_errors(args: list[str], stdin: str | None, fragment: str) -> None:
    result = run(*args, stdin=stdin)
    assert result.returncode != 0 and result.stdout == ""
    assert fragment in result.stderr
