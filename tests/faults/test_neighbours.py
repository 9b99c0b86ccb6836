"""Databases that share one checkpoint folder never touch each other's files, and a path read
from the storage never reaches outside its population's folder (issue 21, items 1 and 2)."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.engine import make_url

import poptune as pt
from poptune.checkpoints import UnsafeCheckpointPath, population_folder
from poptune.cli import main

POSTGRES = os.environ.get("POPTUNE_TEST_POSTGRES")
LEASE = 0.25  # the orphan sweep takes files older than two leases


# Short leases: a run's sweep takes files older than two of them for orphans.
SWEEPING = {"intervals": 3, "lease_seconds": LEASE}


@pytest.fixture(params=["sqlite", "postgresql"])
def neighbours(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    """Two fresh databases of one kind and the checkpoint folder they share: two SQLite files in
    one folder (the default puts both checkpoint folders at ``runs/checkpoints``), or two
    PostgreSQL databases given the same folder."""
    if request.param == "sqlite":
        runs = tmp_path / "runs"
        yield f"sqlite:///{runs / 'a.db'}", f"sqlite:///{runs / 'b.db'}", runs / "checkpoints"
        return
    if not POSTGRES:
        pytest.skip(
            "PostgreSQL tests need $POPTUNE_TEST_POSTGRES, e.g. "
            "postgresql+psycopg://poptune:poptune@127.0.0.1/poptune (.ci/run starts one)"
        )
    names = [f"poptune_test_{uuid.uuid4().hex[:12]}" for _ in range(2)]
    admin = sa.create_engine(POSTGRES, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        for name in names:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        a, b = (
            make_url(POSTGRES).set(database=name).render_as_string(hide_password=False)
            for name in names
        )
        yield a, b, tmp_path / "checkpoints"
    finally:
        with admin.connect() as connection:
            for name in names:
                connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _files(result: pt.Result) -> dict[str, bytes]:
    folder = Path(result.checkpoint_store.url)
    return {
        ref.path: (folder / ref.path).read_bytes() for ref in result.storage.checkpoints(result.id)
    }


def _explicit(url: str, folder: Path) -> Path | None:
    """The folder to pass: none for SQLite (the default, next to the database file)."""
    return None if url.startswith("sqlite") else folder


def test_neighbouring_databases_keep_each_others_checkpoints(neighbours, quick_run):
    a_url, b_url, folder = neighbours
    a = quick_run(storage=a_url, name="a", checkpoints=_explicit(a_url, folder), **SWEEPING)
    a_files = _files(a)
    assert Path(a.checkpoint_store.url) == folder.resolve()
    time.sleep(2 * LEASE + 0.1)  # a's files are now old enough to be swept as orphans
    b = quick_run(storage=b_url, name="b", checkpoints=_explicit(b_url, folder), **SWEEPING)
    assert a.id == b.id  # both databases number their first population 1
    assert Path(b.checkpoint_store.url) == folder.resolve()
    assert _files(pt.load(a_url, "a")) == a_files  # b's sweep left every file of a's
    assert CliRunner().invoke(main, ["delete", "b", "--storage", b_url, "--yes"]).exit_code == 0
    assert _files(pt.load(a_url, "a")) == a_files  # and so did deleting b
    assert not list((folder / population_folder(b.storage.database_id(), b.id)).rglob("*.ckpt"))
    reopened = pt.load(a_url, "a")
    assert reopened.best.load().theta.shape == (2,)
    resumed = reopened.resume(intervals=5, progress=False)  # trains on from a's checkpoints
    assert resumed.status == "finished" and [m.step for m in resumed.members] == [5] * 3


def test_a_population_from_before_database_ids_keeps_working(tmp_path: Path, quick_run):
    """Written by a poptune whose folders were ``population-<id>`` (no database id): its
    recorded files are read and collected through their rows, never swept by listing, and
    a neighbour's sweep or delete never reaches them."""
    runs = tmp_path / "runs"
    old_url, new_url = f"sqlite:///{runs / 'old.db'}", f"sqlite:///{runs / 'new.db'}"
    old = quick_run(storage=old_url, name="old", **SWEEPING)
    _make_legacy(old, runs)
    legacy = _files(pt.load(old_url, "old"))
    assert legacy and all(path.startswith("population-1/") for path in legacy)
    time.sleep(2 * LEASE + 0.1)
    quick_run(
        storage=new_url, name="new", **SWEEPING
    )  # population 1 too; its sweep only lists its own folder
    pt.delete(new_url, "new")
    assert _files(pt.load(old_url, "old")) == legacy
    assert pt.load(old_url, "old").best.load().theta.shape == (2,)
    resumed = pt.load(old_url, "old").resume(intervals=5, progress=False)
    database = resumed.storage.database_id(create=False)
    assert database is not None  # created when it first trained again
    kept = {ref.path for ref in resumed.storage.checkpoints(resumed.id)}
    assert all(path.startswith(population_folder(database, 1)) for path in kept)
    # what garbage collection dropped was deleted through its rows: nothing left behind
    assert not [p for p in (runs / "checkpoints" / "population-1").rglob("*.ckpt")]
    pt.delete(old_url, "old")
    assert not list((runs / "checkpoints").rglob("*.ckpt"))


def _make_legacy(result: pt.Result, runs: Path) -> None:
    """Rewrite a finished population as an older poptune left it: files in
    ``population-<id>/`` and no database id."""
    engine = sa.create_engine(result.storage.url)
    folder = runs / "checkpoints"
    with engine.begin() as connection:
        rows = connection.execute(sa.text("SELECT member_id, step, path FROM poptune_checkpoints"))
        for member, step, path in rows.all():
            legacy = path.split("/", 1)[1]  # drop the "db-<id>/" part
            (folder / legacy).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(folder / path, folder / legacy)
            connection.execute(
                sa.text("UPDATE poptune_checkpoints SET path=:p WHERE member_id=:m AND step=:s"),
                {"p": legacy, "m": member, "s": step},
            )
        connection.execute(sa.text("DELETE FROM poptune_meta WHERE key='database_id'"))
    engine.dispose()
    result.storage.close()


def _tamper(result: pt.Result, path: str) -> None:
    """Point every checkpoint row of the population at ``path``, as anyone who may write to a
    shared database could."""
    engine = sa.create_engine(result.storage.url)
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE poptune_checkpoints SET path=:p"), {"p": path})
    engine.dispose()


@pytest.mark.parametrize(
    "path",
    [
        "../../victim.txt",
        "{victim}",
        "population-2/member-0000/step-000001-000000000000.ckpt",
        "{folder}/../../victim.txt",
        "{folder}/member-0000/link/victim.txt",
    ],
)
def test_a_tampered_path_is_neither_read_nor_deleted(path: str, tmp_path: Path, quick_run):
    url = f"sqlite:///{tmp_path / 'runs' / 'p.db'}"
    result = quick_run(storage=url, name="p", **SWEEPING)
    victim = tmp_path / "victim.txt"
    victim.write_text("not poptune's")
    folder = population_folder(result.storage.database_id(), result.id)
    link = Path(result.checkpoint_store.url) / folder / "member-0000" / "link"
    link.symlink_to(tmp_path, target_is_directory=True)  # a symbolic link out of the folder
    _tamper(result, path.format(victim=victim, folder=folder))
    tampered = pt.load(url, "p")
    with pytest.raises(UnsafeCheckpointPath, match="refusing to read or delete"):
        tampered.best.state()
    deleted = CliRunner().invoke(main, ["delete", "p", "--storage", url, "--yes"])
    assert deleted.exit_code == 0, deleted.output
    assert victim.read_text() == "not poptune's"
    assert link.is_symlink()  # the link is in the population's folder, but only files go
