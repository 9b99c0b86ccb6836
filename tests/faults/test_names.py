"""A name is never poisoned: a run that recorded nothing is replaced by a corrected one, and
any population can be deleted (records and files) once no worker trains it."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import poptune as pt
from poptune.checkpoints import population_folder
from poptune.cli import main
from poptune.records import PopulationStatus
from poptune.storage import PopulationNotFound, Storage
from poptune.testing import Quadratic, quadratic_space


def _run(url: str, tmp_path: Path, **overrides):
    options = dict(
        space=quadratic_space(),
        metric="q",
        population=3,
        intervals=2,
        storage=url,
        checkpoints=tmp_path / "checkpoints",
        name="p",
        seed=0,
        progress=False,
    )
    return pt.run(Quadratic, **{**options, **overrides})


def test_a_wrong_metric_name_does_not_poison_the_name(storage_url: str, tmp_path: Path, caplog):
    with pytest.raises(pt.PopulationError, match=r"no metric 'accuracy'.*keys \['q'"):
        _run(storage_url, tmp_path, metric="accuracy")
    assert pt.load(storage_url, "p").status == "error"
    result = _run(storage_url, tmp_path)  # corrected: replaces what never recorded anything
    assert result.status == "finished" and result.metric == "q"
    assert len(result.intervals()) == 3 * 2
    assert "never recorded an interval" in caplog.text and "replacing it" in caplog.text
    assert [r.name for r in result.storage.populations()] == ["p"]


def test_a_population_that_trained_is_never_replaced(storage_url: str, tmp_path: Path):
    _run(storage_url, tmp_path)
    with pytest.raises(ValueError, match=r"different configuration.*poptune delete p"):
        _run(storage_url, tmp_path, intervals=3)
    assert len(pt.load(storage_url, "p").intervals()) == 3 * 2


def test_delete_removes_records_and_files_but_not_while_trained(storage_url: str, tmp_path):
    result = _run(storage_url, tmp_path)
    _run(storage_url, tmp_path, name="other")
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


def test_cli_delete_asks_first(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'p.db'}"
    _run(url, tmp_path)
    runner = CliRunner()
    kept = runner.invoke(main, ["delete", "p", "--storage", url], input="n\n")
    assert kept.exit_code == 1 and "Delete population 'p' (finished, 6 intervals" in kept.output
    assert pt.load(url, "p").status == "finished"
    deleted = runner.invoke(main, ["delete", "p", "--storage", url, "--yes"])
    assert deleted.exit_code == 0 and "Deleted population 'p'" in deleted.output
    missing = runner.invoke(main, ["delete", "p", "--storage", url, "--yes"])
    assert missing.exit_code != 0 and "No population named 'p'" in missing.output


def test_cli_delete_refuses_a_population_in_training_before_asking(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'p.db'}"
    result = _run(url, tmp_path, intervals=3)
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


def test_a_population_deleted_under_its_worker_stops_it_clearly(storage: Storage, tmp_path):
    errors: list[BaseException] = []

    def train() -> None:
        try:
            pt.run(
                _Slow,
                space=quadratic_space(),
                metric="q",
                population=2,
                intervals=500,
                storage=storage,
                checkpoints=tmp_path / "checkpoints",
                name="p",
                progress=False,
            )
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
