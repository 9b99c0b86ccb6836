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
