"""The simulation benchmark stays runnable: a few seeds, every count printed, no violation
(memory storage; no time asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def test_the_simulation_benchmark_runs_and_finds_no_violation():
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "simulate.py"), "--seeds", "30", "--start", "7"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:] + run.stdout[-3000:]
    assert "seeds run: 30 (7..36), storage memory, up to 3 workers" in run.stdout
    assert "faults injected: " in run.stdout and "violations: 0" in run.stdout
    assert "ms per seed" in run.stdout


def test_the_simulation_benchmark_refuses_a_storage_it_does_not_know():
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "simulate.py"), "--storage", "mysql"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and "invalid choice: 'mysql'" in run.stderr
