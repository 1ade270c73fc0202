"""Whether the end-to-end tests can run here: the control plane is built (or cached), else they skip,
unless ``DRA_BRIDGE_E2E=require`` (set by .ci/run) turns that into a failure."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.e2e.controlplane import BUILD_SCRIPT, ControlPlaneError, build_control_plane


def control_plane_bin_or_skip() -> Path:
    """The control plane's bin dir; skips the caller when there are no cached binaries and no Go."""
    try:
        return build_control_plane()
    except ControlPlaneError as err:
        if shutil.which("go") is None and os.environ.get("DRA_BRIDGE_E2E") != "require":
            pytest.skip(f"e2e: no cached control plane and no Go toolchain to build one ({BUILD_SCRIPT.name}): {err}")
        raise
