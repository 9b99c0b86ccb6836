"""A commit whose reply is lost (the connection drops during COMMIT, after the database
committed): the retry recognises its own write, and nothing committed is deleted."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from sqlalchemy.exc import OperationalError

import poptune as pt
from poptune.testing import Quadratic, check_steps
from tests._helpers import worker_for


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


def _train_losing_replies(
    quick_run, url: str, folder: Path, method: str, which: set[int], **options
):
    """Create the population, make the storage lose the replies of the n-th calls of
    ``method`` (n in ``which``), and train it in one worker: (calls, worker, result)."""
    trainable = options.pop("trainable", Quadratic)
    runner = quick_run.created(trainable, storage=url, checkpoints=folder, **options)
    calls = _lose_replies(runner.storage, method, which)
    worker = worker_for(runner)
    worker.run()
    return calls, worker, pt.load(url, options["name"], checkpoints=folder)


def test_a_lost_commit_reply_keeps_the_interval_and_its_checkpoint(
    storage_url: str, tmp_path: Path, caplog, quick_run
):
    folder = tmp_path / "checkpoints"
    with caplog.at_level(logging.WARNING, logger="poptune"):
        calls, worker, result = _train_losing_replies(
            quick_run, storage_url, folder, "record_interval", {2, 5, 9},
            name="lost", population=3, intervals=4,
            exploit=None,  # every interval continues its own checkpoint: none may vanish
        )  # fmt: skip
    assert len(calls) == 12 and worker.trained == 12  # each interval recorded exactly once
    assert "discarded" not in caplog.text
    assert result.status == "finished" and [m.step for m in result.members] == [4, 4, 4]
    assert result.exploits() == [] and result.failures() == []
    check_steps(result)
    for ref in result.storage.checkpoints(result.record.id):  # every recorded file is there
        assert (folder / ref.path).is_file()
    assert result.best.state()["theta"].shape == (2,)


def test_a_lost_exploit_reply_records_the_exploit_once(storage_url: str, tmp_path: Path, quick_run):
    calls, _, result = _train_losing_replies(
        quick_run, storage_url, tmp_path / "checkpoints", "record_exploit", {1, 2, 3, 4},
        name="copies", population=4, intervals=6,
        sync=True,  # every generation exploits: the bottom member copies the top one
    )  # fmt: skip
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


def test_a_lost_failure_reply_logs_the_failure_once(storage_url: str, tmp_path: Path, quick_run):
    _Flaky.calls = 0
    calls, _, result = _train_losing_replies(
        quick_run, storage_url, tmp_path / "checkpoints", "record_failure", {1, 2},
        trainable=_Flaky, name="flaky", population=2, intervals=3, exploit=None,
    )  # fmt: skip
    logged = [(f.member, f.step, f.time) for f in result.failures()]
    assert len(calls) == 2 and len(logged) == len(set(logged)) == 2  # each logged once
    assert result.status == "finished" and [m.step for m in result.members] == [3, 3]
    check_steps(result)
