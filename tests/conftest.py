"""Shared fixtures: every storage kind the suite runs against, and a fresh run folder.

Tests that take ``storage`` run once per storage kind: in memory (``poptune.testing``), in
memory answering with ``Storage``'s default queries ("defaults": a wrong default fails), SQLite,
and PostgreSQL when ``$POPTUNE_TEST_POSTGRES`` names a server database whose user may create
databases (``.ci/run`` installs and starts one); each PostgreSQL test gets a database of its own.
Tests that take ``storage_url`` need a database other processes can open: SQLite and PostgreSQL.
Tests that train a population take ``quick_run``: ``pt.run`` with the suite's usual options.
"""

from __future__ import annotations

import os
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from poptune.storage import SQLStorage, Storage
from poptune.testing import MemoryStorage
from tests._helpers import QuickRun

POSTGRES = os.environ.get("POPTUNE_TEST_POSTGRES")
SQL_KINDS = ["sqlite", "postgresql"]
STORAGE_KINDS = ["memory", "defaults", *SQL_KINDS]


def _defaults_storage() -> Storage:
    """A MemoryStorage whose derived queries are all ``Storage``'s defaults (the ones
    MemoryStorage overrides for speed put back): the contract suite checks the defaults."""
    defaults = {
        name: value
        for name, value in vars(Storage).items()
        if callable(value)
        and not name.startswith("_")
        and not getattr(value, "__isabstractmethod__", False)
    }
    return type("DefaultsStorage", (MemoryStorage,), defaults)()


@contextmanager
def _sql_url(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh, empty SQL database of ``kind`` ("sqlite" or "postgresql"), as a URL."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'poptune.db'}"
        return
    if not POSTGRES:
        pytest.skip(
            "PostgreSQL tests need $POPTUNE_TEST_POSTGRES, e.g. "
            "postgresql+psycopg://poptune:poptune@127.0.0.1/poptune (.ci/run starts one)"
        )
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    name = f"poptune_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(POSTGRES, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    monkeypatch.setenv("POPTUNE_CHECKPOINTS", str(tmp_path / "checkpoints"))
    try:
        yield make_url(POSTGRES).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=SQL_KINDS)
def storage_url(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A fresh, empty SQL storage of each kind, as a URL: for what only SQL has (schema,
    migrations, URLs, several processes sharing one database)."""
    with _sql_url(request.param, tmp_path, monkeypatch) as url:
        yield url


@pytest.fixture(params=STORAGE_KINDS)
def storage(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Storage]:
    """An open, empty storage of every kind: the contract suite runs against each (a new
    backend runs it by adding a kind here)."""
    if request.param in ("memory", "defaults"):
        yield MemoryStorage() if request.param == "memory" else _defaults_storage()
        return
    with _sql_url(request.param, tmp_path, monkeypatch) as url:
        store = SQLStorage(url)
        yield store
        store.close()


@pytest.fixture
def quick_run(tmp_path: Path) -> QuickRun:
    """``pt.run`` with the suite's usual options (see :class:`tests._helpers.QuickRun`), stored
    by default in this test's ``tmp_path / "poptune.db"``, checkpoints next to it."""
    return QuickRun(f"sqlite:///{tmp_path / 'poptune.db'}")


@pytest.fixture(autouse=True)
def _quiet_threads() -> None:
    """Single-threaded numeric libraries: the CI machine has 2 cores shared by workers."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(params=["inline", "background"])
def writes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with checkpoints written in line (small states) and on the background
    writer (large states), in this process and in the worker processes it starts."""
    monkeypatch.setenv(
        "POPTUNE_BACKGROUND_BYTES", "0" if request.param == "background" else str(2**62)
    )
    return request.param


_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Keep the session's exit status for :func:`pytest_unconfigure`."""
    _EXIT_STATUS.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """End the test process once pytest has reported, without the interpreter's teardown.

    One clean-clone run of the whole suite (1,466 passed) ended in a segmentation fault after
    pytest's summary, in the teardown of a process that started Ray, torch and many daemon
    threads; the next run did not. Until that is found, the report and exit status are pytest's
    own and the teardown, which tests nothing, is skipped.
    """
    if _EXIT_STATUS:
        _remove_temporary_directories()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT_STATUS[-1])


def _remove_temporary_directories() -> None:
    """Remove what the skipped teardown would have: the temporary directories that W&B makes
    when it is imported (``tmp*wandb-media``, ``tmp*wandb-artifacts``; their finalizers run at
    a normal exit), so test runs do not leave them behind."""
    media = sys.modules.get("wandb.sdk.data_types._private")
    artifact = sys.modules.get("wandb.sdk.artifacts.artifact")
    for directory in (
        getattr(media, "MEDIA_TMP", None),
        getattr(getattr(artifact, "Artifact", None), "_TMP_DIR", None),
    ):
        if isinstance(directory, tempfile.TemporaryDirectory):
            directory.cleanup()
