"""The stop-check benchmark stays runnable and its two reads agree (tiny population; SQLite
only, no time asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def test_the_stop_check_benchmark_runs_and_both_reads_agree():
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "stop_check.py"),
            "--population",
            "8",
            "--steps",
            "5",
            "--postgres",
            "",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:] + run.stdout[-3000:]
    assert "SQLite     8 members x 5 steps: best_by_step" in run.stdout
