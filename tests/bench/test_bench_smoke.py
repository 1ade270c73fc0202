"""bench/run.py at toy scale: every piece runs (servers over TLS, vegeta, figures, targets) and the
result file has every figure, with every request answered as expected.

Timing is not asserted: the figures of a 2-second attack on a shared machine mean nothing; that
they exist and that nothing failed does. Skipped, with the reason, when vegeta cannot be built
(no Go); a failed build fails.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENSURE_VEGETA = ROOT / "bench" / "ensure-vegeta.sh"
GO_MISSING = 3  # ensure-vegeta.sh's exit code when Go is not installed


@pytest.fixture(scope="module")
def vegeta() -> Path:
    proc = subprocess.run(["bash", str(ENSURE_VEGETA)], capture_output=True, text=True, timeout=1800, check=False)
    if proc.returncode == GO_MISSING:
        pytest.skip(f"no vegeta: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, f"{ENSURE_VEGETA} failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def result(vegeta: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "latest.json"
    command = [
        sys.executable,
        str(ROOT / "bench" / "run.py"),
        "--rates", "50",
        "--duration", "2",
        "--saturation-duration", "2",
        "--warmup", "0.5",
        "--workers", "4",
        "--claims", "0,1000",
        "--tenants", "10",
        "--rules", "0,2",
        "--rule-tenants", "2",
        "--devices", "0",  # the inventory run has its own smoke test (test_inventory_bench_smoke.py)
        "--timeout", "10",
        "--ready-timeout", "120",
        "--paired-rounds", "2",
        "--paired-duration", "1",
        "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False, cwd=ROOT)
    assert proc.returncode == 0, f"bench/run.py failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    assert "targets" in proc.stdout and str(out) in proc.stdout, proc.stdout[-2000:]
    loaded: dict[str, Any] = json.loads(out.read_text())
    return loaded


def lookup(document: dict[str, Any], dotted: str) -> Any:
    value: Any = document
    for key in dotted.split("."):
        assert isinstance(value, dict) and key in value, f"{dotted}: no {key!r}"
        value = value[key]
    return value


def test_every_figure_is_there(result: dict[str, Any]) -> None:
    required = result["required_figures"]
    assert len(required) > 50
    missing = [path for path in required if lookup(result, path) is None]
    assert not missing, f"figures without a value: {missing}"
    for key in ("nproc", "cpu_model", "python", "server_stack", "vegeta", "pinning"):
        assert result["machine"][key] not in (None, ""), key
    for key in ("uvicorn", "uvicorn_http", "uvicorn_loop", "httptools", "uvloop"):
        assert key in result["machine"]["server_stack"], key
    assert result["date"] and "bench/run.py" in result["command"]


def test_every_request_succeeded(result: dict[str, Any]) -> None:
    attacks = {
        f"{workload}/{name}": attack
        for workload, data in result["workloads"].items()
        for name, attack in data["attacks"].items()
    }
    assert len(attacks) == 2 * len(result["workloads"])  # one rate and one saturation each
    failed = {key: (a["success_ratio"], a["failures"], a["failure_samples"]) for key, a in attacks.items()
              if a["success_ratio"] != 1.0 or a["requests"] == 0}  # fmt: skip
    assert not failed, failed
    assert result["figures"]["success_ratio_min"] == 1.0


def test_the_paired_rounds_alternate_and_every_request_succeeded(result: dict[str, Any]) -> None:
    paired = result["workloads"]["mutate_small"]["paired"]
    assert [r["order"] for r in paired["rounds"]] == [["ceiling", "workload"], ["workload", "ceiling"]]
    for r in paired["rounds"]:
        assert r["success_ratio_min"] == 1.0 and r["ceiling_rps"] > 0 and r["workload_rps"] > 0, r
        assert r["ratio"] == round(r["workload_rps"] / r["ceiling_rps"], 3)
        assert r["foreign_load_on_server_cpu"] is None or r["foreign_load_on_server_cpu"] >= 0
    figure = result["figures"]["paired_vs_ceiling"]["mutate_small"]
    assert figure["ratios"] == [r["ratio"] for r in paired["rounds"]]
    mutate = next(t for t in result["targets"] if t["target"].startswith("mutate throughput"))
    assert "paired rounds" in mutate["target"] and mutate["value"] == figure["median_ratio"]


def test_the_quota_p99_is_compared_in_alternating_rounds_with_both_servers_alive(result: dict[str, Any]) -> None:
    """The p99 with the most claims against the fewest: rounds at the first rate, alternating the two
    servers (the fewest first in even rounds), every request answered, and the target reading the
    median of the rounds' ratios."""
    pair = result["workloads"]["validate_claims_1000"]["paired_p99"]
    assert pair["compared_with"] == "validate_claims_0" and pair["rate"] == 50
    assert [r["order"] for r in pair["rounds"]] == [
        ["validate_claims_0", "validate_claims_1000"],
        ["validate_claims_1000", "validate_claims_0"],
    ]
    for r in pair["rounds"]:
        assert r["success_ratio_min"] == 1.0, r
        assert r["p99_ms"] > 0 and r["p99_ms_other"] > 0 and r["ratio"] == round(r["p99_ms"] / r["p99_ms_other"], 3)
    figure = result["figures"]["quota"]["paired"]
    assert figure["ratios"] == [r["ratio"] for r in pair["rounds"]]
    quota = next(t for t in result["targets"] if t["target"].startswith("quota p99"))
    assert "paired rounds" in quota["target"] and quota["value"] == figure["median_ratio"]
    # the base server stayed up for the rounds, and stopped with the run
    assert result["servers"]["claims-0"]["exit_code"] is not None


def test_servers_were_ready_and_measured(result: dict[str, Any]) -> None:
    for name in ("claims-0", "claims-1000", "rules-2"):
        server = result["servers"][name]
        assert server["ready"] and server["ready_seconds"] > 0, server
        assert server["rss_ready_mib"] > 0 and server["startup"]["serving"] > 0, server
    assert (
        result["servers"]["claims-1000"]["startup"]["claims-seeded"]
        >= result["servers"]["claims-1000"]["startup"]["runtime-built"]
    )


def test_targets_are_judged(result: dict[str, Any]) -> None:
    targets = {t["target"]: t for t in result["targets"]}
    assert len(targets) == 6
    for target in targets.values():
        assert isinstance(target["pass"], bool) and target["value"] is not None, target
        assert target["margin"] is not None, target
