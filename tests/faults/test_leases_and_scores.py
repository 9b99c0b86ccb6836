"""Leases (late writers fenced, racing expiries, SIGKILL then resume) and non-finite scores."""

from __future__ import annotations

import datetime
import logging
import math
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import poptune as pt
from poptune.storage import SQLStorage
from poptune.testing import Quadratic
from tests._helpers import wait_for_intervals, worker_for


def test_a_worker_back_from_a_long_pause_has_its_late_write_refused(quick_run):
    runner = quick_run.created(name="late", population=2, intervals=3, lease_seconds=0.2)
    target, storage = runner.target, runner.storage
    paused = worker_for(runner, lease_seconds=0.2)
    claim = storage.claim(target.population_id, paused.owner, 3, 0.2, False)
    time.sleep(0.4)  # a GC pause or a partition: no heartbeat, the lease runs out
    other = worker_for(runner, lease_seconds=30.0)
    taken = storage.claim(target.population_id, other.owner, 3, 30.0, False)
    assert taken.member.id == claim.member.id and taken.token == claim.token + 1
    other.work_on(taken)
    other.flush()  # the checkpoint is written and the interval recorded in the background
    paused.work_on(claim)  # trains, then its record is refused
    paused.flush()
    assert paused.trained == 0 and other.trained == 1
    intervals = storage.intervals(target.population_id)
    assert [(i.member, i.step) for i in intervals] == [(claim.member.id, 1)]
    # its uncommitted checkpoint is queued for deletion
    late = paused.housekeeper._doomed.get_nowait()
    assert late.path not in {c.path for c in storage.checkpoints(target.population_id)}


def _claim_expired(url: str, pid: int, results) -> None:
    storage = SQLStorage(url)
    claim = storage.claim(pid, str(os.getpid()), 5, 30.0, sync=False)
    results.append(None if claim is None else (claim.member.id, claim.token))
    storage.close()


def test_two_workers_expiring_the_same_stale_lease_at_once(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'p.db'}"
    storage = SQLStorage(url)
    pid = storage.create_population("p", {"intervals": 5}, [{"x": 0.0}]).id
    storage.claim(pid, "dead", 5, 0.01, sync=False)
    time.sleep(0.05)
    context = multiprocessing.get_context("fork")
    with context.Manager() as manager:
        results = manager.list()
        processes = [context.Process(target=_claim_expired, args=(url, pid, results)) for _ in "ab"]
        for process in processes:
            process.start()
        for process in processes:
            process.join(60)
        assert [p.exitcode for p in processes] == [0, 0]  # both exit cleanly
        assert sorted(results, key=str) == [(0, 2), None]  # exactly one took it over


KILLED = textwrap.dedent(
    """
    import sys
    import poptune as pt
    from poptune.testing import SlowQuadratic, quadratic_space
    pt.run(SlowQuadratic, space=quadratic_space(), metric="q", population=6, intervals=20,
           workers=2, storage=sys.argv[1], name="killed", seed=0, progress=False)
    """
)


@pytest.mark.parametrize("after", [6, 60])  # intervals recorded (of 120): early, halfway
def test_sigkill_every_process_then_resume_finishes_exactly(tmp_path: Path, after, caplog):
    url = f"sqlite:///{tmp_path / 'p.db'}"
    process = subprocess.Popen([sys.executable, "-c", KILLED, url], start_new_session=True)
    wait_for_intervals(process, url, "killed", after)
    os.killpg(process.pid, signal.SIGKILL)  # no handler runs, no lease is released
    process.wait(30)
    before = pt.load(url, "killed")
    assert before.status == "running"
    with caplog.at_level(logging.WARNING, logger="poptune"):
        result = before.resume(workers=2, progress=False)
    assert result.status == "finished"
    assert [m.step for m in result.members] == [20] * 6
    assert len(result.intervals()) == 6 * 20  # the same as an uninterrupted run
    if any(m.status is pt.MemberStatus.RUNNING for m in before.members):
        assert "dead worker" in caplog.text  # freed at once, not after the 30 s lease


class NaNAbove(Quadratic):
    """Returns NaN (or +inf) for members whose h0 is above 0.9: a diverged run."""

    value = float("nan")

    def evaluate(self):
        result = super().evaluate()
        if self.h[0] > 0.9:
            result["q"] = self.value
        return result


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_scores_are_the_worst_and_never_copied(quick_run, monkeypatch, value):
    monkeypatch.setattr(NaNAbove, "value", value)
    start = [{"h0": 0.95, "h1": 0.5}] + [{"h0": 0.1 * i, "h1": 0.5} for i in (2, 3, 4)]
    result = quick_run(
        NaNAbove, name="nan", population=4, intervals=4, initial=start, sync=True,
        exploit=pt.Truncation(0.25),
    )  # fmt: skip
    first = next(i for i in result.intervals() if (i.member, i.step) == (0, 1))
    assert math.isnan(first.metrics["q"]) if math.isnan(value) else first.metrics["q"] == value
    assert first.score is None if math.isnan(value) else first.score == value
    exploits = result.exploits()
    assert any(e.member == 0 and e.step == 1 for e in exploits)  # exploited at the next ready
    bad = {
        (i.member, i.step)
        for i in result.intervals()
        if i.score is None or not math.isfinite(i.score)
    }
    assert not [e for e in exploits if (e.donor, e.donor_step) in bad]  # never a donor
    assert math.isfinite(result.best.score)


class _CtrlCAfterCommit:
    """A storage whose third claim commits, then Ctrl-C arrives before the claim is returned."""

    def __init__(self, storage: SQLStorage) -> None:
        self.storage, self.claims = storage, 0

    def __getattr__(self, name: str):
        return getattr(self.storage, name)

    def claim(self, *args, **kwargs):
        claim = self.storage.claim(*args, **kwargs)
        self.claims += 1
        if self.claims == 3:
            raise KeyboardInterrupt
        return claim


def test_ctrl_c_between_a_claims_commit_and_its_return_gives_the_member_back(quick_run):
    runner = quick_run.created(name="cut", population=4, intervals=5)
    target, storage = runner.target, runner.storage
    worker = worker_for(runner, _CtrlCAfterCommit(storage))
    with pytest.raises(KeyboardInterrupt):
        worker.run()
    assert worker.trained == 2
    assert storage.claims(target.population_id) == {}  # nobody holds a member any more
    members = storage.members(target.population_id)
    assert sorted(m.step for m in members) == [0, 0, 1, 1]
    assert {m.status for m in members} == {pt.MemberStatus.IDLE}


# A worker process that dies in its eighth interval: member 0's step 5, after steps 1-3 of both
# members were checkpointed at step 3 and member 0's step 4 was trained in memory only.
_CRASHES = """
import os, sys
from datetime import timedelta
import poptune as pt
from poptune.testing import CreateOnlyRunner, Quadratic, quadratic_space

class Clock:  # seconds of training, moved by train() only: the same on every run
    now = 0.0

class CrashesAtItsEighthInterval(Quadratic):
    calls = 0

    def train(self, hparams):
        type(self).calls += 1
        if type(self).calls == 8:
            os._exit(9)  # the process dies: nothing is released, nothing flushed
        super().train(hparams)
        Clock.now += 1.0
"""
CRASHES_BETWEEN_CHECKPOINTS = (
    _CRASHES
    + """
pt.run(CrashesAtItsEighthInterval, space=quadratic_space(), metric="q", population=2,
       intervals=6, checkpoint_every=3, storage=sys.argv[1], name="crashed", seed=0,
       progress=False)
"""
)
CRASHES_BETWEEN_TIMED_CHECKPOINTS = (
    _CRASHES
    + """
runner = CreateOnlyRunner()
pt.run(CrashesAtItsEighthInterval, space=quadratic_space(), metric="q", population=2,
       intervals=6, checkpoint_every=timedelta(seconds=2.5), ready=pt.Every(5),
       storage=sys.argv[1], name="crashed", seed=0, progress=False, runner=runner)
worker = pt.Worker.from_target(runner.target, runner.storage, runner.checkpoints)
worker.persistence.clock = lambda: Clock.now
worker.run()
"""
)


def _crash_then_resume(url: str, script: str) -> tuple[pt.Result, pt.Result]:
    """Run ``script`` until its worker dies; check that only the training since the
    checkpoints at step 3 was lost, and none of it recorded; resume it to the budget and check
    that every interval was trained once. The population before the resume, and after."""
    crashed = subprocess.run([sys.executable, "-c", script, url], timeout=120, check=False)
    assert crashed.returncode == 9
    before = pt.load(url, "crashed")
    assert before.status == "running"
    assert sorted((i.member, i.step) for i in before.intervals()) == [
        (m, s) for m in range(2) for s in (1, 2, 3)
    ]
    for member in before.members:  # nothing recorded ahead of the checkpoint it restores from
        assert member.step == 3 and member.restore is not None and member.restore[1] == 3
    checkpoints = sorted((c.member, c.step) for c in before.storage.checkpoints(before.record.id))
    result = pt.load(url, "crashed").resume(trainable=Quadratic, progress=False)
    assert result.status == "finished"
    keys = [(i.member, i.step) for i in result.intervals()]
    assert sorted(keys) == [(m, s) for m in range(2) for s in range(1, 7)]  # each once
    assert [m.step for m in result.members] == [6, 6]
    assert checkpoints == [(0, 3), (1, 3)]
    return before, result


def test_a_crash_between_checkpoints_loses_at_most_checkpoint_every_intervals(tmp_path: Path):
    """Checkpoints every 3 intervals: member 0's step 4, trained in memory, is lost."""
    before, _ = _crash_then_resume(f"sqlite:///{tmp_path / 'p.db'}", CRASHES_BETWEEN_CHECKPOINTS)
    assert before.config.checkpoint_every == 3


def test_a_crash_between_timed_checkpoints_loses_at_most_that_much_training(tmp_path: Path):
    """Intervals of one (fake) second, a checkpoint every 2.5 s of a member's training: it
    checkpoints at step 3 for the time alone (it is ready to exploit at step 5); member 0 then
    trained step 4 in memory (1 s, under the 2.5 s) and died in step 5: all it lost."""
    before, result = _crash_then_resume(
        f"sqlite:///{tmp_path / 'p.db'}", CRASHES_BETWEEN_TIMED_CHECKPOINTS
    )
    assert before.config.checkpoint_every == datetime.timedelta(seconds=2.5)
    assert result.exploits() and all(e.step == 5 for e in result.exploits())


class _DiesOnItsSecondInterval(Quadratic):
    """A member whose process is killed (out of memory, say) on its second interval, while
    ``$POPTUNE_TEST_DIE`` is set."""

    def train(self, hparams):
        self.trained = getattr(self, "trained", 0) + 1
        if self.trained == 2 and os.environ.get("POPTUNE_TEST_DIE"):
            os.kill(os.getpid(), signal.SIGKILL)
        return super().train(hparams)


def test_a_run_whose_workers_all_died_fails_with_the_command_to_continue(quick_run, monkeypatch):
    """It returned as if done (exit 0 for poptune resume): a script could not tell."""
    monkeypatch.setenv("POPTUNE_TEST_DIE", "1")
    with pytest.raises(pt.PopulationError, match=r"exited abnormally .*before population 'oom'"):
        quick_run(_DiesOnItsSecondInterval, name="oom", population=2, intervals=3, workers=2)
    assert pt.load(quick_run.storage, "oom").status == "running"
    monkeypatch.delenv("POPTUNE_TEST_DIE")
    finished = pt.load(quick_run.storage, "oom").resume(progress=False)
    assert finished.status == "finished" and len(finished.intervals()) == 6
