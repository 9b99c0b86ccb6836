"""The ``poptune`` command on a real stored population."""

from __future__ import annotations

import hashlib
import importlib
import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

import poptune as pt
from poptune.cli import main
from poptune.storage import SQLStorage
from poptune.testing import CreateOnlyRunner, Quadratic, quadratic_space


@pytest.fixture
def population(storage_url: str) -> pt.Result:
    return pt.run(
        Quadratic,
        space=quadratic_space(),
        metric="q",
        population=4,
        intervals=6,
        storage=storage_url,
        name="toy",
        seed=0,
        progress=False,
    )


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_list(population, storage_url):
    out = invoke("list", "--storage", storage_url)
    assert out.exit_code == 0
    assert "toy" in out.output and "finished" in out.output and "24/24" in out.output


def test_status_table_and_json(population, storage_url):
    out = invoke("status", "toy", "--storage", storage_url)
    assert out.exit_code == 0
    assert "h0=" in out.output and "finished" in out.output
    data = json.loads(invoke("status", "toy", "--storage", storage_url, "--json").output)
    assert data["status"] == "finished" and len(data["members"]) == 4
    assert {m["step"] for m in data["members"]} == {6}
    assert data["best_score"] == population.best.score


def test_best_is_json(population, storage_url):
    data = json.loads(invoke("best", "toy", "--storage", storage_url).output)
    best = population.best
    assert (data["member"], data["step"], data["score"]) == (best.member, best.step, best.score)
    assert data["hparams"] == dict(best.hparams)


def test_schedule(population, storage_url):
    out = invoke("schedule", "toy", "--storage", storage_url)
    assert out.exit_code == 0 and "schedule of toy" in out.output
    entries = json.loads(invoke("schedule", "toy", "--storage", storage_url, "--json").output)
    assert [e["step"] for e in entries] == list(range(1, len(entries) + 1))


def test_missing_population_and_bad_storage(storage_url):
    SQLStorage(storage_url).close()  # an empty poptune database
    out = CliRunner().invoke(main, ["status", "nope", "--storage", storage_url])
    assert out.exit_code == 1 and "No population named 'nope'" in out.output
    out = CliRunner().invoke(main, ["list", "--storage", "sqlite://"])
    assert out.exit_code == 1 and "in-memory" in out.output


def test_resume_finishes_an_interrupted_population(storage_url):
    result = pt.run(
        Quadratic,
        space=quadratic_space(),
        metric="q",
        population=3,
        intervals=4,
        storage=storage_url,
        name="cut",
        seed=0,
        progress=False,
    )
    # Simulate an interruption: forget the last intervals by marking members behind budget.
    assert result.status == "finished"
    out = invoke("resume", "cut", "--storage", storage_url, "--no-progress")
    assert out.exit_code == 0 and "finished" in out.output


def test_workers_join_a_stored_population_from_the_command_line(storage_url, tmp_path):
    import subprocess
    import sys

    pt.run(
        Quadratic,
        space=quadratic_space(),
        metric="q",
        population=4,
        intervals=5,
        storage=storage_url,
        name="joined",
        seed=0,
        progress=False,
        runner=CreateOnlyRunner(),
        checkpoints=tmp_path / "checkpoints",
    )
    command = [sys.executable, "-m", "poptune.cli", "worker", "joined", "--storage", storage_url]
    workers = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0]
    trained = sum(int(out.split("trained ")[1].split()[0]) for out in outputs)
    assert trained == 4 * 5  # between them, exactly the budget
    result = pt.load(storage_url, "joined")
    assert result.status == "finished" and [m.step for m in result.members] == [5] * 4


# --- what a command may create or change ----------------------------------------------------

#: every command that only reads, with the arguments it needs ({out}: a scratch folder)
READS = [
    ["list"],
    ["status", "toy"],
    ["status", "toy", "--json"],
    ["report", "toy", "-o", "{out}/toy.html"],
    ["plot", "toy", "-o", "{out}/toy.png"],
    ["best", "toy"],
    ["schedule", "toy"],
    ["export", "toy", "--tensorboard", "{out}/tb"],
]
#: commands that write to an existing population (and may upgrade its database)
WRITES = [
    ["resume", "toy", "--no-progress"],
    ["worker", "toy"],
    ["delete", "toy", "--yes"],
    ["replay", "toy", "--no-progress"],
    ["upgrade"],
]


def run_cli(args: list[str], storage: str, out: Path) -> Any:
    filled = [a.replace("{out}", str(out)) for a in args]
    return CliRunner().invoke(main, [*filled, "--storage", storage])


def tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (folders too) and a hash of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        if p.is_file()
        else "/"
        for p in sorted(folder.rglob("*"))
    }


@pytest.mark.parametrize("args", READS + WRITES, ids=lambda a: " ".join(a[:2]))
def test_no_command_creates_a_storage_that_is_not_there(tmp_path, args):
    out = tmp_path / "out"
    out.mkdir()
    missing = tmp_path / "typo" / "poptune.db"
    result = run_cli(args, f"sqlite:///{missing}", out)
    assert result.exit_code == 1
    assert f"No poptune database at {missing}: the file does not exist" in result.output
    assert result.output.count("\n") == 1
    assert tree(tmp_path) == {"out": "/"}  # no folder, no database, no output


def test_the_default_storage_is_not_created_by_reading(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("POPTUNE_STORAGE", raising=False)
    result = CliRunner().invoke(main, ["list"])
    assert result.exit_code == 1 and "runs/poptune.db: the file does not exist" in result.output
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args", READS + WRITES, ids=lambda a: " ".join(a[:2]))
def test_another_applications_sqlite_file_is_left_alone(tmp_path, args):
    out = tmp_path / "out"
    out.mkdir()
    database = tmp_path / "app.db"
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT)")
        connection.execute("INSERT INTO accounts (owner) VALUES ('ada')")
    connection.close()
    before = tree(tmp_path)
    result = run_cli(args, f"sqlite:///{database}", out)
    assert result.exit_code == 1
    assert (
        f"No poptune database at {database}: it is another application's SQLite database "
        "(tables: 'accounts')" in result.output
    )
    assert tree(tmp_path) == before  # its bytes, and no file beside it (journal, WAL, output)


@pytest.mark.parametrize("args", [["list"], ["status", "toy"], ["resume", "toy"], ["delete", "x"]])
@pytest.mark.parametrize("what", ["folder", "random bytes", "text"])
def test_what_is_not_a_database_is_one_clear_line_for_every_command(tmp_path, args, what):
    path = tmp_path / "poptune.db"
    if what == "folder":
        path.mkdir()
        expected = f"{path} is a folder, not a SQLite database file. Name a file in it"
    else:
        path.write_bytes(b"\x00\x13\xfe" * 100 if what == "random bytes" else b"my notes\n")
        expected = f"{path} is not a SQLite database (its first bytes are "
    before = tree(tmp_path)
    result = run_cli(args, f"sqlite:///{path}", tmp_path)
    assert result.exit_code == 1 and expected in result.output
    assert result.output.count("\n") == 1 and "worker stops" not in result.output
    assert tree(tmp_path) == before


def test_a_port_that_is_not_a_number_is_named():
    result = CliRunner().invoke(
        main, ["list", "--storage", "postgresql+psycopg://me:secret@db.example:notaport/pbt"]
    )
    assert result.exit_code == 1
    assert "port 'notaport', which is not a number" in result.output
    assert "secret" not in result.output and result.output.count("\n") == 1


def dump(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table: what a failed command must leave as it was."""
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        found = {
            table: sorted(map(tuple, connection.execute(sa.text(f"SELECT * FROM {table}"))))
            for table in sa.inspect(connection).get_table_names()
        }
    engine.dispose()
    return found


@pytest.mark.parametrize(
    "args",
    [["resume", "gone"], ["resume", "gone", "--intervals", "6"], ["worker", "gone"]],
    ids=" ".join,
)
def test_a_command_whose_training_code_is_gone_changes_nothing(
    storage_url, tmp_path, monkeypatch, args
):
    module = tmp_path / "vanishing_trainable.py"
    module.write_text(
        "from poptune.testing import Quadratic\n\n\nclass Vanishing(Quadratic):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    from vanishing_trainable import Vanishing  # type: ignore[import-not-found]

    pt.run(
        Vanishing,
        space=quadratic_space(),
        metric="q",
        population=3,
        intervals=2,
        storage=storage_url,
        checkpoints=tmp_path / "checkpoints",
        name="gone",
        seed=0,
        progress=False,
    ).storage.close()
    module.unlink()  # the training script is gone from this machine
    monkeypatch.delitem(sys.modules, "vanishing_trainable")
    importlib.invalidate_caches()
    before = dump(storage_url)
    result = CliRunner().invoke(main, [*args, "--storage", storage_url])
    assert result.exit_code == 1
    assert "Cannot import 'vanishing_trainable:Vanishing'" in result.output
    assert dump(storage_url) == before  # started_at, the budget, every member: as they were
