"""The evidence script stays runnable: its --smoke mode (every task and variant, 1 seed, tiny
budgets; well under a minute on 2 cores) runs in CI and writes every section and row."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests._helpers import run_benchmark


def test_smoke_run_writes_every_section_and_row(tmp_path: Path):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    pytest.importorskip("gymnasium")
    pytest.importorskip("sacrebleu")
    output = tmp_path / "results.md"
    run_benchmark("pbt_vs_random.py", "--smoke", "--workers", "1", "--output", str(output))
    text = output.read_text()
    headings = ("## toy", "## digits", "## GAN", "## translation", "## cartpole", "ablation")
    for heading in headings:
        assert heading in text
    assert "**Step accounting.**" in text
    # five tasks: sync and async PBT and random search in each, two more exploits on cartpole
    assert text.count("| PBT, sync |") == 5
    assert text.count("| PBT, async |") == 5
    # ... and the PB2 section: PB2, PBT and random search on the toy, digits and cartpole
    assert "## PB2 against PBT and random search, population 4" in text
    assert text.count("| PB2 |") == 3
    assert text.count("| random search |") == 5 + 3
    assert text.count("- **PB2** does") + text.count("- **PB2** beats") == 6
    assert text.count("| PBT, tournament |") == 1 and text.count("| PBT, t-test |") == 1
    assert text.count("| PBT |") == 1 + 3  # the ablation, the PB2 section
    # a verdict under each table for every PBT variant, and the toy's gradient steps
    assert text.count("- **PBT, sync** ") == 5 and text.count("- **PBT, async** ") == 5
    assert text.count("| gradient steps to target") == 1 + 1  # the toy, in both sections
    assert text.count("intervals trained (median)") == 5 + 3
    assert "winning lineage, `lr`" in text
