"""The evidence script stays runnable: its --quick mode runs in CI and writes a full table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent


def test_quick_run_writes_the_results_tables(tmp_path: Path):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    pytest.importorskip("gymnasium")
    pytest.importorskip("sacrebleu")
    output = tmp_path / "results.md"
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "pbt_vs_random.py"),
            "--quick",
            "--workers",
            "1",
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    text = output.read_text()
    headings = ("## toy", "## digits", "## GAN", "## translation", "## cartpole", "ablation")
    for heading in headings:
        assert heading in text
    assert text.count("| PBT |") == 6  # five tasks and the ablation
    assert text.count("| random search |") == 5
    assert "| PBT, t-test |" in text and "| PBT, tournament |" in text
    assert "winning lineage, `lr`" in text
