"""SQLite shared by processes: what SQLite's "How To Corrupt" warns of cannot happen here.

A process must keep the POSIX locks its open connections hold (closing any other descriptor of
the file drops them all), and must not carry an open connection across fork(). Either mistake
lets another process reset the WAL under live connections: commits lost, "disk I/O error".
"""

from __future__ import annotations

import os
import sqlite3
import sys
import threading
from pathlib import Path

import pytest

import poptune as pt
from poptune.storage import SQLStorage
from poptune.testing import Quadratic, quadratic_space

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads the process's locks in /proc/locks"
)


def _shared_locks_on(path: Path) -> int:
    """How many POSIX read locks this process holds on ``path`` (from /proc/locks)."""
    inode = os.stat(path).st_ino
    mine = (line.split() for line in Path("/proc/locks").read_text().splitlines())
    return sum(
        1
        for fields in mine
        if fields[4] == str(os.getpid()) and fields[5].endswith(f":{inode}") and fields[3] == "READ"
    )


def test_a_connection_open_when_workers_fork_and_closed_while_they_write_loses_nothing(
    tmp_path: Path,
):
    url = f"sqlite:///{tmp_path / 'poptune.db'}"
    options = {"space": quadratic_space(), "metric": "q", "storage": url, "progress": False}
    pt.run(Quadratic, population=4, intervals=1, workers=1, name="warm", seed=0, **options)
    held = pt.load(url, "warm")
    assert held.members  # a pooled connection, open in this process when the workers fork
    closer = threading.Timer(0.5, held.storage.close)  # ... and closed while they write
    closer.start()
    result = pt.run(
        Quadratic, population=8, intervals=60, workers=2, name="forked", seed=0, **options
    )
    closer.join()
    assert len(result.intervals()) == 8 * 60
    with sqlite3.connect(tmp_path / "poptune.db") as database:
        assert database.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


@linux_only
def test_opening_a_storage_keeps_the_locks_of_connections_already_open(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'poptune.db'}"
    first = SQLStorage(url)
    first.populations()  # a connection, open and idle: it holds a shared lock on the file
    assert _shared_locks_on(tmp_path / "poptune.db") == 1
    SQLStorage(url, mode="read").populations()  # looks at the file before connecting
    assert _shared_locks_on(tmp_path / "poptune.db") == 1, "the first connection lost its lock"
    first.close()
