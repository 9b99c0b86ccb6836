"""Members kept in memory by a worker between intervals.

A worker that trains a member keeps its trainable alive (a :class:`Session`), so that the next
interval of the same member continues in memory: no rebuild, no reload from disk. Each live
member remembers which committed checkpoint its weights equal (``holds``); the worker reuses it
only when that is exactly the checkpoint the member restores from, so a member that moved to
another worker and came back, or whose interval was lost, is reloaded rather than trusted.

How many members a worker keeps is bounded (``resident``); the least recently used is dropped
first (its weights are safe in its checkpoint).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ._validation import check_int
from .loop import LoopSession
from .records import CheckpointRef
from .trainable import seed_globals

__all__ = ["ClassSession", "LiveMember", "LiveMembers", "Session", "open_session"]


log = logging.getLogger("poptune")

#: How long a stopping worker waits for training functions to return (their code after the
#: loop, e.g. a final save), in all; then it stops without them, with a warning.
FUNCTION_EXIT_SECONDS = 60.0


class Session(Protocol):
    """One member's training, alive in a worker: what the worker calls between intervals."""

    def load(self, state: Any) -> None:
        """Replace the weights with ``state`` (a donor's after an exploit, or a checkpoint)."""
        ...

    def step(self, hparams: Mapping[str, Any], seed: int, step: int) -> Any:
        """Train interval ``step`` with ``hparams`` and ``seed``; return the metrics."""
        ...

    def state(self) -> Any:
        """The state to checkpoint after the interval just trained."""
        ...

    def close(self) -> None:
        """Release what the session holds (threads, devices); it is not used again."""
        ...

    def wait_closed(self, timeout: float) -> bool:
        """After :meth:`close`, wait up to ``timeout`` seconds for the member's code to end;
        whether it did."""
        ...


class ClassSession:
    """A :class:`~poptune.Trainable` instance: built once, then trained interval after interval.

    Before every interval it calls the instance's ``reseed(seed)`` (by default: seed Python's,
    NumPy's and torch's global generators), so an interval's randomness depends on the member
    and step only, not on whether the instance was kept or rebuilt.
    """

    def __init__(self, trainable: type, hparams: Mapping[str, Any], seed: int) -> None:
        self.instance = trainable(dict(hparams), seed)

    def load(self, state: Any) -> None:
        """``load_state_dict(state)``."""
        self.instance.load_state_dict(state)

    def step(self, hparams: Mapping[str, Any], seed: int, step: int) -> Any:
        """``reseed(seed)``, ``train(hparams)``, then ``evaluate()``."""
        reseed = getattr(self.instance, "reseed", None)
        if callable(reseed):
            reseed(seed)
        else:  # a duck-typed class without the Trainable base
            seed_globals(seed)
        self.instance.train(dict(hparams))
        return self.instance.evaluate()

    def state(self) -> Any:
        """``state_dict()``; ``None`` is refused (a forgotten ``return``): it would be
        checkpointed, and fail only in the ``load_state_dict`` of the member that copies it."""
        state = self.instance.state_dict()
        if state is None:
            raise TypeError(
                f"{type(self.instance).__name__}.state_dict() returned None: return the state "
                "to checkpoint (e.g. a dict of arrays or tensors), which load_state_dict() "
                "takes back."
            )
        return state

    def close(self) -> None:
        """Drop the instance."""
        self.instance = None

    def wait_closed(self, timeout: float) -> bool:
        """Nothing runs once the instance is dropped."""
        return True


def open_session(trainable: Any, hparams: Mapping[str, Any], seed: int, member: int) -> Session:
    """Start a member's session: build the instance of a Trainable class, or start a training
    function (:mod:`poptune.loop`) on its own thread."""
    if isinstance(trainable, type):
        return ClassSession(trainable, hparams, seed)
    return LoopSession(trainable, hparams, seed, member)


@dataclass
class LiveMember:
    """A member's session in this worker, and the committed checkpoint its weights equal.

    ``holds`` is ``None`` while the weights are ahead of every committed checkpoint (trained,
    not yet saved) or were never saved; such a member is reused only once its checkpoint is
    written and committed.
    """

    member: int
    session: Session
    holds: CheckpointRef | None = None


class LiveMembers:
    """At most ``resident`` live members, least recently used dropped first.

    Only the worker's own threads use it: the loop gets, adds and drops members; the background
    writer sets ``holds`` of a member that the loop does not touch until its record commits, and
    drops a member whose record failed.
    """

    def __init__(self, resident: int) -> None:
        self.resident = check_int("resident", resident, 1, owner="LiveMembers")
        self._members: OrderedDict[int, LiveMember] = OrderedDict()
        self._lock = threading.Lock()
        # Members let go whose training function may still be running its code after the loop.
        self._ending: list[LiveMember] = []

    def get(self, member: int) -> LiveMember | None:
        """The live member, marked as most recently used, or ``None``."""
        with self._lock:
            live = self._members.get(member)
            if live is not None:
                self._members.move_to_end(member)
            return live

    def peek(self, member: int) -> LiveMember | None:
        """The live member, without marking it as used, or ``None``."""
        with self._lock:
            return self._members.get(member)

    def add(self, live: LiveMember) -> None:
        """Keep ``live`` (replacing the member's previous session), dropping the least recently
        used members beyond ``resident``."""
        closing = []
        with self._lock:
            previous = self._members.pop(live.member, None)
            if previous is not None:
                closing.append(previous)
            self._members[live.member] = live
            while len(self._members) > self.resident:
                closing.append(self._members.popitem(last=False)[1])
        for old in closing:
            self._close(old)

    def drop(self, member: int) -> None:
        """Forget a member (after a failure, or when it is no longer trusted)."""
        with self._lock:
            live = self._members.pop(member, None)
        if live is not None:
            self._close(live)

    def ids(self) -> list[int]:
        """The members held."""
        with self._lock:
            return list(self._members)

    def preferred(self, floor: int = 0, limit: int = 64) -> list[tuple[int, int]]:
        """The members to prefer when claiming, as ``(member, step)`` pairs: each member held
        at a committed checkpoint of its own at step ``floor`` or later, with that step, least
        advanced first, at most ``limit`` of them (so that a claim's cost stays bounded
        whatever a worker holds).

        The storage prefers a member only at the step held, so a copy that another worker has
        trained past since is not preferred (it would be reloaded anyway). Were the held members
        preferred by id alone, such stale copies would win ties against the members a worker
        holds current, and members would change workers at almost every interval.

        ``floor`` is the step of the member the worker claimed last. A claim takes the
        least-advanced claimable member, so a member below that step was not claimable then:
        nearly always training elsewhere, so that its copy here is stale or soon will be (else
        finished, or still being recorded by this worker's writer: then only a tie's preference
        is lost). Leaving those out keeps stale copies from filling the ``limit``."""
        with self._lock:
            held = [
                (m, live.holds.step)
                for m, live in self._members.items()
                if live.holds is not None and live.holds.member == m and live.holds.step >= floor
            ]
        return sorted(held, key=lambda pair: (pair[1], pair[0]))[:limit]

    def _close(self, live: LiveMember) -> None:
        live.session.close()
        with self._lock:
            self._ending = [e for e in self._ending if not e.session.wait_closed(0.0)]
            self._ending.append(live)

    def close(self, wait: float = 0.0) -> None:
        """Drop every member. With ``wait``, give the training functions of every member let
        go up to that many seconds in all to return, so that code after a function's loop runs
        before the worker stops (its thread would otherwise end with the process)."""
        for member in self.ids():
            self.drop(member)
        with self._lock:
            ending, self._ending = self._ending, []
        deadline = time.monotonic() + wait
        for live in ending if wait > 0 else ():
            if not live.session.wait_closed(max(0.0, deadline - time.monotonic())):
                log.warning(
                    "The training function of member %d had not returned %.0f s after its last "
                    "interval; the worker stops without waiting for it.",
                    live.member,
                    wait,
                )
