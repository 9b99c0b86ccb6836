"""The large-state benchmark stays runnable: its --quick mode completes and prints its figures.

No timing is asserted: machines are noisy, and the verdict is a measurement, not a test.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent


def test_quick_run_prints_the_figures() -> None:
    pytest.importorskip("torch")
    # Measure this checkout's poptune, whatever is installed.
    path = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "large_state.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": path},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
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
