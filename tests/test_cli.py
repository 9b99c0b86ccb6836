"""The ``poptune`` command on a real stored population."""

from __future__ import annotations

import datetime
import hashlib
import importlib
import json
import re
import shlex
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

import poptune as pt
from poptune import cli
from poptune._filenames import safe_filename
from poptune.cli import main
from poptune.storage import SQLStorage
from poptune.testing import Quadratic


@pytest.fixture
def population(storage_url: str, quick_run) -> pt.Result:
    return quick_run(storage=storage_url, name="toy", population=4, intervals=6)


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


def test_schedule_of_a_member_without_trained_weights_says_so(quick_run):
    quick_run.created(name="fresh", population=2, intervals=2)  # nothing trained yet
    out = invoke("schedule", "fresh", "--member", "1", "--storage", quick_run.storage)
    assert out.exit_code == 0 and "Member 1 of fresh holds no trained weights yet" in out.output
    listed = invoke("schedule", "fresh", "--member", "1", "--storage", quick_run.storage, "--json")
    assert json.loads(listed.output) == []


def test_missing_population_and_bad_storage(storage_url):
    SQLStorage(storage_url).close()  # an empty poptune database
    out = CliRunner().invoke(main, ["status", "nope", "--storage", storage_url])
    assert out.exit_code == 1 and "No population named 'nope'" in out.output
    out = CliRunner().invoke(main, ["list", "--storage", "sqlite://"])
    assert out.exit_code == 1 and "in-memory" in out.output


def test_resume_finishes_an_interrupted_population(storage_url, quick_run):
    result = quick_run(storage=storage_url, name="cut", intervals=4)
    # Simulate an interruption: forget the last intervals by marking members behind budget.
    assert result.status == "finished"
    out = invoke("resume", "cut", "--storage", storage_url, "--no-progress")
    assert out.exit_code == 0 and "finished" in out.output


@pytest.mark.parametrize(
    ("given", "recorded"),
    [
        ("3", 3),
        ("1", 1),
        ("600s", datetime.timedelta(minutes=10)),
        ("10m", datetime.timedelta(minutes=10)),
        ("1.5h", datetime.timedelta(minutes=90)),
    ],
)
def test_resume_records_checkpoint_every_in_intervals_or_a_duration(
    storage_url, quick_run, given, recorded
):
    quick_run(storage=storage_url, name="p", intervals=2, checkpoint_every=2, ready=pt.Every(2))
    out = invoke(
        "resume", "p", "--storage", storage_url, "--no-progress", "--intervals", "4",
        "--checkpoint-every", given,
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    result = pt.load(storage_url, "p")
    assert result.config.checkpoint_every == recorded
    assert result.status == "finished" and [m.step for m in result.members] == [4, 4, 4]
    out = invoke("resume", "p", "--storage", storage_url, "--no-progress", "--intervals", "5")
    assert out.exit_code == 0
    assert pt.load(storage_url, "p").config.checkpoint_every == recorded  # kept when left out


@pytest.mark.parametrize("given", ["0", "-3", "10x", "10 m", "1e3s", "0s", "5.5", "m", "", "٣"])
def test_resume_refuses_a_checkpoint_every_it_cannot_read(storage_url, quick_run, given):
    quick_run(storage=storage_url, name="p", intervals=2)
    out = CliRunner().invoke(
        main, ["resume", "p", "--storage", storage_url, f"--checkpoint-every={given}"]
    )
    assert out.exit_code == 2  # a usage error: nothing was trained, nothing changed
    assert "--checkpoint-every" in out.output and repr(given) in out.output
    assert "e.g." in out.output  # what to give instead
    assert pt.load(storage_url, "p").config.checkpoint_every is None


def test_resume_refuses_a_duration_for_a_population_in_generations(storage_url, quick_run):
    quick_run(storage=storage_url, name="sync", intervals=2, sync=True)
    out = CliRunner().invoke(
        main, ["resume", "sync", "--storage", storage_url, "--checkpoint-every", "10m"]
    )
    assert out.exit_code == 1
    assert "sync=True" in out.output and "timedelta(seconds=600)" in out.output
    assert pt.load(storage_url, "sync").config.checkpoint_every is None


def test_workers_join_a_stored_population_from_the_command_line(storage_url, tmp_path, quick_run):
    import subprocess
    import sys

    quick_run.created(
        storage=storage_url, checkpoints=tmp_path / "checkpoints", name="joined",
        population=4, intervals=5,
    )  # fmt: skip
    command = [sys.executable, "-m", "poptune.cli", "worker", "joined", "--storage", storage_url]
    workers = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0]
    trained = sum(int(out.split("trained ")[1].split()[0]) for out in outputs)
    assert trained == 4 * 5  # between them, exactly the budget
    result = pt.load(storage_url, "joined")
    assert result.status == "finished" and [m.step for m in result.members] == [5] * 4


@pytest.mark.parametrize(
    "name", ["../x", "ABSOLUTE", "a/b", "..", "x" * 150, "学习 run", "digits-v2"]
)
def test_report_default_output_is_a_safe_file_in_this_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, quick_run
) -> None:
    # Without -o the file is named after the population: a name from the storage, never a path.
    name = name.replace("ABSOLUTE", str(tmp_path / "escaped"))
    url = f"sqlite:///{tmp_path / 'db' / 'poptune.db'}"
    quick_run(storage=url, name=name, population=2)
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    before = {p for p in tmp_path.rglob("*") if p.is_file()}
    out = invoke("report", name, "--storage", url)
    assert out.exit_code == 0, out.output
    written = {p for p in tmp_path.rglob("*") if p.is_file()} - before
    expected = here / f"{safe_filename(name)}-report.html"
    assert written == {expected}
    assert f"Wrote {expected.relative_to(here)}" in out.output
    if name == "digits-v2":
        assert expected.name == "digits-v2-report.html"  # an ordinary name reads as it is


def test_report_to_a_path_that_cannot_be_written_is_one_line(population, storage_url, tmp_path):
    # the path the user gave is shown whole, however long (a cut one hides which file it was)
    unwritable = tmp_path / "no" / ("such-a-long-folder-name-" * 5) / "x.html"
    for target in (str(tmp_path), str(unwritable), "/proc/x.html"):
        if target.startswith(str(tmp_path / "no")):
            (tmp_path / "no").write_text("a file where a folder should be")
        out = CliRunner().invoke(main, ["report", "toy", "--storage", storage_url, "-o", target])
        assert out.exit_code == 1 and out.exception is not None
        assert "Traceback" not in out.output and len(out.output.splitlines()) == 1
        assert out.output.startswith(f"Error: Cannot write {target}: ")
        assert "Pass -o a file in a folder you can write" in out.output


def _rename(storage_url: str, name: str) -> None:
    """Give the stored population a name pt.run would refuse (an older poptune, another tool)."""
    import sqlalchemy as sa

    engine = sa.create_engine(storage_url)
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE poptune_populations SET name = :name"), {"name": name})
    engine.dispose()


def test_stored_names_are_printed_as_text_never_obeyed(population, storage_url):
    evil = "toy\x1b[2J[/]:smile:[red]\u202e"
    _rename(storage_url, evil)
    wide = {"COLUMNS": "250"}  # the whole name in one cell
    listed = CliRunner().invoke(main, ["list", "--storage", storage_url], env=wide)
    assert listed.exit_code == 0  # '[/]' was rich markup with nothing to close: a crash
    shown = "toy\\x1b[2J[/]:smile:[red]\\u202e"
    assert shown in listed.output
    status = CliRunner().invoke(main, ["status", evil, "--storage", storage_url], env=wide)
    assert status.exit_code == 0 and shown in status.output
    missing = CliRunner().invoke(main, ["status", "toy", "--storage", storage_url])
    assert missing.exit_code == 1 and f"Populations here: {shlex.quote(shown)}." in missing.output
    for out in (listed, status, missing):
        assert "\x1b" not in out.output and "\u202e" not in out.output and "😄" not in out.output


def test_a_long_or_undecodable_name_is_not_found_in_one_short_line(population, storage_url):
    out = CliRunner().invoke(main, ["status", "x" * 10_000, "--storage", storage_url])
    assert out.exit_code == 1 and len(out.output) < 500 and "x…' in" in out.output
    # a name from a shell whose bytes are not UTF-8 (click passes them as lone surrogates)
    out = CliRunner().invoke(main, ["status", "a\udcffb", "--storage", storage_url])
    assert out.exit_code == 1 and "Traceback" not in out.output
    assert out.output.startswith("Error: No population named 'a\\udcffb' in ")


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
    storage_url, tmp_path, monkeypatch, args, quick_run
):
    module = tmp_path / "vanishing_trainable.py"
    module.write_text(
        "from poptune.testing import Quadratic\n\n\nclass Vanishing(Quadratic):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    from vanishing_trainable import Vanishing  # type: ignore[import-not-found]

    quick_run(
        Vanishing, storage=storage_url, checkpoints=tmp_path / "checkpoints", name="gone"
    ).storage.close()
    module.unlink()  # the training script is gone from this machine
    monkeypatch.delitem(sys.modules, "vanishing_trainable")
    importlib.invalidate_caches()
    before = dump(storage_url)
    result = CliRunner().invoke(main, [*args, "--storage", storage_url])
    assert result.exit_code == 1
    assert "Cannot import 'vanishing_trainable:Vanishing'" in result.output
    assert dump(storage_url) == before  # started_at, the budget, every member: as they were


class _CtrlC(Quadratic):
    """Ctrl-C during the third interval this process trains."""

    trained = 0

    def train(self, hparams):
        type(self).trained += 1
        if type(self).trained == 3:
            raise KeyboardInterrupt
        return super().train(hparams)


def _hinted_command(output: str, start: str) -> list[str]:
    """The words of the command a message tells the user to type, from ``start`` to the end of
    its line or its closing backtick, read as a POSIX shell reads them."""
    line = output[output.index(start) :].splitlines()[0]
    return shlex.split(line.split("`")[0])


def test_status_says_interrupted_after_a_clean_ctrl_c(quick_run):
    url = quick_run.storage
    with pytest.raises(KeyboardInterrupt):
        quick_run(_CtrlC, name="cut", population=2, intervals=4)
    out = invoke("status", "cut", "--storage", url)
    assert out.exit_code == 0 and "cut · interrupted ·" in out.output
    assert f"poptune resume cut --storage '{url}'" in out.output
    listed = invoke("list", "--storage", url)
    assert "interrupted" in listed.output
    assert json.loads(invoke("status", "cut", "--storage", url, "--json").output)["status"] == (
        "running"  # what is stored: scripts keep reading it
    )
    resumed = invoke("resume", "cut", "--storage", url, "--no-progress")
    assert resumed.exit_code == 0
    assert "finished" in invoke("status", "cut", "--storage", url).output


def test_resume_hints_are_commands_a_shell_reads_back(quick_run):
    """A name with a space, a quote and a $ is shown quoted, whole, in every resume hint."""
    url, name = quick_run.storage, "cut it's $HOME " + "x" * 100
    _CtrlC.trained = 0
    with pytest.raises(KeyboardInterrupt):
        quick_run(_CtrlC, name=name, population=2, intervals=4)
    expected = ["poptune", "resume", name, "--storage", url]
    status = invoke("status", name, "--storage", url)
    assert _hinted_command(status.output, "poptune resume") == expected
    _CtrlC.trained = 0  # the resumed run is interrupted again
    resumed = CliRunner().invoke(main, ["resume", name, "--storage", url, "--no-progress"])
    assert resumed.exit_code == 130, resumed.output
    assert _hinted_command(resumed.output, "poptune resume") == expected


def test_hints_for_a_name_that_starts_with_a_dash_are_commands_that_work(quick_run):
    """A name read as an option (``--help ...``) comes after ``--`` in a hint, the options
    before it: the hinted commands find the population and resume or delete it."""
    url, name = quick_run.storage, "--help it's"
    _CtrlC.trained = 0
    with pytest.raises(KeyboardInterrupt):
        quick_run(_CtrlC, name=name, population=2, intervals=4)
    status = invoke("status", "--storage", url, "--", name)
    hinted = _hinted_command(status.output, "poptune resume")
    assert hinted == ["poptune", "resume", "--storage", url, "--", name]
    resumed = invoke(hinted[1], "--no-progress", *hinted[2:])
    assert resumed.exit_code == 0, resumed.output
    with pytest.raises(pt.PopulationExists) as exists:  # another configuration, the same name
        quick_run(name=name, population=3, intervals=4)
    deleted = _hinted_command(str(exists.value), "poptune delete")
    assert deleted == ["poptune", "delete", "--storage", url, "--", name]
    assert invoke(deleted[1], "--yes", *deleted[2:]).exit_code == 0
    assert name not in invoke("list", "--storage", url).output


def test_a_crashed_run_reads_as_interrupted_once_its_leases_ran_out(quick_run, monkeypatch):
    """A worker killed while it held members (SIGKILL, an out-of-memory kill) leaves them
    marked running: once their leases ran out they are claimable again, and status, list and
    --watch say interrupted, with the command to resume, instead of "running" for ever."""
    url = quick_run.storage
    quick_run.created(name="crashed", population=2, intervals=4)
    storage = pt.open_storage(url)
    population = storage.population("crashed").id
    claim = storage.claim(population, "killed", 5, 0.3, sync=False)  # its worker dies now
    assert claim is not None
    held = invoke("status", "crashed", "--storage", url)
    assert "crashed · running ·" in held.output and "Interrupted" not in held.output
    time.sleep(0.4)
    out = invoke("status", "crashed", "--storage", url)
    assert out.exit_code == 0 and "crashed · interrupted ·" in out.output, out.output
    assert "running" not in out.output  # the killed worker's member too
    assert _hinted_command(out.output, "poptune resume") == [
        "poptune", "resume", "crashed", "--storage", url,
    ]  # fmt: skip
    assert "interrupted" in invoke("list", "--storage", url).output
    monkeypatch.setattr(cli, "_INTERRUPTED_AFTER", 0.5)
    watched = invoke("status", "crashed", "--storage", url, "--watch", "--every", "0.2")
    assert watched.exit_code == 0 and "poptune resume crashed" in watched.output
    storage.close()


def test_status_shows_a_stored_traceback_as_lines(quick_run):
    """The population's error was one line of 2,000 characters with literal \\n in it."""
    from poptune.testing import Failing

    with pytest.raises(pt.PopulationError):
        quick_run(Failing, name="failing", population=2, intervals=2, max_failures=0)
    out = invoke("status", "failing", "--storage", quick_run.storage).output
    notes = out[out.index("Stopped on an error:") :].split("\nMember ")[0].splitlines()
    assert notes[1] == "Traceback (most recent call last):"
    assert notes[-1].startswith("RuntimeError: boom: training diverged")
    assert "\\n" not in out


def test_status_and_list_fit_an_80_column_terminal(quick_run, monkeypatch):
    url = quick_run.storage
    quick_run(name="digits-v2")
    long = "plateau-" + "x" * 100  # cut to "plateau-x…" in the list, not what one types
    quick_run(name=long)
    monkeypatch.setenv("COLUMNS", "80")
    listed = invoke("list", "--storage", url).output
    assert "".join(re.findall(r"^[│┃|]\s*(\S+)", listed, flags=re.MULTILINE)).count(long) == 1
    for command in (["list"], ["status", "digits-v2"]):
        out = invoke(*command, "--storage", url)
        assert out.exit_code == 0, out.output
        assert max(len(line) for line in out.output.splitlines()) <= 80
        assert "…" not in out.output  # nothing cut short


def test_version():
    out = invoke("--version")
    assert out.exit_code == 0 and out.output.strip() == f"poptune, version {pt.__version__}"
