"""Blocks: a worker that trains many members in one call of the training function.

With ``block=N`` a worker claims up to N members in one storage transaction and hands them to
one call of the user's training function (:class:`~poptune.loop.BlockSession`), which trains
them together (stacked parameters, ``vmap``) and reports one interval of each at a time. One
block interval is the paper's loop for every member at once:

1. **claim** up to N members (``Storage.claim_block``: least advanced first, the block this
   worker holds preferred on ties, at the step it holds them);
2. **exploit and explore** the members that are due (:meth:`~poptune.decisions.Decider.
   block_copies`: the peers at each step read once; every copy recorded in one call);
3. **restore**: a member whose weights the running call holds continues in memory; a donor
   inside the block is handed over as the very state it reported (no disk read); anything else
   is read from its checkpoint (:meth:`~poptune.restore.Restorer.read`);
4. **train** one interval of every member (user code; a raise fails the block's members);
5. **save and record**: each member's checkpoint, then every interval in one transaction
   (``Storage.record_intervals``), on the background writer for large states as one member's.

Everything else is per member, as in :class:`~poptune.worker.Worker`: leases and fencing (a
member whose claim was lost is refused alone), failures and retries, NaN scores, stop criteria.
The block's members are fixed for one call: when the claimed block differs from the running
call's, that call ends and a new one starts with the new block.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, replace
from typing import Any

from . import serialization
from ._validation import check_int, invalid
from .checkpoints import CheckpointStore
from .decisions import after_copy
from .failures import _UserCodeFailed, user_code
from .loop import BlockSession, IntervalSpec
from .records import CheckpointRef, IntervalRecord, MemberRecord
from .runspec import WorkerTarget
from .seeding import TRAIN, derive_seed
from .status import apply_stop_criteria, stop_population
from .storage import Claim, LeaseLost, Recording, Storage
from .trainable import metrics_of
from .worker import FUNCTION_EXIT_SECONDS, Worker

__all__ = ["MEMORY_BYTES", "BlockWorker", "build_worker", "check_block"]

log = logging.getLogger("poptune")

#: The states of members outside the running block that a block worker keeps in memory, to
#: hand back without a checkpoint read when their block comes round again (a population of
#: 256 in blocks of 64 rotates through four); beyond it the oldest are dropped.
MEMORY_BYTES = 512 * 2**20


def build_worker(target: WorkerTarget, storage: Storage, checkpoints: CheckpointStore) -> Worker:
    """The worker a runner starts on ``target``'s population: a :class:`BlockWorker` if it
    trains in blocks (``block`` recorded in its configuration), else a
    :class:`~poptune.worker.Worker`."""
    kind = BlockWorker if target.spec.config.block is not None else Worker
    return kind.from_target(target, storage, checkpoints)


def check_block(block: Any, trainable: Any) -> int | None:
    """``block`` checked: ``None``, or a positive int with a training function (a Trainable
    class trains one member per instance, so it cannot train a block).

    Raises:
        InvalidParameterError: naming the value and the fix.
    """
    if block is None:
        return None
    block = check_int("block", block, 1)
    if isinstance(trainable, type):
        raise invalid(
            "block",
            f"left out with a Trainable class ({trainable.__qualname__} trains one member per "
            "instance)",
            block,
            hint="To train members together, write a training function def train(ctx) that "
            "trains ctx.members at once (see docs/blocks.md), or leave block out.",
        )
    return block


@dataclass
class _Slot:
    """One member of a block interval: its claim, its record after the exploit, the checkpoint
    its weights restore from and the state to hand in (``None``: continue in memory)."""

    claim: Claim
    member: MemberRecord
    ref: CheckpointRef | None
    state: Any = None


class BlockWorker(Worker):
    """A worker that trains up to ``block`` members per call of a training function.

    ``block`` defaults to the population's recorded one (``spec.config.block``).
    """

    def __init__(self, *args: Any, block: int | None = None, **options: Any) -> None:
        super().__init__(*args, **options)
        block = block if block is not None else self.spec.config.block
        assert block is not None  # checked where it entered (pt.run, resume, the CLI)
        self.block = block
        self._session: BlockSession | None = None
        self._ending: list[BlockSession] = []  # closed calls that may still run their tail
        # The states block intervals reported and recorded, by member (with their checkpoint),
        # oldest first: the running call's until it trains again (which may change them in
        # place), a closed call's until handed in to another call or over MEMORY_BYTES. A
        # worker rotating through more members than one block reads none of them back.
        self._memory: dict[int, tuple[CheckpointRef, Any]] = {}

    # --- the loop ------------------------------------------------------------------------

    def work_once(self) -> bool:
        """Claim a block and train one interval of it; ``False`` if nothing is claimable."""
        self.writer.flush()  # the block's members stay claimed until their record commits
        config = self.spec.config
        claims = self.storage.claim_block(
            self.population_id,
            self.owner,
            config.intervals,
            self.lease_seconds,
            config.sync,
            self.block,
            prefer=self._preferred(),
        )
        if not claims:
            return False
        for claim in claims:
            self._held[claim.member.id] = claim
        try:
            slots = self.prepare(claims)
            if slots:
                self.train_block(slots)
        except BaseException:
            for claim in claims:
                if claim.member.id in self._held:
                    self._abandon(claim)
            raise
        return True

    def close_members(self, wait: bool = False) -> None:
        """End the running call of the training function and forget the states held; with
        ``wait``, give the calls ended :data:`~poptune.worker.FUNCTION_EXIT_SECONDS` in all to
        return first (their code after the loop)."""
        self._close_session()
        ending, self._ending = self._ending, []
        deadline = time.monotonic() + FUNCTION_EXIT_SECONDS
        for session in ending if wait else ():
            if not session.wait_closed(max(0.0, deadline - time.monotonic())):
                log.warning(
                    "A block's training function had not returned %.0f s after its last "
                    "interval; the worker stops without waiting for it.",
                    FUNCTION_EXIT_SECONDS,
                )
        self._memory.clear()
        super().close_members(wait)

    # --- the paper's steps, for a block ----------------------------------------------------

    def prepare(self, claims: list[Claim]) -> list[_Slot]:
        """Exploit and explore the members due, then find what each restores from; members
        that copied weights at the budget are done, and one whose checkpoint cannot be
        restored fails alone."""
        slots = []
        for claim, (member, ref) in zip(claims, self.exploit_and_explore(claims), strict=True):
            if member.step >= self.spec.config.intervals:
                self._forget(claim)  # released as done with the copy
            else:
                slots.append(_Slot(claim, member, ref))
        members = tuple(slot.member.id for slot in slots)
        running = self._session is not None and self._session.members == members
        if any(slot.member.restore is None for slot in slots):
            running = False  # fresh weights for one of them: only a new call builds those
        kept = []
        for slot in slots:
            try:
                self._restore(slot, running)
            except _UserCodeFailed as failure:
                self._record_failure(slot.claim, failure)
                continue
            except LeaseLost:  # a fallback's copy was refused: the member moved meanwhile
                log.warning(
                    "Lost the lease on member %d; its interval was discarded.", slot.member.id
                )
                self._forget(slot.claim)
                continue
            kept.append(slot)
        if [slot.member.id for slot in kept] != list(members):
            running = False  # a member fell out: the rest start a new call with their states
            for slot in kept:
                if slot.state is None:  # it was to continue in memory: hand its state in
                    self._restore(slot, running)
        if not running:
            self._close_session()
        return kept

    def exploit_and_explore(
        self, claims: list[Claim]
    ) -> list[tuple[MemberRecord, CheckpointRef | None]]:
        """Decide the copies of the members that are due (:meth:`~poptune.decisions.Decider.
        block_copies`) and record them in one call; each member as it now is, with the
        checkpoint its next interval starts from, in the order of ``claims``."""
        decided = [(replace(c.member, exploit_pending=False), c.checkpoint) for c in claims]
        copies = self.decider.block_copies(claims)
        refs = self.storage.record_exploits([copy for _, copy in copies]) if copies else []
        for (index, copy), ref in zip(copies, refs, strict=True):
            if ref is not None:  # else: the donor's checkpoint went, or the claim was lost
                decided[index] = (after_copy(copy.claim.member, copy.event), ref)
        return decided

    def _restore(self, slot: _Slot, running: bool) -> None:
        """Set ``slot.state``: ``None`` if the running call holds exactly its weights (or they
        are fresh), a state this worker reported (a donor inside the block) if it is the one
        to restore, else the checkpoint's."""
        ref = slot.ref
        if slot.member.restore is None:
            slot.state = None
            return
        held = self._memory.get(ref.member) if ref is not None else None
        if held is not None and held[0] == ref:
            mine = running and ref is not None and ref.member == slot.member.id
            slot.state = None if mine else held[1]
            return
        slot.member, slot.ref, slot.state = self.restorer.read(slot.claim, slot.member, ref)

    def train_block(self, slots: list[_Slot]) -> None:
        """Train one interval of every member of the block (user code), then save and record
        it (in the background for large states)."""
        config = self.spec.config
        specs = []
        for slot in slots:
            member, step = slot.member, slot.member.step + 1
            hparams = config.schedule[step - 1] if config.schedule else member.hparams
            seed = derive_seed(config.seed, TRAIN, member.id, step)
            specs.append(IntervalSpec(member.id, dict(hparams), seed, step, slot.state))
            slot.state = None  # the function holds it now
        self._forget_states({slot.member.id for slot in slots}, {id(spec.state) for spec in specs})
        try:
            session = self._open_session(slots, specs)
            started = time.perf_counter()
            results = user_code(session.step, specs)
            wall_time = time.perf_counter() - started
            states = user_code(session.states)
            # a state poptune cannot store (one that contains itself) fails the block's members
            size = sum(user_code(serialization.array_bytes, state) for state in states)
        except _UserCodeFailed as failure:
            self._close_session()
            for slot in slots:
                self._record_failure(slot.claim, failure)
            return
        intervals = [
            self._interval(s, spec, r, wall_time)
            for s, spec, r in zip(slots, specs, results, strict=True)
        ]
        job = functools.partial(self.save_and_record_block, slots, intervals, states)
        if size >= self._background_bytes:
            self.writer.submit(job)
        else:
            job()

    def save_and_record_block(
        self, slots: list[_Slot], intervals: list[IntervalRecord], states: list[Any]
    ) -> None:
        """Write every member's checkpoint, then record the block's intervals in one
        transaction; a member whose state cannot be checkpointed fails alone, and one whose
        claim was lost is refused alone."""
        recordings, kept = [], {}
        for slot, interval, state in zip(slots, intervals, states, strict=True):
            try:
                checkpoint = self.save(slot.member.id, interval.step, state)
            except _UserCodeFailed as failure:
                self._record_failure(slot.claim, failure)
                continue
            recordings.append(self._recording(slot.claim, interval, checkpoint))
            kept[slot.member.id] = (checkpoint, state)
        try:
            refused = set(self.storage.record_intervals(recordings))
        except BaseException:
            for recording in recordings:
                self._abandon(recording.claim)
            raise
        for recording in recordings:
            member = recording.claim.member.id
            if member in refused:
                log.warning("Lost the lease on member %d; its interval was discarded.", member)
                self.housekeeper.delete_if_unrecorded(recording.checkpoint)
                self._forget(recording.claim)
                continue
            self._held.pop(member, None)
            self._memory[member] = kept[member]
            self.trained += 1
        self.housekeeper.recorded()
        if self.spec.stop:
            apply_stop_criteria(self.storage, self.population_id, self.spec.config, self.spec.stop)

    # --- helpers -------------------------------------------------------------------------

    def _preferred(self) -> list[tuple[int, int]]:
        """The ``(member, step)`` pairs a block claim prefers: the running call's members (or,
        between calls, every member whose recorded state this worker keeps), at the step of the
        state kept (its own checkpoint's). A member another worker has trained since is at a
        later step, so it is not preferred: its state here is stale."""
        members = self._session.members if self._session is not None else sorted(self._memory)
        return [(m, self._memory[m][0].step) for m in members if m in self._memory]

    def _forget_states(self, training: set[int], handed: set[int]) -> None:
        """Forget the states that training may change in place (those of the ``training``
        members, which the call holds, and those ``handed`` in to it, by ``id``), then the
        oldest beyond :data:`MEMORY_BYTES`."""
        memory = self._memory
        for member in [m for m, (_, s) in memory.items() if m in training or id(s) in handed]:
            del memory[member]
        total = 0
        for member in reversed(list(memory)):  # newest first
            total += memory[member][0].size  # its checkpoint's: the state's size, known
            if total > MEMORY_BYTES:
                del memory[member]

    def _open_session(self, slots: list[_Slot], specs: list[IntervalSpec]) -> BlockSession:
        """The running call of the training function, started for this block if there is
        none (its members' first hparams, and the first member's seed to build with)."""
        if self._session is None:
            members = [slot.member.id for slot in slots]
            hparams = [spec.hparams for spec in specs]
            self._session = user_code(
                BlockSession, self.spec.trainable, members, hparams, specs[0].seed
            )
        return self._session

    def _close_session(self) -> None:
        if self._session is not None:
            self._session.close()
            self._ending = [s for s in self._ending if not s.wait_closed(0.0)]
            self._ending.append(self._session)
            self._session = None

    def _interval(
        self, slot: _Slot, spec: IntervalSpec, result: Any, wall_time: float
    ) -> IntervalRecord:
        """The record of one member's interval; a metric the results lack stops the run."""
        try:
            score, metrics = metrics_of(result, self.spec.config.metric, "block.report()")
        except (KeyError, TypeError) as error:
            message = error.args[0] if error.args else str(error)
            raise stop_population(self.storage, self.population_id, message) from None
        return IntervalRecord(
            member=slot.member.id,
            step=spec.step,
            hparams=dict(spec.hparams),
            score=score,
            metrics=metrics,
            wall_time=wall_time,  # each member's interval took the whole block interval
            finished_at=time.time(),
            origin=slot.member.restore,
        )

    def _recording(
        self, claim: Claim, interval: IntervalRecord, checkpoint: CheckpointRef
    ) -> Recording:
        done = interval.step >= self.spec.config.intervals
        return Recording(claim, interval, checkpoint, self._exploits_after(interval), done)

    def _forget(self, claim: Claim) -> None:
        """Stop holding ``claim``; its state in memory (if any) is no longer trusted."""
        self._memory.pop(claim.member.id, None)
        super()._forget(claim)
