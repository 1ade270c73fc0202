"""deploy/ carries copies of policies/ (kustomize loads nothing outside a kustomization's folder).

The copies must stay byte-identical to their sources; ``deploy/hack/sync-policies.sh`` makes them so.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from tests.conftest import POLICIES, ROOT

DEPLOY = ROOT / "deploy"
SYNC = DEPLOY / "hack" / "sync-policies.sh"
BASE_COPIES = DEPLOY / "policies"
EXAMPLE_COPIES = DEPLOY / "overlays" / "quota-example"
CHART_FILES = DEPLOY / "helm" / "dra-bridge" / "files"
FIX = "run deploy/hack/sync-policies.sh"


def sources() -> tuple[list[str], list[str]]:
    names = sorted(p.name for p in POLICIES.glob("*.yaml"))
    catalogues = [n for n in names if n.startswith("catalogue")]
    return catalogues, [n for n in names if n not in catalogues]


def resources(folder: Path) -> list[str]:
    listed: list[str] = yaml.safe_load((folder / "kustomization.yaml").read_text("utf-8"))["resources"]
    return listed


def test_catalogues_are_copied_byte_for_byte_into_the_base() -> None:
    catalogues, _ = sources()
    assert "catalogue.yaml" in catalogues
    for name in catalogues:
        copy = BASE_COPIES / name
        assert copy.is_file(), f"{copy} is missing: {FIX}"
        assert copy.read_bytes() == (POLICIES / name).read_bytes(), f"{copy} differs from policies/{name}: {FIX}"
    assert resources(BASE_COPIES) == catalogues, FIX
    stale = {p.name for p in BASE_COPIES.glob("*.yaml")} - {*catalogues, "kustomization.yaml"}
    assert not stale, f"copies without a source {sorted(stale)}: {FIX}"


def test_other_policies_are_copied_into_the_quota_example_overlay_only() -> None:
    _, examples = sources()
    for name in examples:
        copy = EXAMPLE_COPIES / name
        assert copy.is_file() and copy.read_bytes() == (POLICIES / name).read_bytes(), f"{copy}: {FIX}"
    assert resources(EXAMPLE_COPIES) == ["../../base", *examples], FIX


def test_sync_script_reproduces_the_committed_files(tmp_path: Path) -> None:
    (tmp_path / "deploy" / "hack").mkdir(parents=True)
    shutil.copy(SYNC, tmp_path / "deploy" / "hack" / SYNC.name)
    shutil.copytree(POLICIES, tmp_path / "policies")
    shutil.copytree(DEPLOY / "deviceclasses", tmp_path / "deploy" / "deviceclasses")
    stale = tmp_path / "deploy" / "policies" / "catalogue-gone.yaml"
    stale.parent.mkdir(parents=True)
    stale.write_text("stale copy\n")
    for _ in range(2):  # idempotent
        proc = subprocess.run(
            ["bash", str(tmp_path / "deploy" / "hack" / SYNC.name)], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stderr
    assert not stale.exists()
    for folder in (BASE_COPIES, EXAMPLE_COPIES, CHART_FILES):
        generated = tmp_path / folder.relative_to(ROOT)
        assert sorted(p.name for p in generated.iterdir()) == sorted(
            p.name for p in folder.iterdir() if p.suffix == ".yaml"
        )
        for path in generated.iterdir():
            assert path.read_bytes() == (folder / path.name).read_bytes(), f"{folder / path.name}: {FIX}"
