"""Build the Go tools the selected tests need before the first test runs, with visible progress.

A first run builds the control plane (tests/e2e/build-control-plane.sh), kustomize, helm and
vegeta from their Go modules: minutes of work that the fixtures would otherwise do with their
output captured, so pytest sat silent. Here the same scripts run once, up front, with their log
lines on the terminal and a line every 30 seconds while a step is quiet. Each script is
idempotent and returns at once when its binary is cached; then nothing is printed. A missing Go
(exit 3) or a failed build prints a line and leaves the rest to the fixtures, which skip or fail
with the reason as before.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GO_MISSING = 3
QUIET_AFTER = 2.0  # a script done within this many seconds was cached: print nothing
TICK = 30.0

Tool = tuple[str, Path, dict[str, str]]  # name, script, environment

CONTROL_PLANE_SCRIPT = ROOT / "tests" / "e2e" / "build-control-plane.sh"
KUSTOMIZE: Tool = ("kustomize", ROOT / "deploy" / "hack" / "ensure-kustomize.sh", {})
HELM: Tool = ("helm", ROOT / "deploy" / "hack" / "ensure-helm.sh", {})
VEGETA: Tool = ("vegeta", ROOT / "bench" / "ensure-vegeta.sh", {})


def control_planes() -> list[Tool]:
    """The control plane of every release this run may use (K8S_VERSION and DRA_BRIDGE_K8S_VERSIONS,
    tests/e2e/releases.py): a run of every supported release builds them all before the first test."""
    from tests.e2e.releases import to_build

    return [(f"the Kubernetes control plane {v}", CONTROL_PLANE_SCRIPT, {"K8S_VERSION": v}) for v in to_build()]


def needed(paths: Iterable[Path]) -> list[Tool]:
    """The tools the selected tests build themselves, in the order their fixtures would."""
    folders = {p.resolve().relative_to(ROOT).parts[:2] for p in paths if p.resolve().is_relative_to(ROOT)}
    tools: list[Tool] = []
    if ("tests", "e2e") in folders or ("tests", "bench") in folders:
        tools += control_planes()
    if ("tests", "deploy") in folders:
        tools += [KUSTOMIZE, HELM]
    if ("tests", "bench") in folders:
        tools.append(VEGETA)
    return tools


def run(name: str, script: Path, write: Callable[[str], None], env: dict[str, str] | None = None) -> int:
    start = time.monotonic()
    proc = subprocess.Popen(
        ["bash", str(script)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "BUILD_JOBS": os.environ.get("BUILD_JOBS", "2"), **(env or {})},
    )
    assert proc.stderr is not None
    state: dict[str, float | bool] = {"shown": False, "last": start}
    buffered: list[str] = []
    lock = threading.Lock()

    def show(line: str) -> None:
        with lock:
            if not state["shown"]:
                write(f"dra-bridge tests: building {name} on first use ({script.relative_to(ROOT)})")
                for earlier in buffered:
                    write("  " + earlier)
                state["shown"] = True
            write("  " + line)
            state["last"] = time.monotonic()

    def ticker() -> None:
        while proc.poll() is None:
            time.sleep(1)
            elapsed = time.monotonic() - start
            if elapsed > QUIET_AFTER and time.monotonic() - state["last"] >= TICK:
                show(f"... still building {name} ({elapsed:.0f} s so far)")

    thread = threading.Thread(target=ticker, daemon=True)
    thread.start()
    with proc:
        for raw in proc.stderr:
            line = raw.rstrip()
            if state["shown"] or time.monotonic() - start > QUIET_AFTER:
                show(line)
            else:
                buffered.append(line)
        code = proc.wait()
    thread.join(timeout=2)
    if code not in (0, GO_MISSING) and not state["shown"]:
        for line in buffered[-20:]:
            write("  " + line)
    if state["shown"] or code not in (0, GO_MISSING):
        outcome = "ready" if code == 0 else ("skipped: no Go" if code == GO_MISSING else f"failed ({code})")
        write(f"dra-bridge tests: {name} {outcome} after {time.monotonic() - start:.0f} s")
    return code


def prebuild(session: pytest.Session) -> None:
    if os.environ.get("DRA_BRIDGE_PREBUILD", "1") == "0" or session.config.option.collectonly:
        return
    tools = needed(Path(str(item.path)) for item in session.items)
    if not tools:
        return
    capture = session.config.pluginmanager.getplugin("capturemanager")

    def write(line: str) -> None:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()

    with capture.global_and_fixture_disabled() if capture else _nothing():
        for name, script, env in tools:
            run(name, script, write, env)


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
