"""Trackers: a population exported to TensorBoard and MLflow, read back with their own readers.

Every check compares what the real library reads back (tensorboard's ``EventAccumulator``,
``mlflow.search_runs`` and ``MlflowClient.get_metric_history`` on a local SQLite store) with
what the storage holds, so the same checks serve ``poptune export``, ``--follow`` and
``pt.run(trackers=...)``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from click.testing import CliRunner

import poptune as pt
from poptune._filenames import safe_filename
from poptune.cli import main
from poptune.records import ExploitEvent, IntervalRecord
from poptune.testing import SlowQuadratic
from poptune.trackers import (
    Position,
    Tracker,
    TrackerError,
    TrackerExporter,
    describe_exploit,
)

mlflow = pytest.importorskip("mlflow")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One local MLflow store for the module: creating its tables takes seconds."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(previous)


# --- reading back ----------------------------------------------------------------------------


def read_tensorboard(logdir: Path, name: str, member: int) -> event_accumulator.EventAccumulator:
    accumulator = event_accumulator.EventAccumulator(
        str(logdir / safe_filename(name) / f"member-{member}"),
        size_guidance={"scalars": 0, "tensors": 0},
    )
    accumulator.Reload()
    return accumulator


def check_tensorboard(logdir: Path, result: pt.Result) -> None:
    """One run per member: score, metrics and hparams per step, exploits as text, once each."""
    intervals = result.intervals()
    exploits = result.exploits()
    for member in result.members:
        mine = [i for i in intervals if i.member == member.id]
        board = read_tensorboard(logdir, result.name, member.id)
        expected: dict[str, list[tuple[int, float]]] = {
            "score": [(i.step, i.score) for i in mine],
            "metrics/q": [(i.step, i.metrics["q"]) for i in mine],
            "metrics/surrogate": [(i.step, i.metrics["surrogate"]) for i in mine],
            "hparams/h0": [(i.step, i.hparams["h0"]) for i in mine],
            "hparams/h1": [(i.step, i.hparams["h1"]) for i in mine],
        }
        assert sorted(board.Tags()["scalars"]) == sorted(expected)
        for tag, points in expected.items():
            read = [(s.step, s.value) for s in board.Scalars(tag)]
            assert [step for step, _ in read] == [step for step, _ in points], tag
            # TensorBoard keeps simple values as float32
            assert [v for _, v in read] == pytest.approx([v for _, v in points], rel=1e-6)
        assert [s.wall_time for s in board.Scalars("score")] == pytest.approx(
            [i.finished_at for i in mine]
        )
        copies = [e for e in exploits if e.member == member.id]
        texts = board.Tensors("exploit") if copies else []
        if not copies:
            assert "exploit" not in board.Tags()["tensors"]
        assert [(t.step, t.tensor_proto.string_val[0].decode()) for t in texts] == [
            (e.step, describe_exploit(e, "q")) for e in copies
        ]


def mlflow_runs(experiment: str) -> list[mlflow.entities.Run]:
    return mlflow.search_runs(experiment_names=[experiment], output_format="list")


def check_mlflow(experiment: str, result: pt.Result) -> None:
    """A parent run for the population, a child per member: metrics per step once, the initial
    hparams as params, the last donor and every exploit as tags."""
    client = mlflow.MlflowClient()
    runs = mlflow_runs(experiment)
    parents = [r for r in runs if r.data.tags.get("poptune.role") == "population"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.run_name == result.name
    assert parent.data.params["metric"] == "q" and parent.data.params["population"] == "3"
    assert parent.info.status == "FINISHED"
    children = {
        int(r.data.tags["poptune.member"]): r
        for r in runs
        if r.data.tags.get("poptune.role") == "member"
    }
    assert sorted(children) == [m.id for m in result.members]
    intervals = result.intervals()
    exploits = result.exploits()
    for member, run in children.items():
        assert len([r for r in runs if r.data.tags.get("poptune.member") == str(member)]) == 1
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.run_name == f"member-{member}"
        assert run.info.status == "FINISHED"
        mine = [i for i in intervals if i.member == member]
        first = min(mine, key=lambda i: i.step)
        assert {k: float(v) for k, v in run.data.params.items()} == dict(first.hparams)
        for key, values in (
            ("score", [i.score for i in mine]),
            ("q", [i.metrics["q"] for i in mine]),
            ("surrogate", [i.metrics["surrogate"] for i in mine]),
            ("hparams.h0", [i.hparams["h0"] for i in mine]),
        ):
            history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
            assert [m.step for m in history] == [i.step for i in mine], key
            assert [m.value for m in history] == pytest.approx(values, rel=1e-12), key
        copies = [e for e in exploits if e.member == member]
        tags = run.data.tags
        assert {k for k in tags if k.startswith("poptune.exploit.")} == {
            f"poptune.exploit.{e.step}" for e in copies
        }
        for event in copies:
            assert tags[f"poptune.exploit.{event.step}"] == describe_exploit(event, "q")
        if copies:
            assert tags["poptune.parent"] == str(copies[-1].donor)
            assert tags["poptune.parent_step"] == str(copies[-1].donor_step)
        else:
            assert "poptune.parent" not in tags


def event_files(logdir: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(logdir)), p.stat().st_size) for p in logdir.rglob("*"))


def metric_points(experiment: str) -> int:
    client = mlflow.MlflowClient()
    return sum(
        len(client.get_metric_history(run.info.run_id, key))
        for run in mlflow_runs(experiment)
        for key in run.data.metrics
    )


# --- the tests -------------------------------------------------------------------------------


def test_tensorboard_export_holds_everything_once(
    storage_url: str, tmp_path: Path, quick_run
) -> None:
    result = quick_run.exploiting(storage=storage_url, name="tb")
    logdir = tmp_path / "tb"
    out = CliRunner().invoke(
        main, ["export", "tb", "--storage", storage_url, "--tensorboard", str(logdir)]
    )
    assert out.exit_code == 0, out.output
    counts = f"{len(result.intervals())} new intervals, {len(result.exploits())} new exploits"
    assert f"tb: {counts}" in out.output
    assert [p.name for p in logdir.iterdir()] == ["tb"]  # an ordinary name as it is
    check_tensorboard(logdir, result)
    files = event_files(logdir)

    again = CliRunner().invoke(
        main, ["export", "tb", "--storage", storage_url, "--tensorboard", str(logdir)]
    )
    assert again.exit_code == 0, again.output
    assert "tb: 0 new intervals, 0 new exploits" in again.output
    assert event_files(logdir) == files  # not one byte more
    check_tensorboard(logdir, result)


def test_mlflow_export_holds_everything_once(
    storage_url: str, mlflow_uri: str, tmp_path: Path, quick_run
) -> None:
    result = quick_run.exploiting(storage=storage_url, name="ml")
    experiment = f"export-{tmp_path.name}"
    with TrackerExporter(result, [pt.MLflow(mlflow_uri, experiment=experiment)]) as exporter:
        exporter.export()
    check_mlflow(experiment, result)
    points = metric_points(experiment)
    assert points == len(result.intervals()) * 5  # score, q, surrogate, hparams.h0/h1

    out = CliRunner().invoke(
        main,
        [
            "export",
            "ml",
            "--storage",
            storage_url,
            "--mlflow",
            mlflow_uri,
            *("--experiment", experiment),
        ],
    )
    assert out.exit_code == 0, out.output
    assert "ml: 0 new intervals, 0 new exploits" in out.output
    assert metric_points(experiment) == points
    check_mlflow(experiment, result)


class _OwnScore(SlowQuadratic):
    """A trainable with a metric of its own named "score" (a BLEU "score"), optimising q."""

    steps = 4

    def evaluate(self):
        return {**super().evaluate(), "score": -123.0}


def test_a_metric_of_the_users_named_score_keeps_its_own_name_in_mlflow(
    storage_url: str, mlflow_uri: str, tmp_path: Path, quick_run
) -> None:
    """It and poptune's score (the optimised metric's value) were both logged as "score": one
    overwrote the other."""
    result = quick_run(_OwnScore, storage=storage_url, name="own", population=2, intervals=1)
    experiment = f"own-{tmp_path.name}"
    with TrackerExporter(result, [pt.MLflow(mlflow_uri, experiment=experiment)]) as exporter:
        exporter.export()
    members = [r for r in mlflow_runs(experiment) if "score" in r.data.metrics]
    assert sorted(r.data.metrics["score"] for r in members) == sorted(
        i.score for i in result.intervals()
    )
    assert all(r.data.metrics["metrics.score"] == -123.0 for r in members)


def test_run_with_trackers_writes_the_same(
    storage_url: str, mlflow_uri: str, tmp_path: Path, quick_run
) -> None:
    experiment = f"run-{tmp_path.name}"
    logdir = tmp_path / "tb"
    result = quick_run.exploiting(
        storage=storage_url,
        name="live",
        trackers=[pt.TensorBoard(logdir), pt.MLflow(mlflow_uri, experiment=experiment)],
    )
    check_tensorboard(logdir, result)
    check_mlflow(experiment, result)
    marker = json.loads((logdir / "live" / "poptune-export.json").read_text())
    assert Position.from_dict(marker) == Position().advance(result.intervals(), result.exploits())


class Slower(SlowQuadratic):
    """Intervals slow enough that an exporter sees the population while it trains."""

    delay = 0.15


def test_export_follow_ends_when_the_population_stops(
    storage_url: str, mlflow_uri: str, tmp_path: Path, quick_run
) -> None:
    experiment = f"follow-{tmp_path.name}"
    logdir = tmp_path / "tb"
    training = threading.Thread(
        target=quick_run.exploiting,
        args=(Slower,),
        kwargs={"storage": storage_url, "name": "follow"},
    )
    training.start()
    deadline = time.monotonic() + 20
    while True:
        try:
            if pt.load(storage_url, "follow").intervals():
                break
        except (pt.PopulationNotFound, pt.StorageError):  # not stored yet; reading creates none
            pass
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert training.is_alive()
    out = CliRunner().invoke(
        main,
        [
            *("export", "follow", "--storage", storage_url, "--follow", "--every", "0.2"),
            *("--tensorboard", str(logdir), "--mlflow", mlflow_uri, "--experiment", experiment),
        ],
    )
    assert out.exit_code == 0, out.output
    training.join(10)
    assert not training.is_alive()
    result = pt.load(storage_url, "follow")
    assert result.status == "finished"
    check_tensorboard(logdir, result)
    check_mlflow(experiment, result)


class Broken(Tracker):
    """A tracker whose destination fails on every write."""

    def __init__(self) -> None:
        self.closed = False

    def open(self, result: pt.Result) -> Position:
        return Position()

    def export(self, intervals: Sequence[IntervalRecord], exploits: Sequence[ExploitEvent]) -> None:
        raise OSError("disk full")

    def close(self) -> None:
        self.closed = True


def test_a_failing_tracker_never_stops_training(
    storage_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, quick_run
) -> None:
    broken = Broken()
    with caplog.at_level(logging.WARNING, logger="poptune"):
        result = quick_run.exploiting(
            storage=storage_url, name="broken", trackers=[broken, pt.TensorBoard(tmp_path / "tb")]
        )
    assert result.status == "finished" and len(result.intervals()) == 12
    assert "failed to export population 'broken'" in caplog.text and "disk full" in caplog.text
    check_tensorboard(tmp_path / "tb", result)  # the healthy tracker still got everything
    failing = TrackerExporter(result, [Broken()])
    failing.open()
    with pytest.raises(TrackerError, match=r"Broken.*failed to export.*OSError: disk full"):
        failing.export()


def test_tensorboard_refuses_a_folder_of_another_population_of_that_name(
    storage_url: str, tmp_path: Path, quick_run
) -> None:
    logdir = tmp_path / "tb"
    first = quick_run.exploiting(storage=storage_url, name="again")
    with TrackerExporter(first, [pt.TensorBoard(logdir)]) as exporter:
        exporter.export()
    pt.delete(storage_url, "again")
    second = quick_run.exploiting(storage=storage_url, name="again", seed=2)
    with pytest.raises(TrackerError, match="another population named 'again'"):
        TrackerExporter(second, [pt.TensorBoard(logdir)]).open()


def files_under(folder: Path) -> set[Path]:
    return {path for path in folder.rglob("*") if path.is_file()}


@pytest.mark.parametrize(
    "name", ["../../x", "ABSOLUTE", "a/b", "..", "x" * 150, "学习 run", "digits-v2"]
)
def test_tensorboard_export_writes_only_inside_its_logdir(
    tmp_path: Path, name: str, quick_run
) -> None:
    # The name is the storage's: it names one folder inside the logdir, never a path.
    name = name.replace("ABSOLUTE", str(tmp_path / "escaped"))
    url = f"sqlite:///{tmp_path / 'db' / 'poptune.db'}"
    result = quick_run(storage=url, name=name, population=2)
    logdir = tmp_path / "deep" / "tb"
    before = files_under(tmp_path)
    out = CliRunner().invoke(main, ["export", name, "--storage", url, "--tensorboard", str(logdir)])
    assert out.exit_code == 0, out.output
    written = files_under(tmp_path) - before
    assert written and all(path.is_relative_to(logdir) for path in written), written
    folder = safe_filename(name)
    assert [p.name for p in logdir.iterdir()] == [folder]
    if name == "digits-v2":
        assert folder == name  # an ordinary name keeps its readable folder
    check_tensorboard(logdir, result)


@pytest.mark.parametrize(
    ("trackers", "match"),
    [
        ("runs/tb", "must be a list of trackers"),
        ([object()], r"'trackers\[0\]' parameter must be a tracker"),
    ],
)
def test_run_validates_trackers(trackers: object, match: str, quick_run) -> None:
    with pytest.raises(TypeError, match=match):
        quick_run(trackers=trackers)


def test_export_needs_a_destination() -> None:
    out = CliRunner().invoke(main, ["export", "x", "--storage", "sqlite://"])
    assert (
        out.exit_code == 2
        and "--tensorboard DIR, --mlflow URI and/or --wandb PROJECT" in out.output
    )


def test_position_round_trips_and_skips_what_was_written() -> None:
    def interval(member: int, step: int) -> IntervalRecord:
        return IntervalRecord(member, step, {}, 0.0, {}, 0.0, 0.0)

    written = Position().advance([interval(0, 1), interval(0, 2), interval(1, 1)], [])
    assert Position.from_dict(json.loads(json.dumps(written.to_dict()))) == written
    fresh = written.new_intervals([interval(1, 2), interval(0, 2), interval(2, 1), interval(0, 3)])
    assert [(i.member, i.step) for i in fresh] == [(0, 3), (1, 2), (2, 1)]


def test_mlflow_shows_no_secret_of_its_uri() -> None:
    tracker = pt.MLflow("https://bob:S3cretPW@mlflow.example/?token=T0ken123", experiment="x")
    assert repr(tracker) == "MLflow('https://bob:***@mlflow.example/?token=***', experiment='x')"
    assert tracker.redact("403 for S3cretPW and T0ken123") == "403 for *** and ***"


@pytest.mark.parametrize("uri", ["", "   ", None])
def test_mlflow_refuses_an_empty_uri_with_one_line(uri: object, storage_url: str) -> None:
    with pytest.raises(ValueError, match="'tracking_uri' parameter of MLflow must be a tracking"):
        pt.MLflow(uri)  # type: ignore[arg-type]
    out = CliRunner().invoke(main, ["export", "x", "--storage", storage_url, "--mlflow", ""])
    assert out.exit_code == 1 and "Traceback" not in out.output
    assert out.output.startswith("Error: The 'tracking_uri' parameter of MLflow must be")


def test_an_unreachable_mlflow_server_fails_in_seconds(storage_url: str, quick_run) -> None:
    quick_run.exploiting(storage=storage_url, name="far")
    started = time.monotonic()
    out = CliRunner().invoke(
        main, ["export", "far", "--storage", storage_url, "--mlflow", "http://127.0.0.1:9"]
    )
    took = time.monotonic() - started
    assert out.exit_code == 1 and "Traceback" not in out.output
    assert "tracking server 'http://127.0.0.1:9' is not reachable" in out.output
    assert "Start it, or check the URI" in out.output
    assert took < 30  # MLflow's own retries took about 4 minutes


def test_a_tracking_uri_with_a_bad_port_is_one_line(storage_url: str, quick_run) -> None:
    quick_run.exploiting(storage=storage_url, name="port")
    out = CliRunner().invoke(
        main, ["export", "port", "--storage", storage_url, "--mlflow", "http://host:port/"]
    )
    assert out.exit_code == 1 and "is not a valid URL" in out.output
