"""Blocks: one call of a training function trains many members together (``block=N``)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import poptune as pt
from poptune import blocks
from poptune.blocks import BlockWorker
from poptune.checkpoints import LocalCheckpoints
from poptune.errors import InvalidParameterError, PopulationError
from poptune.population import join
from poptune.records import CheckpointRef
from poptune.testing import Quadratic, check_steps

# What every call of quadratic_block saw: (member, step) -> the call's members, the state it
# was handed and the state it reported (kept alive, so identities stay meaningful).
CALLS: list[tuple[int, ...]] = []
TRAINED: dict[tuple[int, int], tuple[int, ...]] = {}
HANDED: dict[tuple[int, int], Any] = {}
REPORTED: dict[tuple[int, int], Any] = {}
FAIL_AT: dict[str, int] = {}  # "step": fail every block interval at this step, "times" times


@pytest.fixture(autouse=True)
def _clear() -> None:
    for seen in (CALLS, TRAINED, HANDED, REPORTED, FAIL_AT):
        seen.clear()


def quadratic_block(ctx: Any) -> None:
    """The paper's toy problem (:class:`~poptune.testing.Quadratic`) for a block of members,
    stacked in one array: row i is ``ctx.members[i]``'s θ."""
    CALLS.append(ctx.members)
    theta = np.tile([0.9, 0.9], (len(ctx.members), 1))
    for block in ctx.intervals():
        assert [interval.member for interval in block] == list(ctx.members)
        for i, interval in enumerate(block):
            HANDED[interval.member, interval.step] = interval.state
            TRAINED[interval.member, interval.step] = ctx.members
            if interval.state is not None:
                theta[i] = interval.state["theta"]
        if FAIL_AT.get("times", 0) > 0 and block[0].step == FAIL_AT["step"]:
            FAIL_AT["times"] -= 1
            raise RuntimeError("the block diverged")
        h = np.array([[i.hparams["h0"], i.hparams["h1"]] for i in block])
        for _ in range(Quadratic.steps):
            theta = theta + Quadratic.lr * (-2.0 * h * theta)
        states = [{"theta": row.copy()} for row in theta]
        for interval, state in zip(block, states, strict=True):
            REPORTED[interval.member, interval.step] = state
        block.report(
            [
                {"q": float(1.2 - np.sum(t**2)), "surrogate": float(1.2 - np.sum(hh * t**2))}
                for t, hh in zip(theta, h, strict=True)
            ],
            states=states,
        )


def _records(result: pt.Result) -> list[tuple]:
    return [(i.member, i.step, dict(i.hparams), i.score, i.origin) for i in result.intervals()]


class CountingCheckpoints(LocalCheckpoints):
    """Local checkpoints that remember which ones were read back from the store."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.loaded: list[tuple[int, int]] = []

    def load(self, ref: CheckpointRef) -> Any:
        self.loaded.append((ref.member, ref.step))
        return super().load(ref)


def _every_interval_once(result: pt.Result) -> None:
    config = result.config
    check_steps(result)
    keys = [(i.member, i.step) for i in result.intervals()]
    assert len(keys) == len(set(keys)), "a (member, step) was recorded twice"
    members = {m.id: m for m in result.members}
    assert all(m.step == config.intervals for m in members.values())
    # a member that copied weights further ahead skips those steps; every other one is there
    for member in members:
        steps = sorted(s for m, s in keys if m == member)
        assert steps[-1] == config.intervals or steps == list(range(1, config.intervals + 1))


def test_a_block_run_reaches_the_budget_with_every_interval_recorded_once(
    storage, tmp_path: Path, quick_run
):
    result = quick_run(
        quadratic_block, storage=storage, checkpoints=tmp_path / "ckpt", name="blocks",
        population=6, intervals=5, block=3,
    )  # fmt: skip
    assert result.status == "finished"
    assert result.config.block == 3
    _every_interval_once(result)
    assert result.exploits()
    assert {len(members) for members in CALLS} == {3}


def test_a_sync_block_run_takes_the_decisions_members_one_at_a_time_take(quick_run):
    """The same algorithm whichever form the members have: a block, in generations, records
    what the class trained one member at a time records (the decisions read the peers once
    per block, as one snapshot)."""
    blocks = quick_run(
        quadratic_block, name="blocks", sync=True, population=4, intervals=6, block=2
    )
    single = quick_run(Quadratic, name="single", sync=True, population=4, intervals=6)
    assert blocks.exploits()
    assert _records(blocks) == _records(single)
    assert [(e.member, e.donor, e.hparams_after) for e in blocks.exploits()] == [
        (e.member, e.donor, e.hparams_after) for e in single.exploits()
    ]
    # a generation is complete before the next one starts
    by_step: dict[int, list[float]] = {}
    for interval in blocks.intervals():
        by_step.setdefault(interval.step, []).append(interval.finished_at)
    for step in range(1, 6):
        assert max(by_step[step]) <= min(by_step[step + 1])


def test_a_donor_inside_the_block_is_handed_over_from_memory(tmp_path: Path, quick_run):
    store = CountingCheckpoints(tmp_path / "ckpt")
    result = quick_run(
        quadratic_block, checkpoints=store, population=4, intervals=6, seed=1, block=4
    )
    exploits = [e for e in result.exploits() if e.donor != e.member]
    assert exploits
    assert store.loaded == []  # one block: nothing is ever read back from disk
    for event in exploits:
        if event.donor_step >= 6:
            continue  # copied at the budget: nothing more to train
        # the very object the donor reported, not a copy read back
        assert HANDED[event.member, event.donor_step + 1] is REPORTED[event.donor, event.donor_step]
    assert len(CALLS) == 1  # and the training function never restarted


@pytest.mark.parametrize("memory", [0, blocks.MEMORY_BYTES])
def test_a_donor_outside_the_block_is_read_from_its_checkpoint_unless_the_worker_holds_it(
    tmp_path: Path, quick_run, monkeypatch, memory: int
):
    """A worker rotating through two blocks keeps the other block's states in memory and hands
    them over as reported; without room for them (``MEMORY_BYTES``) it reads the donor's
    checkpoint."""
    monkeypatch.setattr(blocks, "MEMORY_BYTES", memory)
    store = CountingCheckpoints(tmp_path / "ckpt")
    result = quick_run(
        quadratic_block, checkpoints=store, population=4, intervals=6, seed=1, block=2,
        sync=True,
    )  # fmt: skip
    check_steps(result)
    outside = [
        e
        for e in result.exploits()
        if e.donor_step < 6 and e.donor not in TRAINED[e.member, e.donor_step + 1]
    ]
    assert outside, "the test population must copy across blocks"
    from_memory = 0
    for event in outside:
        handed = HANDED[event.member, event.donor_step + 1]
        reported = REPORTED[event.donor, event.donor_step]
        if handed is reported:  # held (a load makes a new object): its call has not trained since
            from_memory += 1
        else:  # read: nothing held, or the donor's own call has trained it further since
            assert (event.donor, event.donor_step) in store.loaded
            np.testing.assert_array_equal(handed["theta"], reported["theta"])
    assert (from_memory > 0) == (memory > 0)


def test_a_failing_block_fails_its_members_and_retries_them(quick_run, caplog):
    FAIL_AT.update(step=3, times=1)
    with caplog.at_level(logging.ERROR, logger="poptune"):
        result = quick_run(quadratic_block, population=4, intervals=4, block=4, exploit=None)
    assert result.status == "finished"
    failures = result.failures()
    assert sorted((f.member, f.step) for f in failures) == [(m, 3) for m in range(4)]
    assert all("the block diverged" in f.error for f in failures)
    _every_interval_once(result)
    assert len(CALLS) == 2  # the failed call, then one from the members' checkpoints
    assert all(HANDED[m, 3] is not None for m in range(4))


def test_a_block_that_keeps_failing_fails_its_members(quick_run):
    FAIL_AT.update(step=1, times=100)
    with pytest.raises(PopulationError, match="the block diverged"):
        quick_run(quadratic_block, population=2, intervals=2, block=2, max_failures=1)


def test_a_block_run_resumes_in_blocks(quick_run):
    first = quick_run(quadratic_block, name="resumed", population=4, intervals=3, block=2)
    CALLS.clear()
    result = first.resume(intervals=5, progress=False)
    assert result.config.block == 2  # kept from the run
    _every_interval_once(result)
    assert CALLS and all(len(members) == 2 for members in CALLS)
    assert all(HANDED[m, 4] is not None for m in range(4))  # continued from checkpoints


def test_resume_can_change_the_block(quick_run):
    first = quick_run(quadratic_block, name="resumed", population=4, intervals=2, block=2)
    CALLS.clear()
    result = first.resume(intervals=3, progress=False, block=4)
    assert result.config.block == 4 and CALLS == [(0, 1, 2, 3)]


def test_a_block_run_replays_as_a_block_of_one(quick_run, tmp_path: Path):
    source = quick_run(quadratic_block, name="source", population=4, intervals=4, block=4)
    CALLS.clear()
    replayed = pt.replay(source.storage, "source", trainable=quadratic_block, progress=False)
    assert replayed.status == "finished" and replayed.config.block == 1
    assert CALLS == [(0,)]
    assert [i.hparams for i in replayed.intervals()] == [e.hparams for e in source.schedule()]


def test_a_worker_joins_with_its_own_block(quick_run):
    runner = quick_run.created(quadratic_block, name="joined", population=4, intervals=2, block=2)
    population = pt.load(runner.storage, "joined")
    trained = join(population, trainable=quadratic_block, block=4)
    assert trained == 8 and set(CALLS) == {(0, 1, 2, 3)}
    assert pt.load(runner.storage, "joined").config.block == 2  # the recorded one is kept


def test_blocks_train_in_local_worker_processes(quick_run):
    result = quick_run(quadratic_block, population=4, intervals=3, block=2, workers=2)
    assert result.status == "finished"
    _every_interval_once(result)


def test_a_stale_block_write_is_refused_for_that_member_alone(quick_run, caplog):
    runner = quick_run.created(quadratic_block, name="stale", population=2, intervals=2, block=2)
    storage, population_id = runner.storage, runner.target.population_id
    worker: BlockWorker | None = None
    stolen: list[int] = []

    def thief(ctx: Any) -> None:  # takes member 0 away while its first interval trains
        for block in ctx.intervals():
            if not stolen:
                assert worker is not None
                storage.release(worker._held[0])
                taken = storage.claim(population_id, "thief", 2, 0.2, False)
                stolen.append(taken.member.id)
            block.report([float(i.step) for i in block], states=[{"s": i.step} for i in block])

    spec = runner.target.spec
    worker = BlockWorker(
        type(spec)(spec.config, thief, spec.exploit, spec.explore, spec.ready),
        storage,
        runner.checkpoints,
        population_id,
        poll_seconds=0.01,
    )
    with caplog.at_level(logging.WARNING, logger="poptune"):
        worker.run()
    assert stolen == [0]
    assert "Lost the lease on member 0" in caplog.text
    result = pt.load(storage, "stale")
    keys = [(i.member, i.step) for i in result.intervals()]
    assert sorted(keys) == [(0, 1), (0, 2), (1, 1), (1, 2)]  # member 0's step 1 once, later


def test_a_member_whose_claim_is_lost_while_it_falls_back_leaves_the_block_alone(quick_run, caplog):
    # Simulation seeds 4615 and 10954: a block worker paused past its lease; meanwhile one of
    # its members moved on and its checkpoint was collected. Back, the worker fell back to
    # another member's checkpoint for it, the copy was refused (LeaseLost), and the whole
    # worker died with it instead of dropping that member as a member's worker does.
    runner = quick_run.created(quadratic_block, name="moved", population=2, intervals=3, block=2)
    storage, population_id = runner.storage, runner.target.population_id
    worker = BlockWorker.from_target(runner.target, storage, runner.checkpoints)
    assert worker.work_once()  # both members' first interval
    storage.discard_checkpoint(population_id, storage.checkpoint(population_id, 0, 1))
    claims = storage.claim_block(population_id, worker.owner, 3, 30.0, False, 2)
    assert [c.member.id for c in claims] == [0, 1] and claims[0].checkpoint is None
    storage.release(claims[0])  # member 0 moves to another worker
    assert storage.claim(population_id, "thief", 3, 30.0, False).member.id == 0
    for claim in claims:
        worker._held[claim.member.id] = claim
    with caplog.at_level(logging.WARNING, logger="poptune"):
        slots = worker.prepare(claims)
    assert [slot.member.id for slot in slots] == [1]
    assert "Lost the lease on member 0" in caplog.text
    assert 0 not in worker._held
    worker.close_members()


@pytest.mark.parametrize("block", [0, -2, 1.5, True, "4"])
def test_a_block_that_is_not_a_positive_int_is_refused(quick_run, block):
    with pytest.raises(InvalidParameterError, match=r"The 'block' parameter must be an int"):
        quick_run(quadratic_block, block=block)


def test_a_trainable_class_with_a_block_is_refused(quick_run):
    with pytest.raises(InvalidParameterError, match="Quadratic trains one member") as error:
        quick_run(Quadratic, block=2)
    assert "write a training function def train(ctx)" in str(error.value)


def _reports_one_short(ctx: Any) -> None:
    for block in ctx.intervals():
        block.report([1.0] * (len(block) - 1), states=[{}] * len(block))


def _reports_states_short(ctx: Any) -> None:
    for block in ctx.intervals():
        block.report([1.0] * len(block), states=[{}])


@pytest.mark.parametrize(
    ("function", "message"),
    [
        (_reports_one_short, "got 1 metrics for a block of 2 members"),
        (_reports_states_short, "got 1 states for a block of 2 members"),
    ],
)
def test_a_report_with_the_wrong_count_names_both(quick_run, function, message):
    with pytest.raises(PopulationError, match=message):
        quick_run(function, population=2, intervals=1, block=2, max_failures=0)


def test_an_interval_of_a_block_is_reported_with_the_block(quick_run):
    def per_interval(ctx: Any) -> None:
        for block in ctx.intervals():
            block[0].report(1.0, state={})

    with pytest.raises(PopulationError, match=r"Report the block's intervals together"):
        quick_run(per_interval, population=2, intervals=1, block=2, max_failures=0)


ENDED: list[tuple[int, ...]] = []  # the members of calls that ran their code after the loop


def _block_with_a_tail(ctx: Any) -> None:
    quadratic_block(ctx)
    time.sleep(0.2)  # a final save, closing environments...
    ENDED.append(tuple(ctx.members))


def test_code_after_a_block_functions_loop_runs_before_run_returns(quick_run):
    ENDED.clear()
    quick_run(_block_with_a_tail, name="tail", population=4, intervals=3, block=4)
    assert ENDED == [(0, 1, 2, 3)]
