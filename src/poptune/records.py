"""Typed records: what storage hands back and what strategies read.

Every record is a frozen dataclass: once an interval, an exploit or a checkpoint is recorded it
never changes, so it is safe to share between threads, cache, and compare.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Candidate",
    "CheckpointRef",
    "CopyReason",
    "ExploitEvent",
    "ExploreData",
    "FailureRecord",
    "IntervalChange",
    "IntervalRecord",
    "MemberRecord",
    "MemberStatus",
    "Mode",
    "PeerCounts",
    "PopulationRecord",
    "PopulationStatus",
    "count_peers",
    "rank_key",
]


class Mode(str, enum.Enum):
    """Whether a higher (``max``) or a lower (``min``) score is better."""

    MAX = "max"
    MIN = "min"

    def fitness(self, score: float | None) -> float:
        """Map a score to "higher is better". A missing, NaN or infinite score (in either
        direction: an overflow is a diverged run, not a perfect one) is the worst, ``-inf``."""
        if score is None or not math.isfinite(score):
            return -math.inf
        return score if self is Mode.MAX else -score


def rank_key(fitness: float, member: int) -> tuple[float, int]:
    """The population's one ranking rule, as a sort key (smaller ranks first): higher
    ``fitness`` first (see :meth:`Mode.fitness`: missing, NaN and infinite scores are ``-inf``,
    the worst), ties broken by the lower member id. Every ranking in poptune (exploit candidates,
    the best member, the SQL orderings) sorts by this rule, so they all agree.

    Example:
        >>> sorted([(0.5, 3), (0.9, 2), (0.5, 1)], key=lambda c: rank_key(*c))
        [(0.9, 2), (0.5, 1), (0.5, 3)]
    """
    return (-fitness, member)


class MemberStatus(str, enum.Enum):
    """Where a member is in its life: waiting for a worker, being trained, finished or failed."""

    IDLE = "idle"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class PopulationStatus(str, enum.Enum):
    """Whether a population still has work, has finished its budget, was stopped early by a
    stop criterion (the reason is recorded), or was stopped by an error."""

    RUNNING = "running"
    FINISHED = "finished"
    STOPPED = "stopped"
    ERROR = "error"


@dataclass(frozen=True)
class CheckpointRef:
    """A complete, committed checkpoint: the weights of ``member`` after it trained ``step``."""

    member: int
    step: int
    path: str
    size: int
    checksum: str  # "xxh3_128:<hex>", or a bare SHA-256 hex for older checkpoints


@dataclass(frozen=True)
class MemberRecord:
    """One slot of the population as it is now.

    ``step`` counts the intervals this member has trained (0 before the first one). ``hparams``
    are the hyperparameters its next interval trains with; ``score`` is the score of its latest
    interval. ``parent`` is the member it last copied (``None`` if it never exploited), and
    ``restore`` the checkpoint its next interval starts from (its own latest one, or a donor's
    after an exploit; ``None`` before the first interval). ``failures`` counts the failed
    attempts at its next interval since its last success.
    """

    id: int
    step: int
    hparams: Mapping[str, Any]
    score: float | None
    parent: int | None
    status: MemberStatus
    restore: tuple[int, int] | None = None
    exploit_pending: bool = False
    failures: int = 0


@dataclass(frozen=True)
class IntervalRecord:
    """One trained interval: ``member`` trained with ``hparams`` and reached ``step``.

    ``origin`` is the checkpoint it started from, ``(member, step)``: its own previous one, a
    donor's after an exploit, or ``None`` for the very first interval. ``wall_time`` is the
    seconds spent in the user's ``train`` and ``evaluate``.
    """

    member: int
    step: int
    hparams: Mapping[str, Any]
    score: float | None
    metrics: Mapping[str, Any]
    wall_time: float
    finished_at: float
    origin: tuple[int, int] | None = None


class CopyReason(str, enum.Enum):
    """Why a member copied another member's weights."""

    EXPLOIT = "exploit"  # the exploit strategy chose a better donor (PBT's exploit step)
    RESEED = "reseed"  # the member kept failing and was re-seeded from a healthy member
    FALLBACK = "fallback"  # the checkpoint it had to restore was damaged: it took another's


@dataclass(frozen=True)
class ExploitEvent:
    """``member``, after its interval ``step``, copied ``donor``'s weights and hparams at
    ``donor_step`` and explored them into ``hparams_after``; ``reason`` says why (only
    :attr:`CopyReason.EXPLOIT` is PBT's exploit, the others are recoveries)."""

    member: int
    step: int
    donor: int
    donor_step: int
    hparams_before: Mapping[str, Any]
    hparams_after: Mapping[str, Any]
    score: float | None = None
    donor_score: float | None = None
    time: float = 0.0
    reason: CopyReason = CopyReason.EXPLOIT

    @property
    def is_exploit(self) -> bool:
        """Whether the exploit strategy made this copy (not a recovery from a failure)."""
        return self.reason is CopyReason.EXPLOIT


@dataclass(frozen=True)
class FailureRecord:
    """An exception raised by user code while ``member`` was training towards ``step``."""

    member: int
    step: int
    error: str
    traceback: str
    time: float


@dataclass(frozen=True)
class PopulationRecord:
    """A stored population: its name, configuration and whether it is still running."""

    id: int
    name: str
    config: Mapping[str, Any]
    status: PopulationStatus
    created_at: float
    error: str | None = None


@dataclass(frozen=True)
class Candidate:
    """What an exploit strategy sees of one member: its latest recorded, checkpointed interval.

    ``fitness`` is the score oriented so that higher is better (``-inf`` for NaN or missing
    scores), so strategies never need to know the ``mode``. ``hparams`` are the ones that
    produced the checkpoint at ``step``: copying a candidate copies exactly that pair. The
    population's candidates are read without their hparams (a population of thousands is
    ranked without decoding them), and the chosen donor's are read after the choice; a
    strategy that needs every candidate's hparams says so with ``needs_hparams = True``.
    """

    member: int
    step: int
    score: float | None
    fitness: float
    hparams: Mapping[str, Any] = field(default_factory=dict)
    #: fitness of the member's last intervals up to ``step``, oldest first; filled only for
    #: exploit strategies that ask for it with a ``history`` attribute (e.g. ``TTest``)
    history: tuple[float, ...] = ()


@dataclass(frozen=True)
class PeerCounts:
    """Where one member stands among the candidates at its step, counted by the storage.

    ``size`` candidates in all; ``before`` of them have a lower member id; ``better`` of them
    rank above the member (higher fitness, ties broken by the lower member id); ``finite`` of
    them have a finite score. The member itself is never counted in ``before`` or ``better``.
    """

    size: int
    before: int
    better: int
    finite: int


def count_peers(population: Iterable[Candidate], member: int, fitness: float) -> PeerCounts:
    """Where a member ``member`` with ``fitness`` stands among ``population``, ranked by
    :func:`rank_key`: what the SQL storage counts in one query for
    :class:`~poptune.peers.StoredPeers`, here for lists and the storages that count in Python.
    (Also importable from :mod:`poptune.peers`.)

    Example:
        >>> scores = {0: 0.5, 1: 0.9, 2: None}
        >>> peers = [Candidate(m, 1, x, Mode.MAX.fitness(x)) for m, x in scores.items()]
        >>> count_peers(peers, 0, 0.5)  # member 1 ranks above member 0
        PeerCounts(size=3, before=0, better=1, finite=2)
    """
    size = before = better = finite = 0
    key = rank_key(fitness, member)
    for c in population:
        size += 1
        finite += c.fitness > -math.inf
        if c.member != member:
            before += c.member < member
            better += rank_key(c.fitness, c.member) < key
    return PeerCounts(size=size, before=before, better=better, finite=finite)


@dataclass(frozen=True)
class IntervalChange:
    """One recorded interval as a data-driven explore strategy sees it: ``member`` trained one
    interval with ``hparams``, from ``step - 1`` to ``step``, and its fitness (higher is better,
    ``-inf`` for a missing or non-finite score) went from ``before`` to ``after``."""

    member: int
    step: int
    hparams: Mapping[str, Any]
    before: float
    after: float


@dataclass(frozen=True)
class ExploreData:
    """What the worker gives an explore strategy that declares a ``window`` (e.g. ``PB2``).

    The explored hyperparameters will train from a checkpoint at ``step`` whose fitness is
    ``fitness`` (the donor's). ``changes`` are the population's intervals recorded at steps
    ``step - window + 1 .. step`` whose starting score is known (not a member's first interval),
    ordered by step then member.
    """

    step: int
    fitness: float
    changes: tuple[IntervalChange, ...] = ()
