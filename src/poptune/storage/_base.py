"""The storage contract: all population state that workers share.

No worker talks to another directly; everything they share goes through one ``Storage``. That is
what lets the same worker loop run in one process, in local processes or on many machines.

Contract (every implementation must keep it):

- Each method is one transaction: it either happens completely or not at all. A backend whose
  transactions can fail transiently (a lock, a dropped connection) retries the whole method:
  :class:`~poptune.storage.SQLStorage` marks each such method with ``@retrying``.
- ``claim`` is atomic: two callers, in any processes, never hold the same member at once. A
  claim carries a fencing ``token``; every write made under a claim (``record_interval``,
  ``record_exploit``, ``release``, ``renew``, ``record_failure``) is refused with
  :class:`LeaseLost` once the claim was released or taken over after its lease expired.
- ``record_interval`` writes the interval, its checkpoint row and the member's new state
  together: there is never a score without its checkpoint, nor a step counted twice. With
  ``checkpoint_every`` > 1 a worker trains a member several intervals under one claim and
  checkpoints only the last: the intervals before it (``earlier``) are written in the same
  transaction, so every recorded score is of training that a committed checkpoint at its step
  or after it (the member's own, under the same claim) persists.
- ``record_exploit`` succeeds only if the donor's checkpoint is still committed; the member then
  restores from exactly that (donor, step) checkpoint and the hparams recorded with it, and its
  ``step`` becomes the donor's: a member's step is always the number of intervals behind the
  weights it holds (the paper's t), so a member's steps only grow and no model trains more
  than the budget.
- ``claim_block``, ``record_intervals`` and ``record_exploits`` do for many members what
  ``claim``, ``record_interval`` and ``record_exploit`` do for one, each member's write fenced
  by its own claim: a member whose claim was lost is refused alone (the others are recorded).
  A backend makes each batch one transaction; the defaults make one per member.
- Reads (``members``, ``intervals``, ``candidates``, ``summary``...) see committed data only; they
  may be stale by the time the caller acts on them, which is why ``record_exploit`` re-checks.
- A checkpoint row is deleted only by ``collect_garbage``, under the documented keep rule, and
  never while a member is set to restore from it; or by ``discard_checkpoint`` when its file
  failed its checksum (a damaged checkpoint must never be copied).

- ``database_id`` is created once, by the first caller that asks with ``create=True``, and
  never changes: every process that opens the database reads the same id. Checkpoint folders
  are named by it (see :func:`poptune.checkpoints.population_folder`), so that databases that
  share a checkpoint folder never share a population's folder.
- ``delete_population`` checks that nobody trains the population and deletes it in the same
  transaction: a claim taken after the check cannot survive the delete. A worker whose
  population was deleted finds its claims gone (:class:`LeaseLost`, then
  :class:`PopulationNotFound` from ``population_by_id``) and stops.

Methods may be called from any thread, but one claim is used by one worker at a time.

A backend implements the abstract methods of :class:`Storage` (its primitives). The other
queries have defaults built on them: each default makes one call to one primitive, so it is
one transaction too, and answers as the contract says, but it reads more than it answers (a
whole step to find one peer, every checkpoint to find one). A backend overrides a default for
speed only, never to answer differently: the contract suite runs the defaults as well.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .._redact import redact_url
from .._text import printable, shell_word
from ..errors import LeaseLost, PopulationBusy, PopulationExists, PopulationNotFound, StorageError
from ..records import (
    Candidate,
    CheckpointRef,
    ExploitEvent,
    FailureRecord,
    IntervalRecord,
    MemberRecord,
    MemberStatus,
    Mode,
    PeerCounts,
    PopulationRecord,
    PopulationStatus,
    count_peers,
    rank_key,
)

__all__ = [
    "Claim",
    "Copy",
    "LeaseLost",
    "PopulationBusy",
    "PopulationExists",
    "PopulationNotFound",
    "Recording",
    "Storage",
    "StorageError",
    "Summary",
]


def is_storable(name: str) -> bool:
    """Whether a database can hold ``name`` at all (a lone surrogate cannot be UTF-8)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def not_found(name: str, shown_url: str, known: Sequence[str]) -> PopulationNotFound:
    """The error for a population ``name`` that is not in the storage at ``shown_url`` (already
    redacted), naming the ones that are; every name is shown safe and short for a terminal, and
    quoted as a shell word where it needs to be (a name holding ", " reads as one)."""
    names = ", ".join(shell_word(printable(k)) for k in known)
    hint = f" Populations here: {names}." if known else ""
    return PopulationNotFound(
        f"No population named '{printable(name)}' in {shown_url}.{hint or ' It is empty.'}"
    )


def check_idle(
    held: Sequence[tuple[int, str | None, float | None]],
    last_interval: float | None,
    status: PopulationStatus,
    quiet_seconds: float,
    now: float | None = None,
) -> None:
    """Raise :class:`PopulationBusy` if a member is held under a live lease (``held``: member,
    owner, lease end) or, while the population is running, an interval ended within
    ``quiet_seconds`` (a worker between two claims). The rule of ``delete_population``, one
    place for every backend."""
    now = time.time() if now is None else now
    live = sorted((member, owner) for member, owner, until in held if until is None or until > now)
    if live:
        owners = sorted({owner or "?" for _, owner in live})
        raise PopulationBusy(
            f"it is being trained: workers {owners} hold members {[m for m, _ in live]}. Stop "
            "them (Ctrl-C), or wait for their leases to expire, then delete it"
        )
    recent = last_interval is not None and now - last_interval < quiet_seconds
    if status is PopulationStatus.RUNNING and recent:
        assert last_interval is not None
        raise PopulationBusy(
            f"it is being trained: its last interval was recorded {now - last_interval:.1f} s "
            f"ago and it is still running. Stop its workers (Ctrl-C) and wait "
            f"{quiet_seconds - (now - last_interval):.0f} s (two leases), then delete it"
        )


def best_kept(
    kept: Sequence[tuple[int, int, float | None]], mode: Mode
) -> tuple[int, int, float] | None:
    """The best finite ``(member, step, score)`` among kept checkpoints (ties: the lower member,
    then the earlier step): what :attr:`Summary.best_member` shows, the same weights
    ``result.best`` loads."""
    finite = [(m, s, x) for m, s, x in kept if x is not None and math.isfinite(x)]
    return min(finite, key=lambda i: (*rank_key(mode.fitness(i[2]), i[0]), i[1]), default=None)


@dataclass(frozen=True)
class Claim:
    """A member held by one worker until released; ``token`` fences late writes.

    ``checkpoint`` is the committed checkpoint the member restores from (``None`` before its
    first interval), read in the same transaction as the claim.
    """

    population_id: int
    member: MemberRecord
    owner: str
    token: int
    checkpoint: CheckpointRef | None = None


@dataclass(frozen=True)
class Summary:
    """Counts for a progress display: how far the population is and how it is doing."""

    members: int
    steps_done: int
    steps_total: int
    #: members held under a live lease: one whose worker died holding it counts no more once
    #: its lease ran out (it is claimable again), so a crashed run reads as interrupted
    running: int
    done: int
    failed: int
    exploits: int
    failures: int
    #: the best finite score among kept checkpoints, and its member: ``result.best``'s
    best_member: int | None
    best_score: float | None
    status: PopulationStatus
    recoveries: int = 0  # copies that recovered a member (re-seeds, fallbacks): not exploits
    best_step: int | None = None  # the step of the best kept checkpoint, with ``best_member``


@dataclass(frozen=True)
class Recording:
    """One member's interval to record with :meth:`Storage.record_intervals`: the arguments
    of :meth:`Storage.record_interval`."""

    claim: Claim
    interval: IntervalRecord
    checkpoint: CheckpointRef
    exploit_pending: bool
    done: bool


@dataclass(frozen=True)
class Copy:
    """One member's exploit to record with :meth:`Storage.record_exploits`: the arguments of
    :meth:`Storage.record_exploit`."""

    claim: Claim
    event: ExploitEvent
    hparams: Mapping[str, Any]
    done: bool = False


class Storage(ABC):
    """Population state shared by all workers. See the module docstring for the contract.

    An implementation subclasses this and implements every abstract method, keeping the
    contract above: :class:`~poptune.storage.SQLStorage` (SQLite, PostgreSQL) and
    :class:`poptune.testing.MemoryStorage` (one process, for tests). The derived queries at the
    end of the class (``population``, ``interval``, ``checkpoint``, ``scores_since``,
    ``best_by_step``, ``candidate_scores``, ``peer``, ``peer_counts``, ``peer_at``, ``close``)
    have defaults built on the abstract ones; override them for speed. ``tests/storage`` is the
    contract suite: a new backend runs it by adding one parameter to the ``storage`` fixture.
    """

    #: Where the storage lives, as the user named it (a SQLAlchemy URL, or ``memory://``).
    url: str

    @abstractmethod
    def create_population(
        self, name: str, config: Mapping[str, Any], hparams: Sequence[Mapping[str, Any]]
    ) -> PopulationRecord:
        """Create a population and one idle member per entry of ``hparams``.

        Raises:
            PopulationExists: if ``name`` is taken.
        """

    @abstractmethod
    def database_id(self, create: bool = True) -> str | None:
        """The id of this database: 16 hexadecimal digits, created once and kept (``None`` if
        it has none yet and ``create`` is false: reads never write)."""

    @abstractmethod
    def delete_population(
        self,
        population_id: int,
        quiet_seconds: float = 0.0,
        now: float | None = None,
        check_only: bool = False,
    ) -> list[CheckpointRef]:
        """Delete the population and everything recorded for it, in one transaction; return
        its checkpoints, whose files nothing can reach any more.

        Raises:
            PopulationBusy: (nothing deleted) if a member is claimed under a lease that has not
                expired at ``now``, or an interval was recorded within ``quiet_seconds`` of it:
                a worker is training it, between two claims.

        With ``check_only``, only the check is made: nothing is deleted, and ``[]`` returned.
        """

    @abstractmethod
    def populations(self) -> list[PopulationRecord]:
        """All populations, oldest first."""

    @abstractmethod
    def set_status(self, population_id: int, status: PopulationStatus, error: str | None) -> None:
        """Mark a population running, finished, or stopped by ``error``."""

    @abstractmethod
    def claim(
        self,
        population_id: int,
        owner: str,
        budget: int,
        lease_seconds: float,
        sync: bool,
        prefer: Sequence[tuple[int, int]] = (),
    ) -> Claim | None:
        """Atomically claim the least-advanced idle member with ``step < budget``.

        ``prefer`` holds ``(member, step)`` pairs: the members this worker keeps in memory, at
        the step their weights there are. Among members at the same step, one whose step is the
        one held comes first (the worker continues it without a reload), then the lowest id. A
        member held at an earlier step than it is at (another worker trained it since) is not
        preferred: the worker would have to reload it like any other.

        In ``sync`` mode only members at the population's lowest step are claimable, so every
        member finishes interval k before any member trains k + 1. A member whose lease expired
        is claimable again. Returns ``None`` when nothing is claimable right now.
        """

    @abstractmethod
    def renew(self, claim: Claim, lease_seconds: float) -> None:
        """Extend the claim's lease. Raises :class:`LeaseLost`."""

    @abstractmethod
    def release(self, claim: Claim) -> None:
        """Give the member back without recording anything. Raises :class:`LeaseLost`."""

    @abstractmethod
    def record_interval(
        self,
        claim: Claim,
        interval: IntervalRecord,
        checkpoint: CheckpointRef,
        exploit_pending: bool,
        done: bool,
        earlier: Sequence[IntervalRecord] = (),
    ) -> None:
        """Record an interval with its checkpoint and release the member, atomically.

        ``earlier`` are the member's intervals trained under the same claim since its last
        checkpoint, which were not checkpointed (``checkpoint_every`` > 1): recorded in the
        same transaction, before ``interval``, so none of them is ever recorded without the
        checkpoint that follows them.

        Garbage collection is not part of it (it reads the whole population): workers call
        :meth:`collect_garbage` now and then, off the per-interval path.
        """

    @abstractmethod
    def record_exploit(
        self,
        claim: Claim,
        event: ExploitEvent,
        hparams: Mapping[str, Any],
        done: bool = False,
    ) -> CheckpointRef | None:
        """Point the member at the donor's checkpoint with new ``hparams`` and log ``event``.

        The member takes the donor's step and score (``event.donor_step``,
        ``event.donor_score``). With ``done`` (the donor's step is the budget) the member is
        also released as done, in the same transaction. Returns the donor's checkpoint, or
        ``None`` (changing nothing) if it is no longer committed.
        """

    @abstractmethod
    def record_failure(
        self,
        claim: Claim,
        failure: FailureRecord,
        retry: bool,
        reseed: tuple[ExploitEvent, Mapping[str, Any]] | None = None,
        done: bool = False,
    ) -> MemberStatus:
        """Log a failure of user code and release the member, atomically, to be retried from its
        last checkpoint (``retry``), re-seeded from a donor's checkpoint, step and score with new
        hparams (``reseed``: the exploit event and the hparams; only if the donor's checkpoint is
        still committed; ``done`` when the donor is at the budget), or else marked failed.
        Returns the member's new status."""

    @abstractmethod
    def failure_streak(self, population_id: int) -> int:
        """How many failures were recorded since the last successful interval."""

    @abstractmethod
    def release_claims(self, population_id: int, owners: Sequence[str]) -> int:
        """Give back, unchanged, every member held by ``owners`` (workers that are gone or
        stopping); return how many."""

    @abstractmethod
    def claims(self, population_id: int) -> dict[int, str]:
        """Member id -> owner, for every member currently held by a worker."""

    @abstractmethod
    def stop(self, population_id: int, reason: str) -> bool:
        """Mark a running population stopped, with ``reason``; ``False`` if it was not running
        (finished, stopped or failed meanwhile)."""

    @abstractmethod
    def update_config(self, population_id: int, values: Mapping[str, Any]) -> None:
        """Set these keys of the population's stored configuration (others are kept)."""

    @abstractmethod
    def extend(self, population_id: int, intervals: int) -> None:
        """Give the population a budget of ``intervals`` (not less than its own), in one
        transaction: record it, make members done below it idle, and mark it running."""

    @abstractmethod
    def reopen_members(self, population_id: int, budget: int) -> None:
        """Make failed members, and finished ones below ``budget``, idle again (to resume)."""

    @abstractmethod
    def members(self, population_id: int) -> list[MemberRecord]:
        """Every member's current record, by id."""

    @abstractmethod
    def intervals(
        self, population_id: int, after_step: int = 0, until_step: int | None = None
    ) -> list[IntervalRecord]:
        """Every recorded interval above step ``after_step`` (default: all) and at most
        ``until_step`` (default: no bound), by member then step, in one query: a reader tops
        up what it read before (the dashboard), and a data-driven explore strategy (``PB2``)
        reads a window of the population's history."""

    @abstractmethod
    def candidates(self, population_id: int, step: int | None = None) -> list[IntervalRecord]:
        """The intervals exploit may copy: each healthy member's latest checkpointed interval,
        or, with ``step``, each healthy member's interval at exactly that step."""

    @abstractmethod
    def exploits(self, population_id: int) -> list[ExploitEvent]:
        """Every exploit event, in the order they were recorded."""

    @abstractmethod
    def failures(self, population_id: int) -> list[FailureRecord]:
        """Every recorded failure of user code, oldest first."""

    @abstractmethod
    def discard_checkpoint(self, population_id: int, ref: CheckpointRef) -> None:
        """Drop the row of a damaged checkpoint so that no one restores or copies it again."""

    @abstractmethod
    def checkpoints(self, population_id: int) -> list[CheckpointRef]:
        """Every committed checkpoint of the population."""

    @abstractmethod
    def collect_garbage(self, population_id: int, mode: Mode) -> list[CheckpointRef]:
        """Delete and return the checkpoint rows nothing needs any more (the caller deletes the
        files). Kept: each member's latest, each member's restore point, the best-scoring
        interval's (the best finite score: not an infinity), and everything at or above the
        lowest step of any healthy member."""

    @abstractmethod
    def summary(self, population_id: int, budget: int, mode: Mode) -> Summary:
        """Counts for progress displays."""

    # --- derived queries: defaults built on the abstract methods, each one call to one of
    # them (so one transaction). Override for speed only: the answers must stay the same.

    def population(self, name: str) -> PopulationRecord:
        """Read a population by name. Raises :class:`PopulationNotFound`.

        The default scans :meth:`populations`; override for speed (an indexed lookup).
        """
        known = self.populations()
        for record in known:
            if record.name == name:
                return record
        raise not_found(name, redact_url(self.url), [p.name for p in known])

    def interval(self, population_id: int, member: int, step: int) -> IntervalRecord | None:
        """The interval ``member`` recorded at ``step``, if any.

        The default reads every member's interval at ``step`` (:meth:`intervals`); override for
        speed (one row).
        """
        found = self.intervals(population_id, after_step=step - 1, until_step=step)
        return next((i for i in found if i.member == member), None)

    def checkpoint(self, population_id: int, member: int, step: int) -> CheckpointRef | None:
        """The committed checkpoint of ``member`` at ``step``, if it still exists.

        The default reads every checkpoint (:meth:`checkpoints`); override for speed (one row).
        """
        found = self.checkpoints(population_id)
        return next((r for r in found if (r.member, r.step) == (member, step)), None)

    def scores_since(
        self, population_id: int, step: int, member: int | None = None
    ) -> list[tuple[int, int, float | None]]:
        """(member, step, score) of every interval after ``step`` (of ``member`` alone, if
        given), by member then step.

        The default reads whole intervals (:meth:`intervals`); override for speed (three
        columns, of one member when asked).
        """
        return [
            (i.member, i.step, i.score)
            for i in self.intervals(population_id, after_step=step)
            if member is None or i.member == member
        ]

    def best_by_step(self, population_id: int, mode: Mode) -> list[tuple[int, float]]:
        """(step, best finite score recorded at that step), by step.

        The default reads every score (:meth:`scores_since`); override for speed (a row per
        step, kept as intervals are recorded).
        """
        best: dict[int, float] = {}
        for _, step, score in self.scores_since(population_id, 0):
            if score is not None and math.isfinite(score):
                kept = best.get(step, score)
                best[step] = score if mode.fitness(score) > mode.fitness(kept) else kept
        return sorted(best.items())

    def candidate_scores(
        self, population_id: int, step: int | None = None
    ) -> list[tuple[int, int, float | None]]:
        """``(member, step, score)`` of what :meth:`candidates` returns, by member: what an
        exploit strategy ranks, without decoding any hparams or metrics (the worker reads the
        chosen donor's hparams with :meth:`interval`).

        The default reads whole candidates (:meth:`candidates`); override for speed.
        """
        return [(i.member, i.step, i.score) for i in self.candidates(population_id, step)]

    def peer(
        self, population_id: int, step: int, member: int
    ) -> tuple[int, int, float | None] | None:
        """``(member, step, score)`` if ``member`` is a candidate at ``step`` (healthy, with its
        interval and checkpoint there), else ``None``.

        The default reads every candidate at ``step``; override for speed (one row).
        """
        rows = self.candidate_scores(population_id, step)
        return next((row for row in rows if row[0] == member), None)

    def peer_counts(
        self, population_id: int, step: int, mode: Mode, member: int, fitness: float
    ) -> PeerCounts:
        """Where a member ``member`` with ``fitness`` stands among the candidates at ``step``
        (see :class:`~poptune.records.PeerCounts`): what an exploit strategy asks through
        :class:`~poptune.peers.StoredPeers`.

        The default reads every candidate at ``step`` and counts them with
        :func:`~poptune.records.count_peers`; override for speed (one count, no row read).
        """
        rows = self.candidate_scores(population_id, step)
        return count_peers((_candidate(row, mode) for row in rows), member, fitness)

    def peer_at(
        self, population_id: int, step: int, index: int, mode: Mode | None = None
    ) -> tuple[int, int, float | None] | None:
        """``(member, step, score)`` of the ``index``-th candidate at ``step`` by member id, or,
        with ``mode``, the ``index``-th best (by :func:`~poptune.records.rank_key`: higher
        fitness first, ties by lower member id, non-finite scores last); ``None`` past the last.

        The default reads (and, with ``mode``, sorts) every candidate at ``step``; override for
        speed (one row).
        """
        rows = self.candidate_scores(population_id, step)
        if mode is not None:
            rows = sorted(rows, key=lambda row: rank_key(mode.fitness(row[2]), row[0]))
        return rows[index] if 0 <= index < len(rows) else None

    # --- batches: a block of members (see :mod:`poptune.blocks`). The defaults call the
    # single-member method once per member, so each member's write is its own transaction and
    # keeps that method's contract; a backend overrides them to make a batch one transaction.

    def claim_block(
        self,
        population_id: int,
        owner: str,
        budget: int,
        lease_seconds: float,
        sync: bool,
        count: int,
        prefer: Sequence[tuple[int, int]] = (),
    ) -> list[Claim]:
        """Claim up to ``count`` members, each as :meth:`claim` would choose it (least advanced
        first, the ``(member, step)`` pairs of ``prefer`` on ties), by member id; ``[]`` when
        nothing is claimable.

        The default calls :meth:`claim` up to ``count`` times; override for speed (one
        transaction).
        """
        claims: list[Claim] = []
        for _ in range(count):
            claim = self.claim(population_id, owner, budget, lease_seconds, sync, prefer)
            if claim is None:
                break
            claims.append(claim)
        return sorted(claims, key=lambda c: c.member.id)

    def record_intervals(self, recordings: Sequence[Recording]) -> list[int]:
        """Record each interval as :meth:`record_interval` does; return the members whose
        write was refused (their claim was lost: nothing of theirs is recorded), by id.

        The default calls :meth:`record_interval` once per member; override for speed (one
        transaction: a refused member changes nothing, the others are recorded).
        """
        refused = []
        for r in recordings:
            try:
                self.record_interval(r.claim, r.interval, r.checkpoint, r.exploit_pending, r.done)
            except LeaseLost:
                refused.append(r.claim.member.id)
        return sorted(refused)

    def record_exploits(self, copies: Sequence[Copy]) -> list[CheckpointRef | None]:
        """Record each copy as :meth:`record_exploit` does; return, in order, the donor's
        checkpoint, or ``None`` where nothing changed: the donor's checkpoint is no longer
        committed, or the claim was lost (the member's next write under it is refused too).

        The default calls :meth:`record_exploit` once per copy; override for speed (one
        transaction).
        """
        refs: list[CheckpointRef | None] = []
        for c in copies:
            try:
                refs.append(self.record_exploit(c.claim, c.event, c.hparams, c.done))
            except LeaseLost:
                refs.append(None)
        return refs

    def close(self) -> None:
        """Release connections. The default has none to release."""
        return None  # not abstract: a storage without connections has nothing to do


def _candidate(row: tuple[int, int, float | None], mode: Mode) -> Candidate:
    """A ``(member, step, score)`` row as the candidate a strategy ranks."""
    member, step, score = row
    return Candidate(member, step, score, mode.fitness(score))
