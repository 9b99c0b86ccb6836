"""Stopping before the budget (target, plateau, wall clock): the reason is recorded and shown."""

from __future__ import annotations

import math

import pytest
from click.testing import CliRunner

import poptune as pt
from poptune.cli import main
from poptune.records import Mode
from poptune.strategies import Progress, describe, rebuild
from poptune.testing import SlowQuadratic, check_steps

# A budget far beyond what a stop criterion lets the 4 members train.
LONG = {"population": 4, "intervals": 40}


def test_a_target_stops_the_population_once_reached(storage_url: str, quick_run):
    result = quick_run(storage=storage_url, name="stops", stop=pt.Target(1.15), sync=True, **LONG)
    assert result.status == "stopped"
    assert result.record.error.startswith("target reached: the best q is")
    assert result.best.score >= 1.15
    steps = [m.step for m in result.members]
    assert max(steps) < 40  # stopped long before the budget
    before = [i for i in result.intervals() if i.step < max(steps)]
    assert max(i.score for i in before) < 1.15 or max(steps) == 1  # not earlier than needed
    check_steps(result)


def test_a_plateau_and_a_wall_clock_stop_too(quick_run):
    url = quick_run.storage
    flat = quick_run(name="flat", stop=[pt.Plateau(3, min_delta=1e-3)], exploit=None, **LONG)
    assert flat.status == "stopped" and flat.record.error.startswith("plateau:")
    assert max(m.step for m in flat.members) < 40
    timed = quick_run(SlowQuadratic, name="timed", stop=pt.WallClock(0.5), **LONG)
    assert timed.status == "stopped" and "wall-clock limit" in timed.record.error
    assert len(timed.intervals()) < 4 * 40
    out = CliRunner().invoke(main, ["status", "timed", "--storage", url])
    assert "Stopped before its budget: wall-clock limit reached" in out.output


def test_a_stopped_population_resumes_with_other_criteria(quick_run):
    url = quick_run.storage
    stopped = quick_run(name="stops", population=4, intervals=12, stop=pt.Target(1.1), sync=True)
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


def test_stop_must_be_criteria(quick_run):
    with pytest.raises(TypeError, match=r"'stop' parameter must be a criterion.*Got 0.9 instead"):
        quick_run(name="stops", stop=0.9, **LONG)


def test_a_criterion_on_a_metric_the_population_does_not_optimise_is_refused(quick_run):
    for criterion in (pt.Target(1.0, metric="accuracy"), pt.Plateau(3, metric="loss")):
        with pytest.raises(ValueError, match=r"watches the metric .* optimises 'q'"):
            quick_run(population=2, stop=criterion)
    result = quick_run(population=2, stop=pt.Target(9.0, metric="q"))
    with pytest.raises(ValueError, match=r"watches the metric 'acc'"):
        result.resume(stop=[pt.Plateau(2, metric="acc")], progress=False)
    assert rebuild(describe(pt.Target(0.5, metric="q")), "stop").metric == "q"
