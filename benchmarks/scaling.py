"""Throughput with 1 and 2 workers, on SQLite and on PostgreSQL.

The synthetic trainable burns 20 ms of CPU per step (5 steps per interval, 1 MB state); a
population of 32 trains ``--intervals`` intervals. For each storage and worker count it prints
throughput (intervals/s), wall / ideal (ideal = CPU work / workers) and the speed-up of 2
workers over 1; then, from an in-process run, the median storage time per interval (claim,
exploit reads and writes, record: every storage call a worker makes for one interval).

Run:  python benchmarks/scaling.py [--intervals 4] [--postgres URL] [--ray ADDRESS]
PostgreSQL is measured when --postgres or $POPTUNE_TEST_POSTGRES names a database whose user may
create databases (a temporary one is created and dropped). Targets (issue #6): 2 workers >= 1.85x
the throughput of 1 worker on both storages; median storage time per interval on PostgreSQL
<= 10 ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

import poptune as pt
from poptune.runners import InProcessRunner
from poptune.storage import SQLStorage
from poptune.testing import BurnCPU
from poptune.worker import Worker

SPACE = {"lr": pt.LogUniform(1e-3, 1.0)}
POPULATION = 32
TIMED = ("claim", "candidates", "record_exploit", "record_interval", "renew")


@contextmanager
def temporary_postgres(admin_url: str) -> Iterator[str]:
    """A fresh database on the server of ``admin_url``, dropped afterwards."""
    name = f"poptune_bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def throughput(
    url: str, workers: int, intervals: int, folder: Path, ray: str | None = None
) -> tuple[float, float]:
    """(intervals per second, wall / ideal) of one run; on Ray when ``ray`` is an address."""
    work = POPULATION * intervals * BurnCPU.steps_per_interval * BurnCPU.step_seconds
    runner = pt.RayRunner(address=ray, workers=workers, num_cpus=1) if ray else None
    started = time.perf_counter()
    pt.run(
        BurnCPU,
        space=SPACE,
        metric="score",
        population=POPULATION,
        intervals=intervals,
        workers=workers,
        storage=url,
        name=f"scaling-{workers}-{uuid.uuid4().hex[:6]}",
        seed=0,
        progress=False,
        checkpoints=folder / f"checkpoints-{workers}",
        runner=runner,
    )
    wall = time.perf_counter() - started
    return POPULATION * intervals / wall, wall / (work / workers)


def storage_time(url: str, intervals: int, folder: Path) -> list[float]:
    """Storage seconds per interval of one in-process worker."""
    per_call: dict[str, list[float]] = defaultdict(list)

    class TimedStorage(SQLStorage):
        pass

    for name in TIMED:
        method = getattr(SQLStorage, name)

        def timed(self, *args, _method=method, _name=name, **kwargs):  # type: ignore[no-untyped-def]
            started = time.perf_counter()
            try:
                return _method(self, *args, **kwargs)
            finally:
                per_call[_name].append(time.perf_counter() - started)

        setattr(TimedStorage, name, timed)
    totals: list[float] = []

    class TimedRunner(InProcessRunner):
        def run(self, target, storage, checkpoints, on_started=lambda: None):  # type: ignore[no-untyped-def]
            timed_storage = TimedStorage(storage.url)
            worker = Worker(target.spec, timed_storage, checkpoints, target.population_id)
            original = worker.work_on

            def work_on(claim):  # type: ignore[no-untyped-def]
                before = sum(sum(v) for v in per_call.values())
                original(claim)
                totals.append(sum(sum(v) for v in per_call.values()) - before)

            worker.work_on = work_on  # type: ignore[method-assign]
            on_started()
            worker.run()

    pt.run(
        BurnCPU,
        space=SPACE,
        metric="score",
        population=POPULATION,
        intervals=intervals,
        storage=url,
        name=f"storage-{uuid.uuid4().hex[:6]}",
        seed=0,
        progress=False,
        runner=TimedRunner(),
        checkpoints=folder / "checkpoints-timed",
    )
    return totals


def measure(label: str, url: str, intervals: int, folder: Path, ray: str | None = None) -> None:
    """Print one storage's (or Ray's) figures."""
    one, ratio_one = throughput(url, 1, intervals, folder, ray)
    two, ratio_two = throughput(url, 2, intervals, folder, ray)
    timings = sorted(t * 1000 for t in storage_time(url, max(2, intervals // 2), folder))
    print(
        f"{label:<10} 1 worker {one:6.2f} intervals/s (wall/ideal {ratio_one:.3f}) | "
        f"2 workers {two:6.2f} intervals/s (wall/ideal {ratio_two:.3f}) | "
        f"speed-up {two / one:.2f}x (target >= 1.85) | storage per interval median "
        f"{statistics.median(timings):.2f} ms, p90 {timings[int(0.9 * (len(timings) - 1))]:.2f} ms"
    )


def main() -> None:
    """Measure SQLite, and PostgreSQL when a server is given."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--intervals", type=int, default=4)
    parser.add_argument("--postgres", default=os.environ.get("POPTUNE_TEST_POSTGRES"))
    parser.add_argument("--ray", default=None, help="address of a running Ray cluster")
    args = parser.parse_args()
    print(
        f"population {POPULATION}, {args.intervals} intervals x {BurnCPU.steps_per_interval} "
        f"steps x {BurnCPU.step_seconds * 1000:.0f} ms, state {BurnCPU.state_bytes / 1e6:.0f} MB"
    )
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        measure("SQLite", f"sqlite:///{folder / 'scaling.db'}", args.intervals, folder)
        if args.postgres:
            with temporary_postgres(args.postgres) as url:
                measure("PostgreSQL", url, args.intervals, folder)
        else:
            print("PostgreSQL: skipped (pass --postgres URL or set $POPTUNE_TEST_POSTGRES)")
        if args.ray:
            measure(
                "Ray+SQLite", f"sqlite:///{folder / 'ray.db'}", args.intervals, folder, args.ray
            )
        else:
            print("Ray: skipped (start one with `ray start --head` and pass --ray ADDRESS)")


if __name__ == "__main__":
    main()
