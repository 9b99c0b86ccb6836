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
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from .errors import LoopError
from .trainable import seed_globals

__all__ = ["Context", "Interval", "LoopError", "LoopSession"]


class Interval:
    """One interval of a member's training, as the function's loop sees it.

    Attributes:
        hparams: the hyperparameters to train this interval with (they change after explore).
        seed: this interval's seed, derived from the run's seed, the member and the step.
        step: the interval's step: the number of intervals behind the weights once it is done.
        state: the state to load before training, or ``None`` to continue with the weights in
            memory: a donor's after an exploit, or the member's own checkpoint when it moved to
            this worker.
    """

    def __init__(
        self, session: LoopSession, hparams: Mapping[str, Any], seed: int, step: int, state: Any
    ) -> None:
        self._session = session
        self.hparams = dict(hparams)
        self.seed = seed
        self.step = step
        self.state = state
        self.reported = False

    def report(self, metrics: float | Mapping[str, Any], state: Any = None) -> None:
        """Hand the interval's metrics (a number, or a dict with the run's metric) and the state
        to checkpoint (what an exploit copies) to the worker.

        Raises:
            LoopError: if this interval was already reported, or ``state`` is missing.
        """
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


class Context:
    """What a training function gets: the member's first hyperparameters and seed, and its
    intervals.

    Attributes:
        hparams: the hyperparameters when the member was started here (each interval's
            ``hparams`` may differ).
        seed: a seed to build the model with.
        member: the member's id.
    """

    def __init__(self, session: LoopSession, hparams: Mapping[str, Any], seed: int, member: int):
        self._session = session
        self.hparams = dict(hparams)
        self.seed = seed
        self.member = member

    def intervals(self) -> Iterator[Interval]:
        """The member's intervals, one at a time, until the worker lets the member go. An
        interval lasts until the loop asks for the next one: do not change the reported state
        after ``report`` within the same iteration."""
        return self._session._intervals()


class LoopSession:
    """A member's training function, alive on its own thread and stepped by the worker."""

    def __init__(
        self, function: Callable[[Context], Any], hparams: Mapping[str, Any], seed: int, member: int
    ) -> None:
        self._function = function
        self._condition = threading.Condition()
        self._request: Interval | None = None  # the interval the worker wants trained
        self._result: tuple[Any, Any] | None = None  # (metrics, state) of the last report
        self._pending_state: Any = None
        self._closing = False
        self._waiting = False  # the function is back in ctx.intervals(), between intervals
        self._finished = False  # the function returned or raised
        self._error: BaseException | None = None
        self._context = Context(self, hparams, seed, member)
        self._thread = threading.Thread(
            target=self._main, name=f"poptune-member-{member}", daemon=True
        )
        self._thread.start()

    # --- the worker's side ---------------------------------------------------------------

    def load(self, state: Any) -> None:
        """Give ``state`` to the next interval (``interval.state``)."""
        self._pending_state = state

    def step(self, hparams: Mapping[str, Any], seed: int, step: int) -> Any:
        """Let the function train one interval (up to its next turn of ``ctx.intervals()``);
        return the metrics it reported.

        Raises:
            LoopError: if the function returned, or ended the interval without reporting.
            Exception: whatever the function raised.
        """
        with self._condition:
            self._result = None
            self._request = Interval(self, hparams, seed, step, self._pending_state)
            self._pending_state = None
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
            f"The interval at step {step} ended without interval.report(metrics, state=...). "
            "Report every interval once, at its end."
        )

    def state(self) -> Any:
        """The state reported with the last interval."""
        if self._result is None:
            raise LoopError("No interval was reported yet, so there is no state to checkpoint.")
        return self._result[1]

    def close(self) -> None:
        """End ``ctx.intervals()`` so that the function returns; do not wait for it."""
        with self._condition:
            self._closing = True
            self._condition.notify_all()

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

    def _intervals(self) -> Iterator[Interval]:
        while True:
            with self._condition:
                self._waiting = True
                self._condition.notify_all()
                while self._request is None and not self._closing:
                    self._condition.wait()
                self._waiting = False
                if self._closing:
                    return
                interval, self._request = self._request, None
                assert interval is not None  # the wait above ends only with a request
            # Here, on the function's thread: its own set-up code (before the loop) may still
            # have been drawing from the global generators while the worker asked.
            seed_globals(interval.seed)
            yield interval

    def _reported(self, metrics: Any, state: Any) -> None:
        with self._condition:
            self._result = (metrics, state)
            self._condition.notify_all()


def _name(function: Any) -> str:
    return getattr(function, "__qualname__", None) or repr(function)
