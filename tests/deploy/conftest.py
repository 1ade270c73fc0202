"""Fixtures for the deployment tests: a pinned kustomize binary and the rendered base and overlays.

kustomize comes from ``deploy/hack/ensure-kustomize.sh`` (built once with ``go install`` into the
dra-bridge cache, never into the repository). Without Go and without a cached binary, every test
that renders is skipped with the script's reason; a failed build fails them.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
ENSURE_KUSTOMIZE = DEPLOY / "hack" / "ensure-kustomize.sh"
GO_MISSING = 3  # ensure-kustomize.sh's exit code when Go is not installed


def targets() -> list[str]:
    """``deploy`` and every overlay, as paths relative to the repository root."""
    overlays = sorted(p.parent for p in (DEPLOY / "overlays").glob("*/kustomization.yaml"))
    return ["deploy", *(str(p.relative_to(ROOT)) for p in overlays)]


@pytest.fixture(scope="session")
def kustomize() -> Path:
    proc = subprocess.run(
        ["bash", str(ENSURE_KUSTOMIZE)],
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "BUILD_JOBS": os.environ.get("BUILD_JOBS", "2")},
    )
    if proc.returncode == GO_MISSING:
        pytest.skip(f"no kustomize: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, f"{ENSURE_KUSTOMIZE} failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    binary = Path(proc.stdout.strip().splitlines()[-1])
    assert binary.is_file(), binary
    return binary


def render(kustomize: Path, target: str) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [str(kustomize), "build", str(ROOT / target)], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, f"kustomize build {target} failed:\n{proc.stderr}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d is not None]


@pytest.fixture(scope="session")
def renders(kustomize: Path) -> dict[str, list[dict[str, Any]]]:
    return {target: render(kustomize, target) for target in targets()}


@pytest.fixture(scope="session")
def base(renders: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return renders["deploy"]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The one object of ``kind`` (and ``name``); fails when there is none or several."""
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def find_all(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]
