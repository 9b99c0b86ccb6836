"""Storage hiccups: transient errors are retried without duplicates; permanent ones stop the
worker clearly; 16 workers starting at once never see "database is locked"; passwords never
appear in messages; a SQLite file on a network filesystem gets a warning."""

from __future__ import annotations

import contextlib
import multiprocessing
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa

import poptune as pt
from poptune.records import CheckpointRef, IntervalRecord
from poptune.storage import SQLStorage, StorageError, _retry, _sql


def failing_inserts(storage: SQLStorage, table: str, times: int, message: str) -> dict:
    """Make the next ``times`` INSERTs into ``table`` fail with an OperationalError."""
    state = {"left": times, "seen": 0}

    @sa.event.listens_for(storage._engine, "before_cursor_execute")
    def fail(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith(f"INSERT INTO {table}"):
            state["seen"] += 1
            if state["left"] > 0:
                state["left"] -= 1
                raise sqlite3.OperationalError(message)

    return state


def setup(tmp_path: Path) -> tuple[SQLStorage, int]:
    storage = SQLStorage(f"sqlite:///{tmp_path / 'poptune.db'}")
    pid = storage.create_population("p", {"intervals": 3}, [{"x": 1.0}, {"x": 2.0}]).id
    return storage, pid


def record(storage: SQLStorage, pid: int) -> None:
    claim = storage.claim(pid, "w", 3, 30.0, sync=False)
    storage.record_interval(
        claim,
        IntervalRecord(claim.member.id, 1, {"x": 1.0}, 0.5, {"q": 0.5}, 0.1, 1.0, None),
        CheckpointRef(claim.member.id, 1, "a.ckpt", 1, "0" * 64),
        exploit_pending=False,
        done=False,
    )


def test_transient_errors_are_retried_and_never_duplicate_a_row(tmp_path, monkeypatch):
    monkeypatch.setattr(_retry, "FIRST_DELAY", 0.001)
    storage, pid = setup(tmp_path)
    state = failing_inserts(storage, "poptune_checkpoints", 2, "database is locked")
    record(storage, pid)
    assert state["seen"] == 3  # two failed attempts, then the one that committed
    assert len(storage.intervals(pid)) == 1  # the interval inserted in failed attempts is gone
    assert len(storage.checkpoints(pid)) == 1
    assert storage.members(pid)[0].step == 1


def test_a_permanent_error_stops_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setattr(_retry, "FIRST_DELAY", 0.001)
    storage, pid = setup(tmp_path)
    failing_inserts(storage, "poptune_intervals", 100, "disk I/O error")
    with pytest.raises(StorageError, match=r"record_interval failed.*disk I/O error.*resumed"):
        record(storage, pid)
    assert storage.intervals(pid) == []


def test_an_endless_transient_error_gives_up_after_the_retries(tmp_path, monkeypatch):
    monkeypatch.setattr(_retry, "FIRST_DELAY", 0.001)
    storage, pid = setup(tmp_path)
    state = failing_inserts(storage, "poptune_intervals", 100, "database is locked")
    with pytest.raises(StorageError, match=r"for 8 attempts"):
        record(storage, pid)
    assert state["seen"] == 8


def _hammer(url: str, index: int, errors) -> None:
    try:
        storage = SQLStorage(url)
        with contextlib.suppress(pt.storage.PopulationExists):
            storage.create_population("p", {"intervals": 1}, [{"x": float(i)} for i in range(16)])
        pid = storage.population("p").id
        claim = storage.claim(pid, f"w{index}", 1, 30.0, sync=False)
        if claim is not None:
            storage.release(claim)
        storage.close()
    except Exception as error:  # collected and asserted on in the parent
        errors.append(f"{type(error).__name__}: {error}")


def test_sixteen_workers_starting_at_once_never_see_database_is_locked(tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    context = multiprocessing.get_context("fork")
    with context.Manager() as manager:
        errors = manager.list()
        processes = [context.Process(target=_hammer, args=(url, i, errors)) for i in range(16)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(120)
        assert list(errors) == []
        assert all(p.exitcode == 0 for p in processes)


def test_passwords_never_appear_in_messages(quick_run):
    url = "postgresql+psycopg://poptune:s3cr3t-pw@127.0.0.1:9/poptune"
    with pytest.raises(StorageError) as caught:
        SQLStorage(url)
    assert "s3cr3t-pw" not in str(caught.value)
    assert "***" in str(caught.value) or "poptune@" in str(caught.value)
    with pytest.raises(pt.StorageError) as caught:
        quick_run(storage=url)
    assert "s3cr3t-pw" not in str(caught.value)


def test_sqlite_on_a_network_filesystem_warns(tmp_path, monkeypatch):
    monkeypatch.setattr(_sql, "filesystem_type", lambda path: "nfs4")
    with pytest.warns(RuntimeWarning, match="network filesystem \\(nfs4\\).*PostgreSQL"):
        SQLStorage(f"sqlite:///{tmp_path / 'shared.db'}")
