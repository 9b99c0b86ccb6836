"""The scaling benchmark's population-size table stays runnable (tiny sizes, SQLite only; no
rate is asserted, only that every run was measured and reported)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def test_the_sizes_table_runs_and_reports_medians():
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "scaling.py"),
            "--tables",
            "sizes",
            "--sizes",
            "8,16",
            "--repeat",
            "2",
            "--seconds",
            "60",
            "--postgres",
            "",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    row = next(line for line in run.stdout.splitlines() if line.startswith("SQLite"))
    cells = re.findall(r"(\d+): +([\d.]+)/s \(([\d.]+)x\) \[(\d+)-(\d+)\]", row)
    assert [int(size) for size, *_ in cells] == [8, 16], row
    for _, rate, _ratio, low, high in cells:
        assert float(rate) > 0 and int(low) <= round(float(rate)) <= int(high)
    assert cells[0][2] == "1.00"
