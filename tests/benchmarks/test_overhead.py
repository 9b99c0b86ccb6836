"""The overhead benchmark stays runnable (a tiny configuration; no timing is asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def test_overhead_benchmark_runs():
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "overhead.py"),
            "--population",
            "4",
            "--intervals",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "wall/ideal" in run.stdout and "framework time per interval" in run.stdout
