"""Database connections on a PostgreSQL server: one per worker, and a storm of workers that
the server cannot all take at once waits its turn instead of dying."""

from __future__ import annotations

import logging
import multiprocessing
import os
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

import poptune as pt
from poptune.testing import CreateOnlyRunner, SlowQuadratic

POSTGRES = os.environ.get("POPTUNE_TEST_POSTGRES")
pytestmark = pytest.mark.skipif(
    not POSTGRES,
    reason="needs a PostgreSQL server: set $POPTUNE_TEST_POSTGRES (.ci/run starts one)",
)
LIMIT = 2  # connections the test's role may hold at once
WORKERS = 5


def _worker(url: str, name: str, folder: str, log_file: str) -> None:
    """One `poptune worker`: open the storage, train until the budget is spent. Transient
    storage errors it retries are written to ``log_file``."""
    handler = logging.FileHandler(log_file)
    handler.setLevel(logging.WARNING)
    logging.getLogger("poptune").addHandler(handler)
    pt.population.join(pt.load(url, name, checkpoints=folder), checkpoints=folder)


def test_a_storm_of_workers_beyond_the_servers_connections_waits_instead_of_failing(
    tmp_path, quick_run
):
    """Five workers start at once with a role that may hold two connections: the three refused
    ("too many connections") retry until a connection frees up; none dies."""
    admin = sa.create_engine(POSTGRES, isolation_level="AUTOCOMMIT")
    database, role = f"poptune_storm_{uuid.uuid4().hex[:8]}", f"storm_{uuid.uuid4().hex[:8]}"
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{database}"'))
        connection.execute(
            sa.text(f"CREATE ROLE {role} LOGIN PASSWORD 'storm' CONNECTION LIMIT {LIMIT}")
        )
        connection.execute(sa.text(f'GRANT ALL ON DATABASE "{database}" TO {role}'))
        connection.execute(sa.text(f'ALTER DATABASE "{database}" OWNER TO {role}'))
    url = (
        make_url(POSTGRES)
        .set(database=database, username=role, password="storm")
        .render_as_string(hide_password=False)
    )
    folder = tmp_path / "checkpoints"
    try:
        created = quick_run(
            SlowQuadratic, storage=url, checkpoints=folder, name="storm", population=WORKERS,
            intervals=3, runner=CreateOnlyRunner(),
        )  # fmt: skip
        created.storage.close()  # the parent holds no connection while the workers run
        context = multiprocessing.get_context("spawn")
        logs = [tmp_path / f"worker-{i}.log" for i in range(WORKERS)]
        processes = [
            context.Process(target=_worker, args=(url, "storm", str(folder), str(log)))
            for log in logs
        ]
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=240)
        assert [p.exitcode for p in processes] == [0] * WORKERS, _texts(logs)
        retried = [log for log in logs if "too many connections" in _text(log)]
        assert retried, "the storm never hit the role's connection limit: " + _texts(logs)
        result = pt.load(url, "storm", checkpoints=folder)
        assert result.status == "finished" and len(result.intervals()) == WORKERS * 3
        result.storage.close()
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
            connection.execute(sa.text(f"DROP ROLE IF EXISTS {role}"))
        admin.dispose()


def _text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def _texts(paths: list[Path]) -> str:
    return "\n".join(f"{p.name}: {_text(p)[-500:]}" for p in paths)
