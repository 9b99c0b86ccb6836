"""Ready strategies: when a member looks at the population to exploit and explore."""

from __future__ import annotations

from typing import Any

from .._validation import check_int
from ..records import Candidate
from ._base import register

__all__ = ["Every"]


@register
class Every:
    """Ready after every ``intervals``-th interval, once ``burn_in`` intervals have been trained.

    A member is ready at step ``t`` when ``t >= burn_in`` and ``t % intervals == 0``. The check
    uses only the step, so in synchronous mode every member is ready at the same generations.

    Example:
        >>> import poptune as pt
        >>> ready = pt.Every(intervals=2, burn_in=4)   # exploit at steps 4, 6, 8, ...
    """

    def __init__(self, intervals: int = 1, burn_in: int = 0) -> None:
        self.intervals = check_int("intervals", intervals, 1, owner="Every")
        self.burn_in = check_int("burn_in", burn_in, 0, owner="Every")

    def __call__(self, member: Candidate) -> bool:
        """Is ``member`` due to exploit after its interval ``member.step``?"""
        step = member.step
        return step > 0 and step >= self.burn_in and step % self.intervals == 0

    def to_config(self) -> dict[str, Any]:
        """Parameters to store with the population."""
        return {"intervals": self.intervals, "burn_in": self.burn_in}

    def __repr__(self) -> str:
        return f"Every(intervals={self.intervals}, burn_in={self.burn_in})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Every) and other.to_config() == self.to_config()
