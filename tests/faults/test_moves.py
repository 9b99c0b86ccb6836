"""A run directory that moves (or is copied to another machine) opens where it now is."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import poptune as pt
from poptune.cli import main
from poptune.testing import CreateOnlyRunner, Quadratic, check_steps, quadratic_space


def _run(url: str, **overrides):
    options = dict(
        space=quadratic_space(),
        metric="q",
        population=3,
        intervals=4,
        storage=url,
        name="moved",
        seed=0,
        progress=False,
    )
    return pt.run(Quadratic, **{**options, **overrides})


def test_a_moved_run_directory_opens_and_resumes_where_it_now_is(tmp_path: Path):
    before = _run(f"sqlite:///{tmp_path / 'A' / 'p.db'}")
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


def test_an_interrupted_run_resumes_after_its_directory_moved(tmp_path: Path):
    runner = CreateOnlyRunner()
    _run(f"sqlite:///{tmp_path / 'A' / 'p.db'}", runner=runner)
    pid = runner.target.population_id
    worker = pt.Worker(runner.target.spec, runner.storage, runner.checkpoints, pid)
    for _ in range(5):  # some intervals, then the machine stops
        worker.work_on(runner.storage.claim(pid, worker.owner, 4, 30.0, False))
    worker.flush()
    runner.storage.close()
    shutil.move(tmp_path / "A", tmp_path / "B")

    result = pt.load(f"sqlite:///{tmp_path / 'B' / 'p.db'}", "moved").resume(progress=False)
    assert result.status == "finished" and [m.step for m in result.members] == [4, 4, 4]
    assert result.failures() == []
    check_steps(result)  # no interval lost or trained twice across the move


def test_an_explicit_folder_that_moved_is_named_with_checkpoints(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'db' / 'p.db'}"
    _run(url, checkpoints=tmp_path / "elsewhere")  # outside the database's folder: absolute
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
