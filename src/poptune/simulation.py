"""Deterministic simulation: many real workers, one seeded scheduler, a virtual clock, faults.

:func:`simulate` runs one population per seed. Every worker is the real
:class:`~poptune.worker.Worker` (a :class:`~poptune.blocks.BlockWorker` for a block population)
over a real storage (a :class:`~poptune.testing.MemoryStorage`, SQLite, or PostgreSQL), but no
two of its pieces ever run at once: each worker's loop, its checkpoint writer and its training
functions' threads (see :data:`KINDS`) run on threads that stop before every storage and
checkpoint call (a function: when it waits for its next interval, and before it trains) until
the scheduler, drawing from ``random.Random(seed)``, picks one again. Leases, heartbeats and
garbage collection run on the scheduler's own thread, against a virtual clock. So one seed is
one interleaving, replayed exactly, and between two steps the scheduler may inject a fault:

- ``crash``: a worker's process dies: nothing in its memory survives, nothing it holds is
  released, its leases expire;
- ``pause``: a worker stops past its lease (a long GC, a suspended VM), then continues: a stale
  writer that fencing must refuse;
- ``lost_reply``, ``error_before``, ``error_after``: the worker's next write commits and its
  reply is lost (the storage retries it), or fails for good before or after its commit (the
  worker dies with the error);
- ``corrupt``, ``remove``: a committed checkpoint's file is damaged or deleted;
- ``skew``: a worker's clock runs slow or fast, so its heartbeats come late or early;
- ``restart``: a worker is killed and a fresh one (new objects, new storage connection) joins;
  when every worker is gone, the population is resumed (:func:`poptune.resume`) by a fresh one;
- ``raise`` (training functions only): the function raises in its next interval;
- ``steal`` (blocks only): a worker holding a block pauses past its lease while a worker that
  claims one member at a time joins, so that part of the block moves.

After every recorded interval, and once the run is over, the invariants of
:class:`SimulationResult` are checked; a violation carries the seed and the steps that led to it.

Example:
    >>> from poptune.simulation import simulate
    >>> report = simulate(range(3))
    >>> report.violations
    []
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import random
import shutil
import tempfile
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import numpy as np

from . import loop
from .blocks import BlockWorker
from .checkpoints import CheckpointStore, open_checkpoints
from .errors import PopulationError
from .loop import BlockContext, Context
from .population import load, run
from .records import Candidate, CheckpointRef, IntervalRecord, PopulationStatus
from .runspec import WorkerTarget
from .seeding import TRAIN, derive_seed
from .space import Choice, Uniform
from .storage import Copy, Recording, SQLStorage, Storage, StorageError
from .storage._memory import MemoryStorage
from .strategies.exploit import Tournament, Truncation, TTest
from .strategies.explore import Perturb, Resample
from .strategies.pb2 import PB2
from .strategies.ready import Every
from .strategies.stop import Plateau, Target
from .trainable import Trainable
from .worker import Worker
from .writer import BackgroundWriter

__all__ = [
    "FAULTS",
    "SimTrainable",
    "SimulationReport",
    "SimulationResult",
    "Violation",
    "sim_block_function",
    "sim_function",
    "simulate",
    "simulate_one",
]

log = logging.getLogger("poptune")

#: The faults the scheduler injects, by name (see the module docstring).
FAULTS = (
    "crash",
    "pause",
    "lost_reply",
    "error_before",
    "error_after",
    "corrupt",
    "remove",
    "skew",
    "restart",
)
#: Faults injected into block populations only: ``steal`` pauses a worker that holds a block
#: past its lease and starts one that claims a member at a time, so that a part of the block
#: moves and the stale worker's block write must be refused for those members only.
BLOCK_FAULTS = ("steal",)
#: Faults injected where members are training functions (blocks, and one member's function):
#: ``raise`` makes the function raise in its next interval (the worker records the failure of
#: every member it was training and retries them from their checkpoints).
FUNCTION_FAULTS = ("raise",)
#: Storage calls that write: the ones a storage fault lands on.
WRITES = frozenset(
    {
        "claim",
        "claim_block",
        "release",
        "record_interval",
        "record_intervals",
        "record_exploit",
        "record_exploits",
        "record_failure",
        "discard_checkpoint",
        "set_status",
        "stop",
        "release_claims",
    }
)
#: What a seed's members are, by ``seed % 5``: a Trainable class (``member``), a block of a
#: training function (``block``, see :mod:`poptune.blocks`), or one member's training function
#: (``function``, see :mod:`poptune.loop`).
KINDS = ("block", "member", "member", "function", "block")
LEASE_SECONDS = 30.0  # virtual seconds
START = 1_000_000_000.0  # the virtual clock's start (seconds since the epoch, as for a real one)


class SimTrainable(Trainable):
    """The simulated member: a small vector pulled towards a target, and what it trained.

    Its state holds ``trained``, the number of intervals behind its weights, ``trail``, the
    seed of every interval they trained (a seed names one member's one step), and ``parent``,
    a digest of the weights the last interval started from: the simulator checks that every
    checkpoint continues exactly the checkpoint its interval started from.
    """

    def __init__(self, hparams: Mapping[str, Any], seed: int) -> None:
        self.w = np.array([1.0, -1.0, 0.5])
        self.trained = 0
        self.trail: list[int] = []
        self.seed = seed
        self.parent = 0

    def reseed(self, seed: int) -> None:
        """Remember the interval's seed (its noise, and its entry in the trail)."""
        self.seed = seed

    def train(self, hparams: Mapping[str, Any]) -> None:
        """One step towards the target, at rate ``lr``, with a little seeded noise."""
        self.parent = _digest(self.state_dict())
        noise = np.random.default_rng(self.seed).normal(0.0, 0.05, size=3)
        scale = 1.0 if hparams["shape"] == "round" else 0.5
        self.w = self.w + float(hparams["lr"]) * scale * (np.array([0.2, 0.1, -0.3]) - self.w)
        self.w = self.w + noise
        self.trained += 1
        self.trail.append(self.seed)
        actor = _ACTORS.get(threading.current_thread())
        if actor is not None:  # the interval's training time, on its worker's training clock
            actor.slot.trained_seconds += interval_seconds(self.seed)

    def evaluate(self) -> dict[str, float]:
        """``score`` (higher is better) and ``trained``."""
        return {
            "score": -float(np.sum((self.w - np.array([0.2, 0.1, -0.3])) ** 2)),
            "trained": float(self.trained),
        }

    def state_dict(self) -> dict[str, Any]:
        """The weights, and what they trained."""
        return {
            "w": self.w.copy(),
            "trained": self.trained,
            "trail": list(self.trail),
            "parent": self.parent,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state``."""
        self.w = np.array(state["w"], dtype=float)
        self.trained = int(state["trained"])
        self.trail = [int(s) for s in state["trail"]]
        self.parent = int(state.get("parent", 0))


def interval_seconds(seed: int) -> float:
    """How long the simulated interval of ``seed`` trains, in virtual seconds: 0.5 to 2.0,
    drawn from the seed alone, so that the simulator knows every interval's time."""
    return random.Random(seed).uniform(0.5, 2.0)


def sim_space() -> dict[str, Any]:
    """The simulated member's space: a rate and a categorical choice."""
    return {"lr": Uniform(0.05, 0.9), "shape": Choice(["round", "flat"])}


def sim_function(ctx: Context) -> None:
    """The simulated member as a training function (:mod:`poptune.loop`): the same weights
    and trail as :class:`SimTrainable`, kept in memory by its own loop."""
    member = SimTrainable(ctx.hparams, ctx.seed)
    for interval in ctx.intervals():
        _stop_here(f"member {interval.member} step {interval.step} trains")
        if interval.state is not None:
            _check_handed(interval.member, interval.step, interval.state)
            member.load_state_dict(interval.state)
        member.reseed(interval.seed)
        member.train(interval.hparams)
        interval.report(member.evaluate(), state=member.state_dict())
    _stop_here("code after the loop")


def sim_block_function(ctx: BlockContext) -> None:
    """The simulated members as a block's training function (``block=N``, see
    :mod:`poptune.blocks`): one :class:`SimTrainable` per member of the block, trained
    together one block interval at a time."""
    members = [SimTrainable(hparams, ctx.seed) for hparams in ctx.hparams]
    for block in ctx.intervals():
        _stop_here(f"block {list(ctx.members)} step {block[0].step} trains")
        for member, interval in zip(members, block, strict=True):
            if interval.state is not None:
                _check_handed(interval.member, interval.step, interval.state)
                member.load_state_dict(interval.state)
            member.reseed(interval.seed)
            member.train(interval.hparams)
        block.report(
            [member.evaluate() for member in members],
            states=[member.state_dict() for member in members],
        )
    _stop_here("code after the loop")


def _digest(state: Mapping[str, Any]) -> int:
    """What identifies a simulated state's content: its weights and what they trained."""
    weights = np.asarray(state["w"], dtype=float).tobytes()
    return hash((weights, int(state["trained"]), tuple(int(s) for s in state["trail"])))


def _stop_here(what: str) -> None:
    """On a training function's thread in a simulation: let the scheduler pick who runs next
    (and raise, if the scheduler armed a ``raise`` fault)."""
    actor = _ACTORS.get(threading.current_thread())
    if actor is None:
        return
    actor.park(f"{actor.name}: {what}")
    if actor.slot.raise_next and what.endswith("trains"):
        actor.slot.raise_next = False
        actor.sim.note(f"  fault raise in {actor.name}")
        raise RuntimeError(f"simulated: the training function raised ({what})")


def _check_handed(member: int, step: int, state: Mapping[str, Any]) -> None:
    """A state handed to a training function (a checkpoint read back, or a donor's state
    handed over from memory) must equal a checkpoint that was saved with the same trail."""
    actor = _ACTORS.get(threading.current_thread())
    if actor is None:
        return
    trail = tuple(int(s) for s in state["trail"])
    if _digest(state) not in actor.sim.digests.get(trail, ()):
        actor.sim.violate(
            "handover",
            f"member {member} at step {step} was handed a state (trained {state['trained']}) "
            "that equals no checkpoint saved with its trail",
        )


# --- results --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Violation:
    """An invariant that did not hold in the run of ``seed``: what, and the steps before it."""

    seed: int
    invariant: str
    message: str
    trace: tuple[str, ...]

    def __str__(self) -> str:
        steps = "\n".join(self.trace[-60:])
        return (
            f"seed {self.seed}: {self.invariant}: {self.message}\n"
            f"(re-run: simulate_one({self.seed}); the last steps:)\n{steps}"
        )


@dataclass
class SimulationResult:
    """One seed's run: its settings, the faults injected, how it ended, what was violated.

    The invariants: every member reaches the budget or the population stops with a recorded
    reason (``ended``); no (member, step) is recorded twice (``duplicate``); every interval's
    weights trained exactly ``step`` intervals (``trained``); every interval continues the
    checkpoint at ``step - 1`` that its origin names (``origin``), or, with
    ``checkpoint_every=k``, the interval at ``step - 1`` recorded with it: a member's intervals
    since its last checkpoint (fewer than k) are recorded together with the checkpoint that
    follows them, the first continuing a committed checkpoint at its ``step - 1`` and each
    other the one before it, and that checkpoint's weights trained exactly the whole chain; no
    exploit copies a donor without a committed checkpoint (``donor``); no score without its
    checkpoint, or (``checkpoint_every``) without the checkpoint recorded in the same
    transaction that persists its training, and (a duration) less than it trained before that
    checkpoint, which was due (``checkpoint``); no file the storage refers to is
    missing, unless the simulator removed it (``missing``); no dead worker's lease outlives
    ``lease_seconds`` (``lease``); a synchronous run equals the uninterrupted run (``sync``); a
    worker ends only as documented (``worker``); nothing hangs (``hang``).
    """

    seed: int
    settings: dict[str, Any]
    faults: Counter[str] = field(default_factory=Counter)
    steps: int = 0
    status: str = ""
    violations: list[Violation] = field(default_factory=list)
    #: every step the scheduler took, and what it injected: the same for the same seed
    trace: list[str] = field(default_factory=list)


@dataclass
class SimulationReport:
    """Many seeds' runs: how many (by kind of member), the faults injected by kind, the
    violations, the time."""

    seeds: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    violations: list[Violation] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0

    def add(self, result: SimulationResult) -> None:
        """Count one seed's run."""
        self.seeds += 1
        self.kinds[result.settings.get("kind", "member")] += 1
        self.faults.update(result.faults)
        self.statuses[result.status] += 1
        self.violations.extend(result.violations)
        self.steps += result.steps


# --- the scheduler's threads ------------------------------------------------------------------


class _Crashed(BaseException):
    """The simulated process died: unwinds its threads without running anything on the way
    (a ``BaseException``, so no ``except Exception`` of the worker catches it)."""


class _Actor:
    """One thread of a simulated worker (its loop, its checkpoint writer, or a training
    function's) that runs only between two of the scheduler's :meth:`step` calls."""

    def __init__(
        self,
        sim: _Simulation,
        slot: _Slot,
        name: str,
        body: Callable[[], Any],
        function: bool = False,
    ) -> None:
        self.sim, self.slot, self.name, self.body = sim, slot, name, body
        self.function = function
        self.go = threading.Event()
        self.parked = threading.Event()
        self.done = False
        self.error: BaseException | None = None
        self.crashed = False
        self.until: Callable[[], bool] | None = None
        self.pending = f"{name}: start"
        self.thread = threading.Thread(target=self._main, name=f"sim-{name}", daemon=True)
        sim.actors.append(self)
        sim.by_thread[self.thread] = self
        _ACTORS[self.thread] = self
        self.thread.start()

    def _main(self) -> None:
        self.go.wait()
        self.go.clear()
        try:
            if not self.crashed:
                self.body()
        except _Crashed:
            pass
        except BaseException as error:
            self.error = error
        finally:
            self.done = True
            self.parked.set()

    def runnable(self) -> bool:
        return not self.done and (self.until is None or self.until())

    def park(self, what: str, until: Callable[[], bool] | None = None) -> None:
        """Called on this actor's thread: wait for the scheduler (and ``until``) to go on."""
        if self.crashed:
            raise _Crashed
        self.pending, self.until = what, until
        self.parked.set()
        self.go.wait()
        self.go.clear()
        self.until = None
        if self.crashed:
            raise _Crashed

    def step(self) -> None:
        """Called by the scheduler: run this actor to its next stop."""
        self.parked.clear()
        self.go.set()
        if not self.parked.wait(60.0):
            raise RuntimeError(f"simulated thread {self.name} did not stop within 60 s")


#: every simulated thread's actor (a training function finds its simulation here)
_ACTORS: weakref.WeakKeyDictionary[threading.Thread, _Actor] = weakref.WeakKeyDictionary()


class _SimCondition:
    """A training function's condition, for threads only one of which runs at a time: a wait
    stops the thread until the scheduler picks it after a notification."""

    def __init__(self, sim: _Simulation, name: str) -> None:
        self.sim, self.name = sim, name
        self.notified = 0

    def __enter__(self) -> _SimCondition:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def notify_all(self) -> None:
        self.notified += 1

    def wait(self, timeout: float | None = None) -> bool:
        seen = self.notified
        self.sim.wait(f"{self.name} waits", lambda: self.notified != seen)
        return True


class _SimThread:
    """A training function's thread, as a simulated one (an :class:`_Actor` once started)."""

    def __init__(self, sim: _Simulation, slot: _Slot, name: str, target: Callable[[], None]):
        self.sim, self.slot, self.name, self.target = sim, slot, name, target
        self.actor: _Actor | None = None

    def start(self) -> None:
        self.actor = _Actor(self.sim, self.slot, self.name, self.target, function=True)

    def is_alive(self) -> bool:
        return self.actor is not None and not self.actor.done

    def join(self, timeout: float | None = None) -> None:
        actor = self.actor
        if actor is None or (timeout is not None and timeout <= 0):
            return
        if self.sim.current() is not None:  # a worker's thread waits for the function to end
            self.sim.wait(f"waits for {self.name} to return", lambda: actor.done)


class _SimThreads(loop.Threads):
    """The threads of the training functions a simulated worker starts are simulated ones;
    any other thread's are real (see :class:`poptune.loop.Threads`)."""

    def condition(self) -> threading.Condition:
        actor = _ACTORS.get(threading.current_thread())
        if actor is None:
            return super().condition()
        return cast(threading.Condition, _SimCondition(actor.sim, f"w{actor.slot.index}.fn"))

    def thread(self, target: Callable[[], None], name: str) -> threading.Thread:
        actor = _ACTORS.get(threading.current_thread())
        if actor is None:
            return super().thread(target, name)
        short = name.removeprefix("poptune-")
        return cast(
            threading.Thread,
            _SimThread(actor.sim, actor.slot, f"w{actor.slot.index}.{short}", target),
        )


@contextlib.contextmanager
def _simulated_functions() -> Iterator[None]:
    """While simulating: training functions started by simulated workers run on simulated
    threads."""
    real = loop.threads
    loop.threads = _SimThreads()
    try:
        yield
    finally:
        loop.threads = real


class _SimWriter(BackgroundWriter):
    """The worker's checkpoint writer as a simulated thread: same contract as
    :class:`~poptune.writer.BackgroundWriter` (one job waits behind the running one)."""

    def __init__(self, sim: _Simulation, slot: _Slot) -> None:  # no thread of its own
        self.sim, self.slot = sim, slot
        self.queue: deque[Callable[[], None]] = deque()
        self.running = False
        self.closed = False
        self._error: BaseException | None = None
        self.actor = _Actor(sim, slot, f"w{slot.index}.writer", self._run)

    def submit(self, job: Callable[[], None]) -> None:
        self.check()
        self.sim.wait("writer: submit waits for room", lambda: not self.queue)
        self.queue.append(job)

    def flush(self) -> None:
        if self.sim.current() is not self.actor:
            self.sim.wait("writer: flush waits", self.idle)
        self.check()

    def idle(self) -> bool:
        return not self.queue and not self.running

    def close(self, timeout: float | None = None) -> bool:
        self.sim.wait("writer: close waits", self.idle)
        self.closed = True
        self.check()
        return True

    def _run(self) -> None:
        while True:
            self.sim.wait("writer: idle", lambda: bool(self.queue) or self.closed)
            if not self.queue:
                return
            job = self.queue.popleft()
            self.running = True
            try:
                if self._error is None:
                    job()
            except _Crashed:
                raise
            except BaseException as error:
                self._error = error
            finally:
                self.running = False


def _describe(name: str, args: tuple[Any, ...]) -> str:
    """A storage or checkpoint call, short, for the trace."""
    shown = []
    for arg in args[:3]:
        if hasattr(arg, "token") and hasattr(arg, "member"):
            shown.append(f"member {arg.member.id}@{arg.member.step} token {arg.token}")
        elif isinstance(arg, IntervalRecord):
            shown.append(f"interval ({arg.member}, {arg.step}) from {arg.origin}")
        elif isinstance(arg, CheckpointRef):
            shown.append(f"ckpt ({arg.member}, {arg.step})")
        elif isinstance(arg, (int, float, str, bool)) and not isinstance(arg, str):
            shown.append(repr(arg))
        elif hasattr(arg, "donor"):
            shown.append(f"copy ({arg.member}, {arg.step}) <- ({arg.donor}, {arg.donor_step})")
        elif isinstance(arg, list) and arg and isinstance(arg[0], Recording):
            shown.append(f"intervals {[(r.interval.member, r.interval.step) for r in arg]}")
        elif isinstance(arg, list) and arg and isinstance(arg[0], Copy):
            copies = [
                (c.event.member, c.event.step, c.event.donor, c.event.donor_step) for c in arg
            ]
            shown.append(f"copies (member, step, donor, donor step) {copies}")
    return f"{name}({', '.join(shown)})"


class _StorageProxy:
    """A worker's storage: stops its thread before every call, and injects the armed fault."""

    def __init__(self, sim: _Simulation, slot: _Slot, inner: Storage) -> None:
        self._sim, self._slot, self._inner = sim, slot, inner
        self.url = inner.url

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._inner, name)
        if not callable(method):
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            sim, slot = self._sim, self._slot
            actor = sim.current()
            if actor is None:  # the scheduler's own thread: heartbeats, garbage collection
                return method(*args, **kwargs)
            actor.park(f"{actor.name}: {_describe(name, args)}")
            fault = slot.armed if name in WRITES else None
            if fault is not None:
                slot.armed = None
                sim.note(f"  fault {fault} on w{slot.index}.{name}")
            if fault == "error_before":
                raise StorageError(f"simulated: {name} failed before its commit, for good")
            before = sim.committed_snapshot(name, args)
            result = method(*args, **kwargs)
            if fault == "lost_reply":  # committed; the reply is lost and the call retried
                result = method(*args, **kwargs)
            sim.observe(name, args, result, before, kwargs)
            if fault == "error_after":
                raise StorageError(f"simulated: {name} committed, then its reply was lost")
            return result

        return call


class _CheckpointProxy:
    """A worker's checkpoint store: stops its thread before every call; remembers the trail
    of every state saved."""

    def __init__(self, sim: _Simulation, slot: _Slot, inner: CheckpointStore) -> None:
        self._sim, self._slot, self._inner = sim, slot, inner
        self.url = inner.url

    def save(self, folder: str, member: int, step: int, state: Any) -> CheckpointRef:
        self._park("save", member, step)
        ref = self._inner.save(folder, member, step, state)
        trail = tuple(int(s) for s in state["trail"])
        self._sim.saved[ref.path] = (int(state["trained"]), trail)
        digest = _digest(state)
        self._sim.digests.setdefault(trail, set()).add(digest)
        self._sim.weights[ref.path] = (digest, int(state["parent"]))
        return ref

    def load(self, ref: CheckpointRef) -> Any:
        self._park("load", ref.member, ref.step)
        return self._inner.load(ref)

    def delete(self, ref: CheckpointRef) -> None:
        self._park("delete", ref.member, ref.step)
        self._inner.delete(ref)

    def close(self) -> None:
        self._park("close")
        self._inner.close()

    def _park(self, name: str, *args: int) -> None:
        actor = self._sim.current()
        if actor is not None:
            actor.park(f"{actor.name}: checkpoints.{name}{args}")


@dataclass
class _Slot:
    """One simulated worker process."""

    index: int
    worker: Worker
    storage: Storage  # its own (for SQL: its own connection, as a process has)
    actor: _Actor | None = None
    armed: str | None = None
    rate: float = 1.0  # its clock's speed: its heartbeats come every lease/3 by that clock
    beat: float = 0.0  # seconds of its own clock since its last heartbeat
    paused_until: float | None = None
    dead: bool = False
    died_at: float | None = None
    expect_error: bool = False
    raise_next: bool = False  # its training function raises in its next interval
    #: virtual seconds its members have trained: the clock of its checkpoint policy
    trained_seconds: float = 0.0

    @property
    def alive(self) -> bool:
        return not self.dead and self.actor is not None and not self.actor.done


class _Capture:
    """A runner that starts nothing and keeps what it is handed."""

    target: WorkerTarget

    def run(self, target: Any, storage: Any, checkpoints: Any, on_started: Any = None) -> None:
        self.target = target


# --- one seed ---------------------------------------------------------------------------------


class _Simulation:
    def __init__(
        self,
        seed: int,
        workers: int,
        storage: str,
        folder: Path,
        settings: Mapping[str, Any] | None,
        faults: bool,
        break_guarantee: str | None,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.kind = storage
        self.folder = folder
        self.now = START
        self.actors: list[_Actor] = []
        self.by_thread: dict[threading.Thread, _Actor] = {}
        self.slots: list[_Slot] = []
        self.trace: list[str] = []
        self.saved: dict[str, tuple[int, tuple[int, ...]]] = {}  # path -> (trained, trail)
        self.digests: dict[tuple[int, ...], set[int]] = {}  # trail -> the states saved with it
        self.weights: dict[str, tuple[int, int]] = {}  # path -> (digest, its parent's digest)
        self.paths: dict[tuple[int, int], str] = {}  # (member, step) -> the committed path
        self.committed: dict[tuple[int, int], tuple[int, ...]] = {}  # (member, step) -> trail
        # (member, step) of an interval recorded without a checkpoint of its own -> the
        # checkpoint recorded with it, which persists its training (checkpoint_every)
        self.persisted_by: dict[tuple[int, int], tuple[int, int]] = {}
        self.removed: set[str] = set()
        self.corrupted: set[str] = set()
        self.break_guarantee = break_guarantee
        self.settings = dict(settings) if settings is not None else self._draw(workers)
        self.result = SimulationResult(seed, self.settings)
        self.inject = faults
        self.step_no = 0

    # --- settings -----------------------------------------------------------------------

    def _draw(self, workers: int) -> dict[str, Any]:
        rng = self.rng
        settings: dict[str, Any] = {
            "workers": rng.randint(1, workers),
            "population": rng.randint(2, 5),
            "intervals": rng.randint(2, 5),
            "sync": rng.random() < 0.5,
            "exploit": rng.choice(["truncation", "truncation-half", "tournament", "ttest", None]),
            "explore": rng.choice(["perturb", "perturb", "resample", "pb2"]),
            "period": rng.choice([1, 1, 2]),
            "burn_in": rng.choice([0, 0, 1]),
            "stop": rng.choice([None, None, None, "target", "plateau"]),
            "resident": rng.choice([None, None, 1, 2]),
            "background": rng.random() < 0.5,
            "faults": rng.randint(0, 4),
            # from a generator of its own, so that the draws above and the schedule that
            # follows are those the seed gave before checkpoint_every existed
            "checkpoint_every": random.Random(f"{self.seed}:checkpoint_every").choice(
                [None, None, 2, 3]
            ),
        }
        # Drawn apart, so that the seeds of Trainable classes replay as they did before blocks
        # and functions were simulated.
        kind = KINDS[self.seed % len(KINDS)]
        # A duration (of the virtual seconds of interval_seconds) for half the asynchronous
        # members and functions that drew none, from a generator of its own; with a period of
        # 2 or 3, so that time, not readiness, checkpoints some of their steps.
        timed = random.Random(f"{self.seed}:checkpoint_seconds")
        untimed = settings["checkpoint_every"] is None and not settings["sync"]
        if kind != "block" and untimed and timed.random() < 0.5:
            settings["checkpoint_every"] = timedelta(seconds=timed.choice([1.5, 2.5, 4.0]))
            settings["period"] = timed.choice([2, 3])
        apart = random.Random(f"poptune-sim-block-{self.seed}")
        size = apart.randint(2, settings["population"])
        own = apart.random() < 0.5  # each worker draws its own block size
        return {
            **settings,
            "kind": kind,
            "block": size if kind == "block" else None,
            "own_blocks": own if kind == "block" else None,
            # a block checkpoints every interval (pt.run refuses checkpoint_every with block=)
            "checkpoint_every": None if kind == "block" else settings["checkpoint_every"],
        }

    # --- the actors' side ---------------------------------------------------------------

    def current(self) -> _Actor | None:
        return self.by_thread.get(threading.current_thread())

    def wait(self, what: str, until: Callable[[], bool]) -> None:
        """On an actor's thread: stop, and go on once ``until`` holds (at once, if it does)."""
        actor = self.current()
        if actor is None:
            if not until():
                raise RuntimeError(f"the scheduler's thread cannot wait: {what}")
            return
        while True:
            actor.park(f"{actor.name}: {what}", until)
            if until():
                return

    def note(self, line: str) -> None:
        self.trace.append(line)

    # --- what the storage committed -----------------------------------------------------

    def committed_snapshot(self, name: str, args: tuple[Any, ...]) -> Any:
        if name == "record_exploit":
            event = args[1]
            return self._inner.checkpoint(self.pid, event.donor, event.donor_step)
        if name == "record_exploits":
            donors = [(c.event.donor, c.event.donor_step) for c in args[0]]
            return [self._inner.checkpoint(self.pid, *donor) for donor in donors]
        return None

    def observe(
        self,
        name: str,
        args: tuple[Any, ...],
        result: Any,
        before: Any,
        kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        """Check what a storage call that returned just committed."""
        if name == "record_interval":
            self._check_interval(args[1], args[2], (kwargs or {}).get("earlier", ()))
            if self.break_guarantee == "delete_after_commit":  # on purpose: see simulate_one
                with contextlib.suppress(OSError):
                    (Path(self._checkpoint_root()) / args[2].path).unlink()
        elif name == "record_exploit" and result is not None:
            self._check_copy(args[1], result, before)
        elif name == "record_intervals":
            self._check_block(args[0], result)
        elif name == "record_exploits":
            for copy, ref, row in zip(args[0], result, before, strict=True):
                if ref is not None:
                    self._check_copy(copy.event, ref, row)

    def _check_copy(self, event: Any, result: Any, before: Any) -> None:
        key = (event.donor, event.donor_step)
        if before is None or key not in self.committed:
            self.violate("donor", f"copy {event} returned {result} but the donor had no checkpoint")

    def _check_block(self, recordings: list[Recording], refused: list[int]) -> None:
        """A block's intervals, recorded in one call: each member's is checked as one
        member's; a member refused (its claim lost) must have had nothing recorded."""
        for recording in recordings:
            interval, ref = recording.interval, recording.checkpoint
            key = (interval.member, interval.step)
            if interval.member not in refused:
                self._check_interval(interval, ref)
                if self.break_guarantee == "delete_after_commit":
                    with contextlib.suppress(OSError):
                        (Path(self._checkpoint_root()) / ref.path).unlink()
                continue
            row = self._inner.checkpoint(self.pid, *key)
            if row is not None and row.path == ref.path and key not in self.committed:
                self.violate("refused", f"interval {key} was refused, yet it was recorded")

    def _check_interval(
        self,
        interval: IntervalRecord,
        ref: CheckpointRef,
        earlier: Sequence[IntervalRecord] = (),
    ) -> None:
        key = (interval.member, interval.step)
        row = self._inner.checkpoint(self.pid, *key)
        if row is None or row.path != ref.path:
            if key in self.committed:
                return  # a retry of a call that already committed: nothing new
            self.violate("checkpoint", f"interval {key} committed without its checkpoint")
            return
        if key in self.committed:
            return  # the retry of a call that committed (same path): recorded once
        trained, trail = self.saved.get(ref.path, (-1, ()))
        chain = [*earlier, interval]
        where = f"interval {key} (from {chain[0].origin})"
        for i in chain:
            if i.metrics.get("trained") != i.step:
                self.violate(
                    "trained",
                    f"interval {(i.member, i.step)} trained {i.metrics.get('trained')} "
                    f"intervals, not {i.step}",
                )
        if trained != interval.step:
            self.violate("trained", f"{where}: its weights trained {trained}, not {interval.step}")
        # Every interval but the first of the chain continues the one before it, in memory
        # under the same claim (checkpoint_every); the first continues a committed checkpoint.
        for before, after in itertools.pairwise(chain):
            if after.origin != (before.member, before.step) or after.step != before.step + 1:
                self.violate(
                    "origin",
                    f"interval {(after.member, after.step)} does not "
                    f"continue {(before.member, before.step)}, recorded with it",
                )
        first = chain[0]
        seeds = tuple(derive_seed(self.settings_seed, TRAIN, i.member, i.step) for i in chain)
        if first.step == 1:
            expected: tuple[int, ...] | None = () if first.origin is None else None
        elif first.origin is None or first.origin[1] != first.step - 1:
            expected = None
        else:
            expected = self.committed.get(tuple(first.origin))  # type: ignore[arg-type]
        if expected is None:
            self.violate("origin", f"{where} does not continue a committed checkpoint at step-1")
        elif trail != (*expected, *seeds):
            self.violate("origin", f"{where}: its weights' trail {trail} != {(*expected, *seeds)}")
        elif not earlier and first.origin is not None:
            # (a chain's checkpoint started from the state in memory before it, never saved)
            origin = self.weights[self.paths[tuple(first.origin)]][0]  # type: ignore[index]
            if self.weights[ref.path][1] != origin:
                self.violate("origin", f"{where}: its weights did not start from the origin's")
        every = self.settings.get("checkpoint_every")
        if isinstance(every, timedelta):
            self._check_timed(chain, seeds, every.total_seconds(), where)
        elif len(earlier) >= (every or 1):
            self.violate(
                "checkpoint",
                f"{where}: {len(earlier)} intervals recorded before it "
                "without a checkpoint of their own",
            )
        self.committed[key] = trail
        self.paths[key] = ref.path
        self.persisted_by.update({(i.member, i.step): key for i in earlier})

    def _check_timed(
        self, chain: Sequence[IntervalRecord], seeds: Sequence[int], limit: float, where: str
    ) -> None:
        """``checkpoint_every`` a duration: the chain's intervals before its last trained less
        than ``limit`` seconds, and none of them was ready to exploit; its last was due (it
        reached the limit, its member may exploit there, or it is the budget)."""
        seconds = [interval_seconds(seed) for seed in seeds]
        before, last = sum(seconds[:-1]), chain[-1]
        if before >= limit + 1e-9:
            self.violate(
                "checkpoint",
                f"{where}: {before:.2f} s of training recorded before it without a checkpoint "
                f"(checkpoint_every {limit} s)",
            )
        ready = [i.step for i in chain[:-1] if self._exploits_at(i.step)]
        if ready:
            self.violate("checkpoint", f"{where}: ready at steps {ready}, yet not checkpointed")
        due = last.step >= self.settings["intervals"] or self._exploits_at(last.step)
        if not due and before + seconds[-1] < limit - 1e-9:
            self.violate(
                "checkpoint",
                f"{where}: checkpointed after {before + seconds[-1]:.2f} s of training, before "
                f"it was due (checkpoint_every {limit} s)",
            )

    def _exploits_at(self, step: int) -> bool:
        """Whether a member may copy a donor after ``step`` (where a duration checkpoints)."""
        s = self.settings
        ready = Every(s["period"], s["burn_in"])
        return s["exploit"] is not None and ready(Candidate(0, step, None, 0.0))

    def violate(self, invariant: str, message: str) -> None:
        self.note(f"  VIOLATION {invariant}: {message}")
        self.result.violations.append(
            Violation(self.seed, invariant, message, tuple(self.trace[-200:]))
        )

    # --- setting up ---------------------------------------------------------------------

    def _strategies(self) -> dict[str, Any]:
        s = self.settings
        exploit = {
            "truncation": Truncation(0.25),
            "truncation-half": Truncation(0.5),
            "tournament": Tournament(),
            "ttest": TTest(window=2, alpha=0.5),
            None: None,
        }[s["exploit"]]
        explore = {
            "perturb": Perturb(),
            "resample": Resample(),
            "pb2": PB2(window=2),
        }[s["explore"]]
        stop = {
            None: None,
            "target": Target(score=-0.05),
            "plateau": Plateau(patience=2),
        }[s["stop"]]
        return {
            "exploit": exploit,
            "explore": explore,
            "ready": Every(period=s["period"], burn_in=s["burn_in"]),
            "stop": stop,
        }

    def open_storage(self) -> Storage:
        if self.kind == "memory":
            return self._inner
        return SQLStorage(self.url, "write")

    def setup(self) -> None:
        s = self.settings
        self.settings_seed = self.seed
        if self.kind == "memory":
            self._inner: Storage = MemoryStorage(clock=lambda: self.now)
            self.url = self._inner.url
        else:
            self.url = (
                f"sqlite:///{self.folder / 'sim.db'}"
                if self.kind == "sqlite"
                else os.environ["POPTUNE_TEST_POSTGRES"]
            )
            self._inner = SQLStorage(self.url, "create")
        self.name = f"sim-{self.seed}-{os.getpid()}-{id(self):x}"
        if self.break_guarantee == "fencing":
            if not isinstance(self._inner, MemoryStorage):
                raise ValueError("break_guarantee='fencing' needs storage='memory'")
            _unfence(self._inner)
        capture = _Capture()
        kind = s.get("kind", "member")
        trainable: Any = {
            "member": SimTrainable,
            "function": sim_function,
            "block": sim_block_function,
        }[kind]
        run(
            trainable,
            space=sim_space(),
            metric="score",
            population=s["population"],
            intervals=s["intervals"],
            seed=self.seed,
            sync=s["sync"],
            storage=self._inner if self.kind == "memory" else self.url,
            checkpoints=str(self.folder / "checkpoints"),
            name=self.name,
            runner=capture,
            progress=False,
            lease_seconds=LEASE_SECONDS,
            resident=s["resident"],
            block=s.get("block"),
            checkpoint_every=s.get("checkpoint_every"),
            **self._strategies(),
        )
        self.target = capture.target
        self.pid = capture.target.population_id
        if self.kind != "memory":
            import sqlalchemy as sa

            self._engine = sa.create_engine(self.url)

    def spawn(self, target: WorkerTarget | None = None, block: int | None = None) -> _Slot:
        """A fresh worker process joining the population (``block``: its own block size)."""
        target = target or self.target
        storage = self.open_storage()
        index = len(self.slots)
        slot = _Slot(index, cast(Worker, None), storage)
        checkpoints = open_checkpoints(str(self.folder / "checkpoints"))
        options: dict[str, Any] = {} if block is None else {"block": block}
        own = self.settings.get("own_blocks") and self.inject and not options
        if target.spec.config.block is not None and own:
            # poptune worker --block N: a worker's own block size, so that one worker's claim
            # may take part of another's block (the reference run keeps the recorded one)
            options["block"] = self.rng.choice(
                [1, self.rng.randint(1, self.settings["population"])]
            )
        kind = BlockWorker if target.spec.config.block is not None else Worker
        worker = kind(
            target.spec,
            cast(Storage, _StorageProxy(self, slot, storage)),
            cast(CheckpointStore, _CheckpointProxy(self, slot, checkpoints)),
            target.population_id,
            lease_seconds=target.lease_seconds,
            poll_seconds=0.0,
            resident=target.resident,
            **options,
        )
        worker.housekeeper.threaded = False
        worker.persistence.clock = lambda: slot.trained_seconds
        _break(worker, self.break_guarantee)
        worker.new_writer = lambda: _SimWriter(self, slot)
        worker._background_bytes = 0 if self.settings["background"] else 1 << 62
        slot.worker = worker
        slot.actor = _Actor(self, slot, f"w{index}", worker.run)
        self.slots.append(slot)
        size = f" (block {options['block']})" if options else ""
        self.note(f"{self.step_no:5d} t={self.now - START:7.1f} spawn w{index}{size}")
        return slot

    def resume(self) -> None:
        """Every worker is gone: resume the population from a fresh process."""
        capture = _Capture()
        storage = self.open_storage()
        population = load(storage, self.name, checkpoints=str(self.folder / "checkpoints"))
        options: dict[str, Any] = {}
        if self.settings.get("own_blocks"):  # resume(block=N) records a new block size
            options["block"] = self.rng.randint(1, self.settings["population"])
            self.note(f"      resumed with block={options['block']}")
        population.resume(progress=False, runner=capture, **options)
        if storage is not self._inner:
            storage.close()
        self.result.faults["resume"] += 1
        self.spawn(capture.target)

    # --- the clock and the faults -------------------------------------------------------

    def advance(self, seconds: float) -> None:
        """Move the virtual clock; workers whose own clock says so renew their leases."""
        self.now += seconds
        if self.kind != "memory":  # the database's clock is real: move the leases instead
            from .storage._schema import members

            with self._engine.begin() as connection:
                connection.execute(
                    members.update()
                    .where(members.c.lease_until.is_not(None))
                    .values(lease_until=members.c.lease_until - seconds)
                )
        for slot in self.slots:
            if not slot.alive or slot.paused_until is not None:
                continue
            slot.beat += seconds * slot.rate
            if slot.beat >= LEASE_SECONDS / 3:
                slot.beat = 0.0
                slot.worker.housekeeper.renew_leases()
        for slot in self.slots:
            if slot.paused_until is not None and self.now >= slot.paused_until:
                slot.paused_until = None
                self.note(f"      t={self.now - START:7.1f} w{slot.index} continues")
        self._check_leases()

    def _leases(self) -> list[tuple[str, float, float]]:
        """(owner, lease end, now) of every member held, in the storage's own clock."""
        if self.kind == "memory":
            population = self._inner._populations[self.pid]  # type: ignore[attr-defined]
            return [
                (m.owner, m.lease_until, self.now)
                for m in population.members.values()
                if m.status.value == "running" and m.lease_until is not None
            ]
        from .storage._schema import members

        with self._engine.connect() as connection:
            rows = connection.execute(
                members.select().where(
                    members.c.population_id == self.pid, members.c.status == "running"
                )
            ).all()
        now = time.time()
        return [(r.owner, r.lease_until, now) for r in rows if r.lease_until is not None]

    def _check_leases(self) -> None:
        dead = {s.worker.owner: s.died_at for s in self.slots if s.dead and s.died_at}
        if not dead:
            return
        for owner, until, now in self._leases():
            if owner in dead:
                died = dead[owner]
                assert died is not None
                left = until - now
                allowed = LEASE_SECONDS - (self.now - died) + 1.0
                if left > allowed:
                    self.violate(
                        "lease",
                        f"{owner}, dead for {self.now - died:.1f} s, still holds a lease "
                        f"for {left:.1f} s more",
                    )

    def crash(self, slot: _Slot, why: str) -> None:
        slot.dead, slot.died_at = True, self.now
        self.note(f"{self.step_no:5d} t={self.now - START:7.1f} w{slot.index} {why}")
        for actor in self.actors:
            if actor.slot is slot and not actor.done:
                actor.crashed = True
                actor.step()  # unwinds at once: every stop raises _Crashed
        if self.kind != "memory":
            slot.storage.close()

    def fault(self) -> None:
        rng = self.rng
        kinds: tuple[str, ...] = FAULTS
        if self.settings.get("kind", "member") != "member":
            kinds += FUNCTION_FAULTS + (BLOCK_FAULTS if self.settings.get("block") else ())
        kind = rng.choice(kinds)
        alive = [s for s in self.slots if s.alive]
        rows = self._inner.checkpoints(self.pid)
        if kind in ("corrupt", "remove"):
            if not rows:
                return
            ref = rng.choice(sorted(rows, key=lambda r: (r.member, r.step)))
            path = Path(self._checkpoint_root()) / ref.path
            if not path.exists():
                return
            if kind == "corrupt":
                data = bytearray(path.read_bytes())
                data[len(data) // 2] ^= 0xFF
                path.write_bytes(bytes(data))
                self.corrupted.add(ref.path)
            else:
                path.unlink()
                self.removed.add(ref.path)
            where = f"{self.step_no:5d} t={self.now - START:7.1f}"
            self.note(f"{where} {kind} ckpt ({ref.member}, {ref.step})")
        elif not alive:
            return
        else:
            slot = rng.choice(alive)
            here = f"{self.step_no:5d} t={self.now - START:7.1f} w{slot.index}"
            if kind == "crash":
                self.crash(slot, "crashes")
            elif kind == "restart":
                self.crash(slot, "is killed; a fresh worker joins")
                self.spawn()
            elif kind == "raise":
                slot.raise_next = True
                self.note(f"{here} armed a raise in its training function's next interval")
            elif kind == "steal":
                holders = [s for s in alive if len(s.worker._held) >= 2]
                if not holders:
                    return
                slot = rng.choice(holders)
                slot.paused_until = self.now + LEASE_SECONDS * rng.uniform(1.1, 2.0)
                where = f"{self.step_no:5d} t={self.now - START:7.1f} w{slot.index}"
                self.note(f"{where} pauses until t={slot.paused_until - START:.1f}; a thief joins")
                self.spawn(block=1)
            elif kind == "pause":
                slot.paused_until = self.now + LEASE_SECONDS * rng.uniform(1.1, 2.0)
                self.note(f"{here} pauses until t={slot.paused_until - START:.1f}")
            elif kind == "skew":
                slot.rate = rng.choice([0.2, 0.5, 2.0])
                self.note(f"{here} clock runs at {slot.rate}x")
            else:
                slot.armed = kind
                slot.expect_error = slot.expect_error or kind != "lost_reply"
                self.note(f"{here} armed {kind} on its next write")
        self.result.faults[kind] += 1

    def _checkpoint_root(self) -> str:
        return str((self.folder / "checkpoints").resolve())

    # --- the run ------------------------------------------------------------------------

    def status(self) -> PopulationStatus:
        return self._inner.summary(
            self.pid, self.settings["intervals"], self.target.spec.config.mode
        ).status

    def run(self) -> SimulationResult:
        self.setup()
        for _ in range(self.settings["workers"]):
            self.spawn()
        s = self.settings
        limit = 600 * s["population"] * s["intervals"] + 2000
        faults_left = s["faults"] if self.inject else 0
        resumes = 0
        while True:
            self.step_no += 1
            if self.step_no > limit:
                self.violate("hang", f"not over after {limit} steps")
                break
            runnable = [a for a in self.actors if a.slot.paused_until is None and a.runnable()]
            paused = any(s.paused_until is not None and s.alive for s in self.slots)
            if not any(s.alive for s in self.slots):
                if self.status() is not PopulationStatus.RUNNING or resumes > s["faults"] + 2:
                    break
                resumes += 1
                self.resume()
                continue
            if not runnable:
                if not paused and not any(
                    a.slot.alive and not a.done for a in self.actors if a.until is not None
                ):
                    break
                self.advance(LEASE_SECONDS / 4)
                if not paused:  # blocked on something time cannot change
                    waiting = [a.pending for a in self.actors if not a.done]
                    self.violate("hang", f"every thread waits: {waiting}")
                    break
                continue
            r = self.rng.random()
            if r < 0.06:
                self.advance(self.rng.uniform(0.05, 0.4) * LEASE_SECONDS)
                continue
            if r < 0.08:
                slot = self.rng.choice(self.slots)
                if slot.alive and slot.paused_until is None:
                    self.note(f"{self.step_no:5d} t={self.now - START:7.1f} w{slot.index}: gc")
                    slot.worker.housekeeper.tidy()
                continue
            if faults_left and r < 0.08 + 0.015:
                faults_left -= 1
                self.fault()
                continue
            actor = self.rng.choice(runnable)
            self.note(f"{self.step_no:5d} t={self.now - START:7.1f} {actor.pending}")
            actor.step()
            if actor.done and actor is actor.slot.actor:
                self._ended(actor.slot)
        self.result.steps = self.step_no
        self.result.trace = self.trace
        self._shutdown()
        self._final_checks()
        if self.kind != "memory":
            with contextlib.suppress(Exception):
                self._inner.delete_population(self.pid)
            self._inner.close()
            self._engine.dispose()
        return self.result

    def _ended(self, slot: _Slot) -> None:
        """A worker's loop returned or raised."""
        assert slot.actor is not None
        error = slot.actor.error
        self.note(f"      w{slot.index} ended: {error!r}")
        if error is None:
            running = [a.name for a in self.actors if a.slot is slot and a.function and not a.done]
            if running:  # a worker that stops lets the code after the functions' loops run
                self.violate("tail", f"w{slot.index} stopped before {running} returned")
        for actor in self.actors:  # its writer, left waiting for jobs
            if actor.slot is slot and not actor.done:
                actor.crashed = True
                actor.step()
        if error is None:
            return
        slot.dead, slot.died_at = True, self.now
        if isinstance(error, StorageError) and slot.expect_error:
            return
        if isinstance(error, PopulationError) and self.status() is PopulationStatus.ERROR:
            return  # stopped as documented (checked again at the end)
        self.violate("worker", f"w{slot.index} raised {error!r}")

    def _shutdown(self) -> None:
        for slot in self.slots:
            if not slot.dead and slot.actor is not None and not slot.actor.done:
                self.crash(slot, "stopped at the end")
            elif self.kind != "memory":
                slot.storage.close()

    def _final_checks(self) -> None:
        s = self.settings
        storage, pid = self._inner, self.pid
        status = self.status()
        self.result.status = status.value
        record = next(p for p in storage.populations() if p.id == pid)
        members = storage.members(pid)
        intervals = storage.intervals(pid)
        if status is PopulationStatus.FINISHED:
            short = [m.id for m in members if m.step < s["intervals"]]
            if short:
                self.violate("ended", f"finished with members {short} short of the budget")
        elif status in (PopulationStatus.STOPPED, PopulationStatus.ERROR):
            if not record.error:
                self.violate("ended", f"{status.value} without a recorded reason")
            elif status is PopulationStatus.ERROR and not (
                self.removed and "not where this worker looks" in record.error
            ):
                self.violate("ended", f"stopped on an error: {record.error}")
        elif not self.result.violations:
            self.violate("ended", f"left {status.value}, short of the budget")
        keys = [(i.member, i.step) for i in intervals]
        if len(set(keys)) != len(keys):
            self.violate("duplicate", "a (member, step) was recorded twice")
        for interval in intervals:
            key = (interval.member, interval.step)
            if key not in self.committed and key not in self.persisted_by:
                self.violate("checkpoint", f"interval {key} was never seen committed")
        gained = Counter[int]()
        for event in storage.exploits(pid):
            if (event.donor, event.donor_step) not in self.committed:
                self.violate("donor", f"{event} copied an uncommitted checkpoint")
            gained[event.member] += event.donor_step - event.step
        for member in members:
            trained = sum(1 for i in intervals if i.member == member.id)
            if member.step != trained + gained[member.id]:
                self.violate(
                    "trained",
                    f"member {member.id} is at step {member.step}, trained {trained} and "
                    f"gained {gained[member.id]} by copying",
                )
        root = Path(self._checkpoint_root())
        for ref in storage.checkpoints(pid):
            if ref.path not in self.removed and not (root / ref.path).is_file():
                self.violate("missing", f"checkpoint {ref} is recorded, its file is not there")
        sync = s["sync"] and not s["stop"] and self.inject  # (the reference run injects none)
        if sync and not self.removed and not self.corrupted:
            self._check_sync(intervals, storage.exploits(pid))

    def _check_sync(self, intervals: list[IntervalRecord], exploits: list[Any]) -> None:
        if self.result.violations or self.status() is not PopulationStatus.FINISHED:
            return
        expected = _reference(self.seed, self.settings)
        got = _fingerprint(intervals, exploits)
        if got != expected:
            diff = sorted(set(got[0]) ^ set(expected[0]))[:5]
            self.violate(
                "sync",
                f"the synchronous run differs from the uninterrupted one (first: {diff})",
            )


def _unfence(storage: MemoryStorage) -> None:
    """Break fencing on purpose (for the test that shows the simulator catches it): a write
    under a lost claim is taken as if the claim were still held."""

    def unfenced(claim: Any) -> Any:
        return storage._get(claim.population_id).members[claim.member.id]

    storage._held = unfenced  # type: ignore[method-assign]


class _Drifted(dict[int, tuple[CheckpointRef, Any]]):
    """A block worker's states in memory that drifted from their checkpoints after being saved
    (as if training had changed them in place): what it hands over is not what was saved."""

    def get(self, member: int, default: Any = None) -> Any:
        held = super().get(member)
        if held is None:
            return default
        ref, state = held
        return ref, {**state, "w": np.asarray(state["w"]) + 1e-6}


def _break(worker: Worker, guarantee: str | None) -> None:
    """Break one of the worker's guarantees on purpose (see :func:`simulate_one`)."""
    if guarantee == "drifted_handover" and isinstance(worker, BlockWorker):
        worker._memory = _Drifted()
    elif guarantee == "timeless":
        worker.persistence.clock = lambda: 0.0
    elif guarantee == "no_tail_wait":
        close = worker.close_members
        worker.close_members = lambda wait=False: close(False)  # type: ignore[method-assign]


# Checkpoints are small and short-lived: in memory (tmpfs) where there is one, as fast as files go.
_SCRATCH = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None

_REFERENCES: dict[tuple[Any, ...], Any] = {}


def _fingerprint(intervals: Iterable[IntervalRecord], exploits: Iterable[Any]) -> Any:
    """What a synchronous run must reproduce bit for bit: every interval's score, hparams and
    origin, and every copy."""
    return (
        tuple(
            sorted(
                (i.member, i.step, repr(i.score), repr(sorted(i.hparams.items())), i.origin)
                for i in intervals
            )
        ),
        tuple(
            sorted(
                (e.member, e.step, e.donor, e.donor_step, repr(sorted(e.hparams_after.items())))
                for e in exploits
            )
        ),
    )


def _reference(seed: int, settings: Mapping[str, Any]) -> Any:
    """The fingerprint of the same run with one worker and no fault (memory storage)."""
    key = (seed, tuple(sorted((k, v) for k, v in settings.items() if k != "faults")))
    if key not in _REFERENCES:
        with tempfile.TemporaryDirectory(prefix="poptune-sim-ref-", dir=_SCRATCH) as folder:
            reference = {**settings, "workers": 1, "faults": 0}
            sim = _Simulation(seed, 1, "memory", Path(folder), reference, False, None)
            sim.run()
            storage = sim._inner
            _REFERENCES[key] = _fingerprint(storage.intervals(sim.pid), storage.exploits(sim.pid))
        if len(_REFERENCES) > 256:
            _REFERENCES.pop(next(iter(_REFERENCES)))
    return _REFERENCES[key]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """poptune's own log lines (lost leases, failures) are expected here, by the thousand."""
    logger = logging.getLogger("poptune")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def simulate_one(
    seed: int,
    workers: int = 3,
    storage: str = "memory",
    settings: Mapping[str, Any] | None = None,
    faults: bool = True,
    break_guarantee: str | None = None,
) -> SimulationResult:
    """Run the population of ``seed`` (its settings and faults drawn from the seed) and check
    the invariants; see :class:`SimulationResult`.

    ``workers`` bounds the workers started; ``storage`` is ``"memory"``, ``"sqlite"`` or
    ``"postgres"`` (at ``$POPTUNE_TEST_POSTGRES``); ``settings`` replaces the drawn ones;
    ``faults=False`` injects none. ``break_guarantee`` breaks one guarantee on purpose, to show
    that the simulator notices: ``"fencing"`` (memory storage only) takes writes under lost
    claims, ``"delete_after_commit"`` deletes every checkpoint's file once it is committed,
    ``"drifted_handover"`` makes a block worker hand over donors' states that differ from their
    checkpoints, ``"no_tail_wait"`` lets a stopping worker leave its training functions running,
    ``"timeless"`` stops the clock of the workers' checkpoint policy (a duration never passes).

    Raises:
        ValueError: if ``storage`` is none of those.
    """
    if storage not in ("memory", "sqlite", "postgres"):
        raise ValueError(
            f"storage must be 'memory', 'sqlite' or 'postgres', not {storage!r}: pick one."
        )
    if storage == "postgres" and not os.environ.get("POPTUNE_TEST_POSTGRES"):
        raise ValueError(
            "storage='postgres' needs $POPTUNE_TEST_POSTGRES (a PostgreSQL URL): set it."
        )
    folder = Path(tempfile.mkdtemp(prefix="poptune-sim-", dir=_SCRATCH))
    try:
        with _quiet(), _simulated_functions():
            return _Simulation(
                seed, workers, storage, folder, settings, faults, break_guarantee
            ).run()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def simulate(
    seeds: Iterable[int],
    workers: int = 3,
    storage: str = "memory",
    break_guarantee: str | None = None,
    on_result: Callable[[SimulationResult], None] | None = None,
) -> SimulationReport:
    """Run :func:`simulate_one` for every seed; return the counts and every violation."""
    report = SimulationReport()
    started = time.perf_counter()
    for seed in seeds:
        result = simulate_one(seed, workers, storage, break_guarantee=break_guarantee)
        report.add(result)
        if on_result is not None:
            on_result(result)
    report.seconds = time.perf_counter() - started
    return report
