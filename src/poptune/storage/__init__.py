"""Where a population's shared state lives: the :class:`Storage` base class and its SQL backend.

(:class:`poptune.testing.MemoryStorage` keeps it in memory, for tests.)

The embedded default is one SQLite file, ``runs/poptune.db`` under the current directory (or
``$POPTUNE_STORAGE``); checkpoints go to a ``checkpoints`` folder next to it.
"""

from __future__ import annotations

import os

from .._text import shell_word
from ._base import (
    Claim,
    Copy,
    LeaseLost,
    PopulationBusy,
    PopulationExists,
    PopulationNotFound,
    Recording,
    Storage,
    StorageError,
    Summary,
)
from ._memory import MEMORY_URL
from ._schema import LEGACY_STEPS, SCHEMA_VERSION
from ._sql import OPEN_MODES, OpenMode, SQLStorage, redact_url

__all__ = [
    "DEFAULT_STORAGE",
    "LEGACY_STEPS",
    "OPEN_MODES",
    "SCHEMA_VERSION",
    "Claim",
    "Copy",
    "LeaseLost",
    "OpenMode",
    "PopulationBusy",
    "PopulationExists",
    "PopulationNotFound",
    "Recording",
    "SQLStorage",
    "Storage",
    "StorageError",
    "Summary",
    "check_shareable",
    "command_hint",
    "default_storage_url",
    "open_storage",
    "redact_url",
    "storage_option",
]

DEFAULT_STORAGE = "sqlite:///runs/poptune.db"


def default_storage_url() -> str:
    """``$POPTUNE_STORAGE`` if set, else ``sqlite:///runs/poptune.db`` (relative to the cwd)."""
    return os.environ.get("POPTUNE_STORAGE") or DEFAULT_STORAGE


def storage_option(url: str) -> str:
    """What a command hint needs to reach the storage at ``url``: nothing for the default,
    else `` --storage 'URL'`` (redacted: a hint never prints a password; quoted for a shell)."""
    if url == default_storage_url():
        return ""
    word = shell_word(redact_url(url))
    quoted = word if word.startswith("'") else f"'{word}'"  # quoted always, as the docs show
    return f" --storage {quoted}"


def command_hint(verb: str, name: str, url: str | None = None, options: str = "") -> str:
    """The ``poptune VERB NAME`` command a message tells a user to copy into a shell, with the
    :func:`storage_option` ``url`` needs (none for the default; ``None``: none either) and the
    caller's own ``options`` (never a stored string).

    The name is one quoted shell word; a name that starts with ``-`` comes after ``--``, the
    options before it, so that it is not read as an option.

    Example:
        >>> command_hint("resume", "my run")
        "poptune resume 'my run'"
        >>> command_hint("status", "-x", "sqlite:///other.db")
        "poptune status --storage 'sqlite:///other.db' -- -x"
        >>> command_hint("export", "-x", options="--tensorboard DIR")
        'poptune export --tensorboard DIR -- -x'
    """
    given = ("" if url is None else storage_option(url)) + (f" {options}" if options else "")
    word = shell_word(name)
    if str(name).startswith("-"):  # quoted or not, the shell passes on a word that starts with -
        return f"poptune {verb}{given} -- {word}"
    return f"poptune {verb} {word}{given}"


def open_storage(
    url: str | Storage | None = None,
    mode: OpenMode = "create",
    allow_other_tables: bool = False,
) -> Storage:
    """Open the storage at ``url`` (a SQLAlchemy URL), or pass a ``Storage`` through.

    ``mode`` says what opening may do (see :class:`SQLStorage`): ``"read"`` creates and changes
    nothing (status, list, report, the dashboard, ``pt.load``); ``"write"`` upgrades an older
    schema but needs a poptune database there (resume, worker, delete); ``"create"`` (the
    default, ``pt.run``) also creates the SQLite file and the tables. A SQLite file that already
    holds another application's tables is refused unless ``allow_other_tables=True``.

    Example:
        >>> storage = pt.open_storage("sqlite:///app.db", allow_other_tables=True)
        >>> pt.run(Digits, {"lr": pt.LogUniform(1e-3, 0.5)}, "accuracy", storage=storage,
        ...        population=2, intervals=2, progress=False).status
        'finished'

    Raises:
        StorageError: if the URL cannot be parsed or the database cannot be opened in that mode.
    """
    if url is None:
        url = default_storage_url()
    if isinstance(url, Storage):
        return url
    if not isinstance(url, str):
        raise StorageError(
            f"The storage must be a URL string or a Storage, not {type(url).__name__} "
            f"{str(url)[:100]!r}: e.g. storage='sqlite:///runs/poptune.db' (a file: "
            "'sqlite:///' + its path) or 'postgresql+psycopg://user@host/db'."
        )
    check_shareable(url)
    return SQLStorage(url, mode, allow_other_tables)


def check_shareable(url: str) -> None:
    """Refuse, before any worker process starts, a storage that other processes cannot open.

    Raises:
        StorageError: for ``memory://`` (a :class:`poptune.testing.MemoryStorage`).
    """
    if url == MEMORY_URL:
        raise StorageError(
            "The storage 'memory://' is a MemoryStorage (poptune.testing), which lives in one "
            "process: worker processes cannot open it. Pass the MemoryStorage object itself with "
            "workers=1, or use a SQLite file or PostgreSQL: 'sqlite:///runs/poptune.db'."
        )
