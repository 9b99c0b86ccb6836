"""What only the SQL storage has: URLs, transactions retried through
transient errors, claims that stay atomic across processes, and what opening may create or
change in each mode (the contract itself is in
``test_contract.py``; schema versions and upgrades in ``test_migrations.py``)."""

from __future__ import annotations

import itertools
import multiprocessing
import os
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from poptune.storage import SQLStorage, StorageError, open_storage


def make(storage: SQLStorage, n: int = 4, name: str = "pop") -> int:
    return storage.create_population(name, {"intervals": 5}, [{"x": float(i)} for i in range(n)]).id


def test_bad_urls_are_refused_clearly(tmp_path):
    with pytest.raises(StorageError, match="in-memory"):
        SQLStorage("sqlite://")
    with pytest.raises(StorageError, match="Cannot parse the storage URL 'not a url'"):
        SQLStorage("not a url")
    with pytest.raises(
        StorageError, match=r"Cannot parse the storage URL '//user:\*\*\*@host'"
    ) as e:
        SQLStorage("//user:secret@host")
    assert "secret" not in str(e.value)
    for url in ("foo://x", "mysql://user:secret@host/db"):  # SQLAlchemy's "Can't load plugin"
        with pytest.raises(StorageError, match=r"which poptune cannot store in: use SQLite") as e:
            SQLStorage(url)
        assert "secret" not in str(e.value)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises((StorageError, OSError)):
        SQLStorage(f"sqlite:///{blocker}/sub/poptune.db")


def _claimer(url: str, pid: int, log_path: str, rounds: int) -> None:
    storage = SQLStorage(url)
    with open(log_path, "a") as log:
        for _ in range(rounds):
            claim = storage.claim(pid, str(os.getpid()), 10**6, 30.0, sync=False)
            if claim is None:
                time.sleep(0.001)
                continue
            start = time.monotonic()
            time.sleep(0.002)
            end = time.monotonic()
            log.write(f"{claim.member.id} {claim.token} {start} {end}\n")
            log.flush()
            storage.release(claim)
    storage.close()


def test_claims_are_atomic_across_processes(storage_url, tmp_path: Path):
    storage = SQLStorage(storage_url)
    pid = make(storage, n=3)
    storage.close()
    logs = [tmp_path / f"claims-{i}.log" for i in range(4)]
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_claimer, args=(storage_url, pid, str(path), 60)) for path in logs
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
        assert process.exitcode == 0
    held: dict[int, list[tuple[float, float, int]]] = {}
    for path in logs:
        for line in path.read_text().splitlines():
            member, token, start, end = line.split()
            held.setdefault(int(member), []).append((float(start), float(end), int(token)))
    total = sum(len(v) for v in held.values())
    assert total >= 60  # the processes really competed
    for spans in held.values():
        spans.sort()
        tokens = [t for _, _, t in spans]
        assert len(set(tokens)) == len(tokens)  # every claim got its own fencing token
        for (_, end, _), (start, _, _) in itertools.pairwise(spans):
            assert start >= end  # no two processes ever held the same member at once


def _contract() -> tuple[set[str], set[str]]:
    """The storage contract's methods: the abstract ones, and the derived queries the base
    class implements on them (defaults a backend overrides for speed)."""
    from poptune.storage import Storage

    public = {name for name, value in vars(Storage).items() if callable(value)}
    public = {name for name in public if not name.startswith("_")}
    abstract = set(Storage.__abstractmethods__)
    return abstract, public - abstract


def test_every_sql_transaction_retries_through_transient_errors():
    """Every contract method (one transaction each) and the schema upgrade are marked
    ``@retrying`` where they are defined; ``close`` has no transaction to retry."""
    from poptune.storage import Storage
    from poptune.storage._retry import is_retrying

    abstract, derived = _contract()
    assert (len(abstract), len(derived)) == (27, 13)
    retried = {
        name for name, value in vars(SQLStorage).items() if callable(value) and is_retrying(value)
    }
    assert retried == (abstract | derived) - {"close"} | {"_create_schema", "_check_schema"}
    assert issubclass(SQLStorage, Storage) and not SQLStorage.__abstractmethods__


def test_sql_overrides_every_derived_query():
    """The base class's defaults read more than they answer (a whole step for one peer): SQL
    answers each with its own indexed query instead (measured by the scaling benchmark)."""
    _, derived = _contract()
    assert derived == {
        "population",
        "interval",
        "checkpoint",
        "scores_since",
        "best_by_step",
        "candidate_scores",
        "peer",
        "peer_counts",
        "peer_at",
        "close",
        # a block's batches: one transaction each, not one per member
        "claim_block",
        "record_intervals",
        "record_exploits",
    }
    assert {name for name in derived if name in vars(SQLStorage)} == derived


# --- opening: what each mode may create or change ------------------------------------------


def files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes: what must stay as it was."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def foreign_database(path: Path) -> Path:
    """Another application's SQLite file (rollback journal, as most applications leave it)."""
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        connection.execute("INSERT INTO users (name) VALUES ('ada'), ('grace')")
    connection.close()
    return path


def tables(path: Path) -> list[str]:
    with sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True) as connection:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    connection.close()
    return sorted(name for (name,) in rows)


@pytest.mark.parametrize("mode", ["read", "write"])
def test_opening_a_missing_sqlite_file_to_read_or_write_creates_nothing(tmp_path, mode):
    path = tmp_path / "typo" / "poptune.db"
    with pytest.raises(StorageError, match=r"No poptune database at .*typo/poptune\.db: the file"):
        open_storage(f"sqlite:///{path}", mode=mode)
    assert list(tmp_path.iterdir()) == []  # neither the folder nor the file


def test_opening_a_missing_sqlite_file_to_create_creates_it(tmp_path):
    path = tmp_path / "new" / "poptune.db"
    open_storage(f"sqlite:///{path}").close()
    assert "poptune_meta" in tables(path)
    open_storage(f"sqlite:///{path}", mode="read").close()  # now there is one to read


@pytest.mark.parametrize("mode", ["read", "write"])
def test_another_applications_sqlite_file_is_not_a_poptune_database(tmp_path, mode):
    path = foreign_database(tmp_path / "app.db")
    before = files(tmp_path)
    with pytest.raises(
        StorageError, match=r"No poptune database at .*app\.db: it is another application's"
    ):
        open_storage(f"sqlite:///{path}", mode=mode)
    assert files(tmp_path) == before  # not a byte changed, no journal or WAL file left


def test_poptune_adds_its_tables_to_another_applications_file_only_when_told(tmp_path):
    path = foreign_database(tmp_path / "app.db")
    before = files(tmp_path)
    with pytest.raises(StorageError, match=r"tables: 'users'.*allow_other_tables=True") as error:
        open_storage(f"sqlite:///{path}")
    assert "\n" not in str(error.value)
    assert files(tmp_path) == before
    storage = open_storage(f"sqlite:///{path}", allow_other_tables=True)
    make(storage)
    storage.close()
    assert "users" in tables(path) and "poptune_meta" in tables(path)
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT name FROM users").fetchall() == [("ada",), ("grace",)]
    connection.close()
    # Now it is (also) poptune's: every mode opens it, as worker processes do.
    open_storage(f"sqlite:///{path}", mode="read").close()


def test_an_empty_sqlite_file_is_read_as_no_database_and_created_in(tmp_path):
    path = tmp_path / "empty.db"
    path.touch()
    with pytest.raises(StorageError, match="it is an empty SQLite file"):
        open_storage(f"sqlite:///{path}", mode="read")
    assert path.read_bytes() == b""
    open_storage(f"sqlite:///{path}").close()
    assert "poptune_members" in tables(path)


def _folder(tmp_path: Path) -> Path:
    (tmp_path / "db").mkdir()
    return tmp_path / "db"


def _random(tmp_path: Path) -> Path:
    path = tmp_path / "random.db"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    return path


def _text(tmp_path: Path) -> Path:
    path = tmp_path / "notes.db"
    path.write_text("hello\n")
    return path


def _damaged(tmp_path: Path) -> Path:
    path = tmp_path / "damaged.db"
    path.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4080)
    return path


@pytest.mark.parametrize(
    ("make_path", "match"),
    [
        (_folder, r"db is a folder, not a SQLite database file\. Name a file in it, e\.g\. "),
        (_random, r"random\.db is not a SQLite database \(its first bytes are "),
        (_text, r"notes\.db is not a SQLite database \(its first bytes are b'hello\\n'\)"),
        (_damaged, r"damaged\.db is not a usable SQLite database: "),
    ],
)
@pytest.mark.parametrize("mode", ["read", "write", "create"])
def test_what_is_not_a_database_is_named_in_one_line_in_every_mode(
    tmp_path, make_path, match, mode
):
    path = make_path(tmp_path)
    before = files(tmp_path)
    with pytest.raises(StorageError, match=match) as error:
        open_storage(f"sqlite:///{path}", mode=mode)
    message = str(error.value)
    assert "\n" not in message and "worker stops" not in message and "_create_schema" not in message
    assert files(tmp_path) == before


def test_a_port_that_is_not_a_number_is_named(tmp_path):
    for mode in ("read", "create"):
        with pytest.raises(StorageError, match=r"the port 'notaport', which is not a number") as e:
            open_storage("postgresql+psycopg://user:secret@host:notaport/db", mode=mode)
        assert "secret" not in str(e.value)
    with pytest.raises(StorageError, match=r"has the port 70000, outside 1 to 65535") as e:
        open_storage("postgresql+psycopg://user:secret@host:70000/db")
    assert "secret" not in str(e.value)


def test_a_server_that_is_not_there_is_one_line_not_a_worker_stopping():
    with pytest.raises(StorageError, match=r"^Cannot open the storage .*:1/db: ") as error:
        open_storage("postgresql+psycopg://user:secret@127.0.0.1:1/db", mode="read")
    message = str(error.value)
    assert "\n" not in message and "secret" not in message and "worker stops" not in message


def test_an_unknown_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"The 'mode' parameter of SQLStorage must be 'read'"):
        open_storage(f"sqlite:///{tmp_path / 'p.db'}", mode="append")
    assert list(tmp_path.iterdir()) == []


def test_a_database_without_poptune_tables_is_read_as_none_and_left_empty(storage_url):
    """SQLite: no file; PostgreSQL: a database (shared, other tables may live there) without
    poptune's tables. Reading and writing create none; creating does."""
    for mode in ("read", "write"):
        with pytest.raises(StorageError, match="No poptune database at "):
            open_storage(storage_url, mode=mode)
    engine = sa.create_engine(storage_url)
    with engine.connect() as connection:
        assert sa.inspect(connection).get_table_names() == []
    engine.dispose()
    open_storage(storage_url).close()
    open_storage(storage_url, mode="read").close()


def test_tables_named_like_poptunes_without_its_schema_version_are_refused(storage_url):
    engine = sa.create_engine(storage_url)
    with engine.begin() as connection:
        connection.execute(sa.text("CREATE TABLE poptune_populations (id INTEGER)"))
    with pytest.raises(StorageError, match=r"tables with poptune's names \(poptune_populations\)"):
        open_storage(storage_url, allow_other_tables=True)  # even beside other tables
    with engine.connect() as connection:
        assert sa.inspect(connection).get_table_names() == ["poptune_populations"]
    engine.dispose()


def test_another_applications_table_named_poptune_something_is_left_alone(storage_url):
    """Only poptune's own table names are refused: a poptune_settings table of another
    application blocked the whole database, even with allow_other_tables."""
    engine = sa.create_engine(storage_url)
    with engine.begin() as connection:
        connection.execute(sa.text("CREATE TABLE poptune_settings (id INTEGER, v TEXT)"))
        connection.execute(sa.text("INSERT INTO poptune_settings VALUES (1, 'theirs')"))
    open_storage(storage_url, allow_other_tables=True).close()
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT * FROM poptune_settings")).all() == [
            (1, "theirs")
        ]
        assert "poptune_populations" in sa.inspect(connection).get_table_names()
    engine.dispose()


@pytest.mark.parametrize("mode", ["read", "write", "create"])
def test_a_schema_version_that_is_not_a_number_is_named(storage_url, mode):
    open_storage(storage_url).close()
    engine = sa.create_engine(storage_url)
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE poptune_meta SET value = 'abc'"))
    with pytest.raises(StorageError, match=r"schema version as 'abc' .*not a number.*backup"):
        open_storage(storage_url, mode=mode)
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT value FROM poptune_meta")).scalar() == "abc"
    engine.dispose()


def test_corrupt_stored_json_is_named_not_a_parser_traceback(storage_url):
    storage = open_storage(storage_url)
    population = make(storage)
    engine = sa.create_engine(storage_url)
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE poptune_populations SET config = '{\"intervals\": 5'"))
        connection.execute(sa.text("UPDATE poptune_members SET hparams = '[1, 2]'"))
    engine.dispose()
    for read in (lambda: storage.population("pop"), storage.populations):
        with pytest.raises(
            StorageError,
            match=r"^The configuration of population 'pop' is stored as '\{\"intervals\": 5', "
            r"which is not valid JSON .*Restore it from a backup",
        ):
            read()
    with pytest.raises(StorageError, match=r"^The hparams of member 0 is stored as '\[1, 2\]', "):
        storage.members(population)
    with pytest.raises(StorageError, match="The configuration of population id"):
        storage.update_config(population, {"started_at": 1.0})
    storage.close()
