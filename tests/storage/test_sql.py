"""The storage contract, run against every storage kind in ``conftest.storage_url``."""

from __future__ import annotations

import itertools
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import pytest

from poptune.checkpoints import CheckpointCorrupt, open_checkpoints
from poptune.records import (
    CheckpointRef,
    ExploitEvent,
    FailureRecord,
    IntervalRecord,
    MemberStatus,
    Mode,
    PopulationStatus,
)
from poptune.storage import (
    SCHEMA_VERSION,
    LeaseLost,
    PopulationExists,
    PopulationNotFound,
    SQLStorage,
    StorageError,
)

CONFIG = {"metric": "q", "mode": "max", "intervals": 5}


def make(storage: SQLStorage, n: int = 4, name: str = "pop") -> int:
    return storage.create_population(name, CONFIG, [{"x": float(i)} for i in range(n)]).id


def interval(member: int, step: int, score: float, origin=None) -> IntervalRecord:
    return IntervalRecord(member, step, {"x": float(member)}, score, {"q": score}, 0.1, 1.0, origin)


def ckpt(member: int, step: int) -> CheckpointRef:
    return CheckpointRef(member, step, f"m{member}/s{step}.ckpt", 10, "0" * 64)


def train(storage: SQLStorage, pid: int, score: float, budget: int = 5, ready: bool = False):
    claim = storage.claim(pid, "w", budget, 30.0, sync=False)
    assert claim is not None
    step = claim.member.step + 1
    storage.record_interval(
        claim,
        interval(claim.member.id, step, score, claim.member.restore),
        ckpt(claim.member.id, step),
        exploit_pending=ready,
        done=step >= budget,
        mode=Mode.MAX,
    )
    return claim.member.id, step


def test_create_and_read_population(storage):
    pid = make(storage)
    record = storage.population("pop")
    assert record.id == pid and record.config == CONFIG
    assert record.status is PopulationStatus.RUNNING
    members = storage.members(pid)
    assert [m.id for m in members] == [0, 1, 2, 3]
    assert all(m.step == 0 and m.status is MemberStatus.IDLE for m in members)
    assert [p.name for p in storage.populations()] == ["pop"]


def test_duplicate_and_missing_names(storage):
    make(storage)
    with pytest.raises(PopulationExists, match="'pop'"):
        make(storage)
    with pytest.raises(PopulationNotFound, match=r"'other'.*Populations here: pop"):
        storage.population("other")


def test_claims_least_advanced_member_first_and_never_twice(storage):
    pid = make(storage, n=3)
    assert train(storage, pid, 0.5) == (0, 1)
    claims = [storage.claim(pid, f"w{i}", 5, 30.0, sync=False) for i in range(3)]
    assert [c.member.id for c in claims[:2]] == [1, 2]  # step 0 before step 1
    assert claims[2].member.id == 0
    assert storage.claim(pid, "w9", 5, 30.0, sync=False) is None
    storage.release(claims[0])
    assert storage.claim(pid, "w9", 5, 30.0, sync=False).member.id == 1


def test_sync_claims_wait_for_the_generation(storage):
    pid = make(storage, n=2)
    train(storage, pid, 0.1)  # member 0 reaches step 1
    claim = storage.claim(pid, "w", 5, 30.0, sync=True)
    assert claim.member.id == 1  # member 0 must wait for member 1
    assert storage.claim(pid, "w2", 5, 30.0, sync=True) is None


def test_fencing_refuses_late_writes_after_lease_expiry(storage):
    pid = make(storage, n=1)
    old = storage.claim(pid, "slow", 5, 0.01, sync=False)
    time.sleep(0.05)
    new = storage.claim(pid, "fast", 5, 30.0, sync=False)
    assert new is not None and new.token == old.token + 1
    with pytest.raises(LeaseLost):
        storage.record_interval(old, interval(0, 1, 0.3), ckpt(0, 1), False, False, Mode.MAX)
    with pytest.raises(LeaseLost):
        storage.renew(old, 30.0)
    storage.record_interval(new, interval(0, 1, 0.4), ckpt(0, 1), False, False, Mode.MAX)
    assert [i.score for i in storage.intervals(pid)] == [0.4]


def test_record_interval_is_atomic_with_its_checkpoint(storage):
    pid = make(storage, n=2)
    train(storage, pid, 0.5, ready=True)
    member = storage.members(pid)[0]
    assert (member.step, member.score, member.restore, member.exploit_pending) == (
        1,
        0.5,
        (0, 1),
        True,
    )
    assert storage.checkpoint(pid, 0, 1) == ckpt(0, 1)
    assert storage.interval(pid, 0, 1) == interval(0, 1, 0.5)
    assert storage.interval(pid, 0, 2) is None
    claim = storage.claim(pid, "w", 5, 30.0, sync=False)  # member 1
    # A duplicate (member, step) violates the primary key: nothing of the transaction stays.
    with pytest.raises(Exception):  # noqa: B017 - the driver's IntegrityError
        storage.record_interval(claim, interval(0, 1, 0.9), ckpt(1, 1), False, False, Mode.MAX)
    assert storage.checkpoint(pid, 1, 1) is None
    assert storage.members(pid)[1].status is MemberStatus.RUNNING


def test_candidates_latest_or_at_step(storage):
    pid = make(storage, n=2)
    train(storage, pid, 0.1)  # member 0 step 1
    train(storage, pid, 0.2)  # member 1 step 1
    train(storage, pid, 0.3)  # member 0 step 2
    latest = {(c.member, c.step): c.score for c in storage.candidates(pid)}
    assert latest == {(0, 2): 0.3, (1, 1): 0.2}
    at_one = {(c.member, c.step): c.score for c in storage.candidates(pid, step=1)}
    assert at_one == {(0, 1): 0.1, (1, 1): 0.2}


def test_intervals_after_a_step(storage):
    pid = make(storage, n=2)
    for score in (0.1, 0.2, 0.3, 0.4, 0.5):  # members 0, 1, 0, 1, 0: steps 1, 1, 2, 2, 3
        train(storage, pid, score)
    every = storage.intervals(pid)
    assert [(i.member, i.step) for i in every] == [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2)]
    assert storage.intervals(pid, after_step=0) == every
    assert storage.intervals(pid, after_step=1) == [every[1], every[2], every[4]]
    assert storage.intervals(pid, after_step=3) == []


def test_record_exploit_points_member_at_donor(storage):
    pid = make(storage, n=2)
    train(storage, pid, 0.1)
    train(storage, pid, 0.9)
    claim = storage.claim(pid, "w", 5, 30.0, sync=False)
    event = ExploitEvent(claim.member.id, 1, 1, 1, {"x": 0.0}, {"x": 1.2}, 0.1, 0.9, 5.0)
    assert storage.record_exploit(claim, event, {"x": 1.2})
    member = storage.members(pid)[claim.member.id]
    assert (member.parent, member.restore, dict(member.hparams)) == (1, (1, 1), {"x": 1.2})
    assert (member.step, member.score) == (1, 0.9)  # the step and score travel with the weights
    assert storage.exploits(pid) == [event]
    missing = ExploitEvent(claim.member.id, 1, 1, 7, {}, {}, None, None, 6.0)
    assert not storage.record_exploit(claim, missing, {"x": 3.0})
    assert len(storage.exploits(pid)) == 1


def test_copying_weights_ahead_moves_the_step_and_at_the_budget_finishes(storage):
    pid = make(storage, n=2)
    for score in (0.1, 0.9, 0.2, 0.95):  # both members at step 2
        train(storage, pid, score, budget=3)
    train(storage, pid, 0.97, budget=3)  # member 0 reaches the budget
    claim = storage.claim(pid, "w", 3, 30.0, sync=False)
    assert (claim.member.id, claim.member.step) == (1, 2)
    event = ExploitEvent(1, 2, 0, 3, {"x": 1.0}, {"x": 0.5}, 0.95, 0.97, 5.0)
    assert storage.record_exploit(claim, event, {"x": 0.5}, done=True) == ckpt(0, 3)
    member = storage.members(pid)[1]
    assert (member.step, member.score, member.restore) == (3, 0.97, (0, 3))
    assert member.status is MemberStatus.DONE  # released in the same transaction
    assert storage.claim(pid, "w", 3, 30.0, sync=False) is None
    with pytest.raises(LeaseLost):
        storage.release(claim)


def test_failure_marks_member_failed_and_reopen_gives_it_another_try(storage):
    pid = make(storage, n=2)
    claim = storage.claim(pid, "w", 5, 30.0, sync=False)
    failure = FailureRecord(0, 1, "boom", "Traceback...\nboom", 1.0)
    assert storage.record_failure(claim, failure, retry=False) is MemberStatus.FAILED
    assert storage.members(pid)[0].status is MemberStatus.FAILED
    assert storage.failures(pid)[0].error == "boom"
    assert storage.claim(pid, "w", 5, 30.0, sync=False).member.id == 1
    storage.reopen_members(pid, 5)
    assert storage.members(pid)[0].status is MemberStatus.IDLE


def test_failure_retry_counts_and_success_resets(storage):
    pid = make(storage, n=1)
    for attempt in (1, 2):
        claim = storage.claim(pid, "w", 5, 30.0, sync=False)
        failure = FailureRecord(0, 1, "boom", "boom", time.time())
        assert storage.record_failure(claim, failure, retry=True) is MemberStatus.IDLE
        assert storage.members(pid)[0].failures == attempt
    assert storage.failure_streak(pid) == 2
    train(storage, pid, 0.5)
    assert storage.members(pid)[0].failures == 0
    assert storage.failure_streak(pid) == 0


def test_failure_reseeds_from_a_donor(storage):
    pid = make(storage, n=2)
    train(storage, pid, 0.1)  # member 0 step 1
    train(storage, pid, 0.9)  # member 1 step 1
    claim = storage.claim(pid, "w", 5, 30.0, sync=False)  # member 0
    event = ExploitEvent(0, 1, 1, 1, {"x": 0.0}, {"x": 1.1}, None, 0.9, 2.0)
    failure = FailureRecord(0, 2, "boom", "boom", 2.0)
    status = storage.record_failure(claim, failure, retry=False, reseed=(event, {"x": 1.1}))
    assert status is MemberStatus.IDLE
    member = storage.members(pid)[0]
    assert (member.restore, member.parent, dict(member.hparams)) == ((1, 1), 1, {"x": 1.1})
    assert storage.exploits(pid) == [event]
    gone = ExploitEvent(0, 1, 1, 7, {}, {}, None, None, 3.0)  # donor checkpoint does not exist
    claim = storage.claim(pid, "w", 5, 30.0, sync=False)
    assert claim.member.id == 0
    again = FailureRecord(0, 2, "boom", "boom", 3.0)  # another failure (a retry repeats one)
    status = storage.record_failure(claim, again, retry=False, reseed=(gone, {"x": 1.0}))
    assert status is MemberStatus.FAILED


def test_collect_garbage_keeps_what_is_needed(storage):
    pid = make(storage, n=2)
    for score in (0.9, 0.1, 0.2, 0.3, 0.4, 0.5):  # alternates members 0 and 1
        train(storage, pid, score)
    # member 0: steps 1 (0.9, best ever), 2 (0.2), 3 (0.4); member 1: 1, 2, 3. Recording an
    # interval collects in the same transaction, so only the protected ones are left.
    kept = {(c.member, c.step) for c in storage.checkpoints(pid)}
    assert kept == {(0, 1), (0, 3), (1, 3)}
    assert storage.collect_garbage(pid, Mode.MAX) == []


def test_garbage_collection_spares_restore_points(storage):
    pid = make(storage, n=3)
    for score in (0.1, 0.9, 0.2, 0.3, 0.95, 0.25):  # every member at step 2; (1, 2) the best
        train(storage, pid, score)
    claim = storage.claim(pid, "w0", 5, 30.0, sync=False)  # member 0
    assert claim.member.id == 0
    donor = ExploitEvent(0, 2, 1, 2, {}, {}, 0.3, 0.95, 1.0)
    assert storage.record_exploit(claim, donor, {"x": 1.0}) == ckpt(1, 2)
    # While member 0 is held, members 1 and 2 train on with better scores: (1, 2) is then
    # neither member 1's latest nor the best, but member 0 will restore from it, so it must
    # survive.
    collected = []
    for member, score in ((1, 0.99), (2, 0.98), (1, 0.999), (2, 0.997)):
        train_claim = storage.claim(pid, "w", 5, 30.0, sync=False)
        assert train_claim.member.id == member
        step = train_claim.member.step + 1
        collected += storage.record_interval(
            train_claim,
            interval(member, step, score, train_claim.member.restore),
            ckpt(member, step),
            False,
            False,
            Mode.MAX,
        )
    storage.release(claim)
    assert (1, 2) not in {(c.member, c.step) for c in collected}
    assert storage.checkpoint(pid, 1, 2) == ckpt(1, 2)
    assert storage.checkpoint(pid, 1, 1) is None  # what nothing needs is still collected


def test_summary_counts(storage):
    pid = make(storage, n=2)
    train(storage, pid, 0.3)
    summary = storage.summary(pid, 5, Mode.MIN)
    assert (summary.steps_done, summary.steps_total, summary.best_member) == (1, 10, 0)
    assert summary.status is PopulationStatus.RUNNING


def test_nan_scores_are_stored_as_missing(storage):
    pid = make(storage, n=2)
    train(storage, pid, float("nan"))
    assert storage.members(pid)[0].score is None
    assert storage.intervals(pid)[0].score is None


def test_bad_urls_are_refused_clearly(tmp_path):
    with pytest.raises(StorageError, match="in-memory"):
        SQLStorage("sqlite://")
    with pytest.raises(StorageError, match="Cannot parse"):
        SQLStorage("not a url")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises((StorageError, OSError)):
        SQLStorage(f"sqlite:///{blocker}/sub/poptune.db")


def test_schema_version_mismatch_is_refused(storage_url):
    import sqlalchemy as sa

    SQLStorage(storage_url).close()
    engine = sa.create_engine(storage_url)
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE poptune_meta SET value='999'"))
    engine.dispose()
    with pytest.raises(StorageError, match="schema version 999"):
        SQLStorage(storage_url)


def test_a_schema_2_database_is_upgraded_readable_but_not_continued(storage_url, tmp_path):
    """Schema 2 counted a member's own intervals as its step; its populations stay readable
    after the upgrade but are never trained on under the new meaning."""
    import sqlalchemy as sa

    import poptune as pt
    from poptune.testing import Quadratic, quadratic_space

    options = dict(
        space=quadratic_space(),
        metric="q",
        population=3,
        intervals=3,
        storage=storage_url,
        checkpoints=tmp_path / "checkpoints",
        name="old",
        seed=0,
        progress=False,
    )
    pt.run(Quadratic, **options).storage.close()
    _back_to_schema(storage_url, tmp_path / "checkpoints", 2)

    old = pt.load(storage_url, "old")  # upgrades in place
    assert old.config["legacy_steps"] is True
    assert len(old.intervals()) == 9 and old.best.step == 3 and len(old.schedule()) == 3
    with pytest.raises(pt.PopulationError, match=r"older poptune.*Start a new population"):
        old.resume(progress=False)
    with pytest.raises(pt.PopulationError, match="older poptune"):
        pt.run(Quadratic, **{**options, "intervals": 3})
    fresh = pt.run(Quadratic, **{**options, "name": "new"})  # new populations train as usual
    assert "legacy_steps" not in fresh.config and fresh.status == "finished"
    with SQLStorage(storage_url)._read() as connection:
        version = connection.execute(sa.text("SELECT value FROM poptune_meta")).scalar_one()
    assert version == str(SCHEMA_VERSION)


def _back_to_schema(url: str, checkpoints: Path, version: int) -> None:
    """Make a database look as poptune wrote it at ``version`` (2 or 3): checkpoints were
    checksummed with a bare SHA-256, in a column named ``sha256``."""
    import hashlib

    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.begin() as connection:
        rows = connection.execute(
            sa.text("SELECT population_id, member_id, step, path FROM poptune_checkpoints")
        ).all()
        connection.execute(
            sa.text("ALTER TABLE poptune_checkpoints RENAME COLUMN checksum TO sha256")
        )
        for row in rows:
            digest = hashlib.sha256((checkpoints / row.path).read_bytes()).hexdigest()
            connection.execute(
                sa.text(
                    "UPDATE poptune_checkpoints SET sha256 = :d "
                    "WHERE population_id = :p AND member_id = :m AND step = :s"
                ),
                {"d": digest, "p": row.population_id, "m": row.member_id, "s": row.step},
            )
        connection.execute(sa.text(f"UPDATE poptune_meta SET value='{version}'"))
    engine.dispose()


def test_a_schema_3_database_keeps_its_sha256_checkpoints_verified(storage_url, tmp_path):
    import poptune as pt
    from poptune.testing import Quadratic, quadratic_space

    options = dict(
        space=quadratic_space(),
        metric="q",
        population=3,
        intervals=2,
        storage=storage_url,
        checkpoints=tmp_path / "checkpoints",
        name="sha",
        seed=0,
        progress=False,
    )
    before = pt.run(Quadratic, **options)
    best = before.best.state()
    before.storage.close()
    _back_to_schema(storage_url, tmp_path / "checkpoints", 3)

    old = pt.load(storage_url, "sha")  # upgrades in place: the column is renamed
    refs = old.storage.checkpoints(old.record.id)
    assert refs and all(len(ref.checksum) == 64 for ref in refs)  # bare SHA-256, kept
    np.testing.assert_array_equal(old.best.state()["theta"], best["theta"])  # verified
    ref = refs[0]
    path = tmp_path / "checkpoints" / ref.path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))  # a corrupted byte is still caught
    with pytest.raises(CheckpointCorrupt, match="checksum"):
        open_checkpoints(tmp_path / "checkpoints").load(ref)
    new = pt.run(Quadratic, **{**options, "name": "new"})  # new checkpoints: named XXH3
    assert all(r.checksum.startswith("xxh3_128:") for r in new.storage.checkpoints(new.record.id))


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


def test_best_by_step_ignores_nan_and_infinities(storage):
    pid = make(storage, n=3)
    for score in (0.1, 0.9, float("nan"), float("inf"), 0.4, -float("inf")):
        train(storage, pid, score)  # members 0, 1, 2 at step 1, then at step 2
    assert storage.best_by_step(pid, Mode.MAX) == [(1, 0.9), (2, 0.4)]
    assert storage.best_by_step(pid, Mode.MIN) == [(1, 0.1), (2, 0.4)]
    assert storage.best_by_step(make(storage, name="empty"), Mode.MAX) == []
