"""Helpers shared by several test modules (fixtures built on them live in ``conftest.py``).

- :class:`QuickRun`: ``pt.run`` with the suite's usual options, behind the ``quick_run``
  fixture (also: a population created untrained, a run sure to exploit); :func:`worker_for`
  builds a worker on a population a test created without training.
- ``make``, ``interval``, ``ckpt``, ``train``: a population written straight into a storage,
  one record at a time, for the storage contract and the tests that read what it stores.
- :func:`wait_for_intervals`: wait until a run in another process has recorded some
  intervals, before a test interrupts it (progress, not wall time: machines here are loaded).
- :func:`run_benchmark`: a script of ``benchmarks/`` run on this checkout's code, for the
  smoke tests that keep every benchmark runnable.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import poptune as pt
from poptune.records import CheckpointRef, IntervalRecord
from poptune.storage import Storage
from poptune.testing import CreateOnlyRunner, Quadratic, quadratic_space

# What most tests want of a run: small, seeded, quiet, in this process.
QUICK_OPTIONS: dict[str, Any] = {
    "metric": "q",
    "population": 3,
    "intervals": 2,
    "workers": 1,
    "seed": 0,
    "progress": False,
}


class QuickRun:
    """``pt.run`` with the suite's usual options: the toy problem's space and metric, a small
    seeded population trained in this process without a progress display, stored in the
    test's own SQLite file. Any option a test passes replaces the default, e.g.
    ``quick_run(storage=storage_url, name="toy", population=4, intervals=6)``.
    """

    def __init__(self, storage: str) -> None:
        self.storage = storage

    def __call__(self, trainable: Any = Quadratic, /, **overrides: Any) -> pt.Population:
        """Run ``trainable`` (``Quadratic`` by default) with the defaults and ``overrides``."""
        options = {**QUICK_OPTIONS, "space": quadratic_space(), "storage": self.storage}
        return pt.run(trainable, **{**options, **overrides})

    def created(self, trainable: Any = Quadratic, /, **overrides: Any) -> CreateOnlyRunner:
        """Store the population and train nothing: the returned runner holds the target,
        storage and checkpoints, for workers the test builds itself (see :func:`worker_for`)."""
        runner = CreateOnlyRunner()
        self(trainable, runner=runner, **overrides)
        return runner

    def exploiting(self, trainable: Any = Quadratic, /, **overrides: Any) -> pt.Population:
        """A run that exploits (4 intervals, seed 1), for tests that read its exploits back:
        fails at once if it did not."""
        result = self(trainable, **{"intervals": 4, "seed": 1, **overrides})
        assert result.exploits(), "the test population must exploit"
        return result


def worker_for(runner: CreateOnlyRunner, storage: Any = None, **options: Any) -> pt.Worker:
    """A worker on the population ``runner`` created, on its storage (or ``storage``)."""
    target = runner.target
    return pt.Worker(
        target.spec,
        runner.storage if storage is None else storage,
        runner.checkpoints,
        target.population_id,
        **options,
    )


# --- records written straight into a storage ----------------------------------------------------

CONFIG = {"metric": "q", "mode": "max", "intervals": 5}


def make(storage: Storage, n: int = 4, name: str = "pop") -> int:
    """Create population ``name`` with ``n`` members (hparams ``x`` = their index); its id."""
    return storage.create_population(name, CONFIG, [{"x": float(i)} for i in range(n)]).id


def interval(member: int, step: int, score: float, origin: Any = None) -> IntervalRecord:
    """An interval of ``member`` at ``step`` scoring ``score``."""
    return IntervalRecord(member, step, {"x": float(member)}, score, {"q": score}, 0.1, 1.0, origin)


def ckpt(member: int, step: int) -> CheckpointRef:
    """The checkpoint reference ``member`` records at ``step``."""
    return CheckpointRef(member, step, f"m{member}/s{step}.ckpt", 10, "0" * 64)


def train(
    storage: Storage, pid: int, score: float, budget: int = 5, ready: bool = False
) -> tuple[int, int]:
    """Claim the next member, record one interval scoring ``score``; (member, step)."""
    claim = storage.claim(pid, "w", budget, 30.0, sync=False)
    assert claim is not None
    step = claim.member.step + 1
    storage.record_interval(
        claim,
        interval(claim.member.id, step, score, claim.member.restore),
        ckpt(claim.member.id, step),
        exploit_pending=ready,
        done=step >= budget,
    )
    return claim.member.id, step


def wait_for_intervals(
    process: subprocess.Popen[Any], url: str, name: str, count: int, timeout: float = 120.0
) -> int:
    """Wait until the run ``name`` that ``process`` trains has recorded at least ``count``
    intervals in ``url``; return how many it had. Fails the test, saying why, if the process
    ends first or the time runs out (with the last error reading the storage, if any)."""
    deadline = time.monotonic() + timeout
    error: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"The run {name!r} ended (exit code {process.returncode}) before it recorded "
                f"{count} intervals; last error reading it: {error!r}"
            )
        try:
            done = len(pt.load(url, name).intervals())
        except (pt.StorageError, pt.PopulationNotFound) as read_error:  # not there yet
            error = read_error
        else:
            if done >= count:
                return done
        time.sleep(0.1)
    raise AssertionError(
        f"The run {name!r} did not record {count} intervals within {timeout} s; last error "
        f"reading it: {error!r}"
    )


ROOT = Path(__file__).resolve().parent.parent


def run_benchmark(script: str, *arguments: str, timeout: float = 300.0) -> str:
    """Run ``benchmarks/<script>`` with ``arguments`` on this checkout's poptune (its ``src``
    first on the path, whatever is installed); its standard output, once it exited 0. It runs
    in an empty folder, which must stay empty: a benchmark writes only where it is told (a
    default storage in the current folder would read back an older run's populations)."""
    path = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory() as folder:
        run = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / script), *arguments],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "PYTHONPATH": path},
            cwd=folder,
        )
        assert run.returncode == 0, run.stderr[-3000:] + run.stdout[-3000:]
        left = sorted(os.listdir(folder))
        assert not left, f"benchmarks/{script} wrote {left} into the folder it ran in"
    return run.stdout
