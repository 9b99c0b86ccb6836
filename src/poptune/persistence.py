"""When and how a member's weights are persisted: the checkpoint policy (``checkpoint_every``)
and the save itself.

By default every interval is checkpointed. With ``checkpoint_every=k`` a member trains on in
memory, under the same claim, until a multiple of k (or the budget, or a stop), and the
intervals before that checkpoint are recorded with it: a crash loses at most k intervals of one
member's training, and records none of them. Exploits happen only at those steps, where every
member checkpoints, so every donor is committed.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from .checkpoints import CheckpointStore
from .config import PopulationConfig
from .failures import _UserCodeFailed
from .records import CheckpointRef, IntervalRecord, MemberRecord
from .status import stop_population
from .storage import Storage

__all__ = ["checkpointed", "continued", "exploit_step", "save_checkpoint"]


def checkpointed(config: PopulationConfig, step: int, stopping: bool) -> bool:
    """Whether the interval that reaches ``step`` is checkpointed: every one by default; with
    ``checkpoint_every=k`` those at the multiples of k and at the budget, and any once the
    worker is ``stopping`` (so that stopping loses nothing trained)."""
    every = config.checkpoint_every
    return every is None or step % every == 0 or step >= config.intervals or stopping


def exploit_step(config: PopulationConfig, step: int) -> bool:
    """Whether a member may exploit after ``step``: below the budget and, with
    ``checkpoint_every=k``, at a multiple of k, where every member checkpoints, so that its
    peers at that step are all there to copy."""
    every = config.checkpoint_every
    return step < config.intervals and (every is None or step % every == 0)


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
