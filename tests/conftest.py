"""Shared fixtures: every storage kind the suite runs against, and a fresh run folder."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from poptune.storage import SQLStorage


def storage_urls(tmp_path: Path) -> dict[str, str]:
    """Each storage backend available here, by name. PostgreSQL joins via $POPTUNE_TEST_POSTGRES."""
    urls = {"sqlite": f"sqlite:///{tmp_path / 'poptune.db'}"}
    if os.environ.get("POPTUNE_TEST_POSTGRES"):
        urls["postgresql"] = os.environ["POPTUNE_TEST_POSTGRES"]
    return urls


@pytest.fixture(params=["sqlite"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A storage URL for each backend (a new backend runs the suite by adding a param here)."""
    return storage_urls(tmp_path)[request.param]


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
