"""The overhead benchmark stays runnable (a tiny configuration; no timing is asserted)."""

from __future__ import annotations

from tests._helpers import run_benchmark


def test_overhead_benchmark_runs():
    out = run_benchmark("overhead.py", "--population", "4", "--intervals", "4")
    assert "wall/ideal" in out and "framework time per interval" in out
