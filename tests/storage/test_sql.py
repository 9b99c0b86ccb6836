"""What only the SQL storage has: URLs, transactions retried through
transient errors, and claims that stay atomic across processes (the contract itself is in
``test_contract.py``; schema versions and upgrades in ``test_migrations.py``)."""

from __future__ import annotations

import itertools
import multiprocessing
import os
import time
from pathlib import Path

import pytest

from poptune.storage import SQLStorage, StorageError


def make(storage: SQLStorage, n: int = 4, name: str = "pop") -> int:
    return storage.create_population(name, {"intervals": 5}, [{"x": float(i)} for i in range(n)]).id


def test_bad_urls_are_refused_clearly(tmp_path):
    with pytest.raises(StorageError, match="in-memory"):
        SQLStorage("sqlite://")
    with pytest.raises(StorageError, match="Cannot parse"):
        SQLStorage("not a url")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises((StorageError, OSError)):
        SQLStorage(f"sqlite:///{blocker}/sub/poptune.db")


def _claimer(url: str, pid: int, log_path: str, rounds: int) -> None:
    storage = SQLStorage(url)
    with open(log_path, "a") as log:
        for _ in range(rounds):
            claim = storage.claim(pid, str(os.getpid()), 10**6, 30.0, sync=False)
            if claim is None:
                time.sleep(0.001)
                continue
            start = time.monotonic()
            time.sleep(0.002)
            end = time.monotonic()
            log.write(f"{claim.member.id} {claim.token} {start} {end}\n")
            log.flush()
            storage.release(claim)
    storage.close()


def test_claims_are_atomic_across_processes(storage_url, tmp_path: Path):
    storage = SQLStorage(storage_url)
    pid = make(storage, n=3)
    storage.close()
    logs = [tmp_path / f"claims-{i}.log" for i in range(4)]
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_claimer, args=(storage_url, pid, str(path), 60)) for path in logs
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
        assert process.exitcode == 0
    held: dict[int, list[tuple[float, float, int]]] = {}
    for path in logs:
        for line in path.read_text().splitlines():
            member, token, start, end = line.split()
            held.setdefault(int(member), []).append((float(start), float(end), int(token)))
    total = sum(len(v) for v in held.values())
    assert total >= 60  # the processes really competed
    for spans in held.values():
        spans.sort()
        tokens = [t for _, _, t in spans]
        assert len(set(tokens)) == len(tokens)  # every claim got its own fencing token
        for (_, end, _), (start, _, _) in itertools.pairwise(spans):
            assert start >= end  # no two processes ever held the same member at once


def test_every_sql_transaction_retries_through_transient_errors():
    """Every contract method (one transaction each) and the schema upgrade are marked
    ``@retrying`` where they are defined; ``close`` has no transaction to retry."""
    from poptune.storage import Storage
    from poptune.storage._retry import is_retrying

    contract = set(Storage.__abstractmethods__) - {"close"}
    assert len(contract) == 36
    retried = {
        name for name, value in vars(SQLStorage).items() if callable(value) and is_retrying(value)
    }
    assert retried == contract | {"_create_schema"}
    assert issubclass(SQLStorage, Storage) and not SQLStorage.__abstractmethods__
