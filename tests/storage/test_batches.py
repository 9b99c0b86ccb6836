"""The storage contract for blocks: ``claim_block``, ``record_intervals`` and ``record_exploits``
do for many members what ``claim``, ``record_interval`` and ``record_exploit`` do for one, each
member fenced by its own claim. Run against every storage kind, the defaults included."""

from __future__ import annotations

import math
import time

from poptune.records import ExploitEvent, MemberStatus, Mode
from poptune.storage import Copy, Recording
from tests._helpers import ckpt, interval, make, train


def _recordings(claims, scores):
    """Each claimed member's next interval, scoring ``scores``, ready to exploit."""
    steps = [(c, c.member.step + 1, s) for c, s in zip(claims, scores, strict=True)]
    return [
        Recording(c, interval(c.member.id, t, s), ckpt(c.member.id, t), True, False)
        for c, t, s in steps
    ]


def test_a_block_claim_takes_the_least_advanced_members_by_id(storage):
    pid = make(storage, n=5)
    train(storage, pid, 0.1)  # member 0 is ahead
    claims = storage.claim_block(pid, "w", 5, 30.0, False, 3)
    assert [c.member.id for c in claims] == [1, 2, 3]
    assert all(c.owner == "w" and c.checkpoint is None for c in claims)
    assert [c.member.id for c in storage.claim_block(pid, "v", 5, 30.0, False, 9)] == [0, 4]
    assert storage.claim_block(pid, "u", 5, 30.0, False, 2) == []
    assert storage.claims(pid) == {0: "v", 1: "w", 2: "w", 3: "w", 4: "v"}


def test_a_block_claim_prefers_the_members_held_on_ties_and_reads_their_checkpoints(storage):
    pid = make(storage, n=4)
    storage.record_intervals(
        _recordings(storage.claim_block(pid, "w", 5, 30.0, False, 4), [0.1] * 4)
    )
    claims = storage.claim_block(pid, "w", 5, 30.0, False, 2, prefer=[(3, 1), (2, 1)])
    assert [c.member.id for c in claims] == [2, 3]
    assert [c.checkpoint for c in claims] == [ckpt(2, 1), ckpt(3, 1)]
    # member 0 held at step 0 is stale (it is at step 1): not preferred over member 1
    claims = storage.claim_block(pid, "w", 5, 30.0, False, 1, prefer=[(1, 1), (0, 0)])
    assert [c.member.id for c in claims] == [1]


def test_a_sync_block_claim_waits_for_the_generation(storage):
    pid = make(storage, n=3)
    train(storage, pid, 0.1)  # member 0 reaches step 1
    assert [c.member.id for c in storage.claim_block(pid, "w", 5, 30.0, True, 3)] == [1, 2]
    assert storage.claim_block(pid, "v", 5, 30.0, True, 3) == []


def test_a_block_is_recorded_whole_and_a_stale_member_is_refused_alone(storage):
    pid = make(storage, n=3)
    claims = storage.claim_block(pid, "slow", 5, 0.01, False, 3)
    time.sleep(0.05)
    thief = storage.claim(pid, "fast", 5, 30.0, sync=False)  # member 0's lease expired
    assert thief is not None and thief.member.id == 0
    # members 1 and 2 are past their leases too, but nobody took them: still theirs to record
    assert storage.record_intervals(_recordings(claims, [0.3, 0.4, math.nan])) == [0]
    assert {(i.member, i.step) for i in storage.intervals(pid)} == {(1, 1), (2, 1)}
    assert storage.claims(pid) == {0: "fast"}


def test_a_block_record_releases_its_members_and_is_idempotent(storage):
    pid = make(storage, n=3)
    claims = storage.claim_block(pid, "w", 2, 30.0, False, 3)
    recordings = _recordings(claims, [0.5, math.nan, 0.7])
    assert storage.record_intervals(recordings) == []
    assert storage.record_intervals(recordings) == []  # its reply was lost: a no-op
    assert len(storage.intervals(pid)) == 3
    members = storage.members(pid)
    assert [m.step for m in members] == [1, 1, 1]
    assert all(m.status is MemberStatus.IDLE and m.exploit_pending for m in members)
    assert [r.member for r in storage.checkpoints(pid)] == [0, 1, 2]
    assert storage.best_by_step(pid, Mode.MAX) == [(1, 0.7)]
    assert storage.interval(pid, 1, 1).score is None or math.isnan(
        storage.interval(pid, 1, 1).score
    )
    assert storage.record_intervals([]) == []


def test_block_copies_are_recorded_together_each_checked(storage):
    pid = make(storage, n=3)
    storage.record_intervals(
        _recordings(storage.claim_block(pid, "w", 5, 30.0, False, 3), [0.1, 0.9, 0.5])
    )
    claims = storage.claim_block(pid, "w", 5, 30.0, False, 3)
    events = [
        ExploitEvent(0, 1, 1, 1, {"x": 0.0}, {"x": 1.5}, 0.1, 0.9, 7.0),
        ExploitEvent(2, 1, 7, 1, {"x": 2.0}, {"x": 9.0}, 0.5, 0.9, 7.0),  # no such donor
    ]
    copies = [Copy(claims[0], events[0], {"x": 1.5}), Copy(claims[2], events[1], {"x": 9.0})]
    assert storage.record_exploits(copies) == [ckpt(1, 1), None]
    assert storage.record_exploits(copies) == [ckpt(1, 1), None]  # a retry writes nothing twice
    assert storage.exploits(pid) == [events[0]]
    members = storage.members(pid)
    assert members[0].hparams == {"x": 1.5} and members[0].restore == (1, 1)
    assert members[2].restore == (2, 1)
    assert storage.record_exploits([]) == []


def test_a_stale_block_copy_is_refused_alone(storage):
    pid = make(storage, n=2)
    storage.record_intervals(
        _recordings(storage.claim_block(pid, "w", 5, 30.0, False, 2), [0.1, 0.9])
    )
    claims = storage.claim_block(pid, "w", 5, 30.0, False, 2)
    storage.release(claims[0])
    event = ExploitEvent(0, 1, 1, 1, {"x": 0.0}, {"x": 1.5}, 0.1, 0.9, 7.0)
    assert storage.record_exploits([Copy(claims[0], event, {"x": 1.5})]) == [None]
    assert storage.exploits(pid) == [] and storage.members(pid)[0].restore == (0, 1)
