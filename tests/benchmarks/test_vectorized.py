"""The vectorised-population benchmark stays runnable: its --smoke mode completes and prints
every figure against its target.

No timing is asserted: machines are noisy, and the verdict is a measurement, not a test.
"""

from __future__ import annotations

import re

import pytest

from tests._helpers import run_benchmark


def test_smoke_run_prints_every_figure_against_its_target() -> None:
    pytest.importorskip("torch")
    out = run_benchmark("vectorized.py", "--smoke")
    number = r"[\d.]+"
    for row in (
        r"wall, start-up included \(s\)",
        r"CPU, every process \(s\)",
        r"member-intervals per CPU-second",
        r"framework time per member-interval \(ms\)",
        r"peak RSS, largest process \(MB\)",
    ):
        assert re.search(rf"{row}\s+{number}\s+{number}\n", out), (row, out)
    # 8 members x 2 intervals on both sides: every member-interval recorded on its own.
    assert re.search(r"member-intervals recorded\s+16\s+16\n", out), out
    score = r"[\d.e+-]+"  # 6.79e-05
    assert re.search(rf"final mse: median \[IQR\]\s+{score} \[{score} to {score}\]\s+", out), out
    for target in (r"target >= 3x", r"target >= 5x", r"target < 10%"):
        assert re.search(rf"\({target}: (met|NOT met)\)", out), (target, out)
    assert re.search(r"final scores: medians .*: (yes, equal within noise|NO, .*)\n", out), out
    assert re.search(r"targets: (all met|NOT met: .+)\n", out), out
