"""tests/prebuild.py: which tools a selection needs, and progress only when something is built."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import prebuild
from tests.conftest import ROOT
from tests.e2e.releases import SUPPORTED, minor_patch


def test_each_folder_builds_what_its_fixtures_would(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DRA_BRIDGE_K8S_VERSIONS", raising=False)
    monkeypatch.setenv("K8S_VERSION", "v1.36.3")
    control_plane = ("the Kubernetes control plane v1.36.3", prebuild.CONTROL_PLANE_SCRIPT, {"K8S_VERSION": "v1.36.3"})
    assert prebuild.needed([ROOT / "tests" / "unit" / "test_architecture.py"]) == []
    assert prebuild.needed([ROOT / "tests" / "deploy" / "test_helm.py"]) == [prebuild.KUSTOMIZE, prebuild.HELM]
    assert prebuild.needed([ROOT / "tests" / "e2e" / "test_quota.py"]) == [control_plane]
    assert prebuild.needed([ROOT / "tests" / "bench" / "test_bench_smoke.py"]) == [control_plane, prebuild.VEGETA]


def test_every_listed_release_is_built_up_front_oldest_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRA_BRIDGE_K8S_VERSIONS", "v1.37.2,v1.34.4")
    monkeypatch.setenv("K8S_VERSION", "v1.36.3")  # the release of this run is built too
    tools = prebuild.needed([ROOT / "tests" / "e2e" / "test_quota.py"])
    assert [env for _, _, env in tools] == [{"K8S_VERSION": v} for v in ("v1.34.4", "v1.36.3", "v1.37.2")]
    monkeypatch.setenv("DRA_BRIDGE_K8S_VERSIONS", "all")
    assert [env["K8S_VERSION"] for _, _, env in prebuild.needed([ROOT / "tests" / "e2e"])] == list(SUPPORTED)


def test_a_release_is_one_plain_kubernetes_version() -> None:
    assert minor_patch("v1.34.4") == (34, 4)
    with pytest.raises(ValueError, match=r"v1\.<minor>\.<patch>"):
        minor_patch("1.34")


def fake(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "ensure-fake.sh"
    script.write_text("set -e\n" + body)
    return script


def test_a_cached_tool_prints_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prebuild, "ROOT", tmp_path)
    lines: list[str] = []
    assert prebuild.run("fake", fake(tmp_path, "echo cached >&2\n"), lines.append) == 0
    assert lines == []


def test_a_build_shows_its_log_and_a_line_while_quiet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prebuild, "ROOT", tmp_path)
    monkeypatch.setattr(prebuild, "QUIET_AFTER", 0.5)
    monkeypatch.setattr(prebuild, "TICK", 1.0)
    lines: list[str] = []
    script = fake(tmp_path, "echo resolving >&2\nsleep 3\necho built >&2\n")
    assert prebuild.run("fake", script, lines.append) == 0
    assert lines[0] == "dra-bridge tests: building fake on first use (ensure-fake.sh)"
    assert "  resolving" in lines and "  built" in lines
    assert any("still building fake" in line for line in lines), lines
    assert lines[-1].startswith("dra-bridge tests: fake ready after")


def test_missing_go_is_left_to_the_fixtures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prebuild, "ROOT", tmp_path)
    lines: list[str] = []
    assert prebuild.run("fake", fake(tmp_path, "echo 'Go is not installed' >&2\nexit 3\n"), lines.append) == 3
    assert lines == []


def test_the_release_runner_reads_each_runs_outcome() -> None:
    from tests.e2e.releases import _SUMMARY

    assert _SUMMARY.findall("....\n44 passed, 1 skipped in 56.14s\n") == [("44 passed, 1 skipped", "56.14")]
    assert _SUMMARY.findall("== 2 failed, 42 passed, 9 errors in 810.09s (0:13:30) ==\n")[-1][0] == (
        "2 failed, 42 passed, 9 errors"
    )
