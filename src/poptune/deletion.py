"""Deleting a stored population: its rows, unless it is being trained, then the files it owns.

``pt.delete`` and ``poptune delete`` call :func:`delete_population`; ``pt.run`` calls it too, to
replace a population that never trained with another configuration. Only files the population
can be proven to own are removed (see :func:`poptune.checkpoints.population_folder`).
"""

from __future__ import annotations

import logging
import os

from .checkpoints import (
    CheckpointStore,
    UnsafeCheckpointPath,
    confined,
    open_checkpoints,
    population_folder,
    population_folders,
)
from .config import PopulationConfig
from .errors import PopulationError
from .handover import sweep_segments
from .liveness import expire_dead_local_claims
from .locations import checkpoints_location
from .records import CheckpointRef, PopulationRecord
from .storage import PopulationBusy, Storage, redact_url

__all__ = ["check_deletable", "delete_population"]

log = logging.getLogger("poptune")


def check_deletable(storage: Storage, record: PopulationRecord) -> None:
    """Raise :class:`PopulationError` if :func:`poptune.delete` would refuse ``record`` now (it
    is being trained), deleting nothing: the CLI checks before it asks for confirmation."""
    _delete_rows(storage, record, check_only=True)


def delete_population(
    storage: Storage,
    record: PopulationRecord,
    checkpoints: str | os.PathLike[str] | CheckpointStore | None = None,
) -> None:
    """Delete the population's rows unless it is being trained (checked in the same
    transaction), then the files it owns (nothing refers to them any more), found where they
    were recorded or at ``checkpoints``, and the shared-memory segments its killed workers left
    on this machine (:func:`poptune.handover.sweep_segments`).

    Raises:
        PopulationError: if it is being trained; nothing is deleted then.
    """
    _check_location(storage, record, checkpoints)
    refs = _delete_rows(storage, record)
    database = storage.database_id(create=False)
    sweep_segments(database, record.id)
    if checkpoints is None and not PopulationConfig.of(record).checkpoints:
        return
    if checkpoints is None:
        checkpoints = checkpoints_location(storage, record)
    files = open_checkpoints(checkpoints)
    folders = population_folders(database, record.id)
    paths = set()
    for ref in refs:
        try:
            paths.add(confined(ref.path, folders))
        except UnsafeCheckpointPath as error:
            log.warning("%s", error)
    if database is not None:  # its own folder: every file there is the population's
        paths |= set(files.files(population_folder(database, record.id)))
    for path in sorted(paths):
        try:
            files.remove(path)
        except UnsafeCheckpointPath as error:  # a symbolic link out of the folder
            log.warning("%s", error)
    files.close()


def _holds_files(location: str | os.PathLike[str] | CheckpointStore, folder: str) -> bool:
    """Whether the checkpoint store at ``location`` has any file in ``folder``."""
    files = open_checkpoints(location)
    try:
        return bool(files.files(folder))
    finally:
        if files is not location:  # a store the caller passed stays open
            files.close()


def _check_location(
    storage: Storage,
    record: PopulationRecord,
    checkpoints: str | os.PathLike[str] | CheckpointStore | None,
) -> None:
    """Refuse a ``checkpoints`` location that holds no file of the population while the one
    it recorded does (a mistyped ``--checkpoints``): its rows deleted, nothing would prove
    those files its, and they would stay for ever. Nothing is deleted then."""
    database = storage.database_id(create=False)
    if checkpoints is None or database is None or not PopulationConfig.of(record).checkpoints:
        return
    folder = population_folder(database, record.id)
    recorded = checkpoints_location(storage, record)
    if _holds_files(checkpoints, folder) or not _holds_files(recorded, folder):
        return
    given = os.fspath(checkpoints) if isinstance(checkpoints, str | os.PathLike) else checkpoints
    raise PopulationError(
        f"Population {record.name!r} has no checkpoint file under {redact_url(str(given))!r}, "
        f"but has some where it recorded them, {redact_url(recorded)!r}: nothing was deleted. "
        "Leave out "
        "checkpoints= (--checkpoints) to delete those, or pass the folder where this machine "
        "finds them."
    )


def _delete_rows(
    storage: Storage, record: PopulationRecord, check_only: bool = False
) -> list[CheckpointRef]:
    expire_dead_local_claims(storage, record)
    quiet = 2 * PopulationConfig.of(record).lease_seconds
    try:
        return storage.delete_population(record.id, quiet_seconds=quiet, check_only=check_only)
    except PopulationBusy as busy:
        raise PopulationError(f"Population {record.name!r} cannot be deleted: {busy}.") from None
