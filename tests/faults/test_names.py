"""A name is never poisoned: a run that recorded nothing is replaced by a corrected one, and
any population can be deleted (records and files) once no worker trains it."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest
from click.testing import CliRunner

import poptune as pt
from poptune.checkpoints import population_folder
from poptune.cli import main
from poptune.records import PopulationStatus
from poptune.storage import PopulationNotFound, Storage
from poptune.testing import Quadratic


def test_a_wrong_metric_name_does_not_poison_the_name(storage_url: str, caplog, quick_run):
    with pytest.raises(pt.PopulationError, match=r"no metric 'accuracy'.*keys \['q'"):
        quick_run(storage=storage_url, name="p", metric="accuracy")
    assert pt.load(storage_url, "p").status == "error"
    result = quick_run(
        storage=storage_url, name="p"
    )  # corrected: replaces what never recorded anything
    assert result.status == "finished" and result.metric == "q"
    assert len(result.intervals()) == 3 * 2
    assert "never recorded an interval" in caplog.text and "replacing it" in caplog.text
    assert [r.name for r in result.storage.populations()] == ["p"]


def test_a_population_waiting_for_its_workers_is_never_replaced(storage_url: str, quick_run):
    """Created for ``poptune worker`` jobs still in a queue (perhaps another team's): no
    interval yet, but not a failed run to replace; a run of another configuration deleted it."""
    quick_run.created(storage=storage_url, name="queued", intervals=2)
    with pytest.raises(pt.PopulationExists, match="different configuration"):
        quick_run(storage=storage_url, name="queued", intervals=3)
    kept = pt.load(storage_url, "queued")
    assert kept.status == "running" and kept.config.intervals == 2


def test_a_population_that_trained_is_never_replaced(storage_url: str, quick_run):
    quick_run(storage=storage_url, name="p")
    with pytest.raises(ValueError, match=r"different configuration.*poptune delete p"):
        quick_run(storage=storage_url, name="p", intervals=3)
    assert len(pt.load(storage_url, "p").intervals()) == 3 * 2


def test_delete_removes_records_and_files_but_not_while_trained(
    storage_url: str, tmp_path, quick_run
):
    result = quick_run(storage=storage_url, name="p")
    quick_run(storage=storage_url, name="other")
    store, pid = result.storage, result.record.id
    folder = tmp_path / "checkpoints" / population_folder(store.database_id(), pid)
    assert [f for f in folder.rglob("*") if f.is_file()]
    store.set_status(pid, PopulationStatus.RUNNING, None)  # a worker elsewhere trains it on
    store.reopen_members(pid, 3)
    claim = store.claim(pid, "elsewhere:1:worker", 3, 60.0, sync=False)
    assert claim is not None
    with pytest.raises(pt.PopulationError, match=r"being trained.*elsewhere:1:worker"):
        pt.delete(storage_url, "p")
    store.release(claim)
    with pytest.raises(pt.PopulationError, match=r"last interval was recorded .* ago"):
        pt.delete(storage_url, "p")  # still running: a worker may be between two claims
    store.set_status(pid, PopulationStatus.FINISHED, None)  # that worker finished it
    pt.delete(storage_url, "p")
    with pytest.raises(PopulationNotFound):
        pt.load(storage_url, "p")
    assert not [
        f for f in (tmp_path / "checkpoints").rglob("*") if f.is_file() and f.is_relative_to(folder)
    ]
    assert len(pt.load(storage_url, "other").intervals()) == 6  # the others are untouched


def test_cli_delete_asks_first(quick_run):
    url = quick_run.storage
    quick_run(name="p")
    runner = CliRunner()
    kept = runner.invoke(main, ["delete", "p", "--storage", url], input="n\n")
    assert kept.exit_code == 1 and "Delete population 'p' (finished, 6 intervals" in kept.output
    own = population_folder(pt.open_storage(url).database_id(), pt.load(url, "p").id)
    assert f"checkpoints/{own}?" in kept.output  # its own folder, not the one others share
    assert pt.load(url, "p").status == "finished"
    deleted = runner.invoke(main, ["delete", "p", "--storage", url, "--yes"])
    assert deleted.exit_code == 0 and "Deleted population 'p'" in deleted.output
    missing = runner.invoke(main, ["delete", "p", "--storage", url, "--yes"])
    assert missing.exit_code != 0 and "No population named 'p'" in missing.output


def test_delete_refuses_a_checkpoint_folder_that_holds_none_of_its_files(tmp_path, quick_run):
    """A mistyped --checkpoints deleted the rows and left every file, which nothing could then
    prove to be the population's: it is refused, nothing deleted; the recorded folder works."""
    url = quick_run.storage
    result = quick_run(name="p")
    folder = tmp_path / "checkpoints" / population_folder(result.storage.database_id(), result.id)
    files = [path for path in folder.rglob("*") if path.is_file()]
    assert files
    wrong = CliRunner().invoke(
        main, ["delete", "p", "--storage", url, "--checkpoints", str(tmp_path / "nowhere"), "--yes"]
    )
    assert wrong.exit_code != 0 and "has no checkpoint file under" in wrong.output
    assert "nothing was deleted" in wrong.output and not (tmp_path / "nowhere").exists()
    assert pt.load(url, "p").status == "finished" and all(path.exists() for path in files)
    right = CliRunner().invoke(main, ["delete", "p", "--storage", url, "--yes"])
    assert right.exit_code == 0 and not any(path.exists() for path in files)


def test_cli_delete_refuses_a_population_in_training_before_asking(quick_run):
    url = quick_run.storage
    result = quick_run(name="p", intervals=3)
    store, pid = result.storage, result.id
    store.set_status(pid, PopulationStatus.RUNNING, None)
    store.reopen_members(pid, 4)
    assert store.claim(pid, "elsewhere:1:worker", 4, 60.0, sync=False) is not None
    refused = CliRunner().invoke(main, ["delete", "p", "--storage", url])  # no input given
    assert refused.exit_code != 0 and "being trained" in refused.output
    assert "Delete population" not in refused.output  # refused before asking
    assert pt.load(url, "p").status == "running"


class _Slow(Quadratic):
    def train(self, hparams):
        time.sleep(0.02)
        return super().train(hparams)


def test_a_population_deleted_under_its_worker_stops_it_clearly(
    storage: Storage, tmp_path, quick_run
):
    errors: list[BaseException] = []

    def train() -> None:
        try:
            quick_run(
                _Slow, storage=storage, checkpoints=tmp_path / "checkpoints", name="p",
                population=2, intervals=500,
            )  # fmt: skip
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=train)
    thread.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(PopulationNotFound):
            if len(storage.intervals(storage.population("p").id)) >= 3:
                break
        time.sleep(0.01)
    pid = storage.population("p").id
    with pytest.raises(pt.PopulationError, match="cannot be deleted: it is being trained"):
        pt.delete(storage, "p")
    assert len(storage.intervals(pid)) < 2 * 500  # refused, not deleted: it trains on
    # A delete that got past the check (its worker paused for longer than two leases):
    storage.delete_population(pid, now=time.time() + 3600)
    thread.join(60)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], pt.PopulationError), errors
    assert "was deleted from the storage while" in str(errors[0])


def test_a_name_the_storage_cannot_keep_is_refused_before_anything_is_stored(
    storage_url: str, quick_run
):
    """PostgreSQL keeps at most 255 characters of a name: a longer one stopped the run with a
    database error after it started; it is refused where it is given, on every storage."""
    with pytest.raises(pt.InvalidParameterError, match=r"at most 255 characters.*has 256"):
        quick_run(storage=storage_url, name="x" * 256)
    assert quick_run(storage=storage_url, name="x" * 255).status == "finished"
    assert [r.name for r in pt.open_storage(storage_url).populations()] == ["x" * 255]


@pytest.mark.parametrize("name", ["plain\u200b", " plain", "plain ", "\ufeffplain"])
def test_a_name_that_would_list_as_another_is_refused(quick_run, name):
    """A zero-width space or a space at an end: ``list`` showed two populations "plain"."""
    quick_run(name="plain")
    with pytest.raises(pt.InvalidParameterError, match="without invisible characters"):
        quick_run(name=name)
    assert [r.name for r in pt.open_storage(quick_run.storage).populations()] == ["plain"]


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ("bad\x1bname", "without control characters"),
        ("", "non-empty"),
        ("y" * 256, "at most 255 characters"),
    ],
)
def test_a_replays_name_is_checked_like_any_population_name(quick_run, given, said):
    quick_run(name="p")
    out = CliRunner().invoke(
        main, ["replay", "p", "--as", given, "--no-progress", "--storage", quick_run.storage]
    )
    assert out.exit_code != 0 and said in out.output and "Traceback" not in out.output
    assert [r.name for r in pt.open_storage(quick_run.storage).populations()] == ["p"]
