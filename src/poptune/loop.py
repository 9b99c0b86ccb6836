"""Your own training loop as a member: a function that reports at interval boundaries.

A function is accepted wherever a Trainable class is. The worker runs it on a thread of its own,
one per member it keeps in memory, and steps it one interval at a time::

    def train(ctx):                                  # runs in a worker, for one member at a time
        model, opt = build(ctx.hparams, ctx.seed)
        for interval in ctx.intervals():             # one per interval, until the budget is spent
            if interval.state is not None:           # the donor's state after an exploit,
                load(model, opt, interval.state)     # or the member's own when it moved workers
            apply_hparams(opt, interval.hparams)     # may have changed (explore)
            fit_one_epoch(model, opt)
            interval.report({"accuracy": evaluate(model)}, state=save(model, opt))

The loop keeps its model in memory across intervals, exploits included: nothing restarts.
``ctx.intervals()`` blocks between intervals while the worker records the interval and decides
what comes next, and ends when the worker lets the member go (budget spent, member moved, worker
stopping); code after the loop then runs as usual.

Before each interval the worker seeds Python's, NumPy's and torch's global generators with
``interval.seed`` (see :func:`poptune.trainable.seed_globals`); seed generators of your own from
it too, so that a synchronous run is the same whatever the number of workers.

With ``block=N`` (see ``pt.run``) one call trains a block of up to N members together, and
each turn of ``ctx.intervals()`` is a :class:`Block`: one interval of every member of the
block, reported at once with ``block.report(metrics, states=...)`` (one entry per member, in
the block's order)::

    def train(ctx):                                  # ctx.members: this call's member ids
        pop = build(len(ctx.members), ctx.seed)
        for block in ctx.intervals():                # one interval of every member
            for i, interval in enumerate(block):     # .member .hparams .state .seed .step
                if interval.state is not None:
                    pop.load(i, interval.state)
            fit_one_epoch(pop, [interval.hparams["lr"] for interval in block])
            block.report([{"accuracy": a} for a in evaluate(pop)],
                         states=[pop.state(i) for i in range(len(block))])

The block's members are fixed for the call: ``block[i]`` is always ``ctx.members[i]``. When
the worker's block changes (a member is done, failed, or moved to another worker) the loop
ends and the worker calls the function again with the new block, handing every member's state
in (from memory where it has it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, overload

from .errors import LoopError
from .trainable import seed_globals

__all__ = [
    "Block",
    "BlockContext",
    "BlockSession",
    "Context",
    "Interval",
    "IntervalSpec",
    "LoopError",
    "LoopSession",
    "Threads",
]


class Interval:
    """One interval of a member's training, as the function's loop sees it.

    Attributes:
        member: the member's id.
        hparams: the hyperparameters to train this interval with (they change after explore).
        seed: this interval's seed, derived from the run's seed, the member and the step.
        step: the interval's step: the number of intervals behind the weights once it is done.
        state: the state to load before training, or ``None`` to continue with the weights in
            memory: a donor's after an exploit, or the member's own when it moved to this
            worker (or when a block's training function was called again).
    """

    def __init__(
        self,
        session: LoopSession | None,
        hparams: Mapping[str, Any],
        seed: int,
        step: int,
        state: Any,
        member: int = -1,
    ) -> None:
        self._session = session
        self.member = member
        self.hparams = dict(hparams)
        self.seed = seed
        self.step = step
        self.state = state
        self.reported = False

    def report(self, metrics: float | Mapping[str, Any], state: Any = None) -> None:
        """Hand the interval's metrics (a number, or a dict with the run's metric) and the state
        to checkpoint (what an exploit copies) to the worker.

        Raises:
            LoopError: if this interval was already reported, or ``state`` is missing, or it
                belongs to a block (report the block instead).
        """
        if self._session is None:
            raise LoopError(
                f"interval.report() was called on member {self.member}'s interval of a block. "
                "Report the block's intervals together: block.report(metrics, states=...)."
            )
        if self.reported:
            raise LoopError(
                f"interval.report() was called twice for step {self.step}. Report once per "
                "interval, at its end."
            )
        if state is None:
            raise LoopError(
                "interval.report() needs state=...: what an exploit copies and a moved member "
                "resumes from (e.g. {'model': model.state_dict(), 'optimizer': "
                "opt.state_dict()})."
            )
        self.reported = True
        self._session._reported(metrics, state)


class Block(Sequence[Interval]):
    """One interval of every member of a block (``block[i]`` is ``ctx.members[i]``'s), as the
    training function's loop sees it; report them together with :meth:`report`.

    Attributes:
        seed: the seed Python's, NumPy's and torch's global generators were seeded with for this
            block interval (its first member's ``interval.seed``).
    """

    def __init__(self, session: BlockSession, intervals: Sequence[Interval]) -> None:
        self._session = session
        self._intervals = tuple(intervals)
        self.seed = self._intervals[0].seed
        self.reported = False

    @overload
    def __getitem__(self, index: int) -> Interval: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Interval]: ...

    def __getitem__(self, index: int | slice) -> Interval | Sequence[Interval]:
        return self._intervals[index]

    def __len__(self) -> int:
        return len(self._intervals)

    def report(
        self, metrics: Sequence[float | Mapping[str, Any]], states: Sequence[Any] | None = None
    ) -> None:
        """Hand the block's metrics and states to the worker: one of each per member, in the
        block's order (``metrics[i]`` and ``states[i]`` are ``block[i].member``'s).

        Raises:
            LoopError: if the block was already reported, or the counts do not match it.
        """
        if self.reported:
            raise LoopError(
                f"block.report() was called twice for the block interval at step "
                f"{self._intervals[0].step}. Report once per block interval, at its end."
            )
        if states is None:
            raise LoopError(
                "block.report() needs states=[...]: one state per member, what an exploit "
                "copies and a moved member resumes from."
            )
        for name, values in (("metrics", metrics), ("states", states)):
            if isinstance(values, str | bytes | Mapping) or not isinstance(values, Sequence):
                raise LoopError(
                    f"block.report() needs {name} as a list with one entry per member of the "
                    f"block ({len(self)}). Got {type(values).__name__}."
                )
            if len(values) != len(self):
                raise LoopError(
                    f"block.report() got {len(values)} {name} for a block of {len(self)} "
                    f"members. Pass one per member, in the block's order."
                )
        self.reported = True
        self._session._reported(list(metrics), list(states))


class Context:
    """What a training function gets: the member's first hyperparameters and seed, and its
    intervals.

    Attributes:
        hparams: the hyperparameters when the member was started here (each interval's
            ``hparams`` may differ).
        seed: a seed to build the model with.
        member: the member's id.
    """

    def __init__(
        self, session: _FunctionSession, hparams: Mapping[str, Any], seed: int, member: int
    ):
        self._session = session
        self.hparams = dict(hparams)
        self.seed = seed
        self.member = member

    def intervals(self) -> Iterator[Interval]:
        """The member's intervals, one at a time, until the worker lets the member go. An
        interval lasts until the loop asks for the next one: do not change the reported state
        after ``report`` within the same iteration."""
        return self._session._intervals()


class BlockContext:
    """What a training function gets with ``block=N``: the block's members, their first
    hyperparameters and a seed, and its block intervals.

    Attributes:
        members: the ids of the block's members, fixed for the call (``block[i]`` is always
            ``members[i]``'s interval).
        hparams: each member's hyperparameters when the block started, in that order.
        seed: a seed to build the block's models with.
    """

    def __init__(
        self,
        session: _FunctionSession,
        members: Sequence[int],
        hparams: Sequence[Mapping[str, Any]],
        seed: int,
    ) -> None:
        self._session = session
        self.members = tuple(members)
        self.hparams = [dict(h) for h in hparams]
        self.seed = seed

    def intervals(self) -> Iterator[Block]:
        """One :class:`Block` per block interval, until the worker lets the block go. A block
        interval lasts until the loop asks for the next one: do not change the reported states
        after ``report`` within the same iteration."""
        return self._session._intervals()


class IntervalSpec:
    """What the worker asks of one member in a block interval (see :meth:`BlockSession.step`)."""

    __slots__ = ("hparams", "member", "seed", "state", "step")

    def __init__(
        self, member: int, hparams: Mapping[str, Any], seed: int, step: int, state: Any
    ) -> None:
        self.member, self.hparams, self.seed, self.step, self.state = (
            member,
            hparams,
            seed,
            step,
            state,
        )


class Threads:
    """Where a training function runs: its thread, and the condition the worker steps it by.

    Real threads here; the simulator (:mod:`poptune.simulation`) swaps in its own for the
    sessions its workers start, so that its scheduler steps the function like every other
    thread of a worker.
    """

    def condition(self) -> threading.Condition:
        """The condition the worker and the function hand intervals over by."""
        return threading.Condition()

    def thread(self, target: Callable[[], None], name: str) -> threading.Thread:
        """The function's thread (a daemon: a stopping process does not wait for it)."""
        return threading.Thread(target=target, name=name, daemon=True)


#: What every session makes its thread and condition with (see :class:`Threads`).
threads = Threads()


class _FunctionSession:
    """A training function alive on its own thread, stepped by the worker one request (an
    :class:`Interval`, or a :class:`Block`) at a time."""

    _report = "interval.report(metrics, state=...)"

    def __init__(self, function: Callable[[Any], Any], name: str) -> None:
        self._function = function
        self._condition = threads.condition()
        self._request: Any = None  # the interval (or block) the worker wants trained
        self._result: tuple[Any, Any] | None = None  # (metrics, state) of the last report
        self._closing = False
        self._waiting = False  # the function is back in ctx.intervals(), between intervals
        self._finished = False  # the function returned or raised
        self._error: BaseException | None = None
        self._context: Any = None
        self._thread = threads.thread(self._main, name)

    # --- the worker's side ---------------------------------------------------------------

    def _exchange(self, request: Any, step: int) -> Any:
        """Let the function train ``request`` (up to its next turn of ``ctx.intervals()``);
        return the metrics it reported.

        Raises:
            LoopError: if the function returned, or ended the interval without reporting.
            Exception: whatever the function raised.
        """
        with self._condition:
            self._result = None
            self._request = request
            self._condition.notify_all()
            # The interval runs until the function asks for the next one (or returns), so its
            # reported state is not changed by the function while the worker saves it.
            while not self._finished and (self._request is not None or not self._waiting):
                self._condition.wait()
        if self._error is not None:
            raise self._error
        if self._result is not None:
            return self._result[0]
        if self._finished:
            raise LoopError(
                f"The training function {_name(self._function)} returned while the member "
                f"still had intervals to train (at step {step}). Keep looping over "
                "ctx.intervals() until it stops: the worker ends it when the member is done."
            )
        raise LoopError(
            f"The interval at step {step} ended without {self._report}. Report every interval "
            "once, at its end."
        )

    def state(self) -> Any:
        """The state (a block: the states) reported with the last interval."""
        if self._result is None:
            raise LoopError("No interval was reported yet, so there is no state to checkpoint.")
        return self._result[1]

    def close(self) -> None:
        """End ``ctx.intervals()`` so that the function returns; do not wait for it."""
        with self._condition:
            self._closing = True
            self._condition.notify_all()

    def wait_closed(self, timeout: float) -> bool:
        """After :meth:`close`, wait up to ``timeout`` seconds for the function to return (its
        code after the loop: a final save, closing environments); whether it did."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # --- the function's side -------------------------------------------------------------

    def _main(self) -> None:
        try:
            self._function(self._context)
        except BaseException as error:  # handed to the worker, which records the failure
            self._error = error
        finally:
            with self._condition:
                self._finished = True
                self._condition.notify_all()

    def _intervals(self) -> Iterator[Any]:
        while True:
            with self._condition:
                self._waiting = True
                self._condition.notify_all()
                while self._request is None and not self._closing:
                    self._condition.wait()
                self._waiting = False
                if self._closing:
                    return
                request, self._request = self._request, None
                assert request is not None  # the wait above ends only with a request
            # Here, on the function's thread: its own set-up code (before the loop) may still
            # have been drawing from the global generators while the worker asked.
            seed_globals(request.seed)
            yield request

    def _reported(self, metrics: Any, state: Any) -> None:
        with self._condition:
            self._result = (metrics, state)
            self._condition.notify_all()


class LoopSession(_FunctionSession):
    """A member's training function, alive on its own thread and stepped by the worker."""

    #: what gives the metrics, as messages about them name it
    reports_with = "interval.report()"

    def __init__(
        self, function: Callable[[Context], Any], hparams: Mapping[str, Any], seed: int, member: int
    ) -> None:
        super().__init__(function, f"poptune-member-{member}")
        self._member = member
        self._pending_state: Any = None
        self._context = Context(self, hparams, seed, member)
        self._thread.start()

    def load(self, state: Any) -> None:
        """Give ``state`` to the next interval (``interval.state``)."""
        self._pending_state = state

    def step(self, hparams: Mapping[str, Any], seed: int, step: int) -> Any:
        """Let the function train one interval; return the metrics it reported (see
        :meth:`_FunctionSession._exchange`)."""
        interval = Interval(self, hparams, seed, step, self._pending_state, self._member)
        self._pending_state = None
        return self._exchange(interval, step)


class BlockSession(_FunctionSession):
    """A block's training function (``block=N``), alive on its own thread and stepped by the
    worker one block interval at a time."""

    _report = "block.report(metrics, states=...)"

    def __init__(
        self,
        function: Callable[[BlockContext], Any],
        members: Sequence[int],
        hparams: Sequence[Mapping[str, Any]],
        seed: int,
    ) -> None:
        super().__init__(function, f"poptune-block-{members[0]}")
        self.members = tuple(members)
        self._context = BlockContext(self, members, hparams, seed)
        self._thread.start()

    def step(self, intervals: Sequence[IntervalSpec]) -> list[Any]:
        """Let the function train one interval of every member (``intervals``, in the block's
        order); return the metrics it reported, one per member."""
        block = Block(
            self, [Interval(None, i.hparams, i.seed, i.step, i.state, i.member) for i in intervals]
        )
        return list(self._exchange(block, intervals[0].step))

    def states(self) -> list[Any]:
        """The states reported with the last block interval, one per member."""
        return list(self.state())


def _name(function: Any) -> str:
    return getattr(function, "__qualname__", None) or repr(function)
