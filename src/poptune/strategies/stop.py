"""When to stop a population before its budget: a target score, a plateau, a wall-clock limit.

A stop criterion is a small object called after every recorded interval with a
:class:`Progress` (the best fitness at each step so far, and the time the run has taken); it
returns the reason to stop, or ``None`` to go on. The first criterion that gives a reason stops
the population: its status becomes ``stopped``, with that reason, and the workers finish the
intervals they are training.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar

from .._validation import check_float, check_int, invalid, renamed
from ..records import Mode
from . import _capabilities as capabilities
from ._base import Builtin, check_role, register, settle

__all__ = ["Plateau", "Progress", "Stop", "Target", "WallClock", "check_stop"]

#: A stop criterion: the population's progress in, the reason to stop (or ``None``) out.
Stop = Callable[["Progress"], "str | None"]


@dataclass(frozen=True)
class Progress:
    """What stop criteria see after an interval is recorded.

    Attributes:
        metric: the name of the score.
        mode: whether higher (``max``) or lower (``min``) scores are better.
        best_by_step: the best fitness recorded at each step ``1..len``, ``-inf`` where no
            finite score was recorded (fitness is the score, negated for ``min``).
        elapsed: seconds since the run (``pt.run`` or ``resume``) started.
    """

    metric: str
    mode: Mode
    best_by_step: Sequence[float]
    elapsed: float

    @classmethod
    def from_scores(
        cls,
        metric: str,
        mode: Mode,
        scores: Sequence[tuple[int, int, float | None]],
        elapsed: float,
    ) -> Progress:
        """From ``(member, step, score)`` rows, one per interval."""
        best: dict[int, float] = {}
        for _, step, score in scores:
            if score is None or not math.isfinite(score):
                continue
            if step not in best or mode.fitness(score) > mode.fitness(best[step]):
                best[step] = score
        return cls.from_best(metric, mode, sorted(best.items()), elapsed)

    @classmethod
    def from_best(
        cls, metric: str, mode: Mode, best: Sequence[tuple[int, float]], elapsed: float
    ) -> Progress:
        """From ``(step, best score at that step)`` rows, as the storage's ``best_by_step``
        gives them."""
        by_step = [-math.inf] * max((step for step, _ in best), default=0)
        for step, score in best:
            fitness = mode.fitness(score)
            if math.isfinite(fitness):
                by_step[step - 1] = fitness
        return cls(metric, mode, by_step, elapsed)

    def best_until(self, step: int) -> float:
        """The best fitness recorded at steps ``1..step``."""
        return max(self.best_by_step[:step], default=-math.inf)

    def score(self, fitness: float) -> float:
        """The score that has this fitness."""
        return fitness if self.mode is Mode.MAX else -fitness


@register
@dataclass(frozen=True)
class Target(Builtin):
    """Stop once the best score reaches ``score`` (at least it for ``max``, at most for ``min``).

    ``metric`` names the metric it watches, to be explicit; it must be the one the population
    optimises (``None``: that one).

    Example:
        >>> import poptune as pt
        >>> stop = pt.Target(0.98, metric="accuracy")
    """

    role: ClassVar[str] = "stop"

    score: float
    metric: str | None = None

    def __post_init__(self) -> None:
        settle(
            self,
            score=check_float("score", self.score, owner="Target"),
            metric=_check_metric("Target", self.metric),
        )

    @property
    def target(self) -> float:
        """Deprecated: the ``score`` to reach (the same parameter, by its constructor name)."""
        warnings.warn(
            "Target.target is deprecated: read Target.score (the same value).",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.score

    def __call__(self, progress: Progress) -> str | None:
        """The reason to stop, once the target is reached."""
        best = progress.best_until(len(progress.best_by_step))
        if best >= progress.mode.fitness(self.score):
            return (
                f"target reached: the best {progress.metric} is {progress.score(best):.6g} "
                f"({'>=' if progress.mode is Mode.MAX else '<='} {self.score:.6g})"
            )
        return None


@register
@renamed("Plateau", intervals="patience")
@dataclass(frozen=True)
class Plateau(Builtin):
    """Stop when the best score has not improved by more than ``min_delta`` over the last
    ``patience`` steps (compared with the best before them).

    (``patience`` was called ``intervals`` before, which is also ``pt.run``'s budget;
    ``Plateau(intervals=...)`` still works, with a ``DeprecationWarning``.)

    Example:
        >>> import poptune as pt
        >>> stop = pt.Plateau(patience=5, min_delta=1e-3)
    """

    role: ClassVar[str] = "stop"

    patience: int
    min_delta: float = 0.0
    metric: str | None = None

    def __post_init__(self) -> None:
        settle(
            self,
            metric=_check_metric("Plateau", self.metric),
            patience=check_int("patience", self.patience, 1, owner="Plateau"),
            min_delta=check_float("min_delta", self.min_delta, 0.0, owner="Plateau"),
        )

    def __call__(self, progress: Progress) -> str | None:
        """The reason to stop, once the best has stalled for ``patience`` steps."""
        last = len(progress.best_by_step)
        if last <= self.patience:
            return None
        before = progress.best_until(last - self.patience)
        now = progress.best_until(last)
        if not math.isfinite(before) or now - before > self.min_delta:
            return None
        return (
            f"plateau: the best {progress.metric} ({progress.score(now):.6g}) improved by no "
            f"more than {self.min_delta:g} over the last {self.patience} steps"
        )


@register
@dataclass(frozen=True)
class WallClock(Builtin):
    """Stop once the run (``pt.run`` or ``resume``) has taken ``seconds`` of wall-clock time;
    the intervals in progress then finish.

    Example:
        >>> import poptune as pt
        >>> stop = pt.WallClock(3600)      # one hour
        >>> from datetime import timedelta
        >>> pt.WallClock(timedelta(hours=1)).seconds
        3600.0
    """

    role: ClassVar[str] = "stop"

    seconds: float
    metric: ClassVar[str | None] = None  # watches no metric

    def __post_init__(self) -> None:
        seconds: Any = self.seconds
        if isinstance(seconds, timedelta):  # as checkpoint_every takes one
            seconds = seconds.total_seconds()
        settle(
            self,
            seconds=check_float("seconds", seconds, 0.0, low_open=True, owner="WallClock"),
        )

    def __call__(self, progress: Progress) -> str | None:
        """The reason to stop, once the time is up."""
        if progress.elapsed >= self.seconds:
            return (
                f"wall-clock limit reached: the run took {progress.elapsed:.0f} s "
                f"(limit {self.seconds:g} s)"
            )
        return None


def check_stop(criteria: Sequence[Stop], progress: Progress) -> str | None:
    """The reason of the first criterion that says stop, or ``None``."""
    for criterion in criteria:
        reason = criterion(progress)
        if reason:
            return reason
    return None


def _check_metric(owner: str, metric: Any) -> str | None:
    if metric is None:
        return None
    if not isinstance(metric, str) or not metric:
        raise invalid("metric", "a metric's name or None", metric, owner)
    return metric


def stop_list(stop: Stop | Sequence[Stop] | None, metric: str | None = None) -> list[Stop]:
    """``stop=`` as given to ``pt.run``: one criterion, several, or none; checked.

    A criterion that names a ``metric`` must name the population's ``metric``: criteria read the
    best score of the optimised metric.

    Raises:
        InvalidParameterError: for something that is not a criterion, or a criterion watching
            a metric the population does not optimise.
    """
    if stop is None:
        return []
    criteria = list(stop) if isinstance(stop, Sequence) and not isinstance(stop, str) else [stop]
    for criterion in criteria:
        check_role("stop", criterion)
        if not callable(criterion):
            raise invalid(
                "stop",
                "a criterion such as pt.Target(0.95), pt.Plateau(5) or pt.WallClock(3600), or a "
                "list of them",
                criterion,
            )
        watched = capabilities.watched_metric(criterion)
        if metric is not None and watched is not None and watched != metric:
            raise invalid(
                "stop",
                f"criteria that watch the optimised metric {metric!r}",
                criterion,
                hint=f"It watches the metric {watched!r}, but the population optimises "
                f"{metric!r}: use metric={metric!r} (or leave it out), or optimise {watched!r}.",
            )
    return criteria


def describe_stop(criteria: Sequence[Stop]) -> list[dict[str, Any]]:
    """The stored form of ``criteria`` (see :func:`~poptune.strategies.describe`)."""
    from ._base import describe

    return [d for criterion in criteria if (d := describe(criterion, "stop")) is not None]
