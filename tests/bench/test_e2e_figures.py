"""bench/e2e.py's judgement of the interleaved rounds, on made-up samples (no control plane)."""

from __future__ import annotations

from bench.e2e import Row, Sample, confined, interleave, summarize_interleaved, target


def _row(arm: str, round_: int, milliseconds: list[float]) -> Row:
    row = Row(arm, "interleaved", round_, f"ns-{arm}", len(milliseconds), 10.0)
    row.samples = [Sample(ms / 1000, ms / 1000, 0.0, 201, b"") for ms in milliseconds]
    return row


def test_each_round_is_read_against_its_own_none_and_the_median_of_the_ratios_is_judged() -> None:
    rows = [
        *(_row("none", 1, [5, 5, 5]), _row("bare", 1, [7, 7, 7]), _row("bridge", 1, [8, 8, 8])),  # 3/2
        *(_row("none", 2, [9, 9, 9]), _row("bare", 2, [11, 11, 11]), _row("bridge", 2, [11.5] * 3)),  # 2.5/2
        *(_row("none", 3, [5, 5, 5]), _row("bare", 3, [7, 7, 7]), _row("bridge", 3, [10, 10, 10])),  # 5/2
    ]
    interleaved = summarize_interleaved(rows, ["none", "bare", "bridge"])
    assert [r["ratio"] for r in interleaved["rounds"]] == [1.5, 1.25, 2.5]
    assert interleaved["rounds"][1]["arms"]["bridge"]["added_ms_p50"] == 2.5  # against round 2's none, not round 1's
    assert interleaved["median_ratio"] == 1.5
    judged = target({}, interleaved)
    assert judged["judged_on"] == "interleaved" and judged["pass"] is True


def test_a_round_where_the_bare_webhook_adds_nothing_counts_against_dra_bridge() -> None:
    rows = [
        *(_row("none", 1, [5, 5, 5]), _row("bare", 1, [7, 7, 7]), _row("bridge", 1, [7.5] * 3)),  # 1.25
        *(_row("none", 2, [5, 5, 5]), _row("bare", 2, [4, 4, 4]), _row("bridge", 2, [6, 6, 6])),  # bare -1: unbounded
        *(_row("none", 3, [5, 5, 5]), _row("bare", 3, [7, 7, 7]), _row("bridge", 3, [8.2] * 3)),  # 1.6
    ]
    interleaved = summarize_interleaved(rows, ["none", "bare", "bridge"])
    assert interleaved["rounds"][1]["ratio"] is None and interleaved["rounds"][1]["ratio_unbounded"] is True
    assert interleaved["median_ratio"] == 1.6  # the unbounded round is the largest, not left out (else 1.425)
    assert target({}, interleaved)["pass"] is False


def test_pods_go_to_the_arms_in_turn_from_a_rotating_first_arm() -> None:
    arms = ["none", "bare", "bridge"]
    assert interleave(arms, 5, 0) == ["none", "bare", "bridge", "none", "bare"]
    assert interleave(arms, 4, 1) == ["bare", "bridge", "none", "bare"]


def test_an_arm_s_configurations_apply_only_to_its_namespaces_under_names_of_its_own() -> None:
    shipped = [
        {
            "metadata": {"name": "dra-bridge"},
            "webhooks": [
                {"name": "pods.mutate.dra-bridge.io", "namespaceSelector": {"matchExpressions": [{"key": "a"}]}},
                {"name": "claims.validate.dra-bridge.io"},
            ],
        }
    ]
    (mine,) = confined(shipped, "bare")
    assert mine["metadata"]["name"] == "dra-bridge-bare"
    assert [h["name"] for h in mine["webhooks"]] == [
        "bare.pods.mutate.dra-bridge.io",
        "bare.claims.validate.dra-bridge.io",
    ]
    arm = {"key": "bench.dra-bridge.io/arm", "operator": "In", "values": ["bare"]}
    assert mine["webhooks"][0]["namespaceSelector"]["matchExpressions"] == [{"key": "a"}, arm]
    assert mine["webhooks"][1]["namespaceSelector"]["matchExpressions"] == [arm]
    assert shipped[0]["metadata"]["name"] == "dra-bridge" and "namespaceSelector" not in shipped[0]["webhooks"][1]
