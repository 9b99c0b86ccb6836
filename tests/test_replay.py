"""Replay: one fresh model trained on the winning lineage's schedule, stored as a population."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

import poptune as pt
from poptune.cli import main


def test_a_replay_of_a_deterministic_lineage_reaches_the_same_weights(storage_url: str, quick_run):
    source = quick_run(storage=storage_url, name="toy", population=4, intervals=8, sync=True)
    schedule = source.schedule()
    assert len({s.member for s in schedule}) > 1  # the lineage crossed members: a real test
    replayed = pt.replay(storage_url, "toy", progress=False)
    assert replayed.name == "toy-replay" and replayed.status == "finished"
    assert len(replayed.members) == 1 and replayed.exploits() == []
    intervals = replayed.intervals()
    assert [dict(i.hparams) for i in intervals] == [dict(s.hparams) for s in schedule]
    # Quadratic trains deterministically from fixed initial weights: the same schedule gives
    # the same weights, so the replay scores what the population's best did.
    assert replayed.best.score == pytest.approx(source.best.score, rel=1e-12)
    np.testing.assert_allclose(replayed.best.state()["theta"], source.best.state()["theta"])
    again = pt.replay(storage_url, "toy", progress=False)  # continues: nothing trained twice
    assert len(again.intervals()) == 8


def test_replay_errors_and_cli(quick_run):
    url = quick_run.storage
    quick_run(name="toy", intervals=4)
    out = CliRunner().invoke(main, ["replay", "toy", "--storage", url, "--no-progress"])
    assert out.exit_code == 0, out.output
    assert "toy-replay: q" in out.output and "whose best is" in out.output
    with pytest.raises(ValueError, match="not a replay of this schedule"):
        pt.replay(url, "toy", replay_name="toy", progress=False)
    with pytest.raises(pt.PopulationNotFound):
        pt.replay(url, "nope", progress=False)
