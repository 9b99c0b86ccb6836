"""Where a population's checkpoints are: what ``pt.run`` records, and where a reader finds them.

A population records its checkpoint location once, when it is created
(:func:`recorded_location`): a folder relative to its SQLite database file by default (so the
folder moves with the file), an absolute folder, or a URL. :func:`checkpoints_location` turns
that record back into a folder or URL on this machine, and :func:`open_checkpoint_store` opens
it, unless the caller says where the checkpoints are now.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from sqlalchemy.engine import make_url

from ._validation import invalid
from .checkpoints import CheckpointStore, open_checkpoints
from .config import PopulationConfig
from .records import PopulationRecord
from .storage import Storage

__all__ = ["checkpoints_location", "open_checkpoint_store", "recorded_location", "sqlite_folder"]

log = logging.getLogger("poptune")


def recorded_location(
    storage: Storage, checkpoints: str | os.PathLike[str] | CheckpointStore | None
) -> str:
    """What a new population records as its checkpoint location, given ``pt.run``'s
    ``checkpoints``: a URL as given, a folder as an absolute path (or relative to the SQLite
    database file when it lies under the file's folder), a store by its URL; by default
    ``checkpoints`` next to the SQLite file, or ``$POPTUNE_CHECKPOINTS`` (else
    ``runs/checkpoints``) for other storages."""
    if checkpoints is not None:
        if isinstance(checkpoints, str | os.PathLike) and not os.fspath(checkpoints).strip():
            raise invalid(
                "checkpoints",
                "a folder or URL (leave it out for the default, next to the database)",
                checkpoints,
            )
        if not isinstance(checkpoints, str | os.PathLike) and not hasattr(checkpoints, "url"):
            raise invalid(
                "checkpoints",
                "a folder, a URL (s3://bucket/prefix) or a checkpoint store",
                checkpoints,
            )
        if isinstance(checkpoints, str) and "://" in checkpoints:
            open_checkpoints(checkpoints)  # fail now, clearly, if the scheme is not installed
            return checkpoints
        if isinstance(checkpoints, str | os.PathLike):
            folder = Path(os.fspath(checkpoints)).expanduser().resolve()
            database = sqlite_folder(storage.url)
            if database is not None and folder.is_relative_to(database):
                return folder.relative_to(database).as_posix()  # moves with the database
            return str(folder)
        return str(checkpoints.url)
    if sqlite_folder(storage.url) is not None:
        return "checkpoints"  # next to the database file, wherever it moves
    folder = Path(os.environ.get("POPTUNE_CHECKPOINTS") or "runs/checkpoints").resolve()
    log.warning(
        "Checkpoints go to %s (pass checkpoints= or set $POPTUNE_CHECKPOINTS). Workers on other "
        "machines need to reach this folder at the same path.",
        folder,
    )
    return str(folder)


def sqlite_folder(url: str) -> Path | None:
    """The folder of a SQLite database file, or ``None`` for other storages."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        return Path(parsed.database).expanduser().resolve().parent
    return None


def checkpoints_location(storage: Storage, record: PopulationRecord) -> str:
    """Where the population's checkpoints are, as recorded: an absolute folder or URL, or a
    folder relative to the SQLite database file (the default), which moves with it."""
    recorded = str(PopulationConfig.of(record).checkpoints)
    folder = sqlite_folder(storage.url)
    if "://" in recorded or Path(recorded).is_absolute() or folder is None:
        return recorded
    return str(folder / recorded)


def open_checkpoint_store(
    storage: Storage,
    record: PopulationRecord,
    checkpoints: str | os.PathLike[str] | CheckpointStore | None = None,
) -> CheckpointStore:
    """The population's checkpoint store: ``checkpoints`` (a store, or the folder or URL where
    this machine finds them) if given, else the location it recorded."""
    if checkpoints is None:
        checkpoints = checkpoints_location(storage, record)
    return open_checkpoints(checkpoints)
