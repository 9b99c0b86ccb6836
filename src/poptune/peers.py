"""Peers: the candidates an exploit strategy chooses from, read no further than it looks.

An exploit strategy is called with a member and its peers: every healthy member's checkpointed
interval at the member's step. ``Peers`` is a read-only sequence of those candidates in
member-id order, so a strategy written for a list works unchanged (iterating reads them all,
once). It also answers the questions the built-in strategies ask without reading everyone:

- ``len(peers)``, ``peers.finite``, ``peers.rank(member)``, ``peers.position(member_id)``;
- ``peers[i]`` (the ``i``-th in member-id order) and ``peers.best(k)`` (the ``k``-th best).

The worker hands strategies a :class:`StoredPeers`, whose answers come from a few indexed
queries (one row each, or one count), so an exploit in a population of thousands costs about
what it costs in one of ten. :class:`ListPeers` answers the same questions from a list, for
strategies called directly (tests, notebooks) and for the rare paths that read everyone anyway.
Both order candidates by the one ranking rule, :func:`~poptune.records.rank_key`: best first
means higher fitness first, ties broken by the lower member id; a NaN, infinite or missing score
has fitness ``-inf`` and ranks last. (``count_peers``, that rule as counts, lives in
:mod:`poptune.records`, which the storage imports too; it is re-exported here.)
"""

from __future__ import annotations

import bisect
import copy
import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, overload

from .errors import PeersChanged
from .records import Candidate, Mode, PeerCounts, count_peers, rank_key

if TYPE_CHECKING:
    from .storage import Storage

__all__ = [
    "ListPeers",
    "Peers",
    "PeersChanged",
    "StoredPeers",
    "as_peers",
    "count_peers",
    "with_history",
]


def with_history(
    candidates: list[Candidate], storage: Storage, population_id: int, mode: Mode, window: int
) -> list[Candidate]:
    """``candidates`` with the fitness of each one's last ``window`` intervals up to its step,
    oldest first (what ``TTest`` compares), in one read: of that member alone for one."""
    if window <= 0 or not candidates:
        return candidates
    only = candidates[0].member if len(candidates) == 1 else None
    since = min(c.step for c in candidates) - window
    recent: dict[int, list[tuple[int, float]]] = {}
    for member, step, score in storage.scores_since(population_id, since, only):
        recent.setdefault(member, []).append((step, mode.fitness(score)))
    return [
        replace(
            c,
            history=tuple(
                f for step, f in recent.get(c.member, ()) if c.step - window < step <= c.step
            ),
        )
        for c in candidates
    ]


class Peers(Sequence[Candidate], ABC):
    """The candidates at ``me``'s step (``me`` among them), in member-id order.

    Each accessor reads only what it answers; iterating reads every candidate once.
    """

    me: Candidate

    @property
    @abstractmethod
    def finite(self) -> int:
        """How many candidates have a finite score (fitness above ``-inf``)."""

    @abstractmethod
    def rank(self, member: Candidate) -> int:
        """How many other candidates rank above ``member`` (0: it is the best), judged by its
        ``fitness`` and member id."""

    @abstractmethod
    def position(self, member: int) -> int:
        """How many other candidates have a lower member id than ``member``."""

    @abstractmethod
    def best(self, k: int) -> Candidate:
        """The ``k``-th best candidate (0: the best); ``IndexError`` past the last."""

    @abstractmethod
    def _at(self, index: int) -> Candidate:
        """The ``index``-th candidate by member id, ``0 <= index < len(self)``."""

    @abstractmethod
    def _everyone(self) -> list[Candidate]:
        """Every candidate, by member id."""

    @overload
    def __getitem__(self, index: int) -> Candidate: ...

    @overload
    def __getitem__(self, index: slice) -> list[Candidate]: ...

    def __getitem__(self, index: int | slice) -> Candidate | list[Candidate]:
        """The ``index``-th candidate by member id (a slice reads everyone)."""
        if isinstance(index, slice):
            return self._everyone()[index]
        size = len(self)
        if not -size <= index < size:
            raise IndexError(f"Peers index {index} is out of range for {size} candidates.")
        return self._at(index % size)

    def __iter__(self) -> Iterator[Candidate]:
        """Every candidate, by member id (one read of everyone)."""
        return iter(self._everyone())

    def others(self) -> int:
        """How many candidates other than ``me`` there are."""
        return len(self) - 1

    def other(self, k: int) -> Candidate:
        """The ``k``-th candidate other than ``me``, by member id (``0 <= k < others()``)."""
        if not 0 <= k < self.others():
            raise IndexError(f"There is no other candidate number {k}: {self.others()} in all.")
        return self[k if k < self.position(self.me.member) else k + 1]


class ListPeers(Peers):
    """Peers held in a list: ``me`` plus every candidate of ``population`` that is not ``me``."""

    def __init__(self, population: Iterable[Candidate], me: Candidate) -> None:
        others = [c for c in population if c.member != me.member]
        self.me = me
        self._members = sorted([*others, me], key=lambda c: c.member)
        self._ranked: list[Candidate] | None = None
        self._keys: list[tuple[float, int]] = []  # rank keys of _ranked, for bisect
        self._key_of: dict[int, tuple[float, int]] = {}

    def seen_by(self, me: Candidate) -> ListPeers:
        """The same peers as ``me`` sees them, sharing the sorting done so far (a block asks
        for every member it holds); ``me`` must be one of the candidates, else the peers are
        built anew as ``ListPeers(self, me)`` would be."""
        if not any(c is me for c in self._members):
            return ListPeers(self._members, me)
        self._ranking()  # sorted once, here, for every copy
        peers = copy.copy(self)
        peers.me = me
        return peers

    def __len__(self) -> int:
        """How many candidates there are."""
        return len(self._members)

    @property
    def finite(self) -> int:
        """How many candidates have a finite score."""
        return sum(c.fitness > -math.inf for c in self._members)

    def rank(self, member: Candidate) -> int:
        """How many other candidates rank above ``member`` (a search in the ranking, sorted
        once: a block asks this of every member it holds)."""
        self._ranking()
        key = rank_key(member.fitness, member.member)
        above = bisect.bisect_left(self._keys, key)
        own = self._key_of.get(member.member)  # the member's own entry is not another
        return above - (own is not None and own < key)

    def position(self, member: int) -> int:
        """How many other candidates have a lower member id than ``member``."""
        return sum(c.member < member for c in self._members)

    def best(self, k: int) -> Candidate:
        """The ``k``-th best candidate."""
        ranked = self._ranking()
        if not 0 <= k < len(ranked):
            raise IndexError(f"There is no candidate ranked {k}: {len(ranked)} in all.")
        return ranked[k]

    def _ranking(self) -> list[Candidate]:
        """The candidates best first (:func:`rank_key`), with their keys, sorted once."""
        if self._ranked is None:
            self._ranked = sorted(self._members, key=lambda c: rank_key(c.fitness, c.member))
            self._keys = [rank_key(c.fitness, c.member) for c in self._ranked]
            self._key_of = {c.member: rank_key(c.fitness, c.member) for c in self._members}
        return self._ranked

    def _at(self, index: int) -> Candidate:
        return self._members[index]

    def _everyone(self) -> list[Candidate]:
        return list(self._members)

    def __repr__(self) -> str:
        return f"ListPeers({len(self)} candidates, me={self.me.member})"


def as_peers(population: Sequence[Candidate], member: Candidate) -> Peers:
    """``population`` as the peers of ``member``: itself if it already is (as the worker passes
    it), else a :class:`ListPeers` of ``member`` and the other candidates."""
    if isinstance(population, Peers) and population.me == member:
        return population
    return ListPeers(population, member)


class StoredPeers(Peers):
    """Peers read from the storage as a strategy asks: a count query for ``len``, ``finite``,
    ``rank`` and ``position``, one row for ``peers[i]`` or ``best(k)``, everyone only when
    iterated. With ``history`` > 0 every candidate handed out carries the fitness of its last
    ``history`` intervals (what ``TTest`` compares), read for that member alone.

    Answers are live: a candidate recorded meanwhile may shift a later one by a place, as a
    list read a moment later would. If candidates disappear (a member failed) so that a row
    the counts promised is not there, :class:`PeersChanged` is raised.
    """

    def __init__(
        self,
        storage: Storage,
        population_id: int,
        me: Candidate,
        mode: Mode,
        history: int = 0,
    ) -> None:
        self.storage = storage
        self.population_id = population_id
        self.step = me.step
        self.mode = mode
        self.history = history
        self._counts: PeerCounts | None = None
        self._cache: list[Candidate] | None = None
        self.me = self._with_history(me)

    @classmethod
    def open(
        cls, storage: Storage, population_id: int, member: int, step: int, mode: Mode,
        history: int = 0,
    ) -> StoredPeers | None:  # fmt: skip
        """The peers of ``member`` at ``step``, or ``None`` if it is not a candidate there
        (it failed, or its checkpoint was dropped)."""
        row = storage.peer(population_id, step, member)
        if row is None:
            return None
        return cls(storage, population_id, cls._candidate(row, mode), mode, history)

    @staticmethod
    def _candidate(row: tuple[int, int, float | None], mode: Mode) -> Candidate:
        member, step, score = row
        return Candidate(member, step, score, mode.fitness(score))

    @property
    def counts(self) -> PeerCounts:
        """Where ``me`` stands (one count query, made on first use)."""
        if self._counts is None:
            counts = self._count(self.me)
            if counts.size == 0:  # ``me`` was a candidate when opened: it is gone, with all
                # the others (a worker paused past its lease while the rest moved on and
                # collected the step): no count may say -1 others (simulation seed 677)
                raise PeersChanged(
                    f"Member {self.me.member} is no longer a candidate at step {self.step}: "
                    "the population changed while its peers were read."
                )
            self._counts = counts
        return self._counts

    def _count(self, member: Candidate) -> PeerCounts:
        return self.storage.peer_counts(
            self.population_id, self.step, self.mode, member.member, member.fitness
        )

    def __len__(self) -> int:
        """How many candidates there are."""
        return self.counts.size

    @property
    def finite(self) -> int:
        """How many candidates have a finite score."""
        return self.counts.finite

    def rank(self, member: Candidate) -> int:
        """How many other candidates rank above ``member``."""
        if member == self.me:
            return self.counts.better
        return self._count(member).better

    def position(self, member: int) -> int:
        """How many other candidates have a lower member id than ``member``."""
        if member == self.me.member:
            return self.counts.before
        return self._count(Candidate(member, self.step, None, -math.inf)).before

    def best(self, k: int) -> Candidate:
        """The ``k``-th best candidate (one row)."""
        return self._row(k, self.mode)

    def _at(self, index: int) -> Candidate:
        return self._row(index, None)

    def _row(self, index: int, mode: Mode | None) -> Candidate:
        if index < 0:
            raise IndexError(f"There is no candidate number {index}.")
        found: Candidate | None = None
        if self._cache is not None:  # everyone was read: answer from that
            ordered = self._cache
            if mode:
                ordered = sorted(ordered, key=lambda c: rank_key(c.fitness, c.member))
            found = ordered[index] if index < len(ordered) else None
        else:
            row = self.storage.peer_at(self.population_id, self.step, index, mode)
            found = None if row is None else self._with_history(self._candidate(row, self.mode))
        if found is not None:
            return found
        if index < len(self):
            raise PeersChanged(
                f"Candidate {index} of step {self.step} is gone: the population changed while "
                "its peers were read."
            )
        raise IndexError(f"There is no candidate number {index}: {len(self)} in all.")

    def _everyone(self) -> list[Candidate]:
        if self._cache is None:
            rows = self.storage.candidate_scores(self.population_id, self.step)
            everyone = [self._candidate(row, self.mode) for row in rows]
            self._cache = self._histories(everyone)
        return list(self._cache)

    def _with_history(self, candidate: Candidate) -> Candidate:
        return self._histories([candidate])[0]

    def _histories(self, candidates: list[Candidate]) -> list[Candidate]:
        return with_history(candidates, self.storage, self.population_id, self.mode, self.history)

    def __repr__(self) -> str:
        return (
            f"StoredPeers(population {self.population_id}, step {self.step}, me={self.me.member})"
        )
