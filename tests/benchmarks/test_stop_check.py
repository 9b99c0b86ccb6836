"""The stop-check benchmark stays runnable and its two reads agree (tiny population; SQLite
only, no time asserted)."""

from __future__ import annotations

from tests._helpers import run_benchmark


def test_the_stop_check_benchmark_runs_and_both_reads_agree():
    out = run_benchmark("stop_check.py", "--population", "8", "--steps", "5", "--postgres", "")
    assert "SQLite     8 members x 5 steps: best_by_step" in out
