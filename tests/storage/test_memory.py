"""What only the in-memory storage has: a clock to expire leases, one process only."""

from __future__ import annotations

import pickle

import pytest

from poptune.records import Mode
from poptune.storage import LeaseLost, StorageError, open_storage
from poptune.testing import MemoryStorage, check_steps


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_leases_expire_by_its_clock():
    clock = Clock()
    storage = MemoryStorage(clock=clock)
    pid = storage.create_population("p", {"intervals": 3}, [{"x": 1.0}]).id
    old = storage.claim(pid, "slow", 3, 10.0, sync=False)
    clock.now += 9.0
    assert storage.claim(pid, "fast", 3, 10.0, sync=False) is None  # still held
    clock.now += 2.0
    new = storage.claim(pid, "fast", 3, 10.0, sync=False)
    assert new is not None and new.token == old.token + 1
    with pytest.raises(LeaseLost, match="no longer held by slow"):
        storage.release(old)
    assert storage.collect_garbage(pid, Mode.MAX) == []


def test_pt_run_trains_a_population_in_memory(tmp_path, quick_run):
    storage = MemoryStorage()
    result = quick_run(
        storage=storage, checkpoints=tmp_path / "checkpoints", population=4, intervals=4
    )
    assert result.status == "finished" and len(result.intervals()) >= 16
    assert result.best.score > 0.5
    check_steps(result)


def test_it_cannot_leave_its_process(tmp_path, quick_run):
    with pytest.raises(StorageError, match="one process"):
        pickle.dumps(MemoryStorage())
    with pytest.raises(StorageError, match="workers=1"):
        open_storage("memory://")
    with pytest.raises(StorageError, match="workers=1"):
        quick_run(
            storage=MemoryStorage(), checkpoints=tmp_path / "checkpoints", population=2, workers=2
        )
