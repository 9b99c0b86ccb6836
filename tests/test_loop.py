"""Your own training loop: a function that reports at interval boundaries is a member."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import poptune as pt
from poptune.loop import LoopError
from poptune.testing import Quadratic, check_steps, quadratic_loop

# The population most of these tests train: 4 members, 8 intervals each.
SIZE = {"population": 4, "intervals": 8}


@pytest.fixture(autouse=True)
def _starts() -> None:
    quadratic_loop.starts.clear()


def _records(result: pt.Result) -> list[tuple]:
    return [(i.member, i.step, dict(i.hparams), i.score, i.origin) for i in result.intervals()]


def test_a_loop_trains_like_the_class_and_never_restarts(storage_url, quick_run):
    loop = quick_run(quadratic_loop, storage=storage_url, name="loop", sync=True, **SIZE)
    same = quick_run(storage=storage_url, name="class", sync=True, **SIZE)
    assert loop.status == "finished" and loop.exploits()
    check_steps(loop)
    assert _records(loop) == _records(same)  # the same algorithm, whichever form the member has
    assert loop.exploits() and [e.donor for e in loop.exploits()] == [
        e.donor for e in same.exploits()
    ]
    assert all(i.metrics["starts"] == 1.0 for i in loop.intervals())  # nothing restarted
    assert quadratic_loop.starts == {0: 1, 1: 1, 2: 1, 3: 1}


@pytest.mark.parametrize("workers", [1, 2])
def test_an_exploit_hands_the_donor_state_to_the_running_loop(
    storage_url, writes, workers, quick_run
):
    result = quick_run(
        quadratic_loop, storage=storage_url, name="copies", population=4, intervals=6,
        workers=workers,
    )  # fmt: skip
    check_steps(result)
    exploits = result.exploits()
    assert exploits
    lineage = result.lineage()
    replayed = 0
    for event in exploits:
        after = result.storage.interval(result.record.id, event.member, event.donor_step + 1)
        if after is None:
            continue  # copied at the budget: nothing more to train
        assert after.origin == (event.donor, event.donor_step)
        # the donor's weights, replayed from its lineage, plus one interval with the explored
        # hparams give exactly the score the running loop reported: interval.state was the
        # donor's state
        theta = np.array([0.9, 0.9])
        for node in [*lineage.ancestry(event.donor, event.donor_step), after]:
            h = np.array([node.hparams["h0"], node.hparams["h1"]])
            for _ in range(Quadratic.steps):
                theta = theta + Quadratic.lr * (-2.0 * h * theta)
        assert after.score == pytest.approx(1.2 - float(np.sum(theta**2)), abs=1e-12)
        replayed += 1
    assert replayed


def test_sync_loops_are_identical_for_one_and_two_workers(tmp_path: Path, writes, quick_run):
    one = quick_run(quadratic_loop, storage=f"sqlite:///{tmp_path / 'one.db'}", sync=True, **SIZE)
    two = quick_run(
        quadratic_loop, storage=f"sqlite:///{tmp_path / 'two.db'}", sync=True, workers=2, **SIZE
    )
    assert _records(one) == _records(two)


def returns_early(ctx: Any) -> None:
    for interval in ctx.intervals():
        if interval.step == 2:
            return
        interval.report(0.5, state={"x": 1.0})


def reports_twice(ctx: Any) -> None:
    for interval in ctx.intervals():
        interval.report(0.5, state={"x": 1.0})
        if interval.step == 2:
            interval.report(0.6, state={"x": 1.0})


def never_reports(ctx: Any) -> None:
    for interval in ctx.intervals():
        if interval.step != 2:
            interval.report(0.5, state={"x": 1.0})


def reports_no_state(ctx: Any) -> None:
    for interval in ctx.intervals():
        interval.report(0.5, state={"x": 1.0} if interval.step != 2 else None)


@pytest.mark.parametrize(
    ("function", "message"),
    [
        (returns_early, "returned while the member still had intervals to train (at step 2)"),
        (reports_twice, "interval.report() was called twice for step 2"),
        (never_reports, "step 2 ended without interval.report"),
        (reports_no_state, "interval.report() needs state="),
    ],
)
def test_a_broken_loop_gets_a_clear_error_and_loses_nothing(
    tmp_path: Path, writes, function, message, quick_run
):
    url = f"sqlite:///{tmp_path / 'poptune.db'}"
    with pytest.raises(pt.PopulationError, match="attempts in a row failed"):
        quick_run(function, storage=url, population=2, intervals=4, name="broken", exploit=None)
    result = pt.load(url, "broken")
    failures = result.failures()
    assert failures and all(message in f.traceback for f in failures)
    assert all(f.step == 2 for f in failures)
    # the first interval of every member was recorded, with its checkpoint, and is kept
    assert sorted((i.member, i.step) for i in result.intervals()) == [(0, 1), (1, 1)]
    assert all(result.storage.checkpoint(result.record.id, m, 1) for m in (0, 1))
    assert issubclass(LoopError, RuntimeError)


def test_a_function_with_the_wrong_signature_is_refused(quick_run):
    def two(ctx: Any, extra: Any) -> None: ...

    with pytest.raises(TypeError, match=r"takes one argument, the context.*two\(ctx"):
        quick_run(two, **SIZE)


def test_best_load_explains_that_a_function_has_no_instance(quick_run):
    result = quick_run(quadratic_loop, population=4, intervals=2)
    assert set(result.best.state()) == {"theta"}
    with pytest.raises(TypeError, match=r"load best.state\(\) into your model"):
        result.best.load()


def reports_an_object(ctx: Any) -> None:
    for interval in ctx.intervals():
        interval.report(0.5, state={"model": {"w": [1.0]}, "sampler": object()})


def test_a_state_that_cannot_be_checkpointed_names_the_offending_key(tmp_path: Path, quick_run):
    url = f"sqlite:///{tmp_path / 'poptune.db'}"
    with pytest.raises(pt.PopulationError, match="attempts in a row failed"):
        quick_run(
            reports_an_object, storage=url, population=2, intervals=2, name="object", exploit=None
        )
    failures = pt.load(url, "object").failures()
    assert failures
    assert all("cannot be checkpointed" in f.traceback for f in failures)
    assert all("state['sampler']" in f.traceback for f in failures)


ENDED: list[tuple[int, int]] = []  # (member, last step) of calls that ran their code after the loop


def _loop_with_a_tail(ctx: Any) -> None:
    x, step = np.zeros(2), 0
    for interval in ctx.intervals():
        step = interval.step
        if interval.state is not None:
            x = np.array(interval.state)
        x = x + float(interval.hparams["h0"])
        interval.report({"q": -float(np.sum((x - 1.0) ** 2))}, state=x.tolist())
    time.sleep(0.2)  # a final save, closing environments...
    ENDED.append((ctx.member, step))


@pytest.mark.parametrize("resident", [None, 1])  # all kept, or each let go at the next claim
def test_code_after_the_loop_runs_before_run_returns(quick_run, resident):
    ENDED.clear()
    options = {} if resident is None else {"resident": resident}
    quick_run(_loop_with_a_tail, name="tail", population=3, intervals=3, **options)
    assert {(member, 3) for member in range(3)} <= set(ENDED)  # after each member's last interval


def _reports_another_metric(ctx):
    for interval in ctx.intervals():
        interval.report({"accuracy": 1.0}, state={"x": 1})


def test_a_metric_missing_from_a_report_names_interval_report(quick_run):
    """A training function never wrote evaluate(): the message named it."""
    with pytest.raises(pt.PopulationError, match=r"interval.report\(\) returned no metric 'q'"):
        quick_run(_reports_another_metric, name="loopmetric")
