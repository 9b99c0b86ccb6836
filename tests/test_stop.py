"""Stopping before the budget (target, plateau, wall clock): the reason is recorded and shown."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from click.testing import CliRunner

import poptune as pt
from poptune.cli import main
from poptune.records import Mode
from poptune.strategies import Progress, describe, rebuild
from poptune.testing import Quadratic, SlowQuadratic, check_steps, quadratic_space


def _run(url: str, trainable=Quadratic, **overrides):
    options = dict(
        space=quadratic_space(),
        metric="q",
        population=4,
        intervals=40,
        storage=url,
        name="stops",
        seed=0,
        progress=False,
    )
    return pt.run(trainable, **{**options, **overrides})


def test_a_target_stops_the_population_once_reached(storage_url: str):
    result = _run(storage_url, stop=pt.Target(1.15), sync=True)
    assert result.status == "stopped"
    assert result.record.error.startswith("target reached: the best q is")
    assert result.best.score >= 1.15
    steps = [m.step for m in result.members]
    assert max(steps) < 40  # stopped long before the budget
    before = [i for i in result.intervals() if i.step < max(steps)]
    assert max(i.score for i in before) < 1.15 or max(steps) == 1  # not earlier than needed
    check_steps(result)


def test_a_plateau_and_a_wall_clock_stop_too(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'p.db'}"
    flat = _run(url, name="flat", stop=[pt.Plateau(3, min_delta=1e-3)], exploit=None)
    assert flat.status == "stopped" and flat.record.error.startswith("plateau:")
    assert max(m.step for m in flat.members) < 40
    timed = _run(url, SlowQuadratic, name="timed", stop=pt.WallClock(0.5))
    assert timed.status == "stopped" and "wall-clock limit" in timed.record.error
    assert len(timed.intervals()) < 4 * 40
    out = CliRunner().invoke(main, ["status", "timed", "--storage", url])
    assert "Stopped before its budget: wall-clock limit reached" in out.output


def test_a_stopped_population_resumes_with_other_criteria(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'p.db'}"
    stopped = _run(url, intervals=12, stop=pt.Target(1.1), sync=True)
    assert stopped.status == "stopped"
    kept = pt.load(url, "stops").resume(progress=False)  # the stored target: stops again
    assert kept.status == "stopped"
    finished = pt.load(url, "stops").resume(stop=None, progress=False)
    assert finished.status == "finished" and [m.step for m in finished.members] == [12] * 4
    check_steps(finished)


def test_criteria_see_the_best_per_step():
    rows = [(0, 1, 0.2), (1, 1, 0.5), (0, 2, 0.6), (1, 2, float("nan")), (0, 3, 0.6)]
    progress = Progress.from_scores("q", Mode.MAX, rows, elapsed=2.0)
    assert progress.best_by_step == [0.5, 0.6, 0.6]
    assert pt.Target(0.6)(progress) and pt.Target(0.61)(progress) is None
    assert pt.Plateau(1)(progress) and pt.Plateau(2)(progress) is None
    assert pt.WallClock(2.0)(progress) and pt.WallClock(2.5)(progress) is None
    low = Progress.from_scores("loss", Mode.MIN, [(0, 1, 3.0), (1, 1, 2.0)], elapsed=0.0)
    assert pt.Target(2.0)(low) and pt.Target(1.9)(low) is None
    assert math.isinf(Progress.from_scores("q", Mode.MAX, [], 0.0).best_until(3))


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: pt.Target("high"), ValueError, r"'score' parameter of Target"),
        (lambda: pt.Plateau(0), ValueError, r"'patience' parameter of Plateau"),
        (lambda: pt.Plateau(2, min_delta=-1.0), ValueError, r"'min_delta'"),
        (
            lambda: pt.WallClock(0),
            ValueError,
            r"'seconds' parameter of WallClock must be a number > 0",
        ),
    ],
)
def test_bad_criteria_are_refused(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_stop_must_be_criteria(tmp_path: Path):
    with pytest.raises(TypeError, match=r"'stop' parameter must be a criterion.*Got 0.9 instead"):
        _run(f"sqlite:///{tmp_path / 'p.db'}", stop=0.9)


def test_a_criterion_on_a_metric_the_population_does_not_optimise_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path}/p.db"
    options = dict(space=quadratic_space(), metric="q", population=2, intervals=2, storage=url)
    for criterion in (pt.Target(1.0, metric="accuracy"), pt.Plateau(3, metric="loss")):
        with pytest.raises(ValueError, match=r"watches the metric .* optimises 'q'"):
            pt.run(Quadratic, **options, stop=criterion, progress=False)
    result = pt.run(Quadratic, **options, stop=pt.Target(9.0, metric="q"), progress=False)
    with pytest.raises(ValueError, match=r"watches the metric 'acc'"):
        result.resume(stop=[pt.Plateau(2, metric="acc")], progress=False)
    assert rebuild(describe(pt.Target(0.5, metric="q")), "stop").metric == "q"
