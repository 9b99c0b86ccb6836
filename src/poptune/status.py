"""When the workers end a population, and the status they give it.

- ``finished``: every healthy member reached the budget (:func:`finished`);
- ``stopped``: a stop criterion says so, after a recorded interval (:func:`apply_stop_criteria`);
- ``error``: every member failed (:func:`finished`), attempts keep failing (see
  :func:`poptune.failures.record_failure`), or an error every worker would hit
  (:func:`stop_population`: a wrong metric, a full disk, a missing checkpoint folder).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from .config import PopulationConfig
from .errors import PopulationError
from .records import MemberStatus, PopulationStatus
from .storage import Storage
from .strategies.stop import Progress, check_stop

__all__ = ["apply_stop_criteria", "finished", "stop_population"]

log = logging.getLogger("poptune")


def stop_population(storage: Storage, population_id: int, message: str) -> PopulationError:
    """Mark the population stopped on an error every worker would hit (a wrong metric, a
    full disk, a missing checkpoint folder); return the exception to raise."""
    storage.set_status(population_id, PopulationStatus.ERROR, message)
    return PopulationError(message)


def finished(storage: Storage, population_id: int, config: PopulationConfig) -> bool:
    """Whether the population is no longer running, marking it finished once every healthy
    member reached the budget, or stopped on an error once every member failed."""
    summary = storage.summary(population_id, config.intervals, config.mode)
    if summary.status is not PopulationStatus.RUNNING:
        return True
    members = storage.members(population_id)
    healthy = [m for m in members if m.status is not MemberStatus.FAILED]
    if not healthy:
        failures = storage.failures(population_id)
        last = failures[-1].traceback if failures else "no failure was recorded"
        storage.set_status(
            population_id,
            PopulationStatus.ERROR,
            f"Every member failed. The last failure:\n{last}",
        )
        return True
    if all(m.step >= config.intervals for m in healthy):
        storage.set_status(population_id, PopulationStatus.FINISHED, None)
        return True
    return False


def apply_stop_criteria(
    storage: Storage,
    population_id: int,
    config: PopulationConfig,
    criteria: Sequence[Callable[..., str | None]],
) -> None:
    """Stop the population (status ``stopped``, with the reason) if a criterion says so."""
    progress = Progress.from_best(
        config.metric,
        config.mode,
        storage.best_by_step(population_id, config.mode),
        time.time() - config.started_at,
    )
    reason = check_stop(criteria, progress)
    if reason is not None and storage.stop(population_id, reason):
        log.info("Population stopped: %s.", reason)
