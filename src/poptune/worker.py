"""The worker loop: claim a member, train one interval, record it, exploit and explore.

It reads like the paper's Algorithm 1, with the exploit of a ready member done when the member is
next claimed: in asynchronous mode that is as soon as a worker is free (against every member
that has reached its step), in synchronous mode once every member has recorded the same step (the
generation barrier). A member's ``step`` is always the number of intervals behind its weights.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import queue
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, NoReturn

import numpy as np

from . import serialization
from .checkpoints import (
    CheckpointCorrupt,
    CheckpointMissing,
    CheckpointStore,
    UnsafeCheckpointPath,
    confined,
    population_folder,
    population_folders,
)
from .config import PopulationConfig
from .errors import PopulationError
from .live import LiveMember, LiveMembers, open_session
from .peers import ListPeers, Peers, PeersChanged, StoredPeers, with_history
from .records import (
    Candidate,
    CheckpointRef,
    CopyReason,
    ExploitEvent,
    ExploreData,
    FailureRecord,
    IntervalChange,
    IntervalRecord,
    MemberRecord,
    MemberStatus,
    PopulationStatus,
)
from .storage import Claim, LeaseLost, PopulationNotFound, Storage
from .strategies import _capabilities as capabilities
from .strategies import rebuild
from .strategies.stop import Progress, check_stop
from .trainable import metrics_of
from .writer import BackgroundWriter

__all__ = ["PopulationError", "RunSpec", "Worker", "derive_seed"]

log = logging.getLogger("poptune")

#: States at least this large (their arrays and tensors) are checkpointed on the
#: background writer while the next interval trains; smaller ones are written in line, which
#: costs less than handing them to a thread that must share the interpreter with training.
#: ``$POPTUNE_BACKGROUND_BYTES`` overrides it (0: always in the background).
BACKGROUND_BYTES = 16 * 2**20

# Salts that keep the random streams of different decisions independent.
_INIT, _EXPLOIT, _TRAIN, _RESEED = 0, 1, 2, 3


def derive_seed(seed: int, *keys: int) -> int:
    """A 32-bit seed for one purpose, derived from the run seed and integer keys."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])


def rng_for(seed: int, *keys: int) -> np.random.Generator:
    """A generator for one decision, independent of which worker makes it and when."""
    return np.random.default_rng(np.random.SeedSequence([seed, *keys]))


def initial_rng(seed: int, member: int) -> np.random.Generator:
    """The generator that draws ``member``'s first hparams (salted apart from every decision)."""
    return rng_for(seed, _INIT, member)


# Garbage collection runs at most once per GC_SPACING times its last duration, and at least
# GC_MIN_SECONDS apart (see Worker._housekeeping).
GC_SPACING = 20.0
GC_MIN_SECONDS = 1.0

#: "Keep what the population recorded" (the default of strategy arguments that accept None).
KEEP: Any = object()


@dataclass(frozen=True)
class RunSpec:
    """What a worker runs: the population's configuration and its live objects.

    ``config`` holds every setting (one typed value, see :class:`~poptune.config.PopulationConfig`);
    the trainable and the strategies are the objects themselves, rebuilt from their recorded
    descriptions by :meth:`build` (which imports user code: only training does that).
    """

    config: PopulationConfig
    trainable: Any  # a Trainable class, or a training function (poptune.loop)
    exploit: Callable[..., Candidate | None] | None
    explore: Callable[..., Mapping[str, Any]]
    ready: Callable[[Candidate], bool]
    stop: tuple[Callable[..., str | None], ...] = ()  # checked after every recorded interval

    @classmethod
    def build(
        cls,
        config: PopulationConfig,
        trainable: Any,
        exploit: Any = KEEP,
        explore: Any = None,
        ready: Any = None,
    ) -> RunSpec:
        """The live objects of ``config``; strategies given here replace the recorded ones
        (``exploit=None`` is random search, so only ``KEEP`` keeps the recorded exploit)."""
        return cls(
            config=config,
            trainable=trainable,
            exploit=rebuild(config.exploit, "exploit") if exploit is KEEP else exploit,
            explore=explore if explore is not None else rebuild(config.explore, "explore"),
            ready=ready if ready is not None else rebuild(config.ready, "ready"),
            stop=tuple(rebuild(d, "stop") for d in config.stop),
        )


class _UserCodeFailed(Exception):
    """Raised inside the worker when the user's trainable raised; carries the traceback text."""


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
        self._closed = threading.Event()
        self._doomed: queue.SimpleQueue[CheckpointRef | None] = queue.SimpleQueue()
        self._recorded_since_gc = threading.Event()
        self._writer: BackgroundWriter | None = None
        self._background_bytes = int(os.environ.get("POPTUNE_BACKGROUND_BYTES", BACKGROUND_BYTES))

    # --- the loop ------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None) -> int:
        """Work until the budget is spent (or ``stop`` is set); return the intervals trained."""
        heartbeat = threading.Thread(target=self._heartbeat, name="poptune-lease", daemon=True)
        heartbeat.start()
        # Garbage collection and deleting files are housekeeping: off the per-interval path.
        deleter = threading.Thread(target=self._housekeeping, name="poptune-gc", daemon=True)
        deleter.start()
        interrupted = True
        try:
            while stop is None or not stop.is_set():
                self.writer.check()  # a checkpoint that could not be written stops the worker
                claim = self.storage.claim(
                    self.population_id,
                    self.owner,
                    self.spec.config.intervals,
                    self.lease_seconds,
                    self.spec.config.sync,
                    prefer=self.live.preferred(),
                )
                if claim is None:
                    if not self.writer.idle():  # recording our own interval may free a member
                        self.writer.flush()
                        continue
                    if self._finished():
                        break
                    time.sleep(self.poll_seconds)
                    continue
                self.work_on(claim)
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
                self.live.close()
                self._closed.set()
                self._doomed.put(None)
                deleter.join()
                self.checkpoints.close()
        return self.trained

    def work_on(self, claim: Claim) -> None:
        """One member, one interval: exploit if due, restore, train and evaluate; the checkpoint
        is saved and the interval recorded in the background (:meth:`flush` waits for it)."""
        self._held[claim.member.id] = claim
        try:
            member, restore = claim.member, claim.checkpoint
            if member.exploit_pending:
                member, restore = self.exploit_and_explore(claim)
                if member.step >= self.spec.config.intervals:
                    self._forget(claim)
                    return  # it copied weights that are at the budget: the member is done
            member, live = self.restore(claim, member, restore)
            interval, state = self.train_one_interval(live, member)
        except _UserCodeFailed as failure:
            self._record_failure(claim, failure)
            return
        except LeaseLost:
            log.warning("Lost the lease on member %d; its interval was discarded.", claim.member.id)
            self._forget(claim)
            return
        except BaseException:
            self._abandon(claim)
            raise
        job = functools.partial(self.save_and_record, claim, live, interval, state)
        if serialization.array_bytes(state) >= self._background_bytes:
            self.writer.submit(job)
        else:  # a small state is written faster than a thread would take over
            self.writer.flush()
            job()

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
            self._writer = BackgroundWriter()
        return self._writer

    # --- the paper's steps ---------------------------------------------------------------

    def exploit_and_explore(self, claim: Claim) -> tuple[MemberRecord, CheckpointRef | None]:
        """Copy a better member's (weights, hparams, step) from one recorded step, then explore.

        Members are compared at equal training: a member at step t is ranked against the
        interval every healthy member recorded at step t, and copies the chosen donor's
        checkpoint from that step. Comparing against members that trained further would reward
        training time rather than hyperparameters (and, with the step travelling with the
        weights, let the population collapse onto whichever member ran ahead). Every member at
        or past t recorded a checkpoint at t, and garbage collection keeps every checkpoint at
        or above the lowest step of a healthy member, so these donors are still there.

        Returns the member as it now is and the checkpoint its next interval starts from.
        """
        member, spec = claim.member, self.spec
        unchanged = (replace(member, exploit_pending=False), claim.checkpoint)
        if spec.exploit is None:
            return unchanged
        peers = self._peers(member)
        if peers is None:
            return unchanged
        rng = rng_for(spec.config.seed, _EXPLOIT, member.id, member.step)
        try:
            donor = spec.exploit(peers.me, peers, rng)
        except PeersChanged:  # a member failed while the strategy read: decide on a snapshot
            peers = self._snapshot(member)
            if peers is None:
                return unchanged
            rng = rng_for(spec.config.seed, _EXPLOIT, member.id, member.step)
            donor = spec.exploit(peers.me, peers, rng)
        if donor is None:
            return unchanged
        # A strategy that picks the member itself keeps its weights and explores its hparams
        # (the paper's explore-only ablation): recorded like any copy, of its own checkpoint.
        donor = self._with_hparams(donor)
        if donor is None:  # its interval is gone: the population was deleted meanwhile
            return unchanged
        hparams = self._explore(donor, rng)
        event = _copy_event(member, donor, hparams, peers.me.score)
        copied = self.storage.record_exploit(
            claim, event, hparams, done=donor.step >= spec.config.intervals
        )
        if copied is None:  # the donor's checkpoint was collected meanwhile
            return unchanged
        return _after_copy(member, event), copied

    def restore(
        self, claim: Claim, member: MemberRecord, ref: CheckpointRef | None
    ) -> tuple[MemberRecord, LiveMember]:
        """The member's live trainable, holding the weights it restores from.

        If this worker holds the member and its weights equal the committed checkpoint it
        restores from, training continues in memory. Otherwise the checkpoint (the donor's after
        an exploit, or the member's own when it moved here) is loaded into the live instance,
        which is built first if this worker does not hold the member: copied from the donor's
        live instance if this worker holds it unchanged since that checkpoint, else read from
        the store and verified by its checksum.

        A checkpoint whose file is missing stops the population with a message (nothing is
        dropped: the folder may have moved, see :meth:`_stop_on_missing`). A truncated or
        corrupted checkpoint is never trained on: its row is dropped (so no one copies it) and
        the member falls back to the best healthy member's latest checkpoint at its step or
        later (recorded as an exploit without explore). Its own older checkpoints are not used:
        their weights trained fewer intervals than its step says.
        """
        live = self.live.get(member.id)
        if member.restore is None:  # the first interval: fresh weights
            return member, self._build(member)
        if live is not None and ref is not None and live.holds == ref:
            return member, live
        while True:
            if ref is not None:
                try:
                    state = self._state_of(ref)
                except CheckpointMissing as error:
                    if self.storage.checkpoint(self.population_id, ref.member, ref.step) != ref:
                        damaged = (ref.member, ref.step)  # collected meanwhile: pick again
                    else:
                        self._stop_on_missing(error)
                except CheckpointCorrupt as error:
                    log.warning("%s Falling back to another checkpoint.", error)
                    self.storage.discard_checkpoint(self.population_id, ref)
                    self._doomed.put(ref)
                    damaged = (ref.member, ref.step)
                else:
                    live = live if live is not None else self._build(member)
                    self._user_code(live.session.load, state)
                    live.holds = ref
                    return member, live
            else:
                log.warning(
                    "Checkpoint %s of member %d is not in the storage; falling back.",
                    member.restore,
                    member.id,
                )
                damaged = member.restore
            member, ref = self._fallback(claim, member, damaged)

    def _stop_on_missing(self, error: CheckpointMissing) -> NoReturn:
        """Stop the population: a committed checkpoint's file is not in the folder. Dropping
        the rows of missing files would throw away a population whose folder merely moved."""
        message = (
            f"{error} The storage records it, so the checkpoint folder is probably not where "
            f"this worker looks ({self.checkpoints.url}): if the run directory moved or is "
            "mounted elsewhere here, open the population with checkpoints= its new location "
            "(pt.load(storage, name, checkpoints=...).resume(), or --checkpoints). Nothing "
            "was dropped."
        )
        raise self._stop_population(message) from error

    def _stop_population(self, message: str) -> PopulationError:
        """Mark the population stopped on an error every worker would hit (a wrong metric, a
        full disk, a missing checkpoint folder); return the exception to raise."""
        self.storage.set_status(self.population_id, PopulationStatus.ERROR, message)
        return PopulationError(message)

    def _state_of(self, ref: CheckpointRef) -> Any:
        """The state checkpointed as ``ref``: copied from the live member of this worker that
        still holds exactly it (a donor trained here), else read from the checkpoint store."""
        donor = self.live.peek(ref.member)
        if donor is not None and donor.holds == ref:
            return serialization.copy(self._user_code(donor.session.state))
        confined(ref.path, self.folders)  # a row's path never reaches outside the population
        return self.checkpoints.load(ref)

    def _fallback(
        self, claim: Claim, member: MemberRecord, damaged: tuple[int, int]
    ) -> tuple[MemberRecord, CheckpointRef]:
        population = [
            c
            for c in self._candidates()
            if (c.member, c.step) != damaged
            and c.member != member.id
            and member.step <= c.step < self.spec.config.intervals
        ]
        for candidate in sorted(population, key=lambda c: (-c.fitness, c.member)):
            donor = self._with_hparams(candidate)
            if donor is None:
                continue
            event = _copy_event(member, donor, donor.hparams, member.score, CopyReason.FALLBACK)
            ref = self.storage.record_exploit(claim, event, donor.hparams)
            if ref is not None:
                return _after_copy(member, event), ref
        raise _UserCodeFailed(
            f"No intact checkpoint to restore member {member.id} from: {damaged} is damaged "
            f"and no other member has a checkpoint at step {member.step} or later yet."
        )

    def train_one_interval(
        self, live: LiveMember, member: MemberRecord
    ) -> tuple[IntervalRecord, Any]:
        """Train and evaluate the member for one interval (user code); return the record and the
        state to checkpoint."""
        spec = self.spec
        step = member.step + 1
        hparams = dict(spec.config.schedule[step - 1] if spec.config.schedule else member.hparams)
        seed = derive_seed(spec.config.seed, _TRAIN, member.id, step)
        live.holds = None  # from here on its weights are ahead of every checkpoint
        started = time.perf_counter()
        result = self._user_code(live.session.step, hparams, seed, step)
        wall_time = time.perf_counter() - started
        try:
            score, metrics = metrics_of(result, spec.config.metric)
        except (KeyError, TypeError) as error:
            message = error.args[0] if error.args else str(error)
            raise self._stop_population(message) from None
        interval = IntervalRecord(
            member=member.id,
            step=step,
            hparams=hparams,
            score=score,
            metrics=metrics,
            wall_time=wall_time,
            finished_at=time.time(),
            origin=member.restore,
        )
        return interval, self._user_code(live.session.state)

    def save_and_record(
        self, claim: Claim, live: LiveMember, interval: IntervalRecord, state: Any
    ) -> None:
        """Write the interval's checkpoint, then record both and release the member, atomically
        (on the background writer: the member stays claimed until this is done)."""
        checkpoint = None
        try:
            checkpoint = self.save(claim.member.id, interval.step, state)
            live.holds = checkpoint  # before the commit: the member is claimable right after
            self.storage.record_interval(
                claim,
                interval,
                checkpoint,
                exploit_pending=interval.step < self.spec.config.intervals
                and bool(self.spec.ready(self._candidate(interval))),
                done=interval.step >= self.spec.config.intervals,
            )
        except _UserCodeFailed as failure:
            self._record_failure(claim, failure)
            return
        except LeaseLost:
            log.warning("Lost the lease on member %d; its interval was discarded.", claim.member.id)
            if checkpoint is not None and not self._recorded(checkpoint):
                self._doomed.put(checkpoint)  # written, never committed: nobody refers to it
            self._forget(claim)
            return
        except BaseException:
            self._abandon(claim)
            raise
        self._held.pop(claim.member.id, None)
        self.trained += 1
        self._recorded_since_gc.set()
        if self.spec.stop:
            self._check_stop()

    def _check_stop(self) -> None:
        """Stop the population (status ``stopped``, with the reason) if a criterion says so."""
        spec = self.spec
        progress = Progress.from_best(
            spec.config.metric,
            spec.config.mode,
            self.storage.best_by_step(self.population_id, spec.config.mode),
            time.time() - spec.config.started_at,
        )
        reason = check_stop(spec.stop, progress)
        if reason is not None and self.storage.stop(self.population_id, reason):
            log.info("Population stopped: %s.", reason)

    def _recorded(self, checkpoint: CheckpointRef) -> bool:
        """Whether the storage refers to ``checkpoint`` (a file is deleted only when it does
        not; if the storage cannot say, the file is kept for the orphan sweep)."""
        try:
            found = self.storage.checkpoint(self.population_id, checkpoint.member, checkpoint.step)
        except Exception:
            return True
        return found is not None and found.path == checkpoint.path

    def save(self, member: int, step: int, state: Any) -> CheckpointRef:
        """Write the member's new checkpoint; a full disk stops the population clearly."""
        try:
            return self.checkpoints.save(self.folder, member, step, state)
        except OSError as error:
            message = (
                f"Could not write the checkpoint of member {member} at step {step}: {error}. "
                "No partial checkpoint was left behind. Free space (or point checkpoints= "
                "elsewhere), then resume the population."
            )
            raise self._stop_population(message) from error
        except TypeError as error:  # the state holds something that cannot be stored safely
            raise _UserCodeFailed(
                f"The state of member {member} at step {step} (from state_dict(), or "
                f"interval.report(state=...)) cannot be checkpointed: {error}"
            ) from error

    def _build(self, member: MemberRecord) -> LiveMember:
        """A new live instance of the member's trainable (user code), kept by this worker."""
        seed = derive_seed(self.spec.config.seed, _TRAIN, member.id, member.step + 1)
        session = self._user_code(
            open_session, self.spec.trainable, member.hparams, seed, member.id
        )
        live = LiveMember(member.id, session)
        self.live.add(live)
        return live

    def _user_code(self, call: Callable[..., Any], *args: Any) -> Any:
        """Run user code; any exception it raises becomes a recorded failure of the member."""
        try:
            return call(*args)
        except (KeyboardInterrupt, SystemExit, PopulationError):
            raise
        except Exception as error:
            raise _UserCodeFailed(_describe(error)) from error

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

    # --- housekeeping --------------------------------------------------------------------

    def _candidates(self, step: int | None = None) -> list[Candidate]:
        """What the exploit strategy chooses from: each healthy member's checkpointed interval
        at ``step`` (default: its latest). Scores only, read without decoding any hparams,
        unless the strategy asks for every candidate's hparams (``needs_hparams = True``)."""
        if capabilities.needs_hparams(self.spec.exploit):
            return [self._candidate(i) for i in self.storage.candidates(self.population_id, step)]
        fitness = self.spec.config.mode.fitness
        rows = self.storage.candidate_scores(self.population_id, step)
        return [Candidate(member, at, score, fitness(score)) for member, at, score in rows]

    def _peers(self, member: MemberRecord) -> Peers | None:
        """``member``'s peers at its step, for the exploit strategy: read from the storage as
        the strategy asks (a few one-row queries, whatever the population's size), or all at
        once for a strategy that needs every candidate's hparams. ``None`` if the member is
        not a candidate there (it failed, or its checkpoint was dropped)."""
        exploit = self.spec.exploit
        if capabilities.needs_hparams(exploit):
            return self._snapshot(member)
        return StoredPeers.open(
            self.storage,
            self.population_id,
            member.id,
            member.step,
            self.spec.config.mode,
            history=capabilities.history(exploit),
        )

    def _snapshot(self, member: MemberRecord) -> ListPeers | None:
        """``member``'s peers read at once (with their history, if the strategy asks for it)."""
        population = with_history(
            self._candidates(member.step),
            self.storage,
            self.population_id,
            self.spec.config.mode,
            capabilities.history(self.spec.exploit),
        )
        me = next((c for c in population if c.member == member.id), None)
        return None if me is None else ListPeers(population, me)

    def _with_hparams(self, donor: Candidate) -> Candidate | None:
        """``donor`` with the hparams recorded with its interval (read now if the candidates
        were read without them), or ``None`` if that interval is not there."""
        if capabilities.needs_hparams(self.spec.exploit):
            return donor
        interval = self.storage.interval(self.population_id, donor.member, donor.step)
        return None if interval is None else replace(donor, hparams=dict(interval.hparams))

    def _candidate(self, interval: IntervalRecord) -> Candidate:
        return Candidate(
            member=interval.member,
            step=interval.step,
            score=interval.score,
            fitness=self.spec.config.mode.fitness(interval.score),
            hparams=interval.hparams,
        )

    def _explore_data(self, donor: Candidate, window: int) -> ExploreData:
        """The population's intervals at steps ``donor.step - window + 1 .. donor.step``, each
        with the fitness it started from (its origin interval's). Later steps are left out, so
        a synchronous run sees the same data whatever the workers' timing."""
        fitness = self.spec.config.mode.fitness
        rows = self.storage.intervals(
            self.population_id, after_step=donor.step - window - 1, until_step=donor.step
        )
        scores = {(r.member, r.step): fitness(r.score) for r in rows}
        changes = [
            IntervalChange(r.member, r.step, r.hparams, scores[r.origin], scores[r.member, r.step])
            for r in rows
            if donor.step - window < r.step <= donor.step and r.origin in scores
        ]
        changes.sort(key=lambda c: (c.step, c.member))
        return ExploreData(donor.step, donor.fitness, tuple(changes))

    def _finished(self) -> bool:
        population_id = self.population_id
        summary = self.storage.summary(
            population_id, self.spec.config.intervals, self.spec.config.mode
        )
        if summary.status is not PopulationStatus.RUNNING:
            return True
        members = self.storage.members(population_id)
        healthy = [m for m in members if m.status is not MemberStatus.FAILED]
        if not healthy:
            failures = self.storage.failures(population_id)
            last = failures[-1].traceback if failures else "no failure was recorded"
            self.storage.set_status(
                population_id,
                PopulationStatus.ERROR,
                f"Every member failed. The last failure:\n{last}",
            )
            return True
        if all(m.step >= self.spec.config.intervals for m in healthy):
            self.storage.set_status(population_id, PopulationStatus.FINISHED, None)
            return True
        return False

    def _record_failure(self, claim: Claim, failure: _UserCodeFailed) -> None:
        """Retry the member from its last checkpoint, re-seed it from a healthy member once it
        has failed ``max_failures`` times in a row, or mark it failed if no member is healthy."""
        spec, member = self.spec, claim.member
        self._forget(claim)
        text = failure.args[0]
        error_line = text.strip().splitlines()[-1] if text.strip() else "error"
        record = FailureRecord(member.id, member.step + 1, error_line, text, time.time())
        retry = member.failures < spec.config.max_failures
        if not retry:
            self.writer.flush()  # this worker's own intervals in flight may be the donors
        reseed = None if retry else self._reseed(member)
        try:
            outcome = self.storage.record_failure(
                claim,
                record,
                retry,
                reseed,
                done=reseed is not None and reseed[0].donor_step >= spec.config.intervals,
            )
        except LeaseLost:
            return
        action = {
            MemberStatus.FAILED: "marked failed",
            MemberStatus.IDLE: "will retry" if retry else "re-seeded from another member",
            MemberStatus.DONE: "re-seeded from a member at the budget: done",
        }[outcome]
        log.error("Member %d failed at step %d (%s):\n%s", member.id, member.step + 1, action, text)
        # Every member failing the same way should stop the run, not burn the budget.
        streak = self.storage.failure_streak(self.population_id)
        if streak >= spec.config.population * (spec.config.max_failures + 1):
            self.storage.set_status(
                self.population_id,
                PopulationStatus.ERROR,
                f"{streak} attempts in a row failed, with no successful interval in between. "
                f"The last failure:\n{text}",
            )

    def _reseed(self, member: MemberRecord) -> tuple[ExploitEvent, dict[str, Any]] | None:
        """A donor's latest checkpoint and explored hparams for a member that keeps failing."""
        spec = self.spec
        population = [
            c
            for c in self._candidates()
            if c.member != member.id and c.fitness > -math.inf and c.step >= member.step
        ]
        if not population:
            return None
        rng = rng_for(spec.config.seed, _RESEED, member.id, member.step, member.failures)
        me = Candidate(member.id, member.step, None, -math.inf, dict(member.hparams))
        chosen = spec.exploit(me, [*population, me], rng) if spec.exploit is not None else None
        if chosen is None or chosen.member == member.id:
            chosen = max(population, key=lambda c: (c.fitness, -c.member))
        donor = self._with_hparams(chosen)
        if donor is None:
            return None
        hparams = self._explore(donor, rng)
        return _copy_event(member, donor, hparams, None, CopyReason.RESEED), hparams

    def _explore(self, donor: Candidate, rng: np.random.Generator) -> dict[str, Any]:
        """Explore the donor's recorded hparams; a strategy leaving the space stops the run."""
        spec = self.spec
        window = capabilities.window(spec.explore)
        if window > 0:  # a strategy that learns from the population's recent intervals
            data = self._explore_data(donor, window)
            explored = spec.explore(dict(donor.hparams), spec.config.space, rng, data=data)
        else:
            explored = spec.explore(dict(donor.hparams), spec.config.space, rng)
        try:
            return spec.config.space.validate(explored)
        except ValueError as error:
            raise PopulationError(
                f"The explore strategy returned invalid hparams: {error}"
            ) from None

    def _housekeeping(self) -> None:
        """Collect garbage now and then, and delete the files nothing refers to any more.

        Collecting reads the whole population, so it is kept off the per-interval path and
        amortised: it runs once intervals were recorded since the last time, and at most once
        per ``GC_SPACING`` times its own last duration (at least ``GC_MIN_SECONDS`` apart), so
        it costs at most a few percent of a worker's time whatever the population's size. A
        last collection runs when the worker stops.
        """
        last_started, last_took = 0.0, 0.0
        while True:
            try:
                ref = self._doomed.get(timeout=GC_MIN_SECONDS)
            except queue.Empty:  # nothing to delete: time to see whether to collect
                pass
            else:
                if ref is None:
                    self._collect(final=True)
                    return
                self._delete_file(ref)
            due = max(GC_MIN_SECONDS, GC_SPACING * last_took)
            if self._recorded_since_gc.is_set() and time.monotonic() - last_started >= due:
                last_started = time.monotonic()
                self._collect(final=False)
                last_took = time.monotonic() - last_started

    def _collect(self, final: bool) -> None:
        """One garbage collection; the dropped checkpoints' files are deleted right away."""
        self._recorded_since_gc.clear()
        try:
            refs = self.storage.collect_garbage(self.population_id, self.spec.config.mode)
        except Exception:  # housekeeping: the next collection (or worker) catches up
            log.debug("Garbage collection failed", exc_info=True)
            return
        for ref in refs:  # rows already gone: nothing can reach these files any more
            self._delete_file(ref)
        if final:
            while True:  # files queued meanwhile
                try:
                    queued = self._doomed.get_nowait()
                except queue.Empty:
                    break
                if queued is not None:
                    self._delete_file(queued)

    def _delete_file(self, ref: CheckpointRef) -> None:
        try:
            confined(ref.path, self.folders)
            self.checkpoints.delete(ref)
        except UnsafeCheckpointPath as error:  # not a file of this population: left alone
            log.warning("%s", error)
        except OSError:  # an orphan file is harmless: nothing refers to it any more
            log.debug("Could not delete checkpoint %s", ref.path, exc_info=True)

    def _heartbeat(self) -> None:
        interval = max(self.lease_seconds / 3.0, 0.05)
        while not self._closed.wait(interval):
            for claim in list(self._held.values()):
                try:
                    self.storage.renew(claim, self.lease_seconds)
                except LeaseLost:
                    pass
                except Exception:
                    log.debug("Lease renewal failed", exc_info=True)


def _copy_event(
    member: MemberRecord,
    donor: Candidate,
    hparams: Mapping[str, Any],
    score: float | None,
    reason: CopyReason = CopyReason.EXPLOIT,
) -> ExploitEvent:
    """``member`` copies ``donor``'s (weights, hparams) recorded at ``donor.step``."""
    return ExploitEvent(
        reason=reason,
        member=member.id,
        step=member.step,
        donor=donor.member,
        donor_step=donor.step,
        hparams_before=dict(member.hparams),
        hparams_after=dict(hparams),
        score=score,
        donor_score=donor.score,
        time=time.time(),
    )


def _after_copy(member: MemberRecord, event: ExploitEvent) -> MemberRecord:
    """The member as it is once ``event`` is recorded: the donor's weights and step (the
    intervals behind those weights), the new hparams."""
    return replace(
        member,
        step=event.donor_step,
        score=event.donor_score,
        hparams=dict(event.hparams_after),
        parent=event.donor,
        restore=(event.donor, event.donor_step),
        exploit_pending=False,
    )


def _describe(error: BaseException) -> str:
    return "".join(traceback.format_exception(type(error), error, error.__traceback__))
