"""The layers, checked by import-linter with the contracts in pyproject.toml.

.ci/run runs ``lint-imports`` on the tree; these tests show the contracts hold today and that each
kind of contract fails on the import it forbids (a copy of the package with one import added).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(tree / "pyproject.toml"), "--no-cache"],
        cwd=tree, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_the_contracts_hold(tmp_path: Path) -> None:
    copy = _copy(tmp_path)
    result = lint(copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def _copy(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "webhook", tree / "webhook", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    return tree


@pytest.mark.parametrize(
    ("module", "added", "contract"),
    [
        ("translate/rewrite.py", "import kubernetes", "The kubernetes client only in the cluster adapter"),
        ("admission/engine.py", "import fastapi", "FastAPI and Starlette only in the HTTP layer"),
        ("quota/enforcement.py", "import celpy", "celpy only behind the CEL module"),
        ("quota/check.py", "import time", "The pure core imports no I/O, clock, environment or logging"),
        ("translate/legacy.py", "from webhook.cluster import memory", "The pure core imports no I/O"),
        ("quota/charge.py", "from webhook.admission import engine", "Layers: each package imports only those below it"),
        (
            "cluster/informer.py",
            "from webhook.translate import claims",
            "Layers: each package imports only those below it",
        ),
    ],
)
def test_a_forbidden_import_breaks_its_contract(tmp_path: Path, module: str, added: str, contract: str) -> None:
    tree = _copy(tmp_path)
    path = tree / "webhook" / module
    path.write_text(path.read_text(encoding="utf-8") + f"\n{added}  # noqa\n", encoding="utf-8")
    result = lint(tree)
    assert result.returncode != 0
    broken = result.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken, result.stdout
