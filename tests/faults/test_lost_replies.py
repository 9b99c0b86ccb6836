"""A commit whose reply is lost (the connection drops during COMMIT, after the database
committed): the retry recognises its own write, and nothing committed is deleted."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from sqlalchemy.exc import OperationalError

import poptune as pt
from poptune.testing import CreateOnlyRunner, Quadratic, check_steps, quadratic_space
from poptune.worker import Worker


def _lose_replies(storage, method: str, which: set[int]) -> list[int]:
    """Make the n-th call of ``storage.<method>`` (n in ``which``) commit, then raise the
    error a dropped connection gives; its retries run normally."""
    calls: list[int] = []
    write, call = storage._write, getattr(storage, method)
    state = {"armed": False}

    @contextlib.contextmanager
    def faulty_write():
        with write() as connection:
            yield connection
        if state["armed"]:  # committed: now the reply is lost
            state["armed"] = False
            raise OperationalError(
                "COMMIT",
                {},
                Exception("server closed the connection unexpectedly"),
                connection_invalidated=True,
            )

    def wrapped(*args, **kwargs):
        calls.append(len(calls) + 1)
        state["armed"] = len(calls) in which
        try:
            return call(*args, **kwargs)
        finally:
            state["armed"] = False

    storage._write = faulty_write
    setattr(storage, method, wrapped)
    return calls


def test_a_lost_commit_reply_keeps_the_interval_and_its_checkpoint(
    storage_url: str, tmp_path: Path, caplog
):
    runner = CreateOnlyRunner()
    pt.run(
        Quadratic,
        space=quadratic_space(),
        metric="q",
        population=3,
        intervals=4,
        storage=storage_url,
        checkpoints=tmp_path / "checkpoints",
        name="lost",
        seed=0,
        progress=False,
        exploit=None,  # every interval continues its own checkpoint: none may vanish
        runner=runner,
    )
    target, storage = runner.target, runner.storage
    calls = _lose_replies(storage, "record_interval", {2, 5, 9})
    worker = Worker(target.spec, storage, runner.checkpoints, target.population_id)
    with caplog.at_level(logging.WARNING, logger="poptune"):
        worker.run()
    assert len(calls) == 12 and worker.trained == 12  # each interval recorded exactly once
    assert "discarded" not in caplog.text
    result = pt.load(storage_url, "lost", checkpoints=tmp_path / "checkpoints")
    assert result.status == "finished" and [m.step for m in result.members] == [4, 4, 4]
    assert result.exploits() == [] and result.failures() == []
    check_steps(result)
    for ref in result.storage.checkpoints(result.record.id):  # every recorded file is there
        assert (tmp_path / "checkpoints" / ref.path).is_file()
    assert result.best.state()["theta"].shape == (2,)


def test_a_lost_exploit_reply_records_the_exploit_once(storage_url: str, tmp_path: Path):
    runner = CreateOnlyRunner()
    pt.run(
        Quadratic,
        space=quadratic_space(),
        metric="q",
        population=4,
        intervals=6,
        storage=storage_url,
        checkpoints=tmp_path / "checkpoints",
        name="copies",
        seed=0,
        progress=False,
        sync=True,  # every generation exploits: the bottom member copies the top one
        runner=runner,
    )
    target, storage = runner.target, runner.storage
    calls = _lose_replies(storage, "record_exploit", {1, 2, 3, 4})
    Worker(target.spec, storage, runner.checkpoints, target.population_id).run()
    result = pt.load(storage_url, "copies", checkpoints=tmp_path / "checkpoints")
    events = [(e.member, e.step, e.donor, e.donor_step, e.time) for e in result.exploits()]
    assert len(calls) >= 4 and len(events) == len(set(events)) == len(calls)  # none twice
    assert result.status == "finished" and [m.step for m in result.members] == [6] * 4
    check_steps(result)  # each copy counted once in the members' steps


class _Flaky(Quadratic):
    """The third and fifth intervals trained in this process fail (then succeed on retry)."""

    calls = 0

    def train(self, hparams):
        type(self).calls += 1
        if type(self).calls in (3, 5):
            raise RuntimeError("a flaky interval")
        super().train(hparams)


def test_a_lost_failure_reply_logs_the_failure_once(storage_url: str, tmp_path: Path):
    _Flaky.calls = 0
    runner = CreateOnlyRunner()
    pt.run(
        _Flaky,
        space=quadratic_space(),
        metric="q",
        population=2,
        intervals=3,
        storage=storage_url,
        checkpoints=tmp_path / "checkpoints",
        name="flaky",
        seed=0,
        progress=False,
        exploit=None,
        runner=runner,
    )
    target, storage = runner.target, runner.storage
    calls = _lose_replies(storage, "record_failure", {1, 2})
    Worker(target.spec, storage, runner.checkpoints, target.population_id).run()
    result = pt.load(storage_url, "flaky", checkpoints=tmp_path / "checkpoints")
    logged = [(f.member, f.step, f.time) for f in result.failures()]
    assert len(calls) == 2 and len(logged) == len(set(logged)) == 2  # each logged once
    assert result.status == "finished" and [m.step for m in result.members] == [3, 3]
    check_steps(result)
