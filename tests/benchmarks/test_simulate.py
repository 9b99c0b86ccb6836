"""The simulation benchmark stays runnable: a few seeds, every count printed, no violation
(memory storage; no time asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests._helpers import run_benchmark

ROOT = Path(__file__).resolve().parent.parent.parent


def test_the_simulation_benchmark_runs_and_finds_no_violation():
    out = run_benchmark("simulate.py", "--seeds", "30", "--start", "7")
    assert "seeds run: 30 (7..36), storage memory, up to 3 workers" in out
    assert "faults injected: " in out and "violations: 0" in out
    assert "ms per seed" in out


def test_the_simulation_benchmark_refuses_a_storage_it_does_not_know():
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "simulate.py"), "--storage", "mysql"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and "invalid choice: 'mysql'" in run.stderr
