"""bench/e2e.py at toy scale: the real control plane, Pods created in every arm but the native mapping
(no webhook, the bare webhook, the bare webhook that patches, dra-bridge, the MutatingAdmissionPolicy),
one at a time and then interleaved (the webhook arms on at once, each confined to its namespaces),
every response checked, the result file complete.

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
        "--interleaved", "1",
        "--arms", "none,bare,bare-patch,bridge,map",
        "--quiet-wait", "2",
        "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False, cwd=ROOT)
    assert proc.returncode == 0, (
        f"bench/e2e.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}"
    )
    assert str(out) in proc.stdout and "x p99" in proc.stdout and "target:" in proc.stdout, proc.stdout[-2000:]
    loaded: dict[str, Any] = json.loads(out.read_text())
    return loaded


def test_every_arm_created_and_checked_every_pod(result: dict[str, Any]) -> None:
    rows = {(r["arm"], r["workload"]): r for r in result["rows"]}
    expected = {"gpu": PODS, "gpu-seq": SEQUENTIAL, "no-gpu": PLAIN}
    arms = result["arms"]
    assert arms == ["none", "bare", "bare-patch", "bridge", "map"], (arms, result["skipped_arms"])
    assert set(rows) == {(arm, name) for arm in arms for name in expected}
    for (arm, name), row in rows.items():
        assert row["pods"] == expected[name], (arm, name)
        assert row["created"] == expected[name] and row["failures"] == 0, row
        assert row["settle_error"] is None, row
        for key in ("p50", "p90", "p99", "max"):
            assert row["latency_ms"][key] is not None and row["latency_ms"][key] > 0, (arm, name, key)
    assert result["failures"] == 0


def test_each_arm_made_its_calls(result: dict[str, Any]) -> None:
    rows = {(r["arm"], r["workload"]): r for r in result["rows"]}
    mutate = "pods.mutate.dra-bridge.io admit CREATE"
    validate = "pods.validate.dra-bridge.io validating CREATE"
    claims = "resourceclaims.validate.dra-bridge.io validating CREATE"
    # dra-bridge: the mutating and the Pod's validating webhook once per GPU Pod, the claim webhook per claim.
    bridge = rows[("bridge", "gpu")]["calls"]
    assert bridge[mutate] == PODS and bridge[validate] == PODS and bridge[claims] == PODS, bridge
    # The bare webhook: the same two calls per GPU Pod (it never patches, so no claim), counted on both ends.
    bare = rows[("bare", "gpu")]
    assert bare["calls"] == {mutate: PODS, validate: PODS}, bare["calls"]
    assert bare["self_counted_calls"] == {"/mutate": PODS, "/validate": PODS}, bare["self_counted_calls"]
    # The bare webhook that patches: the same three calls per GPU Pod as dra-bridge.
    patched = rows[("bare-patch", "gpu")]
    assert patched["calls"] == {mutate: PODS, validate: PODS, claims: PODS}, patched["calls"]
    assert patched["self_counted_calls"] == {"/mutate": PODS, "/validate": 2 * PODS}, patched["self_counted_calls"]
    # The policy: evaluated once per GPU Pod inside the apiserver, no webhook.
    policy = rows[("map", "gpu")]["calls"]
    assert policy == {"policy whole-gpu-to-dra no_error": PODS}, policy
    # matchConditions: a Pod without GPU requests never reaches a webhook; no calls without one.
    for arm in result["arms"]:
        assert not rows[(arm, "no-gpu")]["calls"], arm
        if arm == "none":
            for name in ("gpu", "gpu-seq"):
                assert not rows[(arm, name)]["calls"], (arm, name)
    assert "dra-bridge" in rows[("bridge", "gpu")]["cpu_ms_per_pod"]  # measured while it ran
    assert "bare-webhook" in rows[("bare", "gpu")]["cpu_ms_per_pod"]


def test_summary_compares_every_arm_with_none(result: dict[str, Any]) -> None:
    summary = result["summary"]
    assert set(summary) == {"gpu", "gpu-seq", "no-gpu"}
    for name, arms in summary.items():
        assert set(arms) == set(result["arms"]), name
        for arm, entry in arms.items():
            assert entry["added_ms_p50"] is not None and entry["ratio_p99"] is not None, (name, arm)
            assert [r["rep"] for r in entry["per_rep"]] == ([] if arm == "none" else [1]), (name, arm)
    assert summary["gpu"]["bare"]["webhook_calls_per_pod"] == 2
    assert set(result["target"]) >= {"limit", "gpu", "pass", "gpu vs bare-patch"}
    assert result["control_plane"]["version"].startswith("v1.")
    assert result["control_plane"]["mutating_admission_policy"].startswith("admissionregistration.k8s.io/v1")
    assert "bench/e2e.py" in result["command"] and result["date"]


def test_interleaved_arms_each_reached_only_their_own_namespaces(result: dict[str, Any]) -> None:
    """In the interleaved round every arm is on at once: each GPU Pod must come back as its own arm
    promises (converted by bridge and bare-patch, untouched by bare and none) and reach only its own
    arm's webhooks, as many calls per Pod as when the arm runs alone."""
    interleaved = result["interleaved"]
    (round_,) = interleaved["rounds"]
    arms = round_["arms"]
    assert list(arms) == ["none", "bare", "bare-patch", "bridge"], list(arms)
    for arm, entry in arms.items():
        assert entry["pods"] == PODS and entry["failures"] == 0, (arm, entry)
        assert entry["latency_ms"]["p50"] is not None and entry["latency_ms"]["p50"] > 0, arm
    mutate = "pods.mutate.dra-bridge.io admit CREATE"
    validate = "pods.validate.dra-bridge.io validating CREATE"
    claims = "resourceclaims.validate.dra-bridge.io validating CREATE"
    assert arms["none"]["calls_per_pod"] == {}, arms["none"]
    assert arms["bare"]["calls_per_pod"] == {mutate: 1.0, validate: 1.0}, arms["bare"]
    assert arms["bare-patch"]["calls_per_pod"] == {mutate: 1.0, validate: 1.0, claims: 1.0}, arms["bare-patch"]
    assert arms["bridge"]["calls_per_pod"] == {mutate: 1.0, validate: 1.0, claims: 1.0}, arms["bridge"]
    assert arms["bridge"]["self_decision_ms_mean"].keys() == {"mutate", "validate"}, arms["bridge"]
    target = result["target"]
    assert target["judged_on"] == "interleaved" and target["interleaved"]["median_ratio"] == round_["ratio"]
    assert target["pass"] == (round_["ratio"] <= target["limit"])
    assert [r["round"] for r in interleaved["log"]] == [1] and interleaved["log"][0]["order"] == list(arms)
