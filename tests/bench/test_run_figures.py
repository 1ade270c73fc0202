"""The harness's own arithmetic (no servers): which attacks must succeed, which are overloads."""

from __future__ import annotations

from typing import Any

from bench.run import median, split_by_capacity


def attack(*, rate: int | None, rps: float, success: float, failures: dict[str, int] | None = None) -> dict[str, Any]:
    return {
        "attack": {"rate": rate, "workers": None if rate else 32},
        "throughput_rps": rps,
        "success_ratio": success,
        "failures": failures or {},
        "latency_ms": {"p50": 1.0},
    }


def test_fixed_rates_above_capacity_are_overloads_and_the_rest_must_succeed() -> None:
    workloads = {
        "rules_20": {
            "attacks": {
                "rate_200": attack(rate=200, rps=76, success=0.57, failures={"timeout": 1700}),
                "saturation_32": attack(rate=None, rps=121, success=1.0),
            }
        },
        "mutate_small": {
            "attacks": {
                "rate_500": attack(rate=500, rps=500, success=0.999),  # within capacity: counts
                "saturation_32": attack(rate=None, rps=1500, success=1.0),
            }
        },
    }
    successes, overloaded = split_by_capacity(workloads)
    assert sorted(successes) == [0.999, 1.0, 1.0]
    assert [(o["workload"], o["attack"], o["capacity_rps"]) for o in overloaded] == [("rules_20", "rate_200", 121)]
    assert overloaded[0]["failures"] == {"timeout": 1700}


def test_without_a_saturation_figure_every_attack_must_succeed() -> None:
    successes, overloaded = split_by_capacity({"w": {"attacks": {"rate_200": attack(rate=200, rps=10, success=0.5)}}})
    assert successes == [0.5] and overloaded == []


def test_median_of_the_rounds() -> None:
    assert median([0.8, 0.7, 0.9]) == 0.8
    assert median([0.8, 0.7, 0.9, 0.75]) == 0.775  # the mean of the middle two
    assert median([None, 0.7]) == 0.7  # a round without a figure is left out
    assert median([None]) is None and median([]) is None


def test_the_paired_p99_rounds_wait_for_the_servers_own_reservation_ttl() -> None:
    from bench.run import RESERVATION_TTL
    from webhook.serving.settings import Settings

    assert Settings.model_fields["quota_reservation_ttl_seconds"].default == RESERVATION_TTL
