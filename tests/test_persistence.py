"""The checkpoint policy (``checkpoint_every``): intervals or a duration of training, on a fake
clock that only the members' training moves, so that every duration here is exact."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import poptune as pt
from poptune.checkpoints import LocalCheckpoints
from poptune.config import PopulationConfig
from poptune.persistence import CheckpointPolicy, exploit_step
from poptune.records import CheckpointRef
from poptune.testing import Quadratic, quadratic_loop, quadratic_space
from tests._helpers import worker_for


class Clock:
    """Seconds of training: moved by the members' ``train`` only, read by the worker."""

    now = 0.0

    def __call__(self) -> float:
        return Clock.now


def seconds_of(hparams: Mapping[str, Any]) -> float:
    """How long an interval with ``hparams`` trains: 0.5 to 2.5 s, longer with a larger
    ``h0`` (as a larger batch would), so that members' intervals differ."""
    return 0.5 + 2.0 * float(hparams["h0"])


class Timed(Quadratic):
    """The toy problem, each interval taking :func:`seconds_of` on the :class:`Clock`."""

    def train(self, hparams: Mapping[str, Any]) -> None:
        super().train(hparams)
        Clock.now += seconds_of(hparams)


def timed_loop(ctx: Any) -> None:
    """:class:`Timed` as a training function (its member kept in its own loop)."""
    member = Timed(ctx.hparams, ctx.seed)
    for interval in ctx.intervals():
        if interval.state is not None:
            member.load_state_dict(interval.state)
        member.train(interval.hparams)
        interval.report(member.evaluate(), state=member.state_dict())


class Saves(LocalCheckpoints):
    """A local store that remembers which (member, step) it saved, in order."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.saved: list[tuple[int, int]] = []

    def save(self, folder: str, member: int, step: int, state: Any) -> CheckpointRef:
        self.saved.append((member, step))
        return super().save(folder, member, step, state)


@pytest.fixture(autouse=True)
def _clock() -> Iterator[None]:
    Clock.now = 0.0
    yield


def config(checkpoint_every: Any, intervals: int = 10) -> PopulationConfig:
    return PopulationConfig(
        trainable=None, space=quadratic_space(), metric="q", mode="max", population=2,
        intervals=intervals, exploit=None, explore=None, ready=None, seed=0,
        checkpoint_every=checkpoint_every,
    )  # fmt: skip


def trained(quick_run: Any, tmp_path: Path, trainable: Any = Timed, **options: Any) -> Any:
    """Train a population on one worker whose policy reads the :class:`Clock`; return the
    population and the checkpoints saved."""
    store = Saves(tmp_path / "checkpoints")
    runner = quick_run.created(trainable, checkpoints=store, **options)
    worker = worker_for(runner)
    worker.persistence.clock = Clock()
    worker.run()
    return pt.load(runner.storage, options["name"]), store.saved


# --- the policy alone -----------------------------------------------------------------------


def test_a_duration_checkpoints_once_that_much_training_has_passed():
    policy = CheckpointPolicy(config(timedelta(seconds=10)), clock=Clock())
    started = policy.start()
    Clock.now = 9.99
    assert not policy.checkpoints(3, started)
    Clock.now = 10.0
    assert policy.checkpoints(4, started)
    assert policy.checkpoints(1, policy.start() - 10.0)  # measured from the start given


def test_a_duration_checkpoints_where_the_member_would_exploit_at_the_budget_and_on_stop():
    policy = CheckpointPolicy(config(timedelta(hours=1), intervals=10), clock=Clock())
    started = policy.start()
    assert not policy.checkpoints(3, started, ready=lambda: False)
    assert policy.checkpoints(3, started, ready=lambda: True)
    assert policy.checkpoints(10, started)
    assert policy.checkpoints(3, started, stopping=True)
    # and may exploit after any checkpointed step below the budget (only those are ready)
    assert [exploit_step(policy.config, step) for step in (1, 3, 9, 10)] == [1, 1, 1, 0]


def test_intervals_checkpoint_at_their_multiples_whatever_the_time():
    policy = CheckpointPolicy(config(3, intervals=7), clock=Clock())
    started = policy.start()
    Clock.now = 1e9
    assert [s for s in range(1, 8) if policy.checkpoints(s, started, ready=lambda: True)] == [
        3,
        6,
        7,
    ]
    assert [s for s in range(1, 8) if exploit_step(policy.config, s)] == [3, 6]
    default = CheckpointPolicy(config(None), clock=Clock())
    assert all(default.checkpoints(s, default.start()) for s in range(1, 11))


# --- a population trained with a duration ---------------------------------------------------


@pytest.mark.parametrize("trainable", [Timed, timed_loop], ids=["class", "function"])
def test_a_duration_bounds_the_training_between_checkpoints(tmp_path, quick_run, writes, trainable):
    limit = 4.0
    result, saved = trained(
        quick_run, tmp_path, trainable, name="timed", population=4, intervals=12, seed=2,
        checkpoint_every=timedelta(seconds=limit), ready=pt.Every(5), exploit=pt.Truncation(0.5),
    )  # fmt: skip
    assert result.status == "finished"
    assert result.config.checkpoint_every == timedelta(seconds=4)
    intervals = {(i.member, i.step): i for i in result.intervals()}
    assert sorted(intervals) == [(m, s) for m in range(4) for s in range(1, 13)]  # each once
    assert len(saved) == len(set(saved)) < len(intervals)
    for member in range(4):
        steps = sorted(s for m, s in saved if m == member)
        assert {5, 10, 12} <= set(steps)  # where it may exploit, and the budget
        for before, at in zip([0, *steps], steps, strict=False):
            chain = [seconds_of(intervals[member, s].hparams) for s in range(before + 1, at + 1)]
            # not checkpointed earlier: less than the limit trained before its last interval
            assert sum(chain[:-1]) < limit
            if at % 5 and at != 12:  # checkpointed for the time alone: the limit was reached
                assert sum(chain) >= limit
    exploits = result.exploits()
    assert exploits and all(e.step in (5, 10) and e.donor_step == e.step for e in exploits)
    assert all((e.donor, e.donor_step) in saved for e in exploits)  # every donor committed
    copied = {(e.member, e.step): (e.donor, e.donor_step) for e in exploits}
    for (member, step), interval in intervals.items():  # each continues its own, or its donor
        own = None if step == 1 else (member, step - 1)
        assert interval.origin == copied.get((member, step - 1), own)


def test_a_worker_asked_to_stop_checkpoints_what_it_trained_under_a_duration(tmp_path, quick_run):
    stop = threading.Event()

    class StopsAtItsThirdInterval(Timed):
        calls = 0

        def train(self, hparams: Mapping[str, Any]) -> None:
            super().train(hparams)
            type(self).calls += 1
            if type(self).calls == 3:
                stop.set()

    store = Saves(tmp_path / "checkpoints")
    runner = quick_run.created(
        StopsAtItsThirdInterval, checkpoints=store, name="stopped", population=2, intervals=8,
        checkpoint_every=timedelta(hours=1), exploit=None,
    )  # fmt: skip
    worker = worker_for(runner)
    worker.persistence.clock = Clock()
    assert worker.run(stop) == 3
    assert store.saved == [(0, 3)]  # no hour had passed: saved because it stopped
    assert [(i.member, i.step) for i in runner.storage.intervals(runner.target.population_id)] == [
        (0, 1),
        (0, 2),
        (0, 3),
    ]


@pytest.mark.filterwarnings("ignore:checkpoint_every=.* with ready=Every")
def test_resume_changes_the_policy_between_intervals_a_duration_and_every_interval(
    tmp_path, quick_run
):
    first = quick_run(name="p", population=2, intervals=2, checkpoint_every=2)
    assert first.config.checkpoint_every == 2
    timed = first.resume(intervals=4, checkpoint_every=timedelta(minutes=5), progress=False)
    assert timed.config.checkpoint_every == timedelta(minutes=5)
    assert timed.record.config["checkpoint_seconds"] == 300.0
    assert timed.record.config.get("checkpoint_every") is None
    kept = timed.resume(intervals=5, progress=False)
    assert kept.config.checkpoint_every == timedelta(minutes=5)
    every = kept.resume(intervals=6, checkpoint_every=None, progress=False)
    assert every.config.checkpoint_every is None
    assert every.record.config.get("checkpoint_seconds") is None
    # pt.run continuing it by name records that run's policy
    again = quick_run(name="p", population=2, intervals=6, checkpoint_every=timedelta(hours=1))
    assert again.config.checkpoint_every == timedelta(hours=1)


# --- refused, or warned about ---------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [0, -3, 1.5, True, "10m", 600.0, timedelta(0), timedelta(seconds=-1)],
    ids=repr,
)
def test_a_checkpoint_every_that_is_neither_intervals_nor_a_positive_duration_is_refused(
    quick_run, value
):
    with pytest.raises(pt.InvalidParameterError, match=r"The 'checkpoint_every' parameter") as e:
        quick_run(checkpoint_every=value)
    assert repr(value) in str(e.value)
    assert "timedelta" in str(e.value)  # what to pass for seconds


def test_a_duration_with_a_block_is_refused(quick_run):
    with pytest.raises(pt.InvalidParameterError, match=r"left out \(or 1\) with block="):
        quick_run(quadratic_loop, block=2, checkpoint_every=timedelta(minutes=1))


def test_a_duration_in_generations_is_refused_by_run_and_by_resume(quick_run):
    with pytest.raises(pt.InvalidParameterError, match=r"an int \(intervals\) with sync=True"):
        quick_run(sync=True, checkpoint_every=timedelta(minutes=1))
    generations = quick_run(name="sync", sync=True, checkpoint_every=2, intervals=2)
    with pytest.raises(pt.InvalidParameterError, match=r"or train with sync=False"):
        generations.resume(checkpoint_every=timedelta(minutes=1), progress=False)
    assert pt.load(quick_run.storage, "sync").config.checkpoint_every == 2  # unchanged


def test_a_duration_that_every_interval_would_exploit_at_is_warned_about(quick_run):
    with pytest.warns(UserWarning, match=r"ready=pt.Every\(n\)"):
        quick_run(name="warned", checkpoint_every=timedelta(minutes=1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quick_run(name="quiet", checkpoint_every=timedelta(minutes=1), ready=pt.Every(2))
        quick_run(name="random", checkpoint_every=timedelta(minutes=1), exploit=None)
    assert not [w for w in caught if "checkpoint_every" in str(w.message)]
