"""The layers, checked: which module may import what (as kopf checks its layers with import-linter).

- the ``kubernetes`` client only in ``webhook/cluster/kube.py`` (the one port to the cluster);
- FastAPI and Starlette only in ``webhook/serving/http.py`` (the one HTTP layer);
- celpy only in ``webhook/quota/cel.py`` (CEL behind one module);
- the pure core imports none of those, nor the cluster port, the HTTP layer, the network, threads,
  the environment or the clock.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "webhook"
PURE_CORE = [
    "translate/quantity", "translate/catalogue", "translate/legacy", "translate/claims", "translate/rewrite",
    "admission/jsonpatch", "translate/deviceclasses", "translate/convert", "quota/policy", "quota/charge",
    "quota/check", "audit/report", "admission/review", "errors",
]  # fmt: skip
ONLY_IN = {
    "kubernetes": {"cluster/kube.py"}, "fastapi": {"serving/http.py"}, "starlette": {"serving/http.py"},
    "celpy": {"quota/cel.py"},
}  # fmt: skip
IMPURE = {
    "kubernetes", "fastapi", "starlette", "uvicorn", "httpx", "urllib3", "socket", "threading", "time",
    "os", "subprocess", "logging", "webhook.cluster", "webhook.serving.http", "webhook.serving.server", "webhook.quota.usage",
    "webhook.quota.enforcement", "webhook.audit.log", "webhook.serving.settings",
}  # fmt: skip


def imports(path: Path) -> set[str]:
    """Top-level and nested imports, type-checking-only ones excluded (they never run)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for n in ast.walk(node)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("module", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_third_party_frameworks_stay_behind_their_module(module: Path) -> None:
    where = str(module.relative_to(PACKAGE))
    for name in imports(module):
        root = name.split(".")[0]
        if root in ONLY_IN:
            assert where in ONLY_IN[root], f"{where} imports {name}; only {sorted(ONLY_IN[root])} may"


@pytest.mark.parametrize("name", PURE_CORE)
def test_the_core_is_pure(name: str) -> None:
    found = imports(PACKAGE / f"{name}.py")
    bad = sorted(i for i in found if any(i == b or i.startswith(b + ".") for b in IMPURE))
    assert bad == [], f"webhook/{name}.py imports {bad}"


def test_the_checks_can_fail(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import time\nfrom kubernetes import client\nif TYPE_CHECKING:\n    import fastapi\n")
    assert imports(sample) == {"time", "kubernetes"}
