"""The storage contract, run against every storage kind of the ``storage`` fixture (memory,
SQLite, PostgreSQL): whatever code above the storage relies on is tested here."""

from __future__ import annotations

import math
import time

import pytest

from poptune.records import (
    Candidate,
    CheckpointRef,
    ExploitEvent,
    FailureRecord,
    MemberStatus,
    Mode,
    PopulationStatus,
    count_peers,
    rank_key,
)
from poptune.storage import (
    LeaseLost,
    PopulationExists,
    PopulationNotFound,
)
from tests._helpers import CONFIG, ckpt, interval, make, train


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
        storage.record_interval(old, interval(0, 1, 0.3), ckpt(0, 1), False, False)
    with pytest.raises(LeaseLost):
        storage.renew(old, 30.0)
    storage.record_interval(new, interval(0, 1, 0.4), ckpt(0, 1), False, False)
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
        storage.record_interval(claim, interval(0, 1, 0.9), ckpt(1, 1), False, False)
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
    # interval collects nothing (workers collect off the per-interval path); a collection then
    # leaves only the protected ones.
    assert len(storage.checkpoints(pid)) == 6
    collected = {(c.member, c.step) for c in storage.collect_garbage(pid, Mode.MAX)}
    assert collected == {(0, 2), (1, 1), (1, 2)}
    kept = {(c.member, c.step) for c in storage.checkpoints(pid)}
    assert kept == {(0, 1), (0, 3), (1, 3)}
    assert storage.collect_garbage(pid, Mode.MAX) == []


def test_collect_garbage_keeps_the_best_finite_score_not_an_infinity(storage):
    pid = make(storage, n=2)
    for score in (0.9, 0.1, float("inf"), 0.3, 0.2, 0.4):  # alternates members 0 and 1
        train(storage, pid, score)
    # (0, 1) scored 0.9, the best before member 0 diverged to inf at step 2: result.best needs
    # its checkpoint, not the diverged one.
    collected = {(c.member, c.step) for c in storage.collect_garbage(pid, Mode.MAX)}
    assert collected == {(0, 2), (1, 1), (1, 2)}
    assert storage.checkpoint(pid, 0, 1) is not None


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
        storage.record_interval(
            train_claim,
            interval(member, step, score, train_claim.member.restore),
            ckpt(member, step),
            False,
            False,
        )
        collected += storage.collect_garbage(pid, Mode.MAX)
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


def test_summary_counts_as_running_only_members_under_a_live_lease(storage):
    pid = make(storage, n=2)
    assert storage.claim(pid, "alive", 5, 30.0, sync=False) is not None
    assert storage.claim(pid, "killed", 5, 0.05, sync=False) is not None  # its worker died
    time.sleep(0.1)
    summary = storage.summary(pid, 5, Mode.MIN)
    assert summary.running == 1 and summary.status is PopulationStatus.RUNNING


def test_nan_scores_are_stored_as_missing(storage):
    pid = make(storage, n=2)
    train(storage, pid, float("nan"))
    assert storage.members(pid)[0].score is None
    assert storage.intervals(pid)[0].score is None


def test_best_by_step_ignores_nan_and_infinities(storage):
    pid = make(storage, n=3)
    for score in (0.1, 0.9, float("nan"), float("inf"), 0.4, -float("inf")):
        train(storage, pid, score)  # members 0, 1, 2 at step 1, then at step 2
    assert storage.best_by_step(pid, Mode.MAX) == [(1, 0.9), (2, 0.4)]
    assert storage.best_by_step(pid, Mode.MIN) == [(1, 0.1), (2, 0.4)]
    assert storage.best_by_step(make(storage, name="empty"), Mode.MAX) == []


def test_best_by_step_keeps_the_best_of_every_step_and_goes_with_its_population(storage):
    pid = make(storage, n=2)
    for score in (0.5, -2.0, 0.7, 3.0, 0.1):  # members 0, 1, 0, 1, 0: steps 1, 1, 2, 2, 3
        train(storage, pid, score)
    assert storage.best_by_step(pid, Mode.MAX) == [(1, 0.5), (2, 3.0), (3, 0.1)]
    assert storage.best_by_step(pid, Mode.MIN) == [(1, -2.0), (2, 0.7), (3, 0.1)]
    storage.delete_population(pid)
    again = make(storage)
    assert again != pid and storage.best_by_step(again, Mode.MAX) == []


def test_a_deleted_populations_id_is_never_given_again(storage):
    """A worker that outlived a deleted population claims by its id: were the id given to the
    next population (SQLite gives the highest id present plus one), it would train that one's
    members, past its budget, and take its checkpoint folder."""
    first, last = make(storage, name="first"), make(storage, name="last")
    storage.delete_population(last)
    created = [make(storage, name="new")]
    storage.delete_population(created[0])
    created.append(make(storage, name="newer"))
    assert len({first, last, *created}) == 4 and min(created) > last
    try:  # nothing to claim under the deleted id (memory says so, SQL finds no member)
        claimed = storage.claim(last, "outlived", 5, 30.0, sync=False)
    except PopulationNotFound:
        claimed = None
    assert claimed is None


def test_a_retried_write_that_committed_writes_nothing_twice(storage):
    pid = make(storage, n=2)
    claim = storage.claim(pid, "w", 5, 30.0, sync=False)
    args = (interval(0, 1, 0.5), ckpt(0, 1), False, False)
    storage.record_interval(claim, *args)
    storage.record_interval(claim, *args)  # its reply was lost: a no-op
    assert len(storage.intervals(pid)) == 1
    train(storage, pid, 0.9)  # member 1
    claim = storage.claim(pid, "w", 5, 30.0, sync=False)
    event = ExploitEvent(0, 1, 1, 1, {"x": 0.0}, {"x": 1.0}, 0.5, 0.9, 7.0)
    assert storage.record_exploit(claim, event, {"x": 1.0}) == ckpt(1, 1)
    assert storage.record_exploit(claim, event, {"x": 1.0}) == ckpt(1, 1)
    assert storage.exploits(pid) == [event]
    failure = FailureRecord(0, 2, "boom", "boom", 8.0)
    assert storage.record_failure(claim, failure, retry=True) is MemberStatus.IDLE
    assert storage.record_failure(claim, failure, retry=True) is MemberStatus.IDLE
    assert storage.failures(pid) == [failure] and storage.failure_streak(pid) == 1


def test_claims_released_by_owner_and_listed(storage):
    pid = make(storage, n=3)
    a = storage.claim(pid, "gone", 5, 30.0, sync=False)
    storage.claim(pid, "gone", 5, 30.0, sync=False)
    c = storage.claim(pid, "alive", 5, 30.0, sync=False)
    assert storage.claims(pid) == {0: "gone", 1: "gone", 2: "alive"}
    assert storage.release_claims(pid, ["gone"]) == 2
    assert storage.release_claims(pid, []) == 0
    assert storage.claims(pid) == {2: "alive"}
    with pytest.raises(LeaseLost):
        storage.renew(a, 30.0)
    storage.renew(c, 30.0)


def test_stop_config_and_extend(storage):
    pid = make(storage, n=2)
    storage.update_config(pid, {"note": [1, 2]})
    assert storage.population("pop").config == {**CONFIG, "note": [1, 2]}
    for _ in range(4):
        train(storage, pid, 0.5, budget=2)
    assert {m.status for m in storage.members(pid)} == {MemberStatus.DONE}
    with pytest.raises(ValueError, match="only grows"):
        storage.extend(pid, 1)
    storage.set_status(pid, PopulationStatus.FINISHED, None)
    storage.extend(pid, 6)
    assert storage.population("pop").config["intervals"] == 6
    assert storage.population("pop").status is PopulationStatus.RUNNING
    assert {m.status for m in storage.members(pid)} == {MemberStatus.IDLE}
    assert storage.stop(pid, "enough") is True
    assert storage.stop(pid, "again") is False
    assert storage.population("pop").error == "enough"
    assert storage.claim(pid, "w", 6, 30.0, sync=False) is None  # stopped: nothing to claim


def test_damaged_checkpoints_are_discarded_and_deleted_populations_return_theirs(storage):
    pid = make(storage, n=2)
    train(storage, pid, 0.5)
    storage.discard_checkpoint(pid, CheckpointRef(0, 1, "x", 1, "f" * 64))  # another checksum
    assert storage.checkpoint(pid, 0, 1) == ckpt(0, 1)
    storage.discard_checkpoint(pid, ckpt(0, 1))
    assert storage.checkpoint(pid, 0, 1) is None
    assert storage.candidates(pid) == []  # no checkpoint, no donor
    train(storage, pid, 0.6)
    other = make(storage, name="other")
    assert storage.delete_population(pid) == [ckpt(1, 1)]
    assert [p.id for p in storage.populations()] == [other]


def test_candidate_scores_are_the_candidates_without_their_hparams(storage):
    pid = make(storage, n=3)
    for score in (0.1, 0.9, 0.5, 0.2):  # members 0, 1, 2 at step 1, then member 0 at step 2
        train(storage, pid, score)
    for step in (None, 1, 2):
        full = storage.candidates(pid, step)
        assert storage.candidate_scores(pid, step) == [(i.member, i.step, i.score) for i in full]
    assert storage.candidate_scores(pid) == [(0, 2, 0.2), (1, 1, 0.9), (2, 1, 0.5)]


def test_a_claim_takes_the_least_advanced_member_preferring_the_callers(storage):
    pid = make(storage, n=4)
    train(storage, pid, 0.5)  # member 0 at step 1; members 1, 2, 3 at step 0
    first = storage.claim(pid, "w", 5, 30.0, sync=False, prefer=[(0, 1), (2, 0)])
    assert (first.member.id, first.member.step) == (2, 0)  # held, at the lowest step
    second = storage.claim(pid, "w", 5, 30.0, sync=False, prefer=[(0, 1)])  # 0 is ahead
    assert second.member.id == 1
    third = storage.claim(pid, "w", 5, 30.0, sync=False)
    assert third.member.id == 3
    fourth = storage.claim(pid, "w", 5, 30.0, sync=False, prefer=[(3, 0)])
    assert fourth.member.id == 0 and storage.claim(pid, "w", 5, 30.0, sync=False) is None


@pytest.mark.parametrize("sync", [False, True])
def test_a_claim_does_not_prefer_a_copy_trained_past_since(storage, sync):
    pid = make(storage, n=3)
    for score in (0.1, 0.2, 0.3):  # members 0, 1 and 2 at step 1
        train(storage, pid, score)
    # The caller holds member 0 as it was at step 0 (another worker trained it since) and
    # member 2 at step 1, where it is: only member 2 continues without a reload.
    claim = storage.claim(pid, "w", 5, 30.0, sync=sync, prefer=[(0, 0), (2, 1)])
    assert (claim.member.id, claim.member.step) == (2, 1)
    # member 1 was never held, member 0 is stale: the lowest id, as without a preference
    assert storage.claim(pid, "v", 5, 30.0, sync=sync, prefer=[(0, 0)]).member.id == 0


def test_intervals_between_two_steps(storage):
    pid = make(storage, n=2)
    for score in (0.1, 0.2, 0.3, 0.4, 0.5):  # members 0, 1, 0, 1, 0: steps 1, 1, 2, 2, 3
        train(storage, pid, score)
    every = storage.intervals(pid)
    assert [(i.member, i.step) for i in every] == [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2)]
    assert storage.intervals(pid, after_step=0) == every
    assert storage.intervals(pid, after_step=1) == [every[1], every[2], every[4]]
    assert storage.intervals(pid, after_step=3) == []
    assert storage.intervals(pid, after_step=0, until_step=1) == [every[0], every[3]]
    assert storage.intervals(pid, after_step=1, until_step=2) == [every[1], every[4]]
    assert every[1].hparams == {"x": 0.0} and every[1].origin == (0, 1)  # whole records


# Ties at the best in either mode (0.9 for max, -0.3 for min), missing scores (None, NaN) and
# both infinities, which rank last whatever the mode.
RANKED = [0.5, None, 0.5, math.inf, float("nan"), 0.9, -math.inf, 0.9, -0.3, -0.3, 0.5, None]


@pytest.mark.parametrize("mode", list(Mode))
def test_every_ranking_agrees_with_rank_key(storage, mode):
    """The orderings each backend writes its own way (SQL: in SQL) rank as ``rank_key``: the
    candidates best first, the counts a strategy asks for, the best member of the summary and
    the best checkpoint garbage collection keeps."""
    pid = make(storage, n=len(RANKED))
    for score in RANKED:
        train(storage, pid, score)  # members 0..11 at step 1, in order
    rows = storage.candidate_scores(pid, 1)
    assert [m for m, _, _ in rows] == list(range(len(RANKED)))
    ranked = sorted(rows, key=lambda r: rank_key(mode.fitness(r[2]), r[0]))
    assert [storage.peer_at(pid, 1, k, mode) for k in range(len(rows) + 1)] == [*ranked, None]
    assert [storage.peer_at(pid, 1, k) for k in range(len(rows) + 1)] == [*rows, None]

    candidates = [Candidate(m, s, x, mode.fitness(x)) for m, s, x in rows]
    for member in (*range(len(RANKED)), 99):
        for fitness in {c.fitness for c in candidates}:  # every tie, and -inf
            expected = count_peers(candidates, member, fitness)
            assert storage.peer_counts(pid, 1, mode, member, fitness) == expected

    best = min(
        ((m, s, x) for m, s, x in rows if x is not None and math.isfinite(x)),
        key=lambda r: (*rank_key(mode.fitness(r[2]), r[0]), r[1]),
    )
    assert best == ((5, 1, 0.9) if mode is Mode.MAX else (8, 1, -0.3))  # the lower of a tie
    summary = storage.summary(pid, 5, mode)
    assert (summary.best_member, summary.best_step, summary.best_score) == best

    worse = -10.0 if mode is Mode.MAX else 10.0
    for _ in RANKED:
        train(storage, pid, worse)  # every member at step 2, worse than any finite step 1
    storage.collect_garbage(pid, mode)
    assert [(c.member, c.step) for c in storage.checkpoints(pid) if c.step == 1] == [best[:2]]


def test_the_derived_queries_answer_from_the_records(storage):
    """What the base class derives (and a backend may answer faster): one interval, one
    checkpoint, the scores since a step, one peer."""
    pid = make(storage, n=2)
    for score in (0.1, 0.2, float("nan"), 0.4):  # members 0, 1, 0, 1: steps 1, 1, 2, 2
        train(storage, pid, score)
    assert storage.interval(pid, 1, 2) == interval(1, 2, 0.4, origin=(1, 1))
    assert storage.interval(pid, 1, 3) is None and storage.interval(pid, 2, 1) is None
    assert storage.checkpoint(pid, 0, 2) == ckpt(0, 2)
    assert storage.checkpoint(pid, 0, 3) is None
    assert storage.scores_since(pid, 0) == [(0, 1, 0.1), (0, 2, None), (1, 1, 0.2), (1, 2, 0.4)]
    assert storage.scores_since(pid, 1) == [(0, 2, None), (1, 2, 0.4)]
    assert storage.scores_since(pid, -3, member=1) == [(1, 1, 0.2), (1, 2, 0.4)]
    assert storage.scores_since(pid, 2) == []
    assert storage.peer(pid, 2, 0) == (0, 2, None)
    assert storage.peer(pid, 2, 5) is None and storage.peer(pid, 3, 0) is None
    storage.close()  # what a caller does last; a storage without connections has nothing to do
