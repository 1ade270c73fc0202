"""tests/prebuild.py: which tools a selection needs, and progress only when something is built."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import prebuild
from tests.conftest import ROOT


def test_each_folder_builds_what_its_fixtures_would() -> None:
    assert prebuild.needed([ROOT / "tests" / "unit" / "test_architecture.py"]) == []
    assert prebuild.needed([ROOT / "tests" / "deploy" / "test_helm.py"]) == [prebuild.KUSTOMIZE, prebuild.HELM]
    assert prebuild.needed([ROOT / "tests" / "e2e" / "test_quota.py"]) == [prebuild.CONTROL_PLANE]
    assert prebuild.needed([ROOT / "tests" / "bench" / "test_bench_smoke.py"]) == [
        prebuild.CONTROL_PLANE,
        prebuild.VEGETA,
    ]


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
