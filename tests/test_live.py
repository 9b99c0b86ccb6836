"""Members stay in memory: a worker continues a member without rebuilding or reloading it."""

from __future__ import annotations

import pytest

import poptune as pt
from poptune import serialization
from poptune.checkpoints import LocalCheckpoints
from poptune.live import LiveMember, LiveMembers
from poptune.testing import CountingQuadratic, check_steps
from tests._helpers import worker_for

# The population most of these tests train: 4 members, 8 intervals each.
SIZE = {"population": 4, "intervals": 8}


@pytest.fixture(autouse=True)
def _counts() -> None:
    CountingQuadratic.builds = CountingQuadratic.loads = 0
    CountingQuadratic.seeds = []


def test_each_member_is_built_once_and_continues_in_memory(writes, quick_run):
    result = quick_run(CountingQuadratic, exploit=None, **SIZE)
    assert len(result.intervals()) == 32
    assert CountingQuadratic.builds == 4
    assert CountingQuadratic.loads == 0  # never read back from disk
    by_member = {}
    for interval in result.intervals():
        by_member.setdefault(interval.member, set()).add(interval.metrics["instance"])
    assert all(len(instances) == 1 for instances in by_member.values())


def test_an_exploit_loads_the_donor_into_the_live_instance(writes, quick_run):
    result = quick_run(CountingQuadratic, exploit=pt.Truncation(0.25), **SIZE)
    exploits = result.exploits()
    assert exploits
    assert CountingQuadratic.builds == 4  # no member was rebuilt
    assert CountingQuadratic.loads == len(exploits)  # one load per copy, into the live instance
    check_steps(result)


def test_every_interval_gets_its_own_seed(quick_run):
    result = quick_run(CountingQuadratic, population=4, intervals=3, exploit=None)
    assert len(CountingQuadratic.seeds) == 12
    assert len(set(CountingQuadratic.seeds)) == 12
    rerun = sorted(CountingQuadratic.seeds)
    CountingQuadratic.seeds = []
    quick_run(CountingQuadratic, population=4, intervals=3, exploit=None, name="again")
    assert sorted(CountingQuadratic.seeds) == rerun  # derived from (seed, member, step) only
    assert result.status == "finished"


def test_resident_bounds_the_members_kept(writes, quick_run):
    result = quick_run(CountingQuadratic, population=3, intervals=4, exploit=None, resident=1)
    # one member in memory at a time, trained least-advanced first: a member continues in
    # memory only when it is claimed right after its own interval; every other time it is
    # rebuilt and restored from its checkpoint (how often depends on when writes finish)
    assert CountingQuadratic.builds == 3 + CountingQuadratic.loads
    assert CountingQuadratic.loads >= 5
    assert [i.step for i in result.intervals() if i.member == 0] == [1, 2, 3, 4]


def test_live_members_drop_the_least_recently_used():
    class Session:
        closed = 0

        def close(self) -> None:
            Session.closed += 1

        def wait_closed(self, timeout: float) -> bool:
            return True

    live = LiveMembers(2)
    for member in (0, 1):
        live.add(LiveMember(member, Session()))
    assert live.get(0) is not None  # 0 is now the most recently used
    live.add(LiveMember(2, Session()))
    assert live.ids() == [0, 2] and Session.closed == 1
    live.drop(0)
    assert live.ids() == [2] and Session.closed == 2
    with pytest.raises(
        ValueError, match=r"'resident' parameter of LiveMembers must be an int >= 1. Got 0 instead"
    ):
        LiveMembers(0)


def test_a_donor_held_here_is_copied_from_memory_not_read_from_disk(writes, monkeypatch, quick_run):
    from poptune.checkpoints import LocalCheckpoints

    reads = []
    real = LocalCheckpoints.load

    def counting(self, ref):
        reads.append(ref)
        return real(self, ref)

    monkeypatch.setattr(LocalCheckpoints, "load", counting)
    result = quick_run(CountingQuadratic, exploit=pt.Truncation(0.25), sync=True, **SIZE)
    exploits = result.exploits()
    assert CountingQuadratic.loads == len(exploits) > 0
    # one worker holds every member: a donor that has not trained on since its checkpoint is
    # copied from memory; only donors that trained further here are read back from disk
    assert len(reads) < len(exploits)
    memory = [(i.member, i.step, i.score) for i in result.intervals()]
    two = quick_run(
        CountingQuadratic, exploit=pt.Truncation(0.25), sync=True, workers=2, name="two", **SIZE
    )
    assert [(i.member, i.step, i.score) for i in two.intervals()] == memory  # same copies


def test_preferred_members_are_those_held_with_their_step_least_advanced_first():
    from poptune.records import CheckpointRef

    class Session:
        def close(self) -> None:
            pass

        def wait_closed(self, timeout: float) -> bool:
            return True

    live = LiveMembers(10)
    # member 3 is ahead of every checkpoint; member 4 holds member 1's weights (a donor's)
    for member, held in ((0, (0, 3)), (1, (1, 2)), (2, (2, 2)), (3, None), (4, (1, 2))):
        holds = None if held is None else CheckpointRef(*held, "p", 1, "x")
        live.add(LiveMember(member, Session(), holds))
    # every member held at a checkpoint of its own, with its step: the storage prefers one
    # only at that step (member 0 may be at step 3 when 1 and 2 were trained past step 2)
    assert live.preferred() == [(1, 2), (2, 2), (0, 3)]
    assert live.preferred(limit=1) == [(1, 2)]
    # the worker last claimed a member at step 3: those held at step 2 were training elsewhere
    assert live.preferred(floor=3) == [(0, 3)]


class Received(CountingQuadratic):
    """Keeps every state it was handed (a copy), in order, in this process."""

    states: list[dict] = []  # noqa: RUF012 - per-process test record, reset by the test

    def load_state_dict(self, state):
        type(self).states.append({"theta": state["theta"].copy()})
        super().load_state_dict(state)


class Recorded(LocalCheckpoints):
    """A local store that keeps each state it saved and counts what it loaded."""

    def __init__(self, root):
        super().__init__(root)
        self.saved, self.loaded = {}, []

    def save(self, folder, member, step, state):
        self.saved[(member, step)] = serialization.copy(state)
        return super().save(folder, member, step, state)

    def load(self, ref):
        self.loaded.append((ref.member, ref.step))
        return super().load(ref)


@pytest.mark.parametrize("checkpoint_every", [None, 2])
@pytest.mark.parametrize("better", [1, 0])
def test_a_donor_held_unchanged_is_handed_over_from_memory_as_its_checkpoint(
    tmp_path, quick_run, writes, checkpoint_every, better
):
    """In generations with one worker, members are claimed by id: a donor with a higher id than
    the member has not trained on since its checkpoint (handed over from memory, no read); one
    with a lower id has (read from its checkpoint). Either way the member gets exactly the
    state the checkpoint holds."""
    Received.states = []
    slow, fast = {"h0": 0.1, "h1": 0.1}, {"h0": 1.0, "h1": 1.0}
    store = Recorded(tmp_path / "checkpoints")
    result = quick_run(
        Received, checkpoints=store, population=2, intervals=6, sync=True, seed=1,
        exploit=pt.Truncation(0.5), ready=pt.Every(2), checkpoint_every=checkpoint_every,
        initial=[slow, fast] if better == 1 else [fast, slow],
    )  # fmt: skip
    exploits = result.exploits()
    assert exploits and all(e.donor == better for e in exploits)
    assert store.loaded == [(e.donor, e.donor_step) for e in exploits if e.donor < e.member]
    assert len(Received.states) == len(exploits)
    for event, state in zip(exploits, Received.states, strict=True):
        saved = store.saved[(event.donor, event.donor_step)]["theta"]
        assert state["theta"].tobytes() == saved.tobytes()


def test_a_worker_prefers_the_members_it_holds_current_to_a_stale_copy(quick_run):
    # Two workers, four members. When a worker takes a member another worker held (it had
    # none of its own left at the lowest step), the other keeps a stale copy of it. Claims
    # must then prefer the members a worker holds at the step they are at: preferring the
    # stale copy sent members from worker to worker, reloaded at almost every interval.
    runner = quick_run.created(
        CountingQuadratic, name="keep", population=4, intervals=6, exploit=None
    )
    storage, pid = runner.storage, runner.target.population_id
    a, b = worker_for(runner), worker_for(runner)

    def trains(worker: pt.Worker) -> int:
        """One interval on ``worker``, recorded; the member it trained."""
        before = {m.id: m.step for m in storage.members(pid)}
        assert worker.work_once()
        worker.flush()
        after = {m.id: m.step for m in storage.members(pid)}
        (member,) = [m for m in after if after[m] != before[m]]
        return member

    try:
        assert [trains(a), trains(a), trains(b), trains(b)] == [0, 1, 2, 3]  # all at step 1
        assert [trains(a), trains(a)] == [0, 1]  # a's own, at step 2
        assert trains(a) == 2  # at step 1, only b's are left: member 2 moves to a
        assert trains(b) == 3  # the last at step 1; b's copy of member 2 is stale now
        loads = CountingQuadratic.loads
        assert trains(b) == 3  # every member at step 2: b continues the one it holds current
        assert trains(a) == 0
        assert CountingQuadratic.loads == loads  # nothing read back from a checkpoint
    finally:
        a.close_members()
        b.close_members()
