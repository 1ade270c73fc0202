"""bench/e2e.py at toy scale: the real control plane, Pods created without and with the registered
webhooks, every response checked, the result file complete.

Timing is not asserted. Like the end-to-end tests, skipped when the control plane cannot be built
(no cached binaries and no Go), unless ``DRA_BRIDGE_E2E=require`` turns that into a failure.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.availability import control_plane_bin_or_skip

ROOT = Path(__file__).resolve().parents[2]
PODS, SEQUENTIAL, PLAIN, WARMUP = 10, 4, 6, 2

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    control_plane_bin_or_skip()
    out = tmp_path_factory.mktemp("bench-e2e") / "e2e.json"
    command = [
        sys.executable,
        str(ROOT / "bench" / "e2e.py"),
        "--pods", str(PODS),
        "--rate", "10",
        "--sequential", str(SEQUENTIAL),
        "--plain", str(PLAIN),
        "--warmup", str(WARMUP),
        "--reps", "1",
        "--quiet-wait", "2",
        "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False, cwd=ROOT)
    assert proc.returncode == 0, (
        f"bench/e2e.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}"
    )
    assert str(out) in proc.stdout and "x p99" in proc.stdout, proc.stdout[-2000:]
    loaded: dict[str, Any] = json.loads(out.read_text())
    return loaded


def test_both_phases_created_and_checked_every_pod(result: dict[str, Any]) -> None:
    rows = {(r["phase"], r["workload"]): r for r in result["rows"]}
    expected = {"gpu": PODS, "gpu-seq": SEQUENTIAL, "no-gpu": PLAIN}
    assert set(rows) == {(phase, name) for phase in ("without", "with") for name in expected}
    for (phase, name), row in rows.items():
        assert row["pods"] == expected[name], (phase, name)
        assert row["created"] == expected[name] and row["failures"] == 0, row
        assert row["settle_error"] is None, row
        for key in ("p50", "p90", "p99", "max"):
            assert row["latency_ms"][key] is not None and row["latency_ms"][key] > 0, (phase, name, key)
    assert result["failures"] == 0


def test_the_webhooks_ran_only_with_them_registered(result: dict[str, Any]) -> None:
    rows = {(r["phase"], r["workload"]): r for r in result["rows"]}
    mutate = "pods.mutate.dra-bridge.io admit CREATE"
    with_gpu = rows[("with", "gpu")]["apiserver"]
    # The apiserver called the mutating webhook once per GPU Pod and the claim webhook per claim.
    assert with_gpu["webhooks"][mutate]["count"] == PODS
    assert with_gpu["webhooks"]["resourceclaims.validate.dra-bridge.io validating CREATE"]["count"] == PODS
    # matchConditions: a Pod without GPU requests never reaches dra-bridge.
    assert not rows[("with", "no-gpu")]["apiserver"].get("webhooks")
    for name in ("gpu", "gpu-seq", "no-gpu"):
        assert not rows[("without", name)]["apiserver"].get("webhooks"), name
    assert "dra-bridge" in rows[("with", "gpu")]["cpu_ms_per_pod"]  # measured while it ran


def test_summary_compares_the_phases(result: dict[str, Any]) -> None:
    summary = result["summary"]
    assert set(summary) == {"gpu", "gpu-seq", "no-gpu"}
    for name, entry in summary.items():
        assert entry["ratio_p50"] is not None and entry["ratio_p99"] is not None, name
        assert [r["rep"] for r in entry["per_rep"]] == [1], name
    assert result["control_plane"]["version"].startswith("v1.")
    assert "bench/e2e.py" in result["command"] and result["date"]
