"""Ready strategies: when a member looks at the population to exploit and explore."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .._validation import check_int, renamed
from ..records import Candidate
from ._base import Builtin, register, settle

__all__ = ["Every"]


@register
@renamed("Every", intervals="period")
@dataclass(frozen=True)
class Every(Builtin):
    """Ready every ``period`` intervals, once ``burn_in`` intervals have been trained.

    A member is ready at step ``t`` when ``t >= burn_in`` and ``t % period == 0``. The check
    uses only the step, so in synchronous mode every member is ready at the same generations.
    (``period`` was called ``intervals`` before, which is also ``pt.run``'s budget;
    ``Every(intervals=...)`` still works, with a ``DeprecationWarning``.)

    Example:
        >>> import poptune as pt
        >>> ready = pt.Every(period=2, burn_in=4)   # exploit at steps 4, 6, 8, ...
    """

    role: ClassVar[str] = "ready"

    period: int = 1
    burn_in: int = 0

    def __post_init__(self) -> None:
        settle(
            self,
            period=check_int("period", self.period, 1, owner="Every"),
            burn_in=check_int("burn_in", self.burn_in, 0, owner="Every"),
        )

    def __call__(self, member: Candidate) -> bool:
        """Is ``member`` due to exploit after its interval ``member.step``?"""
        step = member.step
        return step > 0 and step >= self.burn_in and step % self.period == 0
