"""The scaling benchmark's population-size table stays runnable (tiny sizes, SQLite only; no
rate is asserted, only that every run was measured and reported)."""

from __future__ import annotations

import re

from tests._helpers import run_benchmark


def test_the_sizes_table_runs_and_reports_medians():
    out = run_benchmark(
        "scaling.py", "--tables", "sizes", "--sizes", "8,16", "--repeat", "2", "--seconds", "60",
        "--postgres", "",
    )  # fmt: skip
    row = next(line for line in out.splitlines() if line.startswith("SQLite"))
    cells = re.findall(r"(\d+): +([\d.]+)/s \(([\d.]+)x\) \[(\d+)-(\d+)\]", row)
    assert [int(size) for size, *_ in cells] == [8, 16], row
    for _, rate, _ratio, low, high in cells:
        assert float(rate) > 0 and int(low) <= round(float(rate)) <= int(high)
    assert cells[0][2] == "1.00"
