"""The claims benchmark stays runnable: its --quick mode completes and prints its figures (no
share asserted: how often members move depends on the machine's timing)."""

from __future__ import annotations

import re

from tests._helpers import run_benchmark


def test_quick_run_prints_the_share_reloaded() -> None:
    out = run_benchmark("claims.py", "--quick")
    assert re.search(r"population 4, 2 workers, seed 0: \d+ of \d+ intervals reloaded", out), out
    assert re.search(r"population 4, 2 workers: reloaded, median [\d.]+%", out), out
