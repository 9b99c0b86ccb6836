"""The user's side of PBT: one member's model, trained one interval at a time."""

from __future__ import annotations

import abc
import inspect
import math
import random
import sys
from collections.abc import Mapping
from numbers import Real
from typing import Any

import numpy as np

from ._validation import invalid

__all__ = ["Trainable", "check_trainable", "metrics_of", "seed_globals"]


def seed_globals(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and, if it is imported, torch's.

    This is what :meth:`Trainable.reseed` does by default before every interval.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)


class Trainable(abc.ABC):
    """Subclass this with your model; a worker keeps one instance per member in memory.

    A worker picking up a member for the first time calls ``__init__(hparams, seed)`` (and
    ``load_state_dict`` with the member's checkpoint, if it has one). Then, for every interval,
    ``reseed(seed)``, ``train(hparams)`` and ``evaluate()``; ``state_dict()`` is checkpointed in
    the background. The same instance continues the member's next intervals: after an exploit
    it gets the donor's state through ``load_state_dict``. It is rebuilt only when the member
    moves to another worker, after a failure, or on resume; so put everything training needs to
    continue (weights, optimizer moments, counters) in ``state_dict``, and keep expensive,
    read-only work (loading a data set) at module level or in a cache.

    ``seed`` (and ``reseed``'s) differs for every member and interval and is derived from the
    run's seed, so a seeded run is reproducible: a synchronous run gives the same result whether
    a member stayed in memory or was rebuilt elsewhere, as long as an interval's randomness
    comes from the seed it was given. ``reseed`` seeds Python's, NumPy's and torch's global
    generators by default; override it if you keep generators of your own. ``hparams`` may
    change between intervals (that is the schedule PBT discovers): apply them in ``train``
    rather than only in ``__init__``.

    Example:
        >>> import poptune as pt
        >>> class Quadratic(pt.Trainable):
        ...     def __init__(self, hparams, seed):
        ...         self.theta = [0.9, 0.9]
        ...     def train(self, hparams):
        ...         h = (hparams["h0"], hparams["h1"])
        ...         self.theta = [t - 0.01 * 2 * hi * t for t, hi in zip(self.theta, h)]
        ...     def evaluate(self):
        ...         return 1.2 - sum(t * t for t in self.theta)
        ...     def state_dict(self):
        ...         return {"theta": self.theta}
        ...     def load_state_dict(self, state):
        ...         self.theta = list(state["theta"])
    """

    @abc.abstractmethod
    def __init__(self, hparams: Mapping[str, Any], seed: int) -> None:
        """Build the model (and optimizer) for a member with these hyperparameters."""

    def reseed(self, seed: int) -> None:
        """Seed the randomness of the coming interval; called before every ``train``.

        The default seeds Python's, NumPy's and torch's global generators
        (:func:`seed_globals`). Override it to reseed generators of your own, e.g.
        ``self.generator = torch.Generator().manual_seed(seed)``.
        """
        seed_globals(seed)

    @abc.abstractmethod
    def train(self, hparams: Mapping[str, Any]) -> None:
        """Train one interval with ``hparams`` (which may differ from the ones at ``__init__``)."""

    @abc.abstractmethod
    def evaluate(self) -> float | Mapping[str, float]:
        """Return the score, or a dict of metrics that includes the run's ``metric``."""

    @abc.abstractmethod
    def state_dict(self) -> Any:
        """Everything needed to continue training: what an exploit copies."""

    @abc.abstractmethod
    def load_state_dict(self, state: Any) -> None:
        """Restore a state returned by ``state_dict`` (possibly another member's)."""


_REQUIRED = ("train", "evaluate", "state_dict", "load_state_dict")


def check_trainable(trainable: Any) -> None:
    """Raise :class:`~poptune.errors.InvalidParameterError` (a ``TypeError``) unless
    ``trainable`` is a class with the Trainable methods or a training function taking one
    argument (see :mod:`poptune.loop`)."""
    if not isinstance(trainable, type):
        if inspect.isfunction(trainable) or inspect.ismethod(trainable):
            _check_training_function(trainable)
            return
        raise invalid(
            "trainable",
            "a class (not an instance) with __init__(hparams, seed), train, evaluate, "
            "state_dict and load_state_dict, or a training function (def train(ctx))",
            trainable,
        )
    missing = [name for name in _REQUIRED if not callable(getattr(trainable, name, None))]
    if missing:
        raise invalid(
            "trainable",
            "a class with train, evaluate, state_dict and load_state_dict",
            trainable,
            hint=f"It lacks {', '.join(missing)}: subclass poptune.Trainable or define them.",
        )


def _check_training_function(function: Any) -> None:
    try:
        inspect.signature(function).bind(object())
    except TypeError:
        raise invalid(
            "trainable",
            "a training function that takes one argument, the context (def train(ctx))",
            f"{function.__qualname__}{inspect.signature(function)}",
        ) from None


def metrics_of(
    result: Any, metric: str, source: str = "evaluate()"
) -> tuple[float, dict[str, Any]]:
    """Split ``evaluate()``'s result (or what ``source`` gave: ``interval.report()``) into the
    score for ``metric`` and the dict of all metrics; messages name ``source``.

    Numbers (and one-element tensors) become floats; an int too large for a float becomes an
    infinite score, which ranks like any other infinite score (worst). Besides numbers a metric
    may be a str, a bool or ``None``.

    Raises:
        KeyError: if ``metric`` is not among the returned keys (the message lists them).
        TypeError: if the result is neither a number nor a mapping of numbers, or a metric is
            none of the kinds above (an object would be stored as a meaningless repr).
    """
    if isinstance(result, Real) and not isinstance(result, bool):
        value = _as_float(result)
        return value, {metric: value}
    if isinstance(result, Mapping):
        metrics: dict[str, Any] = {}
        for key, value in result.items():
            if isinstance(value, Real) and not isinstance(value, bool):
                metrics[str(key)] = _as_float(value)
            elif _is_scalar_tensor(value):  # np.bool_ and a bool tensor stay bools
                item = value.item()
                metrics[str(key)] = item if isinstance(item, bool) else _as_float(item)
            elif isinstance(value, str | bool | None):
                metrics[str(key)] = value
            else:
                shown = repr(value)
                shown = shown if len(shown) <= 80 else f"{shown[:79]}…"
                raise TypeError(
                    f"{source} returned {str(key)!r}={shown} ({type(value).__name__}), which "
                    "is not a number, str, bool or None. Return a number (e.g. float(x)), or "
                    "leave it out of the dict."
                )
        if metric not in metrics:
            raise KeyError(
                f"{source} returned no metric {metric!r}; it returned the keys "
                f"{sorted(metrics)}. Pass metric= one of those, or add {metric!r} to the dict."
            )
        score = metrics[metric]
        if not isinstance(score, float):
            raise TypeError(
                f"{source} returned {metric!r}={result[metric]!r}, which is not a number."
            )
        return score, metrics
    if _is_scalar_tensor(result) and not isinstance(result.item(), bool):
        value = _as_float(result.item())
        return value, {metric: value}
    raise TypeError(
        f"{source} must return a number or a dict of metrics; it returned {result!r} "
        f"({type(result).__name__})."
    )


def _as_float(value: Any) -> float:
    """``value`` as a float; one beyond the float range (``10**400``) as an infinity."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _is_scalar_tensor(value: Any) -> bool:
    item = getattr(value, "item", None)
    size = getattr(value, "numel", None) or getattr(value, "size", None)
    try:
        return callable(item) and (size() if callable(size) else size) == 1
    except TypeError:
        return False
