"""deploy/hack/ensure-kustomize.sh: cached, pinned, and clear about a missing Go."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.conftest import ENSURE_KUSTOMIZE, GO_MISSING

BASH = shutil.which("bash") or "/bin/bash"


def run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BASH, str(ENSURE_KUSTOMIZE)], capture_output=True, text=True, timeout=60, env=env)


def pinned_version() -> str:
    match = re.search(r'^DEFAULT_KUSTOMIZE_VERSION="(v5\.\d+\.\d+)"$', ENSURE_KUSTOMIZE.read_text("utf-8"), re.M)
    assert match, "the script must pin a plain v5.x.y release"
    return match.group(1)


def test_cached_binary_is_used_without_go(kustomize: Path) -> None:
    # PATH empty: the fast path may need nothing but the cached binary itself.
    cache = kustomize.parent.parent
    proc = run({"HOME": os.environ.get("HOME", "/root"), "DRA_BRIDGE_CACHE": str(cache), "PATH": ""})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(kustomize)
    version = subprocess.run([str(kustomize), "version"], capture_output=True, text=True, check=True).stdout.strip()
    assert version == pinned_version()


def test_missing_go_and_empty_cache_exits_3_with_the_reason(tmp_path: Path) -> None:
    if shutil.which("go", path="/usr/bin:/bin"):
        pytest.skip("a Go in /usr/bin or /bin: cannot hide Go from the script")
    proc = run({"HOME": str(tmp_path), "DRA_BRIDGE_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == GO_MISSING, proc.stderr
    assert "Go is not installed" in proc.stderr
    assert not (tmp_path / "cache" / "bin" / "kustomize").exists()


def test_rejects_a_version_that_is_not_a_plain_release(tmp_path: Path) -> None:
    proc = run(
        {
            "HOME": str(tmp_path),
            "DRA_BRIDGE_CACHE": str(tmp_path),
            "PATH": "/usr/bin:/bin",
            "KUSTOMIZE_VERSION": "latest",
        }
    )
    assert proc.returncode == 1
    assert "KUSTOMIZE_VERSION" in proc.stderr and "'latest'" in proc.stderr
