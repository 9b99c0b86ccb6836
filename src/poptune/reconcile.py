"""A run against what the storage already holds under the population's name.

``pt.run`` with a name the storage knows continues that population if the configuration is the
same, replaces it if it never trained, and is refused otherwise (:func:`reconcile`);
``pt.replay`` continues a replay of the same schedule (:func:`reconcile_replay`); ``pt.resume``
records its changes and gives failed members another try (:func:`continue_stored`). A
population recorded when ``step`` meant something else can be read but not trained on
(:func:`check_continuable`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from ._validation import invalid
from .checkpoints import CheckpointStore
from .config import PopulationConfig, stored_checkpoint_every
from .deletion import delete_population
from .errors import PopulationError
from .liveness import expire_dead_local_claims
from .locations import recorded_location
from .records import PopulationRecord, PopulationStatus
from .storage import PopulationExists, PopulationNotFound, Storage, command_hint, redact_url

__all__ = [
    "check_continuable",
    "check_same",
    "continue_stored",
    "reconcile",
    "reconcile_replay",
    "reopen",
]

log = logging.getLogger("poptune")


def reconcile(
    storage: Storage,
    name: str,
    config: PopulationConfig,
    start: Sequence[Mapping[str, Any]],
    checkpoints: str | os.PathLike[str] | CheckpointStore | None,
) -> PopulationRecord:
    """The stored population ``name`` that a run of ``config`` trains: created (its members
    starting from ``start``, its checkpoints where ``checkpoints`` says) if there is none or
    the one there never trained, else the one there if its configuration is the same.

    Raises:
        PopulationExists: if one with another configuration has trained already.
    """
    try:
        record: PopulationRecord | None = storage.population(name)
    except PopulationNotFound:
        record = None
    if record is not None and _replaced(storage, record, config):
        record = None
    if record is None:
        config = config.replace(checkpoints=recorded_location(storage, checkpoints))
        try:
            return storage.create_population(name, config.to_dict(), start)
        except PopulationExists:  # an identical run started at the same time created it
            record = storage.population(name)
            check_same(record, config, storage)
            return record
    check_same(record, config, storage)
    storage.update_config(
        record.id,
        {
            "stop": [dict(d) for d in config.stop],
            "started_at": config.started_at,
            "block": config.block,  # how to schedule, not the algorithm: this run's
            **stored_checkpoint_every(config.checkpoint_every),  # likewise how to persist
        },
    )
    log.warning(
        "Population %r already exists in %s with this configuration; continuing it%s. "
        "Pass another name for a fresh run.",
        name,
        redact_url(storage.url),
        " (it is finished: nothing to train)" if record.status is PopulationStatus.FINISHED else "",
    )
    return storage.population(name)


def reconcile_replay(
    storage: Storage,
    name: str,
    config: PopulationConfig,
    start: Sequence[Mapping[str, Any]],
) -> PopulationRecord:
    """The stored replay ``name`` of ``config``'s schedule: created (starting from ``start``)
    if there is none, else the one there if it replays the same schedule.

    Raises:
        ValueError: if a population of that name is not a replay of this schedule.
    """
    try:
        record = storage.population(name)
    except PopulationNotFound:
        try:
            record = storage.create_population(name, config.to_dict(), start)
        except PopulationExists:
            record = storage.population(name)
    if PopulationConfig.of(record).schedule != config.schedule:
        raise invalid(
            "replay_name",
            "the name of a replay of this schedule, or of no population",
            name,
            "replay",
            hint=f"A population of that name, not a replay of this schedule, is in "
            f"{redact_url(storage.url)}: pass replay_name= (poptune replay --as) another name.",
        )
    return record


def _replaced(storage: Storage, record: PopulationRecord, config: PopulationConfig) -> bool:
    """Delete ``record`` if its configuration differs from ``config``, it stopped on an error
    and it never trained (nothing worth keeping: a wrong metric name, an import that failed);
    whether it was.

    One still marked running is kept even with no interval: it may be waiting for workers
    that have not started yet (``poptune worker`` jobs in a queue, perhaps another team's), so
    replacing it would delete what this run cannot prove is its own."""
    differences = PopulationConfig.of(record).differences(config)
    if (
        not differences
        or record.status is not PopulationStatus.ERROR
        or not _never_trained(storage, record)
    ):
        return False
    log.warning(
        "Population %r in %s never recorded an interval (status %s), and this run has "
        "another configuration (%s): replacing it.",
        record.name,
        redact_url(storage.url),
        record.status.value,
        "; ".join(differences),
    )
    delete_population(storage, record)
    return True


def check_same(record: PopulationRecord, config: PopulationConfig, storage: Storage) -> None:
    """Refuse to continue ``record`` with ``config`` if they define different algorithms.

    Raises:
        PopulationExists: naming the differences and the ways out.
    """
    differing = PopulationConfig.of(record).differences(config)
    if differing:
        raise PopulationExists(
            f"A population named {record.name!r} already exists in {redact_url(storage.url)} "
            f"with a different configuration ({'; '.join(differing)}). Choose another name, "
            f"continue the stored one with pt.load(storage, {record.name!r}).resume() / "
            f"`{command_hint('resume', record.name, storage.url)}`, or delete it with "
            f"`{command_hint('delete', record.name, storage.url)}`."
        )


def _never_trained(storage: Storage, record: PopulationRecord) -> bool:
    """Whether the population has nothing worth keeping: no interval recorded, and no worker
    (alive) training one."""
    expire_dead_local_claims(storage, record)
    return not storage.intervals(record.id) and not storage.claims(record.id)


def check_continuable(record: PopulationRecord) -> None:
    """Refuse to train a population recorded when ``step`` meant something else and whose
    rows the upgrade could not rewrite exactly (see docs/upgrades.md).

    Raises:
        PopulationError: saying it can be read but not continued.
    """
    why = PopulationConfig.of(record).legacy_steps
    if why:
        reason = f" ({why})" if isinstance(why, str) else ""
        raise PopulationError(
            f"Population {record.name!r} was recorded by an older poptune, whose steps counted "
            "the intervals a member trained itself rather than the intervals behind its weights, "
            f"and its records cannot be rewritten to the new meaning exactly{reason}. It can "
            "still be read (status, report, pt.load), but not continued: training it on would "
            "mix the two meanings. Start a new population (another name) instead."
        )


def reopen(storage: Storage, record: PopulationRecord) -> None:
    """Give failed members another try and mark the population running again."""
    expire_dead_local_claims(storage, record)
    storage.reopen_members(record.id, PopulationConfig.of(record).intervals)
    if record.status is not PopulationStatus.RUNNING:
        storage.set_status(record.id, PopulationStatus.RUNNING, None)


def continue_stored(
    storage: Storage,
    record: PopulationRecord,
    intervals: int | None,
    changes: Mapping[str, Any],
) -> PopulationRecord:
    """Record a resume's changes to ``record`` (a larger budget of ``intervals``, the
    configuration ``changes``), reopen it, and return it as stored now."""
    if intervals is not None:
        storage.extend(record.id, intervals)
    storage.update_config(record.id, dict(changes))
    reopen(storage, storage.population(record.name))
    return storage.population(record.name)
