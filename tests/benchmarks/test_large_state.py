"""The large-state benchmark stays runnable: its --quick mode completes and prints its figures.

No timing is asserted: machines are noisy, and the verdict is a measurement, not a test.
"""

from __future__ import annotations

import re

import pytest

from tests._helpers import run_benchmark


def test_quick_run_prints_the_figures() -> None:
    pytest.importorskip("torch")
    out = run_benchmark("large_state.py", "--quick")
    for row in (
        "wall, start-up included (s)",
        "framework time per interval, median (ms)",
        "framework time per interval, p90 (ms)",
        "bytes written, checkpoints + db (MB)",
        "peak RSS, largest worker process (MB)",
    ):
        assert re.search(rf"{re.escape(row)}\s+[\d.]+\s+[\d.]+\n", out), (row, out)
    assert re.search(r"intervals trained\s+12\s+12\n", out), out  # 4 members x 3 intervals
    assert re.search(r"ratio poptune / plain wall: [\d.]+ \(target <= 1\.05: (met|NOT met)", out)
    assert "status finished" in out
