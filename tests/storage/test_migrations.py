"""Upgrades of databases written by older poptune releases, on SQLite and PostgreSQL.

``fixtures/schema2`` is a real database of the last release that wrote schema 2 (see its
README): two populations of the toy problem with failures, re-seeds and exploits. On PostgreSQL
its rows are copied into a fresh database in the same (old) schema before the upgrade.
"""

from __future__ import annotations

import json
import math
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

import poptune as pt
from poptune.checkpoints import CheckpointCorrupt, open_checkpoints
from poptune.records import Mode
from poptune.storage import SCHEMA_VERSION, SQLStorage, StorageError, _schema

FIXTURE = Path(__file__).parent / "fixtures" / "schema2"
TABLES = (
    "poptune_meta",
    "poptune_populations",
    "poptune_members",
    "poptune_intervals",
    "poptune_checkpoints",
    "poptune_exploits",
    "poptune_failures",
)


def old_database(tmp_path: Path, doctor: Any = None) -> Path:
    """A copy of the schema-2 fixture (changed by ``doctor(sqlite3_connection)`` if given)."""
    folder = tmp_path / "schema2"
    shutil.copytree(FIXTURE, folder)
    if doctor is not None:
        with sqlite3.connect(folder / "poptune.db") as connection:
            doctor(connection)
        connection.close()
    return folder / "poptune.db"


def install(database: Path, url: str) -> None:
    """Put the schema-2 ``database`` at ``url``, as the old release left it: the file itself for
    SQLite; for PostgreSQL the same tables (old column names) and rows."""
    target = sa.engine.make_url(url)
    if target.get_backend_name() == "sqlite":
        shutil.copyfile(database, target.database)
        return
    source = sa.create_engine(f"sqlite:///{database}")
    old = sa.MetaData()
    old.reflect(source)
    engine = sa.create_engine(url)
    with source.connect() as reading, engine.begin() as writing:
        old.create_all(writing)
        for table in old.sorted_tables:
            rows = [dict(row._mapping) for row in reading.execute(sa.select(table))]
            if rows:
                writing.execute(table.insert(), rows)
            if "id" in table.c:  # as if the old release had inserted them: ids continue
                writing.execute(
                    sa.text(
                        f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                        f"(SELECT COALESCE(MAX(id), 0) + 1 FROM {table.name}), false)"
                    )
                )
    source.dispose()
    engine.dispose()


def dump(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, and the checkpoints' column names: to compare databases."""
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        found = {
            table: sorted(
                map(tuple, connection.execute(sa.text(f"SELECT * FROM {table}"))), key=repr
            )
            for table in TABLES
        }
        found["checkpoint columns"] = [
            tuple(c["name"] for c in sa.inspect(connection).get_columns("poptune_checkpoints"))
        ]
    engine.dispose()
    return found


def old_rows(database: Path) -> dict[str, list[sqlite3.Row]]:
    with sqlite3.connect(database) as connection:
        connection.row_factory = sqlite3.Row
        rows = {
            t: connection.execute(f"SELECT * FROM {t} ORDER BY rowid").fetchall() for t in TABLES
        }
    connection.close()
    return rows


def test_a_schema_2_database_is_upgraded_exactly_and_resumes(storage_url, tmp_path):
    database = old_database(tmp_path)
    install(database, storage_url)
    old = old_rows(database)
    folder = database.parent / "checkpoints"

    storage = SQLStorage(storage_url)  # upgrades in place
    assert dump(storage_url)["poptune_meta"] == [("schema_version", str(SCHEMA_VERSION))]
    populations = storage.populations()
    assert [(p.name, p.status.value) for p in populations] == [
        ("async", "finished"),
        ("sync", "error"),
    ]
    assert all("legacy_steps" not in p.config for p in populations)  # rewritten: continuable

    new_steps: dict[tuple[int, int, int], int] = {}  # (population, member, old step) -> new
    for population in populations:
        pid = population.id
        intervals = storage.intervals(pid)
        before = [r for r in old["poptune_intervals"] if r["population_id"] == pid]
        assert len(intervals) == len(before)
        by_time = {i.finished_at: i for i in intervals}
        for row in before:  # the same intervals, only their steps (and origins') rewritten
            new = by_time[row["finished_at"]]
            assert (new.member, new.score, new.wall_time) == (
                row["member_id"],
                row["score"],
                row["wall_time"],
            )
            assert dict(new.hparams) == json.loads(row["hparams"])
            new_steps[(pid, row["member_id"], row["step"])] = new.step
        for new in intervals:  # the step is the intervals behind the weights it trained
            origin_step = 0 if new.origin is None else new.origin[1]
            assert new.step == origin_step + 1
            assert new.origin is None or storage.interval(pid, *new.origin) is not None

        refs = storage.checkpoints(pid)
        before = [r for r in old["poptune_checkpoints"] if r["population_id"] == pid]
        assert sorted((r.member, r.path, r.size, r.checksum) for r in refs) == sorted(
            (r["member_id"], r["path"], r["size"], r["sha256"]) for r in before
        )
        for row, ref in zip(
            sorted(before, key=lambda r: r["path"]), sorted(refs, key=lambda r: r.path), strict=True
        ):
            assert ref.step == new_steps[(pid, row["member_id"], row["step"])]
            state = open_checkpoints(folder).load(ref)  # the SHA-256 still verifies
            assert state["theta"].shape == (2,)
        # Schema 8: each checkpoint row carries its interval's score, which exploits rank by.
        scores = {(i.member, i.step): i.score for i in intervals}
        engine = sa.create_engine(storage_url)
        with engine.connect() as connection:
            carried = connection.execute(
                sa.text(
                    "SELECT member_id, step, score FROM poptune_checkpoints "
                    "WHERE population_id = :pid"
                ),
                {"pid": pid},
            ).all()
        engine.dispose()
        # Schema 9: each step's best finite score is kept, as every interval gives it.
        for mode, pick in ((Mode.MAX, max), (Mode.MIN, min)):
            best: dict[int, float] = {}
            for i in intervals:
                if i.score is not None and math.isfinite(i.score):
                    best[i.step] = pick(best.get(i.step, i.score), i.score)
            assert storage.best_by_step(pid, mode) == sorted(best.items())
        assert len(carried) == len(refs)
        assert {(m, s): score for m, s, score in carried} == {
            (m, s): scores[(m, s)] for m, s, _ in carried
        }

        events = storage.exploits(pid)
        before = [r for r in old["poptune_exploits"] if r["population_id"] == pid]
        assert [(e.member, e.donor, e.time, e.score, e.donor_score) for e in events] == [
            (r["member_id"], r["donor_id"], r["time"], r["score"], r["donor_score"]) for r in before
        ]
        for event, row in zip(events, before, strict=True):
            assert event.donor_step == new_steps[(pid, row["donor_id"], row["donor_step"])]
        failures = storage.failures(pid)
        # Schema 6 labels the old re-seeds: with max_failures=1, every second failure of a
        # member re-seeded it from a donor; those copies are recoveries, not exploits.
        reseeds = [e for e in events if e.reason is pt.CopyReason.RESEED]
        assert len(reseeds) == len(failures) // 2 > 0
        assert all(e.reason is pt.CopyReason.EXPLOIT for e in events if e not in reseeds)
        assert storage.summary(pid, 6, pt.Mode.MAX).recoveries == len(reseeds)
        before = [r for r in old["poptune_failures"] if r["population_id"] == pid]
        assert [(f.member, f.error, f.traceback, f.time) for f in failures] == [
            (r["member_id"], r["error"], r["traceback"], r["time"]) for r in before
        ]
        members = storage.members(pid)
        before = [r for r in old["poptune_members"] if r["population_id"] == pid]
        for member, row in zip(members, before, strict=True):
            restore = (
                row["restore_member"],
                new_steps[(pid, row["restore_member"], row["restore_step"])],
            )
            assert member.restore == restore and member.step == restore[1]
            assert member.score == storage.interval(pid, *restore).score
            assert (member.parent, member.failures, dict(member.hparams)) == (
                row["parent"],
                row["failures"],
                json.loads(row["hparams"]),
            )
            # No step lost or counted twice: trained intervals plus the steps copies gained.
            trained = sum(1 for i in intervals if i.member == member.id)
            gained = sum(e.donor_step - e.step for e in events if e.member == member.id)
            assert member.step == trained + gained
    # The old release let copied weights train on past the budget (6): what it recorded.
    assert [m.step for m in storage.members(populations[0].id)] == [18, 19, 20, 21]
    assert [m.step for m in storage.members(populations[1].id)] == [7, 6, 7, 7]
    storage.close()

    # Both populations continue under the new meaning.
    for name, budget in (("sync", 9), ("async", 23)):
        result = pt.load(storage_url, name, checkpoints=folder)
        done = len(result.intervals())
        resumed = result.resume(intervals=budget, checkpoints=folder, progress=False)
        assert resumed.status == "finished"
        assert len(resumed.intervals()) > done
        assert all(m.step >= budget for m in resumed.members)
        for interval in resumed.intervals():
            assert interval.step == (0 if interval.origin is None else interval.origin[1]) + 1
        resumed.storage.close()


def test_a_population_that_cannot_be_rewritten_exactly_stays_as_recorded(storage_url, tmp_path):
    def trained_twice(connection: sqlite3.Connection) -> None:
        # Member 1 of "sync" starts its interval 3 from the weights its interval 2 started from.
        connection.execute(
            "UPDATE poptune_intervals SET origin_member = 0, origin_step = 1 "
            "WHERE population_id = 2 AND member_id = 1 AND step = 3"
        )

    install(old_database(tmp_path, trained_twice), storage_url)
    before = dump(storage_url)
    upgraded = pt.open_storage(storage_url, mode="write")
    result = pt.load(upgraded, "sync", checkpoints=tmp_path / "schema2" / "checkpoints")
    assert "member 1 trained twice" in result.config.legacy_steps
    after = dump(storage_url)
    # population 2's rows as recorded (its id is the first column, or the second after an id)
    for table, column in (
        ("poptune_members", 0),
        ("poptune_intervals", 0),
        ("poptune_checkpoints", 0),
        ("poptune_exploits", 1),
        ("poptune_failures", 1),
    ):
        recorded = [r for r in before[table] if r[column] == 2]
        width = len(recorded[0])  # later schemas add columns (schema 6: the copy's reason)
        assert [r[:width] for r in after[table] if r[column] == 2] == recorded
    assert len(result.intervals()) == 20 and len(result.exploits()) == 12
    with pytest.raises(pt.PopulationError, match=r"cannot be rewritten.*member 1 trained twice"):
        result.resume(progress=False)
    assert not pt.load(storage_url, "async").config.legacy_steps  # the other one was
    result.storage.close()


def test_a_failing_upgrade_leaves_the_database_as_it_was(storage_url, tmp_path, monkeypatch):
    install(old_database(tmp_path), storage_url)
    before = dump(storage_url)
    rewrite = _schema.MIGRATIONS[4]

    def fails_half_way(connection: Any) -> int:
        rewrite(connection)  # every row rewritten, then the upgrade dies
        raise RuntimeError("the upgrade died")

    monkeypatch.setitem(_schema.MIGRATIONS, 4, fails_half_way)
    with pytest.raises(RuntimeError, match="died"):
        SQLStorage(storage_url)
    assert dump(storage_url) == before  # one transaction: nothing of it stayed
    monkeypatch.setitem(_schema.MIGRATIONS, 4, rewrite)
    SQLStorage(storage_url).close()
    assert dump(storage_url)["poptune_meta"] == [("schema_version", str(SCHEMA_VERSION))]


def test_a_database_of_a_newer_poptune_is_refused(storage_url):
    SQLStorage(storage_url).close()
    engine = sa.create_engine(storage_url)
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                f"UPDATE poptune_meta SET value='{SCHEMA_VERSION + 1}' WHERE key='schema_version'"
            )
        )
    engine.dispose()
    before = dump(storage_url)
    with pytest.raises(StorageError, match=r"written by a newer poptune.*Upgrade poptune"):
        SQLStorage(storage_url)
    assert dump(storage_url) == before


def test_a_database_too_old_to_upgrade_is_refused(storage_url):
    SQLStorage(storage_url).close()
    engine = sa.create_engine(storage_url)
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE poptune_meta SET value='1' WHERE key='schema_version'"))
    engine.dispose()
    with pytest.raises(StorageError, match="schema version 1, older than this poptune"):
        SQLStorage(storage_url)


def _back_to_schema(url: str, checkpoints: Path, version: int) -> None:
    """Make a database look as poptune wrote it at ``version`` (2 or 3): checkpoints were
    checksummed with a bare SHA-256, in a column named ``sha256``, copies recorded no reason,
    checkpoint rows no score, and no step kept its best score."""
    import hashlib

    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.begin() as connection:
        rows = connection.execute(
            sa.text("SELECT population_id, member_id, step, path FROM poptune_checkpoints")
        ).all()
        connection.execute(
            sa.text("ALTER TABLE poptune_checkpoints RENAME COLUMN checksum TO sha256")
        )
        connection.execute(sa.text("ALTER TABLE poptune_exploits DROP COLUMN reason"))  # 6
        for index in ("ix_poptune_checkpoints_peers", "ix_poptune_members_status"):  # 8
            connection.execute(sa.text(f"DROP INDEX {index}"))
        connection.execute(sa.text("ALTER TABLE poptune_checkpoints DROP COLUMN score"))
        connection.execute(sa.text("DROP TABLE poptune_step_bests"))  # 9
        for row in rows:
            digest = hashlib.sha256((checkpoints / row.path).read_bytes()).hexdigest()
            connection.execute(
                sa.text(
                    "UPDATE poptune_checkpoints SET sha256 = :d "
                    "WHERE population_id = :p AND member_id = :m AND step = :s"
                ),
                {"d": digest, "p": row.population_id, "m": row.member_id, "s": row.step},
            )
        connection.execute(
            sa.text(f"UPDATE poptune_meta SET value='{version}' WHERE key='schema_version'")
        )
    engine.dispose()


def test_a_schema_3_database_keeps_its_sha256_checkpoints_verified(
    storage_url, tmp_path, quick_run
):
    before = quick_run(storage=storage_url, checkpoints=tmp_path / "checkpoints", name="sha")
    best = before.best.state()
    before.storage.close()
    _back_to_schema(storage_url, tmp_path / "checkpoints", 3)

    old = pt.load(pt.open_storage(storage_url, mode="write"), "sha")  # the column is renamed
    refs = old.storage.checkpoints(old.record.id)
    assert refs and all(len(ref.checksum) == 64 for ref in refs)  # bare SHA-256, kept
    np.testing.assert_array_equal(old.best.state()["theta"], best["theta"])  # verified
    ref = refs[0]
    path = tmp_path / "checkpoints" / ref.path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))  # a corrupted byte is still caught
    with pytest.raises(CheckpointCorrupt, match="checksum"):
        open_checkpoints(tmp_path / "checkpoints").load(ref)
    # new checkpoints: named XXH3
    new = quick_run(storage=storage_url, checkpoints=tmp_path / "checkpoints", name="new")
    assert all(r.checksum.startswith("xxh3_128:") for r in new.storage.checkpoints(new.record.id))


def test_reading_never_upgrades_and_poptune_upgrade_does(storage_url, tmp_path):
    from click.testing import CliRunner

    from poptune.cli import main

    install(old_database(tmp_path), storage_url)
    before = dump(storage_url)
    needs = r"schema version 2, older than this poptune's .*poptune upgrade --storage URL"
    with pytest.raises(StorageError, match=needs):
        pt.load(storage_url, "async")
    for command in (
        ["list"],
        ["status", "async"],
        ["report", "async", "-o", str(tmp_path / "x.html")],
    ):
        out = CliRunner().invoke(main, [*command, "--storage", storage_url])
        assert out.exit_code == 1 and "needs a one-time upgrade" in out.output
    assert dump(storage_url) == before  # still schema 2, every row as it was

    out = CliRunner().invoke(main, ["upgrade", "--storage", storage_url])
    assert out.exit_code == 0, out.output
    assert f"from poptune schema version 2 to {SCHEMA_VERSION}" in out.output
    assert dump(storage_url)["poptune_meta"] == [("schema_version", str(SCHEMA_VERSION))]
    out = CliRunner().invoke(main, ["upgrade", "--storage", storage_url])
    assert out.exit_code == 0 and "nothing to upgrade" in out.output
    assert pt.load(storage_url, "async").status == "finished"
