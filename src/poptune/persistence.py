"""When and how a member's weights are persisted: the checkpoint policy (``checkpoint_every``)
and the save itself.

By default every interval is checkpointed. Otherwise a member trains on in memory, under the
same claim, until the policy says to checkpoint, and the intervals before that checkpoint are
recorded with it, in its transaction (so a crash loses them all and records none of them):

- ``checkpoint_every=k`` (intervals): at the multiples of k. Exploits happen only there, where
  every member checkpoints, so every donor, and every peer a member is ranked against, is
  committed. A crash loses at most k intervals of one member's training.
- ``checkpoint_every=timedelta(...)`` (seconds): at the first interval boundary at which at
  least that much of the member's training (train and evaluate, wall time, measured by the
  worker from its restore) has passed since its checkpoint, and at every step where it is
  ready to exploit. Exploits happen where they would without ``checkpoint_every`` (the ready
  steps), each at a checkpoint; with ``pt.Every`` every member is ready at the same steps, so
  the peers a member is ranked against there are all committed too. A crash loses at most that
  many seconds of one member's training, plus the interval that crossed them.

Either way a member checkpoints at the budget and when its worker is asked to stop, and
exploit only ever copies a committed checkpoint (``Storage.record_exploit`` re-checks it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any

from .checkpoints import CheckpointStore
from .config import PopulationConfig
from .failures import _UserCodeFailed
from .records import CheckpointRef, IntervalRecord, MemberRecord
from .status import stop_population
from .storage import Storage

__all__ = ["CheckpointPolicy", "checkpointed", "continued", "exploit_step", "save_checkpoint"]


class CheckpointPolicy:
    """One worker's ``checkpoint_every``: after which interval it checkpoints a member, and
    after which a member may exploit.

    ``clock`` measures the member's training in seconds (any monotonic clock: tests and the
    simulator pass their own, so that a duration is deterministic there).

    Example:
        >>> from datetime import timedelta
        >>> config = result.config.replace(checkpoint_every=timedelta(minutes=10))
        >>> readings = iter([0.0, 250.0, 610.0])          # the clock, in seconds
        >>> policy = CheckpointPolicy(config, clock=lambda: next(readings))
        >>> started = policy.start()                      # once the member is restored
        >>> policy.checkpoints(1, started), policy.checkpoints(2, started)
        (False, True)
    """

    def __init__(
        self, config: PopulationConfig, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config
        self.clock = clock

    def start(self) -> float:
        """The clock when a member starts training from its checkpoint (after its restore)."""
        return self.clock()

    def checkpoints(
        self,
        step: int,
        started: float,
        stopping: bool = False,
        ready: Callable[[], bool] = lambda: False,
    ) -> bool:
        """Whether the interval that just reached ``step`` is checkpointed, for a member that
        started training at ``started`` (:meth:`start`); ``ready`` says whether the member is
        due to exploit after it (asked only for a duration, see the module's docstring)."""
        if checkpointed(self.config, step, stopping):
            return True
        every = self.config.checkpoint_every
        return isinstance(every, timedelta) and (
            self.clock() - started >= every.total_seconds() or ready()
        )

    def exploits(self, step: int) -> bool:
        """Whether a member may exploit after its checkpointed ``step``
        (:func:`exploit_step`)."""
        return exploit_step(self.config, step)


def checkpointed(config: PopulationConfig, step: int, stopping: bool) -> bool:
    """Whether the interval that reaches ``step`` is checkpointed, as far as the step alone
    says: every one by default; with ``checkpoint_every=k`` those at the multiples of k and at
    the budget; any once the worker is ``stopping`` (so that stopping loses nothing trained).
    With a duration, at the budget and when stopping (the rest is :class:`CheckpointPolicy`'s,
    which knows the time)."""
    every = config.checkpoint_every
    if every is None or step >= config.intervals or stopping:
        return True
    return isinstance(every, int) and step % every == 0


def exploit_step(config: PopulationConfig, step: int) -> bool:
    """Whether a member may exploit after its checkpointed ``step``: below the budget and,
    with ``checkpoint_every=k``, at a multiple of k, where every member checkpoints, so that
    its peers at that step are all there to copy. With a duration, at any step: a member
    checkpoints wherever it is ready, and only a checkpointed step can exploit."""
    every = config.checkpoint_every
    return step < config.intervals and (not isinstance(every, int) or step % every == 0)


def continued(member: MemberRecord, interval: IntervalRecord) -> MemberRecord:
    """``member`` after ``interval``, trained in memory and not checkpointed: its next interval
    continues this one (its origin), under the same claim."""
    return replace(
        member,
        step=interval.step,
        score=interval.score,
        restore=(member.id, interval.step),
        exploit_pending=False,
    )


def save_checkpoint(
    checkpoints: CheckpointStore,
    folder: str,
    storage: Storage,
    population_id: int,
    member: int,
    step: int,
    state: Any,
) -> CheckpointRef:
    """Write the member's new checkpoint in ``folder``; a full disk stops the population
    clearly, and a state that cannot be stored fails the member (its code's fault)."""
    try:
        return checkpoints.save(folder, member, step, state)
    except OSError as error:
        message = (
            f"Could not write the checkpoint of member {member} at step {step}: {error}. "
            "No partial checkpoint was left behind. Free space (or point checkpoints= "
            "elsewhere), then resume the population."
        )
        raise stop_population(storage, population_id, message) from error
    except TypeError as error:  # the state holds something that cannot be stored safely
        raise _UserCodeFailed(
            f"The state of member {member} at step {step} (from state_dict(), or "
            f"interval.report(state=...)) cannot be checkpointed: {error}"
        ) from error
