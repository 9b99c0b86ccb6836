"""The W&B tracker, for real in offline mode: what it writes is read back from the runs' own
``.wandb`` files with wandb's protobuf ``Record`` messages and compared with the storage.

W&B ships no Python reader for its run files any more, so this file carries one: a ``.wandb``
file is a 7-byte header (``:W&B``, magic ``0xBEE1``, version 0) and then a LevelDB-style log of
32 KiB blocks, each record a 7-byte header (CRC-32 of type and data, length, type) and a piece
of a serialized ``Record`` (whole, or first/middle/last pieces across blocks).
"""

from __future__ import annotations

import json
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import poptune as pt
from poptune.cli import main
from poptune.testing import SlowQuadratic
from poptune.trackers import TrackerError, TrackerExporter, describe_exploit

wandb = pytest.importorskip("wandb")
from wandb.proto import wandb_internal_pb2  # noqa: E402

# --- reading a run file back -----------------------------------------------------------------

_FILE_HEADER = struct.Struct("<4sHB")  # ident, magic, version
_RECORD_HEADER = struct.Struct("<IHB")  # checksum, length, type
_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def records(path: Path) -> Iterator[Any]:
    """Every ``Record`` of a ``.wandb`` file, in the order written; checksums checked."""
    data = path.read_bytes()
    ident, magic, version = _FILE_HEADER.unpack_from(data, 0)
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), path
    position, pending = _FILE_HEADER.size, b""
    while position + _RECORD_HEADER.size <= len(data):
        if _BLOCK - position % _BLOCK < _RECORD_HEADER.size:  # a block's zero-filled trailer
            position += _BLOCK - position % _BLOCK
            continue
        checksum, length, kind = _RECORD_HEADER.unpack_from(data, position)
        if (checksum, length, kind) == (0, 0, 0):  # preallocated, never written
            break
        start = position + _RECORD_HEADER.size
        piece = data[start : start + length]
        assert zlib.crc32(piece, zlib.crc32(bytes([kind]))) == checksum, f"{path} at {position}"
        assert kind in (_FULL, _FIRST, _MIDDLE, _LAST), kind
        position = start + length
        pending += piece
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def _value(item: Any) -> Any:
    return json.loads(item.value_json)


def _items(items: Any) -> dict[str, Any]:
    """``{key: value}`` of a record's items; a nested key (a table's, ``schedule._type``)
    as nested dicts."""
    found: dict[str, Any] = {}
    for item in items:
        *parents, last = list(item.nested_key) or [item.key]
        into = found
        for parent in parents:
            into = into.setdefault(parent, {})
        into[last] = _value(item)
    return found


@dataclass
class Run:
    """One W&B run as its files (one per export that wrote to it) hold it."""

    id: str
    folders: list[Path] = field(default_factory=list)
    group: str = ""
    job_type: str = ""
    name: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    config_updates: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def rows(self) -> dict[int, dict[str, Any]]:
        """The history by step; a step written twice fails the test."""
        by_step: dict[int, dict[str, Any]] = {}
        for row in self.history:
            assert row["_step"] not in by_step, f"{self.id}: step {row['_step']} written twice"
            by_step[row["_step"]] = row
        return by_step

    def file(self, relative: str) -> Path:
        """A media file of the run, as its latest export wrote it."""
        found = [f / "files" / relative for f in self.folders if (f / "files" / relative).exists()]
        assert found, (relative, self.folders)
        return found[-1]


def finished_records(path: Path, timeout: float = 20.0) -> list[Any]:
    """The records of a finished run's file, once W&B has written them all: ``run.finish()``
    returns when the run's exit is handled, and W&B's service writes the file's records a
    moment later (and at the latest when the process exits)."""
    deadline = time.monotonic() + timeout
    while True:
        found = list(records(path))
        if found and found[-1].WhichOneof("record_type") == "exit":
            return found
        assert time.monotonic() < deadline, f"{path} has no exit record"
        time.sleep(0.05)


def read_runs(folder: Path) -> dict[str, Run]:
    """Every run under ``folder/wandb``, its records gathered across the files of its exports."""
    runs: dict[str, Run] = {}
    for path in sorted((folder / "wandb").glob("offline-run-*/run-*.wandb")):
        for record in finished_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run = runs.setdefault(record.run.run_id, Run(record.run.run_id))
                run.folders.append(path.parent)
                run.group, run.job_type = record.run.run_group, record.run.job_type
                run.name = record.run.display_name
                run.config.update(_items(record.run.config.update))
            elif kind == "history":
                run.history.append(_items(record.history.item))
            elif kind == "config":
                update = _items(record.config.update)
                run.config_updates.append(update)
                run.config.update(update)
            elif kind == "summary":
                run.summary.update(_items(record.summary.update))
    return runs


# --- the population and its checks -----------------------------------------------------------


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """W&B offline, quiet, writing under ``tmp_path``: the folder its runs go to."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return tmp_path


def check_members(runs: dict[str, Run], result: pt.Result) -> None:
    """A run per member, grouped by the population: its first hparams and the population's
    settings as config, every interval at its step, every exploit with it."""
    members = {
        run.config["poptune"]["member"]: run for run in runs.values() if run.job_type == "member"
    }
    assert sorted(members) == [m.id for m in result.members]
    intervals, exploits = result.intervals(), result.exploits()
    for member, run in members.items():
        assert run.group == result.name and run.name == f"member-{member}"
        settings = run.config["poptune"]
        assert settings["name"] == result.name and settings["metric"] == "q"
        assert settings["mode"] == "max" and settings["population"] == 3
        assert "checkpoints" not in settings  # a URL that may carry credentials
        mine = [i for i in intervals if i.member == member]
        first = next(i for i in mine if i.step == 1)
        initial = {k: v for k, v in run.config.items() if k not in ("poptune", "_wandb")}
        copies = [e for e in exploits if e.member == member]
        if not copies:
            assert initial == dict(first.hparams)
        rows = run.rows()
        assert sorted(rows) == [i.step for i in mine]
        for interval in mine:
            row = rows[interval.step]
            assert row["score"] == pytest.approx(interval.score, rel=1e-12)
            assert row["q"] == pytest.approx(interval.metrics["q"], rel=1e-12)
            assert row["surrogate"] == pytest.approx(interval.metrics["surrogate"], rel=1e-12)
            for key, value in interval.hparams.items():
                assert row[f"hparams/{key}"] == pytest.approx(value, rel=1e-12)
            assert row["_timestamp"] == pytest.approx(interval.finished_at)
        logged = [(step, row) for step, row in sorted(rows.items()) if "exploit" in row]
        assert [step for step, _ in logged] == [e.step for e in copies]
        for (_, row), event in zip(logged, copies, strict=True):
            assert row["exploit"] == describe_exploit(event, "q")
            assert row["exploit/donor"] == event.donor
            assert row["exploit/donor_step"] == event.donor_step
            for key in event.hparams_after:
                assert row[f"exploit/before/{key}"] == pytest.approx(event.hparams_before[key])
                assert row[f"exploit/after/{key}"] == pytest.approx(event.hparams_after[key])
        # The config follows the member's hparams: one update per exploit, to what it explored.
        updates = [u for u in run.config_updates if set(u) & set(first.hparams)]
        assert updates == [dict(e.hparams_after) for e in copies]
        if copies:
            assert run.summary["parent"] == copies[-1].donor
            assert run.summary["parent_step"] == copies[-1].donor_step


def check_population(runs: dict[str, Run], result: pt.Result) -> None:
    """One run for the population: the best member, the winning schedule as a table and the
    report."""
    [run] = [run for run in runs.values() if run.job_type == "population"]
    assert run.group == result.name and run.config["name"] == result.name
    best = result.best
    assert run.summary["best/member"] == best.member and run.summary["best/step"] == best.step
    assert run.summary["best/score"] == pytest.approx(best.score, rel=1e-12)
    assert run.summary["best/hparams/h0"] == pytest.approx(best.hparams["h0"], rel=1e-12)
    assert run.summary["status"] == "finished"
    last = run.history[-1]
    assert last["schedule"]["_type"] == "table-file"
    table = json.loads(run.file(last["schedule"]["path"]).read_text())
    assert table["columns"] == ["step", "member", "member_step", "score", "h0", "h1"]
    expected = [
        [e.step, e.member, e.member_step, e.score, e.hparams["h0"], e.hparams["h1"]]
        for e in result.schedule()
    ]
    assert table["data"] == [pytest.approx(row, rel=1e-12) for row in expected]
    assert last["report"]["_type"] == "html-file"
    html = run.file(last["report"]["path"]).read_text()
    assert "<html" in html.lower() and result.name in html


def run_files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*.wandb")}


# --- the tests -------------------------------------------------------------------------------


def test_export_writes_every_member_and_the_population_once(offline: Path, quick_run) -> None:
    url = f"sqlite:///{offline / 'poptune.db'}"
    result = quick_run.exploiting(storage=url, name="wb")
    out = CliRunner().invoke(main, ["export", "wb", "--storage", url, "--wandb", "pbt"])
    assert out.exit_code == 0, out.output
    counts = f"{len(result.intervals())} new intervals, {len(result.exploits())} new exploits"
    assert f"wb: {counts} -> WandB('pbt')" in out.output
    runs = read_runs(offline)
    assert len(runs) == 4  # 3 members and the population
    assert len({run.id for run in runs.values()}) == 4
    check_members(runs, result)
    check_population(runs, result)
    files = run_files(offline)

    again = CliRunner().invoke(main, ["export", "wb", "--storage", url, "--wandb", "pbt"])
    assert again.exit_code == 0, again.output
    assert "wb: 0 new intervals, 0 new exploits" in again.output
    assert run_files(offline) == files  # no run started, not one record more


def test_a_later_export_resumes_the_same_runs(offline: Path, quick_run) -> None:
    url = f"sqlite:///{offline / 'poptune.db'}"
    result = quick_run.exploiting(storage=url, name="later")
    # An export that saw only the first two steps (as one during training would)...
    early = pt.WandB("pbt")
    early.open(result)
    early.export(
        [i for i in result.intervals() if i.step <= 2],
        [e for e in result.exploits() if e.step <= 2],
    )
    early.close()
    ids = {run.id for run in read_runs(offline).values()}
    # ...and one that exports the rest into the same runs, each step once.
    with TrackerExporter(pt.load(url, "later"), [pt.WandB("pbt")]) as exporter:
        exporter.export()
    runs = read_runs(offline)
    assert set(runs) == ids
    check_members(runs, result)
    check_population(runs, result)
    population = next(run for run in runs.values() if run.job_type == "population")
    assert len(population.history) == 2  # the early view, then the whole population


def test_run_with_a_wandb_tracker_writes_the_same(offline: Path, tmp_path: Path, quick_run) -> None:
    folder = tmp_path / "elsewhere"
    settings = wandb.Settings(silent=True, console="off", x_disable_stats=True)
    tracker = pt.WandB("pbt", dir=str(folder), settings=settings)
    result = quick_run.exploiting(
        storage=f"sqlite:///{offline / 'poptune.db'}", name="live", trackers=[tracker]
    )
    runs = read_runs(folder)
    check_members(runs, result)
    check_population(runs, result)
    assert not (offline / "wandb").exists()  # dir= wins over $WANDB_DIR


def test_a_resumed_population_continues_its_runs(offline: Path, tmp_path: Path, quick_run) -> None:
    url = f"sqlite:///{offline / 'poptune.db'}"
    settings = wandb.Settings(silent=True, console="off", x_disable_stats=True)
    quick_run.exploiting(
        storage=url, name="grow", intervals=2, trackers=[pt.WandB("pbt", settings=settings)]
    )
    ids = set(read_runs(offline))
    result = pt.resume(
        pt.load(url, "grow"),
        intervals=4,
        progress=False,
        trackers=[pt.WandB("pbt", settings=settings)],
    )
    runs = read_runs(offline)
    assert set(runs) == ids and len(ids) == 4  # the same runs, resumed
    check_members(runs, result)  # each step once
    check_population(runs, result)
    population = next(run for run in runs.values() if run.job_type == "population")
    assert [row["_step"] for row in population.history] == [6, 12]  # 2, then 4 steps each


def test_export_follows_a_population_as_it_trains(offline: Path, quick_run) -> None:
    url = f"sqlite:///{offline / 'poptune.db'}"
    follow = {"storage": url, "name": "follow"}
    training = threading.Thread(target=quick_run.exploiting, args=(Slower,), kwargs=follow)
    training.start()
    deadline = time.monotonic() + 20
    while not (offline / "poptune.db").exists() or not _has_intervals(url, "follow"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert training.is_alive()
    out = CliRunner().invoke(
        main,
        ["export", "follow", "--storage", url, "--wandb", "pbt", "--follow", "--every", "0.2"],
    )
    assert out.exit_code == 0, out.output
    training.join(10)
    assert not training.is_alive()
    result = pt.load(url, "follow")
    runs = read_runs(offline)
    check_members(runs, result)
    check_population(runs, result)
    population = next(run for run in runs.values() if run.job_type == "population")
    assert len(population.history) == 1  # written once, when the population stopped


class Slower(SlowQuadratic):
    """Intervals slow enough that the export sees the population while it trains."""

    delay = 0.1


def _has_intervals(url: str, name: str) -> bool:
    try:
        return bool(pt.load(url, name).intervals())
    except (pt.PopulationNotFound, pt.StorageError):  # not stored yet
        return False


def test_wandb_refuses_the_arguments_it_sets_itself() -> None:
    with pytest.raises(
        TypeError,
        match=r"'init_kwargs' parameter of WandB must be .*Got \{'group': 'y', 'id': 'x'\}",
    ):
        pt.WandB("pbt", id="x", group="y")
    with pytest.raises(ValueError, match="'project' parameter of WandB must be a non-empty"):
        pt.WandB("")
    with pytest.raises(ValueError, match="'entity' parameter of WandB must be a non-empty"):
        pt.WandB("pbt", entity=" ")


def test_export_entity_needs_a_project() -> None:
    out = CliRunner().invoke(main, ["export", "x", "--storage", "sqlite://", "--entity", "team"])
    assert out.exit_code == 2 and "--entity names the W&B entity of --wandb PROJECT" in out.output


def test_wandb_messages_show_no_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef0123456789abcdef01234567")
    tracker = pt.WandB("pbt", entity="team")
    assert repr(tracker) == "WandB('pbt', entity='team')"
    message = "401 for key 0123456789abcdef0123456789abcdef01234567 at https://u:pw@api.x/"
    assert tracker.redact(message) == "401 for key *** at https://u:***@api.x/"
    monkeypatch.delenv("WANDB_API_KEY")
    settings = wandb.Settings(api_key="f" * 40)
    assert pt.WandB("pbt", settings=settings).redact(f"bad key {'f' * 40}") == "bad key ***"


def test_a_failing_wandb_export_is_one_clear_line(offline: Path, quick_run) -> None:
    url = f"sqlite:///{offline / 'poptune.db'}"
    quick_run.exploiting(storage=url, name="bad")
    (offline / "wandb").write_text("not a folder")  # where W&B must write
    out = CliRunner().invoke(main, ["export", "bad", "--storage", url, "--wandb", "pbt"])
    assert out.exit_code == 1 and "Traceback" not in out.output
    assert out.output.startswith("Error: WandB('pbt') failed to export population 'bad'")
    exporter = TrackerExporter(pt.load(url, "bad"), [pt.WandB("pbt")])
    exporter.open()
    with pytest.raises(TrackerError, match=r"WandB\('pbt'\) failed to export population 'bad'"):
        exporter.export()
