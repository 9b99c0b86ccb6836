"""Shared fixtures: every storage kind the suite runs against, and a fresh run folder.

Tests that take ``storage_url`` (or ``storage``) run once per backend: SQLite always, PostgreSQL
when ``$POPTUNE_TEST_POSTGRES`` names a server database whose user may create databases
(``.ci/run`` installs and starts one). Each PostgreSQL test gets a database of its own.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from poptune.storage import SQLStorage

POSTGRES = os.environ.get("POPTUNE_TEST_POSTGRES")


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A fresh, empty storage of each kind (a new backend runs the suite by adding a param)."""
    if request.param == "sqlite":
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


@pytest.fixture
def storage(storage_url: str) -> Iterator[SQLStorage]:
    """An open storage of each kind."""
    store = SQLStorage(storage_url)
    yield store
    store.close()


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
