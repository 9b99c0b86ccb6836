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
from typing import Any, TypeVar, overload

from sqlalchemy.exc import DBAPIError

from ._base import StorageError
from ._urls import redact_text, redact_url

__all__ = ["is_connection_error", "is_retrying", "is_transient", "retrying"]

log = logging.getLogger("poptune")

F = TypeVar("F", bound=Callable[..., Any])

ATTEMPTS = 8
FIRST_DELAY = 0.05  # doubled after every attempt: about 6 s in all before giving up
_SQLSTATES = {"40001", "40P01"}  # serialization_failure, deadlock_detected
# A server that refuses new connections because it is full or starting up: a storm of workers
# starting together must wait its turn, not die. These are retried for up to CONNECT_SECONDS,
# each wait at most MAX_DELAY. (A server that is not there at all, a wrong host or port, is
# reported at once, as before: nobody should wait two minutes for a typo.)
CONNECT_SECONDS = 120.0
MAX_DELAY = 2.0
_CONNECTION_SQLSTATES = {"53300", "57P03"}  # too_many_connections, cannot_connect_now
_CONNECTION_MESSAGES = (
    "too many clients",
    "too many connections",
    "remaining connection slots are reserved",
    "the database system is starting up",
)


def _sqlstate(error: DBAPIError) -> str | None:
    original = error.orig
    return getattr(original, "sqlstate", None) or getattr(original, "pgcode", None)


def is_connection_error(error: BaseException) -> bool:
    """Whether the server refused a connection because it is full or starting up (retried for
    longer than other transient errors)."""
    if not isinstance(error, DBAPIError):
        return False
    if _sqlstate(error) in _CONNECTION_SQLSTATES:
        return True
    text = str(error.orig).lower()
    return any(message in text for message in _CONNECTION_MESSAGES)


def is_transient(error: BaseException) -> bool:
    """Whether retrying the whole transaction may succeed."""
    if not isinstance(error, DBAPIError):
        return False
    if error.connection_invalidated or is_connection_error(error):
        return True
    if _sqlstate(error) in _SQLSTATES:
        return True
    text = str(error.orig).lower()
    return "database is locked" in text or "database is busy" in text or "deadlock" in text


_MARK = "_poptune_retrying"


@overload
def retrying(method: F) -> F: ...


@overload
def retrying(*, opening: bool) -> Callable[[F], F]: ...


def retrying(method: F | None = None, *, opening: bool = False) -> F | Callable[[F], F]:
    """Run ``method`` again, with exponential backoff, when it fails with a transient error.

    Put it on each storage method that is one transaction, where the method is defined::

        @retrying
        def claim(self, ...): ...

    A permanent error becomes a :class:`StorageError` that tells a worker it stops; with
    ``@retrying(opening=True)`` (what opening the storage runs) it is raised as it is, for the
    opener to say what could not be opened and why, whatever the command.

    The wrapper is marked, so :func:`is_retrying` (and a test) can tell which methods retry.
    """
    if method is None:
        return lambda function: _retrying(function, opening)
    return _retrying(method, opening)


def _retrying(method: F, opening: bool) -> F:
    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        delay = FIRST_DELAY
        attempt = 0
        connecting_since: float | None = None
        while True:
            attempt += 1
            try:
                return method(self, *args, **kwargs)
            except DBAPIError as error:
                cause = redact_text(str(error.orig), self.url)
                if not is_transient(error):
                    if opening:
                        raise
                    raise StorageError(
                        f"{method.__name__} failed on the storage {redact_url(self.url)} with an "
                        f"error that retrying cannot fix: {cause}. The worker stops; what "
                        "was recorded before is kept, so the population can be resumed once the "
                        "database is healthy."
                    ) from error
                if is_connection_error(error):
                    connecting_since = connecting_since or time.monotonic()
                    exhausted = time.monotonic() - connecting_since > CONNECT_SECONDS
                    limit = f"{CONNECT_SECONDS:.0f} s"
                else:
                    exhausted = attempt >= ATTEMPTS
                    limit = f"{ATTEMPTS} attempts"
                if exhausted:
                    raise StorageError(
                        f"{method.__name__} kept failing on the storage {redact_url(self.url)} "
                        f"for {limit}: {cause}. Is the database overloaded or unreachable "
                        "(for PostgreSQL: max_connections, see docs/cluster.md)? The population "
                        "can be resumed later."
                    ) from error
                log.warning(
                    "Transient storage error in %s (attempt %d): %s; retrying",
                    method.__name__,
                    attempt,
                    cause,
                )
                time.sleep(delay * (1.0 + random.random()))
                delay = min(delay * 2, MAX_DELAY)

    setattr(wrapper, _MARK, True)
    return wrapper  # type: ignore[return-value]


def is_retrying(method: Any) -> bool:
    """Whether ``method`` was wrapped by :func:`retrying` (also through a subclass override
    that calls it with ``super()``: only the wrapped definition counts)."""
    return bool(getattr(method, _MARK, False))
