"""A :class:`~poptune.storage.Storage` in this process's memory, for tests.

It keeps the whole contract (atomic claims with leases and fencing tokens, idempotent records,
garbage collection, summaries) with plain Python objects under one lock, so the contract suite
runs against it next to SQLite and PostgreSQL, and tests of code above the storage run without a
database. Nothing persists and no other process can reach it: ``pt.run(..., workers=1)`` only.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, NoReturn

from ..records import (
    CheckpointRef,
    ExploitEvent,
    FailureRecord,
    IntervalRecord,
    MemberRecord,
    MemberStatus,
    Mode,
    PopulationRecord,
    PopulationStatus,
    rank_key,
)
from ._base import (
    Claim,
    LeaseLost,
    PopulationExists,
    PopulationNotFound,
    Storage,
    StorageError,
    Summary,
    best_kept,
    check_idle,
)

__all__ = ["MEMORY_URL", "MemoryStorage"]

#: The ``url`` of every :class:`MemoryStorage`: it names no place another process could open.
MEMORY_URL = "memory://"


def _json(value: Any) -> Any:
    """A deep copy as the SQL storage would give it back (JSON text and back): no caller
    shares a mutable value with the storage, and what does not survive JSON fails here too."""
    return json.loads(json.dumps(value, allow_nan=True))


def _score(value: float | None) -> float | None:
    # Stored as SQL stores it: NaN is missing.
    if value is None or math.isnan(value):
        return None
    return float(value)


def _same_event(a: ExploitEvent, b: ExploitEvent) -> bool:
    """Whether two events are one (how a retried write recognises that it committed)."""
    return (a.member, a.step, a.donor, a.donor_step, a.time) == (
        b.member,
        b.step,
        b.donor,
        b.donor_step,
        b.time,
    )


@dataclass
class _Member:
    id: int
    step: int
    hparams: dict[str, Any]
    score: float | None = None
    parent: int | None = None
    status: MemberStatus = MemberStatus.IDLE
    restore: tuple[int, int] | None = None
    exploit_pending: bool = False
    failures: int = 0
    owner: str | None = None
    token: int = 0
    lease_until: float | None = None

    def record(self) -> MemberRecord:
        return MemberRecord(
            id=self.id,
            step=self.step,
            hparams=_json(self.hparams),
            score=self.score,
            parent=self.parent,
            status=self.status,
            restore=self.restore,
            exploit_pending=self.exploit_pending,
            failures=self.failures,
        )


@dataclass
class _Population:
    record: PopulationRecord
    members: dict[int, _Member]
    failure_streak: int = 0
    intervals: dict[tuple[int, int], IntervalRecord] = field(default_factory=dict)
    checkpoints: dict[tuple[int, int], CheckpointRef] = field(default_factory=dict)
    exploits: list[ExploitEvent] = field(default_factory=list)
    failures: list[FailureRecord] = field(default_factory=list)


class MemoryStorage(Storage):
    """Population storage in this process's memory: for tests, nothing persists.

    Thread-safe (one lock makes every method one transaction), but no other process can reach
    it, so use it with one in-process worker. ``clock`` (seconds) decides when leases expire;
    pass a fake one to expire leases without waiting.

    Example:
        >>> import poptune as pt
        >>> from poptune.testing import MemoryStorage, Quadratic, quadratic_space
        >>> result = pt.run(Quadratic, space=quadratic_space(), metric="q", population=2,
        ...                 intervals=2, storage=MemoryStorage(), checkpoints="ckpt",
        ...                 progress=False)
        >>> len(result.intervals())
        4
    """

    url = MEMORY_URL

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.RLock()
        self._populations: dict[int, _Population] = {}
        self._ids = itertools.count(1)
        self._database_id = uuid.uuid4().hex[:16]

    def __getstate__(self) -> NoReturn:
        raise StorageError(
            "A MemoryStorage lives in one process and cannot be sent to another (a worker "
            "process or a Ray actor). Run with workers=1, or use a SQLite file or PostgreSQL: "
            "storage='sqlite:///runs/poptune.db'."
        )

    # --- helpers -------------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        # Every method checks before it changes anything, so holding the lock is enough to make
        # it all-or-nothing.
        with self._lock:
            yield

    def _get(self, population_id: int) -> _Population:
        try:
            return self._populations[population_id]
        except KeyError:
            raise PopulationNotFound(f"No population with id {population_id} in memory.") from None

    def _held(self, claim: Claim) -> _Member:
        """The member of ``claim`` if the claim still holds it; else the write is refused."""
        member = self._get(claim.population_id).members.get(claim.member.id)
        if member is None or member.token != claim.token or member.status != MemberStatus.RUNNING:
            raise LeaseLost(
                f"Member {claim.member.id} is no longer held by {claim.owner} "
                f"(claim token {claim.token}); its write was refused."
            )
        return member

    @staticmethod
    def _free(member: _Member, status: MemberStatus) -> None:
        member.status, member.owner, member.lease_until = status, None, None

    @staticmethod
    def _copy_from(member: _Member, event: ExploitEvent, hparams: Mapping[str, Any]) -> None:
        member.hparams = _json(dict(hparams))
        member.parent = event.donor
        member.restore = (event.donor, event.donor_step)
        member.step = event.donor_step
        member.score = _score(event.donor_score)
        member.exploit_pending = False

    @staticmethod
    def _event(event: ExploitEvent) -> ExploitEvent:
        return replace(
            event,
            hparams_before=_json(dict(event.hparams_before)),
            hparams_after=_json(dict(event.hparams_after)),
            score=_score(event.score),
            donor_score=_score(event.donor_score),
        )

    # --- populations ---------------------------------------------------------------------

    def create_population(
        self, name: str, config: Mapping[str, Any], hparams: Sequence[Mapping[str, Any]]
    ) -> PopulationRecord:
        """Create a population and its idle members at once."""
        with self._transaction():
            if any(p.record.name == name for p in self._populations.values()):
                raise PopulationExists(f"A population named {name!r} already exists.")
            population_id = next(self._ids)
            record = PopulationRecord(
                id=population_id,
                name=name,
                config=_json(dict(config)),
                status=PopulationStatus.RUNNING,
                created_at=time.time(),
                error=None,
            )
            members = {i: _Member(i, 0, _json(dict(values))) for i, values in enumerate(hparams)}
            self._populations[population_id] = _Population(record, members)
        return self.population(name)

    def database_id(self, create: bool = True) -> str | None:
        """This storage's id: made with it (nothing persists)."""
        return self._database_id

    def delete_population(
        self,
        population_id: int,
        quiet_seconds: float = 0.0,
        now: float | None = None,
        check_only: bool = False,
    ) -> list[CheckpointRef]:
        """Forget the population unless it is being trained; return its checkpoints, whose
        files nothing can reach."""
        with self._transaction():
            population = self._populations.get(population_id)
            if population is not None:
                held = [
                    (m.id, m.owner, m.lease_until)
                    for m in population.members.values()
                    if m.status == MemberStatus.RUNNING
                ]
                ends = [i.finished_at for i in population.intervals.values()]
                now = self._clock() if now is None else now
                last = max(ends, default=None)
                check_idle(held, last, population.record.status, quiet_seconds, now)
                if check_only:
                    return []
                del self._populations[population_id]
        if population is None:
            return []
        return sorted(population.checkpoints.values(), key=lambda r: (r.member, r.step))

    def populations(self) -> list[PopulationRecord]:
        """Every population, oldest first."""
        with self._transaction():
            return [
                replace(p.record, config=_json(p.record.config))
                for _, p in sorted(self._populations.items())
            ]

    def set_status(self, population_id: int, status: PopulationStatus, error: str | None) -> None:
        """Set a population's status (and error text)."""
        with self._transaction():
            population = self._get(population_id)
            population.record = replace(population.record, status=status, error=error)

    def stop(self, population_id: int, reason: str) -> bool:
        """Mark a running population stopped; ``False`` if it was not running."""
        with self._transaction():
            population = self._get(population_id)
            if population.record.status is not PopulationStatus.RUNNING:
                return False
            population.record = replace(
                population.record, status=PopulationStatus.STOPPED, error=reason
            )
            return True

    def update_config(self, population_id: int, values: Mapping[str, Any]) -> None:
        """Set these keys of the population's stored configuration (others are kept)."""
        with self._transaction():
            population = self._get(population_id)
            config = {**population.record.config, **_json(dict(values))}
            population.record = replace(population.record, config=config)

    # --- claims --------------------------------------------------------------------------

    def claim(
        self,
        population_id: int,
        owner: str,
        budget: int,
        lease_seconds: float,
        sync: bool,
        prefer: Sequence[tuple[int, int]] = (),
    ) -> Claim | None:
        """Claim the least-advanced claimable member, preferring the ``(member, step)`` pairs
        of ``prefer`` on ties."""
        with self._transaction():
            population = self._get(population_id)
            if population.record.status is not PopulationStatus.RUNNING:
                return None
            now = self._clock()
            members = population.members.values()
            claimable = [
                m
                for m in members
                if m.step < budget
                and (
                    m.status == MemberStatus.IDLE
                    or (
                        m.status == MemberStatus.RUNNING
                        and m.lease_until is not None
                        and m.lease_until < now
                    )
                )
            ]
            if sync:
                steps = [m.step for m in members if m.status != MemberStatus.FAILED]
                claimable = [m for m in claimable if steps and m.step == min(steps)]
            if not claimable:
                return None
            held = {(int(m), int(step)) for m, step in prefer}
            chosen = min(claimable, key=lambda m: (m.step, (m.id, m.step) not in held, m.id))
            before = chosen.record()  # as the SQL storage reads it, before taking it
            chosen.status, chosen.owner = MemberStatus.RUNNING, owner
            chosen.token += 1
            chosen.lease_until = now + lease_seconds
            restore = chosen.restore
            checkpoint = None if restore is None else population.checkpoints.get(restore)
            return Claim(population_id, before, owner, chosen.token, checkpoint)

    def renew(self, claim: Claim, lease_seconds: float) -> None:
        """Extend the lease of ``claim``."""
        with self._transaction():
            self._held(claim).lease_until = self._clock() + lease_seconds

    def release(self, claim: Claim) -> None:
        """Give the member back unchanged."""
        with self._transaction():
            self._free(self._held(claim), MemberStatus.IDLE)

    # --- records -------------------------------------------------------------------------

    def record_interval(
        self,
        claim: Claim,
        interval: IntervalRecord,
        checkpoint: CheckpointRef,
        exploit_pending: bool,
        done: bool,
        earlier: Sequence[IntervalRecord] = (),
    ) -> None:
        """Record the interval (after ``earlier``, the member's intervals since its last
        checkpoint), its checkpoint and the member's new state; release the member.
        Idempotent, as in the SQL storage."""
        with self._transaction():
            population = self._get(claim.population_id)
            try:
                member = self._held(claim)
            except LeaseLost:
                kept = population.checkpoints.get((checkpoint.member, checkpoint.step))
                if kept is not None and kept.path == checkpoint.path:
                    return  # the retry of a call that committed (a unique path)
                raise
            taken = [(i.member, i.step) for i in (*earlier, interval)]
            taken = [key for key in taken if key in population.intervals]
            if (checkpoint.member, checkpoint.step) in population.checkpoints:
                taken.append((checkpoint.member, checkpoint.step))
            if taken:
                raise StorageError(
                    f"Member {taken[0][0]} already recorded step {taken[0][1]} of population "
                    f"{claim.population_id}; a step is recorded once."
                )
            for recorded in (*earlier, interval):
                score = _score(recorded.score)
                hparams = _json(dict(recorded.hparams))
                population.intervals[(recorded.member, recorded.step)] = replace(
                    recorded, hparams=hparams, score=score, metrics=_json(dict(recorded.metrics))
                )
            population.checkpoints[(checkpoint.member, checkpoint.step)] = checkpoint
            member.step, member.score, member.hparams = interval.step, score, hparams
            member.restore = (checkpoint.member, checkpoint.step)
            member.exploit_pending, member.failures = exploit_pending, 0
            self._free(member, MemberStatus.DONE if done else MemberStatus.IDLE)
            population.failure_streak = 0

    def record_exploit(
        self,
        claim: Claim,
        event: ExploitEvent,
        hparams: Mapping[str, Any],
        done: bool = False,
    ) -> CheckpointRef | None:
        """Point the member at the donor's checkpoint, step and score, if the checkpoint still
        exists, and log the event; release the member as done if ``done``. Idempotent."""
        with self._transaction():
            population = self._get(claim.population_id)
            donor = population.checkpoints.get((event.donor, event.donor_step))
            if donor is None:
                return None
            if any(_same_event(e, event) for e in population.exploits):
                return donor  # the retry of a call that committed
            member = self._held(claim)
            self._copy_from(member, event, hparams)
            if done:
                self._free(member, MemberStatus.DONE)
            population.exploits.append(self._event(event))
            return donor

    def record_failure(
        self,
        claim: Claim,
        failure: FailureRecord,
        retry: bool,
        reseed: tuple[ExploitEvent, Mapping[str, Any]] | None = None,
        done: bool = False,
    ) -> MemberStatus:
        """Log the failure; then retry the member, re-seed it from a donor, or mark it failed.
        Idempotent."""
        with self._transaction():
            population = self._get(claim.population_id)
            if any(
                (f.member, f.step, f.time) == (failure.member, failure.step, failure.time)
                for f in population.failures
            ):
                return population.members[failure.member].status
            member = self._held(claim)
            if retry:
                member.failures += 1
                outcome = MemberStatus.IDLE
            elif reseed is not None and (reseed[0].donor, reseed[0].donor_step) in (
                population.checkpoints
            ):
                event, hparams = reseed
                self._copy_from(member, event, hparams)
                member.failures = 0
                outcome = MemberStatus.DONE if done else MemberStatus.IDLE
                population.exploits.append(self._event(event))
            else:
                outcome = MemberStatus.FAILED
            self._free(member, outcome)
            population.failures.append(failure)
            population.failure_streak += 1
            return outcome

    def failure_streak(self, population_id: int) -> int:
        """How many failures were recorded since the last successful interval."""
        with self._transaction():
            return self._get(population_id).failure_streak

    def release_claims(self, population_id: int, owners: Sequence[str]) -> int:
        """Give back, unchanged, every member held by ``owners``; return how many."""
        with self._transaction():
            held = [
                m
                for m in self._get(population_id).members.values()
                if m.status == MemberStatus.RUNNING and m.owner in owners
            ]
            for member in held:
                self._free(member, MemberStatus.IDLE)
            return len(held)

    def claims(self, population_id: int) -> dict[int, str]:
        """Member id -> owner, for every member currently held by a worker."""
        with self._transaction():
            return {
                m.id: m.owner or ""
                for m in self._get(population_id).members.values()
                if m.status == MemberStatus.RUNNING
            }

    def extend(self, population_id: int, intervals: int) -> None:
        """Give the population a budget of ``intervals`` (not less than its own)."""
        with self._transaction():
            population = self._get(population_id)
            config = dict(population.record.config)
            if intervals < int(config["intervals"]):
                raise ValueError(
                    f"A budget only grows: intervals={intervals} is less than the population's "
                    f"{config['intervals']}."
                )
            config["intervals"] = intervals
            population.record = replace(
                population.record, config=config, status=PopulationStatus.RUNNING, error=None
            )
            for member in population.members.values():
                if member.status == MemberStatus.DONE and member.step < intervals:
                    self._free(member, MemberStatus.IDLE)

    def reopen_members(self, population_id: int, budget: int) -> None:
        """Make failed members (and finished ones below ``budget``) idle again, to resume."""
        with self._transaction():
            for member in self._get(population_id).members.values():
                if member.status == MemberStatus.FAILED or (
                    member.status == MemberStatus.DONE and member.step < budget
                ):
                    self._free(member, MemberStatus.IDLE)
                    member.failures = 0

    # --- reads ---------------------------------------------------------------------------

    def members(self, population_id: int) -> list[MemberRecord]:
        """Every member's current record, by id."""
        with self._transaction():
            return [m.record() for _, m in sorted(self._get(population_id).members.items())]

    def intervals(
        self, population_id: int, after_step: int = 0, until_step: int | None = None
    ) -> list[IntervalRecord]:
        """Every recorded interval above step ``after_step`` (default: all) and at most
        ``until_step`` (default: no bound), by member and step."""
        with self._transaction():
            rows = sorted(self._get(population_id).intervals.items())
            return [
                copy.deepcopy(row)
                for (_, step), row in rows
                if step > after_step and (until_step is None or step <= until_step)
            ]

    def interval(self, population_id: int, member: int, step: int) -> IntervalRecord | None:
        """The interval ``member`` recorded at ``step``, or ``None``."""
        with self._transaction():
            return copy.deepcopy(self._get(population_id).intervals.get((member, step)))

    def scores_since(
        self, population_id: int, step: int, member: int | None = None
    ) -> list[tuple[int, int, float | None]]:
        """(member, step, score) of every interval after ``step`` (of ``member`` alone, if
        given), by member then step: read in place, without the copies :meth:`intervals` makes
        (stop criteria read every score after every interval)."""
        with self._transaction():
            rows = sorted(self._get(population_id).intervals.items())
            return [
                (m, s, row.score)
                for (m, s), row in rows
                if s > step and (member is None or m == member)
            ]

    def candidates(self, population_id: int, step: int | None = None) -> list[IntervalRecord]:
        """Latest (or exactly ``step``) checkpointed interval of every healthy member."""
        with self._transaction():
            population = self._get(population_id)
            found = []
            for member_id, member in sorted(population.members.items()):
                if member.status == MemberStatus.FAILED:
                    continue
                key = (member_id, member.step if step is None else step)
                if key in population.intervals and key in population.checkpoints:
                    found.append(copy.deepcopy(population.intervals[key]))
            return found

    def exploits(self, population_id: int) -> list[ExploitEvent]:
        """Every exploit event in recording order."""
        with self._transaction():
            return copy.deepcopy(self._get(population_id).exploits)

    def failures(self, population_id: int) -> list[FailureRecord]:
        """Every failure of user code, oldest first."""
        with self._transaction():
            return list(self._get(population_id).failures)

    def checkpoint(self, population_id: int, member: int, step: int) -> CheckpointRef | None:
        """The committed checkpoint of ``member`` at ``step``, or ``None``."""
        with self._transaction():
            return self._get(population_id).checkpoints.get((member, step))

    def discard_checkpoint(self, population_id: int, ref: CheckpointRef) -> None:
        """Drop the row of a damaged checkpoint so that no one restores or copies it again."""
        with self._transaction():
            table = self._get(population_id).checkpoints
            kept = table.get((ref.member, ref.step))
            if kept is not None and kept.checksum == ref.checksum:
                del table[(ref.member, ref.step)]

    def checkpoints(self, population_id: int) -> list[CheckpointRef]:
        """Every committed checkpoint, by member then step."""
        with self._transaction():
            return [ref for _, ref in sorted(self._get(population_id).checkpoints.items())]

    def collect_garbage(self, population_id: int, mode: Mode) -> list[CheckpointRef]:
        """Delete the checkpoints nothing needs; return them so their files can go too."""
        with self._transaction():
            return self._collect(self._get(population_id), mode)

    @staticmethod
    def _collect(population: _Population, mode: Mode) -> list[CheckpointRef]:
        """The keep rule of :meth:`Storage.collect_garbage`, as the SQL storage applies it."""
        members = population.members.values()
        healthy = [m.step for m in members if m.status != MemberStatus.FAILED]
        if not healthy:
            return []
        old = [key for key in sorted(population.checkpoints) if key[1] < min(healthy)]
        if not old:
            return []
        keep = {(m.id, m.step) for m in members} | {m.restore for m in members}
        scored = [(key, row.score) for key, row in population.intervals.items()]
        kept = [(key, score) for key, score in scored if score is not None and math.isfinite(score)]
        if kept:
            # The best finite score, ties to the lowest (member, step), as SQL orders them.
            best = min(
                kept, key=lambda item: (*rank_key(mode.fitness(item[1]), item[0][0]), item[0][1])
            )
            keep.add(best[0])
        doomed = [key for key in old if key not in keep]
        return [population.checkpoints.pop(key) for key in doomed]

    def summary(self, population_id: int, budget: int, mode: Mode) -> Summary:
        """Counts for a progress display."""
        with self._transaction():
            now = self._clock()
            population = self._get(population_id)
            members = list(population.members.values())
            kept = [
                (member, step, population.intervals[member, step].score)
                for member, step in population.checkpoints
                if (member, step) in population.intervals
            ]
            best = best_kept(kept, mode)
            return Summary(
                members=len(members),
                steps_done=sum(m.step for m in members),
                steps_total=budget * len(members),
                running=sum(
                    m.status == MemberStatus.RUNNING and (m.lease_until or 0.0) > now
                    for m in members
                ),
                done=sum(m.status == MemberStatus.DONE for m in members),
                failed=sum(m.status == MemberStatus.FAILED for m in members),
                exploits=sum(e.is_exploit for e in population.exploits),
                recoveries=sum(not e.is_exploit for e in population.exploits),
                failures=len(population.failures),
                best_member=None if best is None else best[0],
                best_score=None if best is None else best[2],
                best_step=None if best is None else best[1],
                status=population.record.status,
            )
