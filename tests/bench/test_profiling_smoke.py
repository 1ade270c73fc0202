"""bench/profiling.py's ``tenants`` (one line per tenant count, three figures each) and ``cold``."""

from __future__ import annotations

import pytest

from bench import profiling


def test_tenants_prints_a_lookup_time_per_count_and_way(capsys: pytest.CaptureFixture[str]) -> None:
    profiling.main(["tenants", "--counts", "10", "100"])
    lines = capsys.readouterr().out.splitlines()
    assert "us per lookup" in lines[0]
    rows = [line.split() for line in lines[1:]]
    assert [row[0] for row in rows] == ["10", "100"]
    for row in rows:
        figures = [float(x) for x in row[1:]]
        assert len(figures) == 3 and all(0 < f < 1000 for f in figures), row


def test_cold_prints_the_warm_and_the_cold_cpu_per_request(capsys: pytest.CaptureFixture[str]) -> None:
    profiling.main(["cold", "--workload", "mutate_small", "--requests", "20", "--sweep-mib", "4", "--tenants", "10"])
    out = capsys.readouterr().out
    assert out.startswith("mutate_small: ") and "ms warm" in out and "after a 4 MiB sweep" in out, out
