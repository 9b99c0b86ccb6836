"""A run directory that moves (or is copied to another machine) opens where it now is."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import poptune as pt
from poptune.cli import main
from poptune.testing import check_steps
from tests._helpers import worker_for


def test_a_moved_run_directory_opens_and_resumes_where_it_now_is(tmp_path: Path, quick_run):
    before = quick_run(storage=f"sqlite:///{tmp_path / 'A' / 'p.db'}", name="moved", intervals=4)
    best = before.best.state()["theta"]
    assert before.config.checkpoints == "checkpoints"  # recorded next to the database
    before.storage.close()
    shutil.move(tmp_path / "A", tmp_path / "B")

    url = f"sqlite:///{tmp_path / 'B' / 'p.db'}"
    after = pt.load(url, "moved")
    np.testing.assert_array_equal(after.best.state()["theta"], best)
    assert after.storage.checkpoints(after.record.id)  # nothing dropped
    out = CliRunner().invoke(main, ["best", "moved", "--storage", url])
    assert out.exit_code == 0, out.output


def test_an_interrupted_run_resumes_after_its_directory_moved(tmp_path: Path, quick_run):
    url = f"sqlite:///{tmp_path / 'A' / 'p.db'}"
    runner = quick_run.created(storage=url, name="moved", intervals=4)
    pid = runner.target.population_id
    worker = worker_for(runner)
    for _ in range(5):  # some intervals, then the machine stops
        worker.work_on(runner.storage.claim(pid, worker.owner, 4, 30.0, False))
    worker.flush()
    runner.storage.close()
    shutil.move(tmp_path / "A", tmp_path / "B")

    result = pt.load(f"sqlite:///{tmp_path / 'B' / 'p.db'}", "moved").resume(progress=False)
    assert result.status == "finished" and [m.step for m in result.members] == [4, 4, 4]
    assert result.failures() == []
    check_steps(result)  # no interval lost or trained twice across the move


def test_an_explicit_folder_that_moved_is_named_with_checkpoints(tmp_path: Path, quick_run):
    url = f"sqlite:///{tmp_path / 'db' / 'p.db'}"
    # outside the database's folder: absolute
    quick_run(storage=url, name="moved", intervals=4, checkpoints=tmp_path / "elsewhere")
    assert pt.load(url, "moved").config.checkpoints == str(tmp_path / "elsewhere")
    shutil.move(tmp_path / "elsewhere", tmp_path / "mounted")
    with pytest.raises(pt.CheckpointMissing, match="is missing"):
        pt.load(url, "moved").best.state()
    found = pt.load(url, "moved", checkpoints=tmp_path / "mounted")
    assert found.best.state()["theta"].shape == (2,)
    out = CliRunner().invoke(
        main, ["status", "moved", "--storage", url, "--checkpoints", str(tmp_path / "mounted")]
    )
    assert out.exit_code == 0, out.output
    pt.load(url, "moved").resume(checkpoints=tmp_path / "mounted", progress=False)  # finished
    assert pt.load(url, "moved").status == "finished"
