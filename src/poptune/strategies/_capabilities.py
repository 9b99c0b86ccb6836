"""What a strategy declares about itself, read in one place.

A strategy can be any callable, so these are optional attributes, declared (with their types and
meaning) on the protocols in :mod:`poptune.strategies._base` and read only here, with the default
that an undeclared one means:

- an exploit's ``needs_hparams: bool`` (every candidate's hparams, not only the donor's) and
  ``history: int`` (how many earlier steps of scores it compares, as ``TTest`` does);
- an explore's ``window: int`` (recent intervals it learns from, as ``PB2`` does) and
  ``check_space(space)`` (refuses a space it cannot explore before anything trains);
- a stop criterion's ``metric: str | None`` (the metric it watches).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..space import Space

__all__ = ["check_space", "history", "needs_hparams", "watched_metric", "window"]


def needs_hparams(exploit: Any) -> bool:
    """Whether ``exploit`` reads every candidate's hparams (so the worker reads them all)."""
    return bool(getattr(exploit, "needs_hparams", False))


def history(exploit: Any) -> int:
    """How many earlier steps of every candidate's scores ``exploit`` compares (0: none)."""
    return int(getattr(exploit, "history", 0) or 0)


def window(explore: Any) -> int:
    """How many recent steps of the population's intervals ``explore`` learns from (0: none)."""
    return int(getattr(explore, "window", 0) or 0)


def check_space(explore: Any, space: Space) -> None:
    """Let ``explore`` refuse ``space`` before anything trains (``PB2`` needs a tunable
    number); a strategy that declares no check accepts every space."""
    check: Callable[[Space], None] | None = getattr(explore, "check_space", None)
    if callable(check):
        check(space)


def watched_metric(criterion: Any) -> str | None:
    """The metric a stop criterion watches, or ``None`` for one that watches the optimised
    metric (or none, as ``WallClock``)."""
    watched = getattr(criterion, "metric", None)
    return watched if isinstance(watched, str) else None
