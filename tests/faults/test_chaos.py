"""Fault injection over real multi-process runs: workers SIGKILLed during train, during a
checkpoint write and inside a database commit; checkpoints corrupted between rounds; exceptions
and NaN scores injected. Every scenario must finish the population exactly, lose nothing, keep
the lineage consistent and never hand damaged data to the trainable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import poptune as pt
from poptune._imports import import_object
from poptune.checkpoints import population_folder, sweep_orphans
from poptune.records import MemberStatus
from poptune.testing import check_steps

CHAOS_SCRIPT = Path(__file__).with_name("chaos.py")
POPULATION, INTERVALS, WORKERS = 8, 16, 3
# Other values explore other fault sequences: POPTUNE_CHAOS_SEED_BASE=7 pytest tests/faults
SEED_BASE = int(os.environ.get("POPTUNE_CHAOS_SEED_BASE", "0"))


SCENARIOS = {
    "kill during train": {"kill_train": 0.08},
    "kill during checkpoint write": {"kill_write": 0.08},
    "kill inside a database commit": {"kill_commit": 0.02},
    "exceptions and NaN scores": {"raise": 0.12, "nan": 0.12},
    "everything plus corrupted checkpoints": {
        "kill_train": 0.03,
        "kill_write": 0.03,
        "kill_commit": 0.01,
        "raise": 0.05,
        "nan": 0.05,
        "corrupt": 1.0,
    },
}


def corrupt_one(result: pt.Result, rng: np.random.Generator) -> pt.CheckpointRef | None:
    refs = result.storage.checkpoints(result.record.id)
    if not refs:
        return None
    ref = refs[int(rng.integers(len(refs)))]
    path = Path(result.checkpoint_store.url) / ref.path
    data = bytearray(path.read_bytes())
    data[int(rng.integers(len(data)))] ^= 0xFF
    path.write_bytes(bytes(data))
    return ref


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_chaos(quick_run, writes, scenario: str):
    chaos = SCENARIOS[scenario]
    url = quick_run.storage
    chaotic = import_object(f"{CHAOS_SCRIPT}:Chaotic")
    quick_run.created(
        chaotic, name="chaos", population=POPULATION, intervals=INTERVALS, seed=1,
        lease_seconds=1.0,
    )  # fmt: skip
    rng = np.random.default_rng(SEED_BASE)
    exits: Counter[int] = Counter()
    corrupted: list[pt.CheckpointRef] = []
    env = {**os.environ, "POPTUNE_CHAOS": json.dumps(chaos)}
    for round_ in range(25):
        processes = [
            subprocess.Popen(
                [sys.executable, str(CHAOS_SCRIPT), url, "chaos"],
                env={**env, "POPTUNE_CHAOS_SEED": str(SEED_BASE + 100 * round_ + index)},
                stderr=subprocess.PIPE,
            )
            for index in range(WORKERS)
        ]
        for process in processes:
            _, stderr = process.communicate(timeout=300)
            exits[process.returncode] += 1
            # a worker either finishes or is killed by the harness; anything else is a bug
            assert process.returncode in (0, -9), stderr.decode()[-3000:]
        result = pt.load(url, "chaos")
        if result.status != "running":
            break
        if chaos.get("corrupt") and (ref := corrupt_one(result, rng)) is not None:
            corrupted.append(ref)
    # Whatever the chaos left undone, a clean resume finishes it.
    result = pt.load(url, "chaos").resume(workers=2, progress=False, trainable=chaotic)

    assert result.status == "finished"
    members = result.members
    assert all(m.status is MemberStatus.DONE and m.step == INTERVALS for m in members)
    check_steps(result)  # none lost, none twice, the lineage consistent with the steps
    intervals = result.intervals()
    keys = {(i.member, i.step) for i in intervals}
    for interval in intervals:
        assert interval.origin is None or interval.origin in keys  # every origin was recorded
    failures = result.failures()
    assert not [f for f in failures if "CORRUPT STATE" in f.traceback]
    # A corrupted checkpoint is either dropped when a worker reads it (its checksum fails),
    # collected unread, or still waiting unread; what matters is that none reached the trainable
    # (checked above through the trainable's own signature).
    detected = sum(
        1
        for ref in corrupted
        if result.storage.checkpoint(result.record.id, ref.member, ref.step) is None
    )
    # Orphans (files of workers killed before their commit) are swept once old enough.
    committed = {ref.path for ref in result.storage.checkpoints(result.record.id)}
    store = result.checkpoint_store
    folder = population_folder(result.storage.database_id(), result.record.id)
    orphans = sweep_orphans(store, folder, committed, older_than=0.0)
    assert set(store.files(folder)) == committed

    nan_scores = sum(1 for i in intervals if i.score is None)
    report = {
        "scenario": scenario,
        "kills": exits.get(-9, 0),
        "clean exits": exits.get(0, 0),
        "failures recorded": len(failures),
        "NaN intervals": nan_scores,
        "corrupted checkpoints": len(corrupted),
        "corrupted and gone": detected,
        "exploits": len(result.exploits()),
        "orphan files swept": len(orphans),
    }
    print(json.dumps(report))
    if scenario.startswith("kill"):
        assert exits.get(-9, 0) > 0, "the scenario must actually kill workers"
