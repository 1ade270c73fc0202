"""Which Kubernetes release the end-to-end tests run against, and what each release can do.

One pytest run uses one release: ``K8S_VERSION`` (the variable build-control-plane.sh reads; default:
the script's pinned release). ``DRA_BRIDGE_K8S_VERSIONS`` lists the releases a run of every supported
release covers (``.ci/run``): tests/prebuild.py builds all of them up front, and
``python -m tests.e2e.releases`` runs the end-to-end suite once per release and prints a summary.

A scenario that a release cannot run is marked with ``skip_before``/``skip_unless`` and the reason;
nothing is skipped silently.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "tests" / "e2e" / "build-control-plane.sh"

# The supported range: the oldest release, the pinned one, the newest (one patch release per minor).
SUPPORTED = ("v1.34.4", "v1.36.3", "v1.37.2")


def pinned() -> str:
    match = re.search(r'^DEFAULT_K8S_VERSION="([^"]+)"', BUILD_SCRIPT.read_text("utf-8"), re.M)
    assert match, f"{BUILD_SCRIPT.name} no longer pins DEFAULT_K8S_VERSION"
    return match.group(1)


def selected() -> str:
    """The release this run tests: ``K8S_VERSION``, else the build script's pinned release."""
    return os.environ.get("K8S_VERSION") or pinned()


def listed() -> list[str]:
    """``DRA_BRIDGE_K8S_VERSIONS`` (comma-separated; ``all`` = SUPPORTED), else the selected release."""
    raw = os.environ.get("DRA_BRIDGE_K8S_VERSIONS", "").strip()
    if raw == "all":
        return list(SUPPORTED)
    names = [v.strip() for v in raw.split(",") if v.strip()]
    return names or [selected()]


def to_build() -> list[str]:
    """Every release this run may need: the listed ones and the selected one, oldest first."""
    return sorted({*listed(), selected()}, key=minor_patch)


def minor_patch(version: str) -> tuple[int, int]:
    match = re.fullmatch(r"v1\.(\d+)\.(\d+)", version)
    if not match:
        raise ValueError(f"a Kubernetes release looks like v1.<minor>.<patch>, not {version!r}")
    return int(match.group(1)), int(match.group(2))


RELEASE = selected()
MINOR = minor_patch(RELEASE)[0]


# What differs between the supported releases, as the scenarios need to know it (README, "Every
# supported release"). kube-scheduler before 1.35 does not score firstAvailable alternatives across
# nodes (kubernetes#134711): the first alternative is preferred only on the node it picked.
PRIORITIZED_LIST_SCORING = MINOR >= 35
# kube-scheduler 1.34.x checks a share of a device that allows multiple allocations against the
# capacity left on the first device of its ResourceSlice, not on the device it hands out
# (kubernetes#133705, fixed in 1.35 by kubernetes#133706): once that device is full, no further share
# of the slice is allocated.
SHARES_CHECKED_PER_DEVICE = MINOR >= 35


def skip_before(minor: int, reason: str) -> pytest.MarkDecorator:
    """Skip on releases older than 1.<minor>, saying what they lack."""
    return pytest.mark.skipif(minor > MINOR, reason=f"Kubernetes {RELEASE}: {reason} (needs 1.{minor} or later)")


# -- one run per release ------------------------------------------------------------------------
_SUMMARY = re.compile(r"^=* ?(\d+ (?:passed|failed|skipped|errors?|deselected)\b.*?) in ([0-9.]+)s", re.M)


def main(argv: list[str]) -> int:
    """Run ``pytest tests/e2e`` once per release of DRA_BRIDGE_K8S_VERSIONS (default: SUPPORTED), one
    after the other; extra arguments go to pytest. Prints one line per release; fails if any did."""
    releases = listed() if os.environ.get("DRA_BRIDGE_K8S_VERSIONS") else list(SUPPORTED)
    results = []
    for release in releases:
        print(f"== end-to-end tests on Kubernetes {release}", flush=True)
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "tests/e2e", "-m", "e2e", *argv],
            cwd=ROOT,
            env={**os.environ, "K8S_VERSION": release, "DRA_BRIDGE_K8S_VERSIONS": release},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        sys.stdout.write(proc.stdout)
        found = _SUMMARY.findall(proc.stdout)
        outcome = found[-1][0] if found else f"exit code {proc.returncode}"
        results.append((release, proc.returncode, outcome, time.monotonic() - started))
    print("== end-to-end tests per release")
    for release, code, outcome, seconds in results:
        print(f"{release}: {'ok' if code == 0 else 'FAILED'}: {outcome} ({seconds:.0f} s with start-up)")
    return 0 if all(code == 0 for _, code, _, _ in results) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
