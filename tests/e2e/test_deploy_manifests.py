"""Every manifest in deploy/ (the base and each overlay, as rendered) is accepted by the real
apiserver: server-side apply in dry-run=server mode runs defaulting, validation (schemas, CEL,
webhook configuration rules) and admission, including dra-bridge's own check of the catalogue
ConfigMap, without storing anything."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.helpers import DEPLOY, REPO_ROOT, Kube

pytestmark = pytest.mark.e2e

ENSURE_KUSTOMIZE = DEPLOY / "hack" / "ensure-kustomize.sh"
# Kinds of add-ons this control plane does not run: their objects are left out of the dry run.
NOT_INSTALLED = {"cert-manager.io"}


def targets() -> list[Path]:
    if not (DEPLOY / "kustomization.yaml").is_file():
        return []
    return [DEPLOY, *sorted(p.parent for p in DEPLOY.glob("overlays/*/kustomization.yaml"))]


@pytest.fixture(scope="module")
def render(kube: Kube) -> Any:
    """The pinned kustomize (deploy/hack/ensure-kustomize.sh) when it is available, else kubectl's."""
    proc = subprocess.run(["bash", str(ENSURE_KUSTOMIZE)], capture_output=True, text=True, timeout=1800, check=False)
    binary = proc.stdout.strip().splitlines()[-1] if proc.returncode == 0 and proc.stdout.strip() else None

    def run(target: Path) -> str:
        if binary:
            out = subprocess.run([binary, "build", str(target)], capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, out.stderr
            return out.stdout
        return kube.kubectl("kustomize", str(target)).stdout

    return run


@pytest.mark.parametrize("target", targets(), ids=[str(t.relative_to(REPO_ROOT)) for t in targets()])
def test_manifests_are_accepted_by_server_side_dry_run(bridge: Any, kube: Kube, render: Any, target: Path) -> None:
    documents: list[dict[str, Any]] = [d for d in yaml.safe_load_all(render(target)) if d]
    assert documents
    kept = [d for d in documents if d["apiVersion"].split("/")[0] not in NOT_INSTALLED]
    as_list = json.dumps({"apiVersion": "v1", "kind": "List", "items": kept})  # JSON: no YAML 1.1 surprises
    result = kube.kubectl("apply", "--server-side", "--dry-run=server", "-f", "-", input=as_list, check=False)
    assert result.returncode == 0, result.stderr
    applied = [line for line in result.stdout.splitlines() if "(server dry run)" in line]
    assert len(applied) == len(kept), result.stdout
