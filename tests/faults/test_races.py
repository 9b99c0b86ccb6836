"""Identical runs started together: one creates the population, the others continue it."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import poptune as pt
from tests._helpers import QuickRun


def _start(quick_run: QuickRun, url: str, checkpoints: str, errors) -> None:
    try:
        quick_run(storage=url, checkpoints=checkpoints, name="crowd", population=4, intervals=3)
    except BaseException as error:  # collected and asserted on in the parent
        errors.append(f"{type(error).__name__}: {error}")


def test_sixteen_identical_runs_started_at_once_all_work_on_one_population(
    storage_url: str, tmp_path: Path, quick_run: QuickRun
):
    url = storage_url  # a new, empty database
    context = multiprocessing.get_context("fork")
    with context.Manager() as manager:
        errors = manager.list()
        processes = [
            context.Process(target=_start, args=(quick_run, url, str(tmp_path / "ckpt"), errors))
            for _ in range(16)
        ]
        for process in processes:
            process.start()
        for process in processes:
            process.join(120)
        assert list(errors) == []
        assert [p.exitcode for p in processes] == [0] * 16
    result = pt.load(url, "crowd")
    assert [r.name for r in result.storage.populations()] == ["crowd"]
    assert result.status == "finished"
    assert sorted((i.member, i.step) for i in result.intervals()) == [
        (m, s) for m in range(4) for s in range(1, 4)
    ]
