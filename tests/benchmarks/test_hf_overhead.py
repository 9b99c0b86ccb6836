"""The transformers overhead benchmark stays runnable (a tiny configuration; no timing is
asserted)."""

from __future__ import annotations

import pytest

from tests._helpers import run_benchmark


def test_hf_overhead_benchmark_runs():
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    out = run_benchmark("hf_overhead.py", "--population", "2", "--intervals", "2")
    assert "ratio" in out and "ms per interval" in out
