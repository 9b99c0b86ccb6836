"""The transformers overhead benchmark stays runnable (a tiny configuration; no timing is
asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent


def test_hf_overhead_benchmark_runs():
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    script = str(ROOT / "benchmarks" / "hf_overhead.py")
    command = [sys.executable, script, "--population", "2", "--intervals", "2"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "ratio" in run.stdout and "ms per interval" in run.stdout
