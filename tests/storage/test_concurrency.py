"""Many worker processes on one population, on every storage kind: all members reach the
budget, no interval is recorded twice, no two workers ever hold the same member, every copy
starts from an intact donor checkpoint."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

import poptune as pt
from poptune._imports import import_object
from poptune.records import MemberStatus
from poptune.testing import check_steps

CHAOS_SCRIPT = Path(__file__).resolve().parent.parent / "faults" / "chaos.py"


def test_many_workers_share_a_population(storage_url: str, tmp_path: Path, quick_run):
    postgres = storage_url.startswith("postgresql")
    workers, members, intervals = (8 if postgres else 4), 32, 6
    chaotic = import_object(f"{CHAOS_SCRIPT}:Chaotic")
    quick_run.created(
        chaotic, storage=storage_url, checkpoints=tmp_path / "checkpoints", name="crowd",
        population=members, intervals=intervals, seed=3,
    )  # fmt: skip
    audits = [tmp_path / f"audit-{i}.log" for i in range(workers)]
    env = {**os.environ, "POPTUNE_CHAOS": json.dumps({})}
    processes = [
        subprocess.Popen(
            [sys.executable, str(CHAOS_SCRIPT), storage_url, "crowd"],
            env={**env, "POPTUNE_AUDIT": str(path), "POPTUNE_CHAOS_SEED": str(i)},
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, path in enumerate(audits)
    ]
    for process in processes:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-3000:]
        assert "Falling back" not in stderr  # no checkpoint ever failed its checksum
    result = pt.load(storage_url, "crowd")
    assert result.status == "finished"
    assert all(m.status is MemberStatus.DONE and m.step == intervals for m in result.members)
    check_steps(result)  # no step twice, none past the budget, every donor recorded
    assert not [f for f in result.failures() if "CORRUPT STATE" in f.traceback]

    spans: dict[int, dict[int, list[float]]] = defaultdict(dict)
    for path in audits:
        if not path.exists():  # a worker that started after the others took every member
            continue
        for line in path.read_text().splitlines():
            _event, member, token, when = line.split()
            spans[int(member)].setdefault(int(token), []).append(float(when))
    claims = 0
    for member, by_token in spans.items():
        ordered = sorted(by_token.items())
        claims += len(ordered)
        for (_, first), (_, second) in itertools.pairwise(ordered):
            assert len(first) == 2, (member, first)
            assert first[1] <= second[0], f"member {member} was held by two workers at once"
    assert claims >= len(result.intervals())
    used = sum(1 for path in audits if path.exists() and path.read_text())
    assert used >= 2, "the workers must really have shared the population"


@pytest.fixture(autouse=True)
def _fast_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
