"""bench/run.py's inventory run at toy scale: claim validation with published devices beside the
same claims without, both servers Ready, the figures and the two targets there, every request
answered as expected. Timing is not asserted (see test_bench_smoke.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.bench.test_bench_smoke import ROOT, vegeta  # noqa: F401  (the module fixture)


@pytest.fixture(scope="module")
def result(vegeta: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:  # noqa: F811
    out = tmp_path_factory.mktemp("bench") / "inventory.json"
    command = [
        sys.executable,
        str(ROOT / "bench" / "run.py"),
        "--rates", "50",
        "--duration", "2",
        "--saturation-duration", "2",
        "--warmup", "0.5",
        "--workers", "4",
        "--claims", "1000",
        "--tenants", "10",
        "--devices", "80",
        "--device-shapes", "10",
        "--only", "validate_claims_1000,validate_inventory",
        "--timeout", "10",
        "--ready-timeout", "120",
        "--paired-rounds", "2",
        "--paired-duration", "1",
        "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False, cwd=ROOT)
    assert proc.returncode == 0, f"bench/run.py failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    assert "inventory: 80 devices in 10 shapes with 1,000 claims" in proc.stdout, proc.stdout[-2000:]
    loaded: dict[str, Any] = json.loads(out.read_text())
    return loaded


def test_both_servers_were_ready_and_the_inventory_was_seeded(result: dict[str, Any]) -> None:
    without, with_inventory = result["servers"]["claims-1000"], result["servers"]["inventory-80"]
    assert without["ready"] and with_inventory["ready"], (without, with_inventory)
    assert with_inventory["spec"]["devices"] == 80 and with_inventory["spec"]["claims"] == 1000
    startup = with_inventory["startup"]
    assert startup["runtime-built"] <= startup["devices-seeded"] <= startup["claims-seeded"], startup
    assert "devices-seeded" not in without["startup"]


def test_every_request_succeeded(result: dict[str, Any]) -> None:
    assert set(result["workloads"]) == {"validate_claims_1000", "validate_inventory"}
    for name, data in result["workloads"].items():
        for key, attack in data["attacks"].items():
            assert attack["requests"] > 0 and attack["success_ratio"] == 1.0, (name, key, attack["failures"])


def test_the_inventory_figures_and_targets_are_there(result: dict[str, Any]) -> None:
    inventory = result["figures"]["inventory"]
    for key in ("p99_ms", "p99_ms_without", "p99_ratio", "ready_seconds", "ready_seconds_without", "rss_ready_mib"):
        assert inventory[key] is not None, key
    assert (inventory["devices"], inventory["shapes"], inventory["claims"]) == (80, 10, 1000)
    targets = {t["target"]: t for t in result["targets"]}
    judged = [t for name, t in targets.items() if "80 devices" in name]
    assert len(judged) == 2 and all(isinstance(t["pass"], bool) and t["margin"] is not None for t in judged), judged


def test_the_inventory_p99_is_compared_in_alternating_rounds(result: dict[str, Any]) -> None:
    """With and without the inventory, both servers alive, rounds in alternating order; the target
    reads the median of the rounds' ratios."""
    pair = result["workloads"]["validate_inventory"]["paired_p99"]
    assert pair["compared_with"] == "validate_claims_1000"
    assert [r["order"][0] for r in pair["rounds"]] == ["validate_claims_1000", "validate_inventory"]
    assert all(r["success_ratio_min"] == 1.0 for r in pair["rounds"]), pair["rounds"]
    figure = result["figures"]["inventory"]["paired"]
    judged = next(t for t in result["targets"] if t["target"].startswith("claim validation p99"))
    assert "paired rounds" in judged["target"] and judged["value"] == figure["median_ratio"]
