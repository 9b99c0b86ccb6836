"""What a population produced: members, intervals, exploits, the best member and its schedule.

A :class:`Result` reads the storage each time it is asked, so it also shows a population that
other workers are still training. It is a pure reader: it needs the storage (and, for weights,
the checkpoints) only, and never imports the user's training code, except
:meth:`Best.load`, which builds the trainable. ``pt.run`` and ``pt.load`` return a
:class:`poptune.population.Population`, a ``Result`` that can also resume and report.
"""

from __future__ import annotations

import enum
import html
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._imports import import_object
from ._validation import check_int, invalid
from .checkpoints import CheckpointStore, confined, population_folders
from .config import PopulationConfig
from .errors import NoBestMember
from .records import (
    CheckpointRef,
    ExploitEvent,
    FailureRecord,
    IntervalRecord,
    MemberRecord,
    MemberStatus,
    Mode,
    PopulationRecord,
    rank_key,
)
from .storage import Storage, Summary, command_hint

if TYPE_CHECKING:
    import pandas

__all__ = [
    "Best",
    "EdgeKind",
    "Lineage",
    "LineageEdge",
    "NoBestMember",
    "Result",
    "ScheduleEntry",
    "Scope",
]


class Scope(str, enum.Enum):
    """Which weights "best" chooses among (as Ray Tune's ``scope="all"`` and ``"last"``).

    ``ALL``: every recorded interval whose checkpoint is still kept; the best finite score among
    them, so a member that diverged at the end still offers its weights from before.
    ``LAST``: the weights each healthy member holds now (its latest interval's, or a donor's it
    copied); the best finite score among them.
    """

    ALL = "all"
    LAST = "last"


@dataclass(frozen=True)
class Best:
    """The best weights: ``member`` trained them to ``step`` with ``hparams``, reaching ``score``
    (and ``metrics``); ``checkpoint`` holds them. See :meth:`Result.best_member` for "best"."""

    member: int
    step: int
    score: float | None
    hparams: Mapping[str, Any]
    metrics: Mapping[str, Any]
    checkpoint: CheckpointRef | None
    _store: CheckpointStore | None = field(default=None, compare=False, repr=False)
    _trainable: type | None = field(default=None, compare=False, repr=False)
    _reference: str | None = field(default=None, compare=False, repr=False)
    _folders: tuple[str, ...] = field(default=(), compare=False, repr=False)

    def state(self) -> Any:
        """The best member's state, as its ``state_dict()`` returned it.

        Raises:
            UnsafeCheckpointPath: if the recorded path is not in the population's folder.
        """
        if self.checkpoint is None or self._store is None:
            raise LookupError(f"Member {self.member} has no checkpoint to load yet.")
        if self._folders:
            confined(self.checkpoint.path, self._folders)
        return self._store.load(self.checkpoint)

    def load(self, trainable: type | None = None, seed: int = 0) -> Any:
        """A fresh trainable built with the best hparams and loaded with the best weights.

        ``trainable`` defaults to the population's own trainable class, imported by the
        reference recorded with the population (the one read that imports user code).
        """
        cls = trainable if trainable is not None else self._trainable
        if cls is None and self._reference is not None:
            try:
                cls = import_object(self._reference)
            except ImportError as error:
                raise LookupError(
                    f"The population's trainable cannot be imported here ({error}); pass it: "
                    "best.load(MyClass)."
                ) from None
        if cls is None:
            raise LookupError(
                "The population's trainable cannot be imported here; pass it: best.load(MyClass)."
            )
        if not isinstance(cls, type):
            raise TypeError(
                f"The population trains a function ({getattr(cls, '__qualname__', cls)!r}), so "
                "there is no instance to build: load best.state() into your model instead."
            )
        instance = cls(dict(self.hparams), seed)
        instance.load_state_dict(self.state())
        return instance


@dataclass(frozen=True)
class ScheduleEntry:
    """One interval of the winning lineage: the ``step``-th interval its weights trained for,
    by ``member`` (its own step ``member_step``) with ``hparams``, reaching ``score``."""

    step: int
    member: int
    member_step: int
    hparams: Mapping[str, Any]
    score: float | None


class EdgeKind(str, enum.Enum):
    """How a lineage node got its starting weights."""

    TRAINED = "trained"  # continued from the same member's previous interval
    COPIED = "copied"  # started from another member's checkpoint after an exploit


@dataclass(frozen=True)
class LineageEdge:
    """``child`` (member, step) started from the weights of ``parent`` (member, step)."""

    parent: tuple[int, int]
    child: tuple[int, int]
    kind: EdgeKind


@dataclass(frozen=True)
class Lineage:
    """The lineage tree: one node per (member, interval), one edge to where its weights came from.

    Example:
        >>> lineage = result.lineage()
        >>> copies = [e for e in lineage.edges if e.kind is EdgeKind.COPIED]
        >>> len(copies) == len(result.exploits())   # one copied edge per exploit
        True
    """

    nodes: Mapping[tuple[int, int], IntervalRecord]
    edges: tuple[LineageEdge, ...]

    def ancestry(self, member: int, step: int) -> list[IntervalRecord]:
        """The chain of intervals that led to (member, step), oldest first."""
        return _ancestry(self.nodes, member, step)


def _ancestry(
    nodes: Mapping[tuple[int, int], IntervalRecord], member: int, step: int
) -> list[IntervalRecord]:
    chain: list[IntervalRecord] = []
    node = nodes.get((member, step))
    while node is not None:
        chain.append(node)
        node = None if node.origin is None else nodes.get(node.origin)
    chain.reverse()
    return chain


def _short(value: Any) -> str:
    if value is None:
        return "—"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class Result:
    """A population's results, read from its storage.

    Example:
        >>> result = pt.load("sqlite:///runs/poptune.db", "digits")
        >>> result.best.score, result.schedule()[-1].hparams
        (0.9..., {'lr': ...})
    """

    def __init__(
        self,
        storage: Storage,
        record: PopulationRecord,
        checkpoints: CheckpointStore | None,
        trainable: type | None = None,
    ) -> None:
        self.storage = storage
        self._record = record
        self._config = PopulationConfig.from_dict(record.config)
        self._checkpoints = checkpoints
        self._trainable = trainable

    @property
    def checkpoint_store(self) -> CheckpointStore | None:
        """Where this result reads the population's checkpoints (as given to :func:`load`)."""
        return self._checkpoints

    # --- identity ------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The population's name."""
        return self._record.name

    @property
    def id(self) -> int:
        """The population's id in its storage (it never changes: no re-read)."""
        return self._record.id

    @property
    def config(self) -> PopulationConfig:
        """The stored configuration (trainable, space, metric, mode, strategies, budget...)."""
        return self._config

    @property
    def metric(self) -> str:
        """The metric PBT optimises."""
        return self._config.metric

    @property
    def mode(self) -> Mode:
        """Whether higher (max) or lower (min) scores are better."""
        return self._config.mode

    @property
    def record(self) -> PopulationRecord:
        """The population's stored record, re-read (status, error and budget may have changed)."""
        self._record = self.storage.population(self.name)
        self._config = PopulationConfig.from_dict(self._record.config)
        return self._record

    @property
    def status(self) -> str:
        """``running``, ``finished`` or ``error``."""
        return self.record.status.value

    # --- what happened -------------------------------------------------------------------

    @property
    def members(self) -> list[MemberRecord]:
        """Each member's latest record: id, step, hparams, score, parent, status."""
        return self.storage.members(self._record.id)

    def intervals(self) -> list[IntervalRecord]:
        """Every recorded interval, by member then step."""
        return self.storage.intervals(self._record.id)

    def exploits(self) -> list[ExploitEvent]:
        """Every exploit event, in the order they happened."""
        return self.storage.exploits(self._record.id)

    def failures(self) -> list[FailureRecord]:
        """Every failure of user code, with its traceback."""
        return self.storage.failures(self._record.id)

    def summary(self) -> Summary:
        """Counts: steps done, members done/failed, exploits, best score."""
        return self.storage.summary(self._record.id, self._config.intervals, self.mode)

    @property
    def best(self) -> Best:
        """The best weights that can still be loaded: :meth:`best_member` with ``scope="all"``.

        Raises:
            NoBestMember: (a ``LookupError``) if there are none; the message says why.
        """
        return self.best_member(Scope.ALL)

    def best_member(self, scope: Scope | str = Scope.ALL) -> Best:
        """The best weights of ``scope``; the one definition of "best" that :attr:`best`,
        ``poptune best``, the report and the dashboard show.

        ``"all"`` (the default): the recorded interval with the best finite score whose
        checkpoint is still kept (garbage collection always keeps the best one), so a population
        whose members all end on NaN still yields its best weights from before they diverged.
        ``"last"``: among the weights each healthy member holds now, those with the best finite
        score. A NaN, infinite or missing score is never best; ties go to the lower member id,
        then the earlier step. ``member`` and ``step`` name the interval that trained the
        weights (a member that copied a donor holds the donor's: they name the donor's).

        Raises:
            NoBestMember: (a ``LookupError``) if no weights of ``scope`` have a finite score and
                a kept checkpoint; the message says which is missing and what to do.
            ValueError: if ``scope`` is neither ``"all"`` nor ``"last"``.

        Example:
            >>> result.best_member("last").hparams
            {'lr': ...}
        """
        try:
            scope = Scope(scope)
        except ValueError:
            raise invalid("scope", "'all' or 'last'", scope, "best_member") from None
        if scope is Scope.ALL:
            interval, checkpoint = self._best_interval()
        else:
            interval, checkpoint = self._best_held()
        return Best(
            member=interval.member,
            step=interval.step,
            score=interval.score,
            hparams=dict(interval.hparams),
            metrics=dict(interval.metrics),
            checkpoint=checkpoint,
            _store=self._checkpoints,
            _trainable=self._trainable,
            _reference=self._config.trainable,
            _folders=population_folders(self.storage.database_id(create=False), self._record.id),
        )

    def _first_kept(self, scored: list[tuple[int, int, float | None]]) -> CheckpointRef | None:
        """The checkpoint of the best finite ``(member, step, score)`` of ``scored`` that is
        kept (ties: lower member, earlier step). Garbage collection keeps the best one's,
        so one query usually answers; else one read of every checkpoint."""
        fitness = self.mode.fitness

        def rank(item: tuple[int, int, float | None]) -> tuple[float, int, int]:
            return (*rank_key(fitness(item[2]), item[0]), item[1])

        finite = [item for item in scored if math.isfinite(fitness(item[2]))]
        if not finite:
            return None
        pid = self._record.id
        top = min(finite, key=rank)  # no sort for the usual answer (the dashboard asks often)
        first = self.storage.checkpoint(pid, top[0], top[1])
        if first is not None:
            return first
        kept = {(c.member, c.step): c for c in self.storage.checkpoints(pid)}
        return next((kept[m, s] for m, s, _ in sorted(finite, key=rank) if (m, s) in kept), None)

    def _best_interval(self) -> tuple[IntervalRecord, CheckpointRef]:
        """Scope "all": the best finite recorded interval whose checkpoint is kept, as the
        storage's summary ranks the kept checkpoints (one rule for status, list and this)."""
        pid, summary = self._record.id, self.summary()
        if summary.best_member is not None and summary.best_step is not None:
            interval = self.storage.interval(pid, summary.best_member, summary.best_step)
            checkpoint = self.storage.checkpoint(pid, summary.best_member, summary.best_step)
            if interval is not None and checkpoint is not None:
                return interval, checkpoint
        # Collected between the reads, or none kept: rank the intervals (read only on this
        # path), and say why if nothing is left.
        intervals = {(i.member, i.step): i for i in self.intervals()}
        scored = [(member, step, i.score) for (member, step), i in intervals.items()]
        kept = self._first_kept(scored)
        if kept is not None:
            return intervals[kept.member, kept.step], kept
        metric = self.metric
        if not intervals:
            raise NoBestMember(
                f"Population {self.name!r} has no recorded interval yet: wait for its workers "
                f"({command_hint('status', self.name, self.storage.url)}), or resume it "
                f"({command_hint('resume', self.name, self.storage.url)})."
            )
        fitness = self.mode.fitness
        finite = [item for item in scored if math.isfinite(fitness(item[2]))]
        if not finite:
            raise NoBestMember(
                f"Population {self.name!r} has {len(intervals)} recorded intervals but not one "
                f"finite {metric!r} score (all NaN or infinite): every member diverged from its "
                "first interval. Train again with a smaller learning rate or a narrower space."
            )
        member, step, score = min(
            finite, key=lambda item: (*rank_key(fitness(item[2]), item[0]), item[1])
        )
        raise NoBestMember(
            f"Population {self.name!r} has finite {metric!r} scores (best {score:.6g}, member "
            f"{member} at step {step}) but none of their checkpoints is kept (deleted, or "
            "discarded as damaged), so no weights can be loaded: train again, or check that "
            "the checkpoints folder (checkpoints=) is the population's."
        )

    def _best_held(self) -> tuple[IntervalRecord, CheckpointRef]:
        """Scope "last": the best finite weights a healthy member holds now."""
        # A member's row carries the score of the weights it holds (its own latest interval's,
        # or the donor's it copied): rank those, then read the one chosen interval.
        held = [
            (*m.restore, m.score)
            for m in self.members
            if m.status is not MemberStatus.FAILED and m.restore is not None
        ]
        checkpoint = self._first_kept(held)
        if checkpoint is not None:
            interval = self.storage.interval(self._record.id, checkpoint.member, checkpoint.step)
            if interval is not None:  # always, by the storage contract: a held interval stays
                return interval, checkpoint
        if not held:
            raise NoBestMember(
                f"Population {self.name!r} has no healthy member holding trained weights yet: "
                "wait for its workers, or resume it "
                f"({command_hint('resume', self.name, self.storage.url)})."
            )
        try:
            self._best_interval()
        except NoBestMember as none:  # no earlier weights to point to either: say why
            raise NoBestMember(
                f"No healthy member of population {self.name!r} holds weights with a finite "
                f"{self.metric!r} score now (their latest scores are NaN or infinite), and "
                f"none did before: {none}"
            ) from None
        raise NoBestMember(
            f"No healthy member of population {self.name!r} holds weights with a finite "
            f"{self.metric!r} score now (their latest scores are NaN or infinite): "
            "best_member('all') (poptune best --scope all) gives the best recorded interval "
            "whose checkpoint is kept, from before they diverged."
        )

    def lineage(self) -> Lineage:
        """The tree of (member, interval) nodes and where each one's weights came from."""
        nodes = {(i.member, i.step): i for i in self.intervals()}
        edges = tuple(
            LineageEdge(
                parent=node.origin,
                child=key,
                kind=EdgeKind.TRAINED if node.origin[0] == node.member else EdgeKind.COPIED,
            )
            for key, node in nodes.items()
            if node.origin is not None
        )
        return Lineage(nodes=nodes, edges=edges)

    def schedule(self, member: int | None = None) -> list[ScheduleEntry]:
        """The hparams the lineage of ``member`` (default: the best) trained with, step by step.

        Copies are followed back to the first interval, so the result is the full schedule that
        produced the member's final weights and can be replayed.
        """
        if member is None:
            best = self.best
            member, step = best.member, best.step
        else:
            member = check_int("member", member, 0, owner="schedule")  # not True, 1.0 or a Best
            known = {m.id: m for m in self.members}
            if member not in known:
                raise invalid(
                    "member",
                    f"a member of population {self.name!r} (0..{len(known) - 1})",
                    member,
                    "schedule",
                )
            holds = known[member].restore  # the weights it holds (a donor's, if copied)
            if holds is None:
                return []
            member, step = holds
        # The nodes are enough to walk back; building every edge of the tree (lineage())
        # would cost more than the walk (the dashboard asks on every update).
        chain = _ancestry({(i.member, i.step): i for i in self.intervals()}, member, step)
        return [
            ScheduleEntry(
                step=index,
                member=node.member,
                member_step=node.step,
                hparams=dict(node.hparams),
                score=node.score,
            )
            for index, node in enumerate(chain, start=1)
        ]

    def to_pandas(self) -> pandas.DataFrame:
        """Every interval as a row: member, step, score, wall time, ``hparams.*``, ``metrics.*``."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError(
                "Result.to_pandas() needs pandas: pip install pandas (or poptune[pandas])."
            ) from None
        rows = []
        for interval in self.intervals():
            row: dict[str, Any] = {
                "member": interval.member,
                "step": interval.step,
                "score": interval.score,
                "wall_time": interval.wall_time,
                "finished_at": interval.finished_at,
                "origin_member": None if interval.origin is None else interval.origin[0],
                "origin_step": None if interval.origin is None else interval.origin[1],
            }
            row.update({f"hparams.{k}": v for k, v in interval.hparams.items()})
            row.update({f"metrics.{k}": v for k, v in interval.metrics.items()})
            rows.append(row)
        return pd.DataFrame(rows)

    # --- notebooks and the console --------------------------------------------------------

    def _best_or_none(self) -> Best | None:
        try:
            return self.best
        except LookupError:
            return None

    def _repr_html_(self) -> str:
        """A summary table for notebooks: status, best member and every member's latest."""
        summary = self.summary()
        chosen = self._best_or_none()
        best_member = None if chosen is None else chosen.member
        escape = html.escape
        rows = "".join(
            f"<tr><td>{m.id}{' ★' if m.id == best_member else ''}</td>"
            f"<td>{escape(m.status.value)}</td><td>{m.step}</td>"
            f"<td>{escape(_short(m.score))}</td>"
            f"<td>{escape(', '.join(f'{k}={_short(v)}' for k, v in m.hparams.items()))}</td>"
            f"<td>{'' if m.parent is None else m.parent}</td></tr>"
            for m in self.members
        )
        best = "—" if chosen is None else f"{_short(chosen.score)} (member {best_member})"
        return (
            f"<div><b>poptune population {escape(self.name)}</b>: {escape(summary.status.value)},"
            f" {summary.steps_done}/{summary.steps_total} intervals, best "
            f"{escape(self.metric)} {escape(best)}, "
            f"{summary.exploits} exploits, {summary.failures} failures"
            "<table><thead><tr><th>member</th><th>status</th><th>step</th>"
            f"<th>{escape(self.metric)}</th><th>hparams</th><th>parent</th></tr></thead>"
            f"<tbody>{rows}</tbody></table></div>"
        )

    def __repr__(self) -> str:
        summary = self.summary()
        chosen = self._best_or_none()
        best = (
            "no best yet"
            if chosen is None
            else f"best {self.metric}={_short(chosen.score)} (member {chosen.member}, step "
            f"{chosen.step})"
        )
        return (
            f"<poptune.Result {self.name!r}: {summary.status.value}, "
            f"{summary.steps_done}/{summary.steps_total} intervals, {best}, "
            f"{summary.exploits} exploits>"
        )
