"""A member's user code failing: told apart from every other error, then recorded.

Everything the user's code raises becomes ``_UserCodeFailed`` (:func:`user_code`), a failure
of that member, never of the worker: :func:`record_failure` records it and releases the member,
to be retried, re-seeded from a healthy member or marked failed. Errors every worker would hit
stop the population instead (:func:`poptune.status.stop_population`).
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from .config import PopulationConfig
from .errors import PopulationError
from .records import ExploitEvent, FailureRecord, MemberRecord, MemberStatus, PopulationStatus
from .storage import Claim, LeaseLost, Storage

__all__ = ["record_failure", "user_code"]

log = logging.getLogger("poptune")


class _UserCodeFailed(Exception):
    """Raised inside the worker when the user's trainable raised; carries the traceback text."""

    def record(self, member: MemberRecord) -> FailureRecord:
        """The failure as recorded against ``member``'s next interval, timed now."""
        text = self.args[0]
        error_line = text.strip().splitlines()[-1] if text.strip() else "error"
        return FailureRecord(member.id, member.step + 1, error_line, text, time.time())


def user_code(call: Callable[..., Any], *args: Any) -> Any:
    """Run user code; any exception it raises becomes a recorded failure of the member."""
    try:
        return call(*args)
    except (KeyboardInterrupt, SystemExit, PopulationError):
        raise
    except Exception as error:
        raise _UserCodeFailed(_describe(error)) from error


def record_failure(
    storage: Storage,
    population_id: int,
    claim: Claim,
    record: FailureRecord,
    retry: bool,
    reseed: tuple[ExploitEvent, Mapping[str, Any]] | None,
    config: PopulationConfig,
) -> None:
    """Record the failure and release the member, to be retried from its last checkpoint
    (``retry``), re-seeded (``reseed``: the copy and its hparams), or else marked failed; stop
    the population once attempts fail in a row, every member once more than it may retry.
    Nothing happens if the member's lease was lost meanwhile."""
    member = claim.member
    try:
        outcome = storage.record_failure(
            claim,
            record,
            retry,
            reseed,
            done=reseed is not None and reseed[0].donor_step >= config.intervals,
        )
    except LeaseLost:
        return
    action = {
        MemberStatus.FAILED: "marked failed",
        MemberStatus.IDLE: "will retry" if retry else "re-seeded from another member",
        MemberStatus.DONE: "re-seeded from a member at the budget: done",
    }[outcome]
    text = record.traceback
    log.error("Member %d failed at step %d (%s):\n%s", member.id, member.step + 1, action, text)
    # Every member failing the same way should stop the run, not burn the budget.
    streak = storage.failure_streak(population_id)
    if streak >= config.population * (config.max_failures + 1):
        storage.set_status(
            population_id,
            PopulationStatus.ERROR,
            f"{streak} attempts in a row failed, with no successful interval in between. "
            f"The last failure:\n{text}",
        )


def _describe(error: BaseException) -> str:
    return "".join(traceback.format_exception(type(error), error, error.__traceback__))
