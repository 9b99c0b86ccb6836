"""Retrying storage calls through transient database errors.

Every storage method is one transaction, so a transaction that failed before its commit left
nothing behind and can simply run again. Transient: SQLite's "database is locked/busy", a
dropped connection (SQLAlchemy invalidates it), PostgreSQL's serialization failures and
deadlocks. Anything else, or a transient error that outlasts the retries, stops the caller with a
:class:`~poptune.storage.StorageError` that names the storage (password hidden).
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError

from ._base import StorageError
from ._urls import redact_url

__all__ = ["is_retrying", "is_transient", "retrying"]

log = logging.getLogger("poptune")

F = TypeVar("F", bound=Callable[..., Any])

ATTEMPTS = 8
FIRST_DELAY = 0.05  # doubled after every attempt: about 6 s in all before giving up
_SQLSTATES = {"40001", "40P01"}  # serialization_failure, deadlock_detected


def is_transient(error: BaseException) -> bool:
    """Whether retrying the whole transaction may succeed."""
    if not isinstance(error, DBAPIError):
        return False
    if error.connection_invalidated:
        return True
    original = error.orig
    state = getattr(original, "sqlstate", None) or getattr(original, "pgcode", None)
    if state in _SQLSTATES:
        return True
    text = str(original).lower()
    return "database is locked" in text or "database is busy" in text or "deadlock" in text


_MARK = "_poptune_retrying"


def retrying(method: F) -> F:
    """Run ``method`` again, with exponential backoff, when it fails with a transient error.

    Put it on each storage method that is one transaction, where the method is defined::

        @retrying
        def claim(self, ...): ...

    The wrapper is marked, so :func:`is_retrying` (and a test) can tell which methods retry.
    """

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        delay = FIRST_DELAY
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return method(self, *args, **kwargs)
            except DBAPIError as error:
                if not is_transient(error):
                    raise StorageError(
                        f"{method.__name__} failed on the storage {redact_url(self.url)} with an "
                        f"error that retrying cannot fix: {error.orig}. The worker stops; what "
                        "was recorded before is kept, so the population can be resumed once the "
                        "database is healthy."
                    ) from error
                if attempt == ATTEMPTS:
                    raise StorageError(
                        f"{method.__name__} kept failing on the storage {redact_url(self.url)} "
                        f"after {ATTEMPTS} attempts: {error.orig}. Is the database overloaded or "
                        "unreachable? The population can be resumed later."
                    ) from error
                log.warning(
                    "Transient storage error in %s (attempt %d of %d): %s; retrying",
                    method.__name__,
                    attempt,
                    ATTEMPTS,
                    error.orig,
                )
                time.sleep(delay * (1.0 + random.random()))
                delay *= 2
        raise AssertionError("unreachable")

    setattr(wrapper, _MARK, True)
    return wrapper  # type: ignore[return-value]


def is_retrying(method: Any) -> bool:
    """Whether ``method`` was wrapped by :func:`retrying` (also through a subclass override
    that calls it with ``super()``: only the wrapped definition counts)."""
    return bool(getattr(method, _MARK, False))
