"""Liveness of this machine's workers: a claim whose local process is gone is taken back at
once; a claim of another machine is left to its lease."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from poptune.liveness import alive, expire_dead_local_claims
from poptune.testing import MemoryStorage


def _exited_child() -> subprocess.Popen[bytes]:
    """A child process that has exited but is not reaped yet: a zombie."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    stat = Path(f"/proc/{child.pid}/stat")
    deadline = time.monotonic() + 30
    while stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline, "the child did not exit"
        time.sleep(0.01)
    return child


def test_a_running_process_is_alive_and_an_exited_one_is_not():
    assert alive(os.getpid())
    child = _exited_child()
    assert not alive(child.pid)  # a zombie: exited, nobody reaped it yet
    child.wait()
    assert not alive(child.pid)  # gone


def test_claims_of_dead_local_workers_are_taken_back_others_are_left():
    storage = MemoryStorage()
    record = storage.create_population("p", {"intervals": 5}, [{"x": 0.0}] * 3)
    host = socket.gethostname()
    child = _exited_child()
    child.wait()
    owners = [f"{host}:{child.pid}:dead", f"{host}:{os.getpid()}:alive", "elsewhere:1:remote"]
    for owner in owners:
        assert storage.claim(record.id, owner, 5, 30.0, sync=False) is not None
    expire_dead_local_claims(storage, record)
    assert sorted(storage.claims(record.id).values()) == sorted(owners[1:])
