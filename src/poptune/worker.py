"""The worker loop: claim a member, train one interval, record it, exploit and explore.

It reads like the paper's Algorithm 1, with the exploit of a ready member done when the member is
next claimed: in asynchronous mode that is as soon as a worker is free (against every member
that has reached its step), in synchronous mode once every member has recorded the same step (the
generation barrier). A member's ``step`` is always the number of intervals behind its weights.

Each step is a named collaborator: the :class:`~poptune.decisions.Decider` exploits and explores,
the :class:`~poptune.restore.Restorer` readies the weights, :mod:`poptune.failures` and
:mod:`poptune.status` handle failures and the population's end, and the
:class:`~poptune.housekeeping.Housekeeper` renews leases and collects garbage on its own threads.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from . import serialization
from .checkpoints import CheckpointStore, population_folder, population_folders
from .decisions import Decider
from .errors import PopulationError
from .failures import _UserCodeFailed, record_failure, user_code
from .housekeeping import GC_MIN_SECONDS as GC_MIN_SECONDS
from .housekeeping import GC_SPACING as GC_SPACING
from .housekeeping import Housekeeper
from .live import FUNCTION_EXIT_SECONDS as FUNCTION_EXIT_SECONDS
from .live import LiveMember, LiveMembers
from .persistence import CheckpointPolicy, continued, save_checkpoint
from .records import CheckpointRef, IntervalRecord, MemberRecord
from .restore import Restorer
from .runspec import KEEP as KEEP
from .runspec import RunSpec, WorkerTarget
from .seeding import derive_seed
from .seeding import initial_rng as initial_rng
from .seeding import rng_for as rng_for
from .status import apply_stop_criteria, finished
from .storage import Claim, LeaseLost, PopulationNotFound, Storage
from .training import train_interval
from .writer import BACKGROUND_BYTES as BACKGROUND_BYTES
from .writer import BackgroundWriter

__all__ = ["PopulationError", "RunSpec", "Worker", "continued", "derive_seed"]

log = logging.getLogger("poptune")


class Worker:
    """One loop over the population; run many of them (threads, processes, machines) at once.

    The worker keeps the members it trains in memory (at most ``resident`` of them, see
    :mod:`poptune.live`) and writes their checkpoints in the background while the next member
    trains (see :mod:`poptune.writer`).
    """

    def __init__(
        self,
        spec: RunSpec,
        storage: Storage,
        checkpoints: CheckpointStore,
        population_id: int,
        lease_seconds: float = 30.0,
        poll_seconds: float = 0.05,
        resident: int | None = None,
    ) -> None:
        self.spec = spec
        self.storage = storage
        self.checkpoints = checkpoints
        self.population_id = population_id
        database = storage.database_id()
        assert database is not None  # created on first use
        #: where this worker's new checkpoints go, and where recorded ones may lie
        self.folder = population_folder(database, population_id)
        self.folders = population_folders(database, population_id)
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.trained = 0
        self.live = LiveMembers(resident if resident is not None else spec.config.population)
        self._held: dict[int, Claim] = {}  # member -> claim, while trained or being written
        self._claimed_step = 0  # of the member claimed last: the floor of live.preferred()
        self._writer: BackgroundWriter | None = None
        self._stop: threading.Event | None = None  # run()'s, read between intervals
        #: makes the writer on first use (the simulator swaps in one it schedules itself)
        self.new_writer: Callable[[], BackgroundWriter] = BackgroundWriter
        self._background_bytes = int(os.environ.get("POPTUNE_BACKGROUND_BYTES", BACKGROUND_BYTES))
        self.decider = Decider(spec, storage, population_id)
        #: when members are checkpointed (its clock may be swapped, as the simulator does)
        self.persistence = CheckpointPolicy(spec.config)
        self.housekeeper = Housekeeper(
            storage,
            checkpoints,
            population_id,
            spec.config.mode,
            self.folders,
            lease_seconds,
            self._held,
        )
        self.restorer = Restorer(
            spec,
            storage,
            checkpoints,
            population_id,
            self.folders,
            self.live,
            self.decider,
            self.housekeeper,
        )

    @classmethod
    def from_target(
        cls, target: WorkerTarget, storage: Storage, checkpoints: CheckpointStore
    ) -> Worker:
        """A worker on the population of ``target`` (what every runner hands its workers),
        with the storage and checkpoint store the caller opened at its URLs."""
        return cls(
            target.spec,
            storage,
            checkpoints,
            target.population_id,
            lease_seconds=target.lease_seconds,
            resident=target.resident,
        )

    # --- the loop ------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None) -> int:
        """Work until the budget is spent (or ``stop`` is set); return the intervals trained."""
        self._stop = stop
        self.housekeeper.start()
        interrupted = True
        try:
            while stop is None or not stop.is_set():
                self.writer.check()  # a checkpoint that could not be written stops the worker
                if self.work_once():
                    continue
                if not self.writer.idle():  # recording our own interval may free a member
                    self.writer.flush()
                    continue
                if finished(self.storage, self.population_id, self.spec.config):
                    break
                time.sleep(self.poll_seconds)
            interrupted = False
        except PopulationNotFound:
            raise PopulationError(
                f"Population {self.population_id} was deleted from the storage while this worker "
                "trained it (poptune delete, or pt.delete): the worker stops, and what it was "
                "training is dropped with the population."
            ) from None
        finally:
            try:
                # The last interval's checkpoint: nothing trained is dropped. After Ctrl-C or an
                # error, wait a bounded time: the storage may be what failed.
                self.flush(timeout=self.lease_seconds / 3 if interrupted else None)
            finally:
                for claim in list(self._held.values()):  # jobs a failed write left unrun
                    self._abandon(claim)
                if interrupted:  # Ctrl-C can land between a claim's commit and its return
                    self._release_all()
                self.close_members(wait=not interrupted)
                self.housekeeper.stop()
                self.checkpoints.close()
        return self.trained

    def work_once(self) -> bool:
        """Claim the member furthest behind and work on it; ``False`` if none is claimable."""
        claim = self.storage.claim(
            self.population_id,
            self.owner,
            self.spec.config.intervals,
            self.lease_seconds,
            self.spec.config.sync,
            prefer=self.live.preferred(floor=self._claimed_step),
        )
        if claim is None:
            return False
        self._claimed_step = claim.member.step
        self.work_on(claim)
        return True

    def close_members(self, wait: bool = False) -> None:
        """Let go of every member kept in memory (the worker is stopping); with ``wait``, give
        their training functions :data:`FUNCTION_EXIT_SECONDS` to return first."""
        self.live.close(wait=FUNCTION_EXIT_SECONDS if wait else 0.0)

    def work_on(self, claim: Claim) -> None:
        """One member, one interval: exploit if due, restore, train and evaluate; the checkpoint
        is saved and the interval recorded in the background (:meth:`flush` waits for it).

        With ``checkpoint_every`` (see :meth:`checkpoints_after`) the member trains on, under
        the same claim and in memory, until an interval it checkpoints; the intervals before it
        are recorded with that checkpoint, so a crash loses them all and records none of them.
        """
        self._held[claim.member.id] = claim
        earlier: list[IntervalRecord] = []
        try:
            member, restore = claim.member, claim.checkpoint
            if member.exploit_pending:
                member, restore = self.decider.exploit_and_explore(claim)
                if member.step >= self.spec.config.intervals:
                    self._forget(claim)
                    return  # it copied weights that are at the budget: the member is done
            member, live = self.restorer.restore(claim, member, restore)
            started = self.persistence.start()
            interval, _ = self.train_one_interval(live, member, state=False)
            while not self.checkpoints_after(interval, started):
                earlier.append(interval)
                member = continued(member, interval)
                interval, _ = self.train_one_interval(live, member, state=False)
            state = user_code(live.session.state)
            # a state poptune cannot store (one that contains itself) fails the member, as a
            # state_dict() that raises does
            size = user_code(serialization.array_bytes, state)
        except _UserCodeFailed as failure:
            self._record_failure(claim, failure)  # intervals not checkpointed yet are lost
            return
        except LeaseLost:
            log.warning("Lost the lease on member %d; its interval was discarded.", claim.member.id)
            self._forget(claim)
            return
        except BaseException:
            self._abandon(claim)
            raise
        job = functools.partial(self.save_and_record, claim, live, interval, state, earlier)
        if size >= self._background_bytes:
            self.writer.submit(job)
        else:  # a small state is written faster than a thread would take over
            self.writer.flush()
            job()

    def checkpoints_after(self, interval: IntervalRecord, started: float) -> bool:
        """Whether ``interval``, of a member restored at ``started``, is checkpointed (see
        :class:`poptune.persistence.CheckpointPolicy`; a worker asked to stop checkpoints)."""
        stopping = self._stop is not None and self._stop.is_set()
        return self.persistence.checkpoints(
            interval.step, started, stopping, ready=lambda: self._ready(interval)
        )

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every trained interval is saved and recorded (re-raising a failure); with
        ``timeout``, give up after that many seconds (the members' leases then expire)."""
        if self._writer is not None:
            if not self._writer.close(timeout):
                log.warning(
                    "Gave up waiting %.0f s for the last checkpoint to be recorded.", timeout
                )
            self._writer = None

    @property
    def writer(self) -> BackgroundWriter:
        """The background thread that saves checkpoints and records intervals."""
        if self._writer is None:
            self._writer = self.new_writer()
        return self._writer

    # --- the paper's steps ---------------------------------------------------------------

    def train_one_interval(
        self, live: LiveMember, member: MemberRecord, state: bool = True
    ) -> tuple[IntervalRecord, Any]:
        """Train and evaluate the member for one interval (:func:`poptune.training.
        train_interval`); return the record and the state to checkpoint (``None`` without
        ``state``: an interval not checkpointed)."""
        return train_interval(self.spec, self.storage, self.population_id, live, member, state)

    def save_and_record(
        self,
        claim: Claim,
        live: LiveMember,
        interval: IntervalRecord,
        state: Any,
        earlier: Sequence[IntervalRecord] = (),
    ) -> None:
        """Write the interval's checkpoint, then record both (after ``earlier``, the intervals
        trained since the member's last checkpoint) and release the member, atomically (on the
        background writer: the member stays claimed until this is done)."""
        checkpoint = None
        try:
            checkpoint = self.save(claim.member.id, interval.step, state)
            live.holds = checkpoint  # before the commit: the member is claimable right after
            self.storage.record_interval(
                claim,
                interval,
                checkpoint,
                exploit_pending=self._exploits_after(interval),
                done=interval.step >= self.spec.config.intervals,
                # passed only when there are any: a storage written before checkpoint_every
                # (a subclass of Storage elsewhere) then keeps working by default
                **({"earlier": earlier} if earlier else {}),
            )
        except _UserCodeFailed as failure:
            self._record_failure(claim, failure)
            return
        except LeaseLost:
            log.warning("Lost the lease on member %d; its interval was discarded.", claim.member.id)
            if checkpoint is not None:  # written, never committed: nobody refers to it
                self.housekeeper.delete_if_unrecorded(checkpoint)
            self._forget(claim)
            return
        except BaseException:
            self._abandon(claim)
            raise
        self._held.pop(claim.member.id, None)
        self.trained += 1 + len(earlier)
        self.housekeeper.recorded()
        if self.spec.stop:
            apply_stop_criteria(self.storage, self.population_id, self.spec.config, self.spec.stop)

    def _exploits_after(self, interval: IntervalRecord) -> bool:
        """Whether the member is due to exploit after ``interval`` (checkpointed): it is ready,
        at a step where exploits happen (:func:`poptune.persistence.exploit_step`)."""
        return self.persistence.exploits(interval.step) and self._ready_after(interval)

    def _ready(self, interval: IntervalRecord) -> bool:
        """Whether the member would copy a donor after ``interval`` (a member checkpoints
        there, with ``checkpoint_every`` a duration, so that it exploits at a checkpoint)."""
        return self.spec.exploit is not None and self._ready_after(interval)

    def _ready_after(self, interval: IntervalRecord) -> bool:
        """The ready strategy's answer for the member after ``interval``."""
        return bool(self.spec.ready(self.decider.candidate(interval)))

    def save(self, member: int, step: int, state: Any) -> CheckpointRef:
        """Write the member's new checkpoint (:func:`poptune.persistence.save_checkpoint`)."""
        return save_checkpoint(
            self.checkpoints, self.folder, self.storage, self.population_id, member, step, state
        )

    def _forget(self, claim: Claim) -> None:
        """Stop holding ``claim``; its live weights (if any) are no longer trusted."""
        self._held.pop(claim.member.id, None)
        self.live.drop(claim.member.id)

    def _abandon(self, claim: Claim) -> None:
        """Forget ``claim`` and give the member back unchanged (best effort: else its lease
        expires)."""
        self._forget(claim)
        try:
            self.storage.release(claim)
        except Exception:  # the lease will expire; nothing recorded is lost either way
            log.debug("Could not release member %d", claim.member.id, exc_info=True)

    def _release_all(self) -> None:
        """Give back every member the storage says this worker holds, including one whose claim
        committed but never reached us (best effort: else the leases expire)."""
        try:
            self.storage.release_claims(self.population_id, [self.owner])
        except Exception:
            log.debug("Could not release the members of %s", self.owner, exc_info=True)

    def _record_failure(self, claim: Claim, failure: _UserCodeFailed) -> None:
        """Retry the member from its last checkpoint, re-seed it from a healthy member once it
        has failed ``max_failures`` times in a row, or mark it failed if no member is healthy."""
        member, config = claim.member, self.spec.config
        self._forget(claim)
        record = failure.record(member)
        retry = member.failures < config.max_failures
        if not retry:
            self.writer.flush()  # this worker's own intervals in flight may be the donors
        reseed = None if retry else self.decider.reseed(member)
        record_failure(self.storage, self.population_id, claim, record, retry, reseed, config)
