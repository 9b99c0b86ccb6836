"""Throughput of the storage path: workers, population size, and many workers on one server.

Three tables (``--tables``, default all three):

``workers``: the synthetic trainable burns 20 ms of CPU per step (5 steps per interval, 1 MB
state); a population of 32 trains ``--intervals`` intervals. For each storage and worker count
it prints throughput (intervals/s), wall / ideal (ideal = CPU work / workers) and the speed-up
of 2 workers over 1; then, from an in-process run, the median storage time per interval (claim,
exploit reads and writes, record: every storage call a worker makes for one interval). Targets
(issue #6): 2 workers >= 1.85x 1 worker on both storages; median storage time per interval on
PostgreSQL <= 10 ms.

``sizes``: members that do nothing (``poptune.testing.Noop``), 2 worker processes, populations
of 64, 256, 1,024 and 4,096 (``--sizes``) on SQLite and PostgreSQL. Every member trains 3
intervals: the first is a warm-up (nothing to exploit yet), and intervals/s is counted, from
the recorded intervals, over the other two (each starts with an exploit), so it is the
framework's own cost per interval in steady state. A run stops after ``--seconds`` (90) in all.
Target (issue #15): throughput at 1,024 members >= 0.6x that at 64, on both storages. With
``--repeat N`` the sizes are measured in turn N times and the median is shown with its range
(single runs on a busy 2-core machine vary by a quarter).

``many``: 24, 64 and 128 worker processes (``--many``) started at once on one PostgreSQL
server, each member sleeping ``Sleepy.seconds`` (0.5 s) per interval and using no CPU, as GPU
workers would: wall / ideal (ideal = intervals x 0.5 s / workers), claim latency p50 / p99 over
every claim of every worker, and the most database connections the population's workers held at
once (sampled from ``pg_stat_activity``).

Run:  python benchmarks/scaling.py [--tables workers,sizes,many] [--intervals 4] [--seconds 90]
                                   [--sizes 64,256,1024,4096] [--repeat 1]
                                   [--postgres URL] [--ray ADDRESS]
PostgreSQL is measured when --postgres or $POPTUNE_TEST_POSTGRES names a database whose user may
create databases (a temporary one is created and dropped); ``many`` needs it.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import statistics
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

import poptune as pt
from poptune.runners import InProcessRunner
from poptune.storage import SQLStorage
from poptune.testing import BurnCPU, CreateOnlyRunner, Noop, Sleepy
from poptune.worker import RunSpec, Worker

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


# --- population size ---------------------------------------------------------------------------


def size_throughput(url: str, size: int, seconds: float, folder: Path) -> float | None:
    """Intervals per second of 2 worker processes on ``size`` no-op members, in steady state:
    every member trains 3 intervals; the first (no exploit yet) is a warm-up, and the rate is
    counted over the others (each exploits first), stopping after ``seconds`` in all."""
    name = f"size-{size}-{uuid.uuid4().hex[:6]}"
    result = pt.run(
        Noop,
        space=SPACE,
        metric="score",
        population=size,
        intervals=3,
        workers=2,
        storage=url,
        name=name,
        seed=0,
        progress=False,
        checkpoints=folder / name,
        stop=pt.WallClock(seconds),
    )
    steady = [i for i in result.intervals() if i.step >= 2]
    result.storage.close()
    if len(steady) < 2:
        return None
    started = min(i.finished_at - i.wall_time for i in steady)
    finished = max(i.finished_at for i in steady)
    return len(steady) / (finished - started)


def sizes_table(
    label: str, url: str, sizes: list[int], seconds: float, folder: Path, repeat: int = 1
) -> None:
    """Print intervals/s for each population size and the ratio to the smallest: with
    ``repeat`` > 1 the sizes are measured in turn ``repeat`` times and the median is shown, with
    the range (a busy machine moves a single run by a quarter)."""
    logging.getLogger("poptune").setLevel(logging.ERROR)  # "stopped by the wall clock": expected
    runs: dict[int, list[float]] = {size: [] for size in sizes}
    for _ in range(repeat):
        for size in sizes:
            rate = size_throughput(url, size, seconds, folder)
            if rate is not None:
                runs[size].append(rate)
    first = statistics.median(runs[sizes[0]]) if runs[sizes[0]] else None

    def cell(size: int) -> str:
        if not runs[size]:
            return f"{size}: n/a (warm-up alone took over {seconds:.0f} s)"
        rate = statistics.median(runs[size])
        text = f"{size}: {rate:7.1f}/s" + (f" ({rate / first:.2f}x)" if first else "")
        if len(runs[size]) > 1:
            text += f" [{min(runs[size]):.0f}-{max(runs[size]):.0f}]"
        return text

    print(f"{label:<10} " + " | ".join(cell(size) for size in sizes), flush=True)


# --- many workers --------------------------------------------------------------------------------


def _many_worker(url: str, name: str, folder: str, out: str, go: Any) -> None:
    """One worker process of the ``many`` table: join the population, time every claim."""
    claims: list[float] = []

    class Timed(SQLStorage):
        def claim(self, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return super().claim(*args, **kwargs)
            finally:
                claims.append(time.perf_counter() - started)

    go.wait()  # every process starts at once: a connection storm
    storage = Timed(url)
    record = storage.population(name)
    config = pt.PopulationConfig.of(record)
    worker = Worker(
        RunSpec.build(config, Sleepy),
        storage,
        pt.LocalCheckpoints(folder),
        record.id,
        lease_seconds=config.lease_seconds,
        resident=2,
    )
    worker.run()
    Path(out).write_text("\n".join(f"{c:.6f}" for c in claims))


def many_workers(url: str, workers: int, intervals: int, folder: Path) -> str:
    """One row of the ``many`` table."""
    name = f"many-{workers}-{uuid.uuid4().hex[:6]}"
    population = workers
    pt.run(
        Sleepy,
        space=SPACE,
        metric="score",
        population=population,
        intervals=intervals,
        storage=url,
        name=name,
        seed=0,
        progress=False,
        checkpoints=folder / name,
        runner=CreateOnlyRunner(),
    )
    context = multiprocessing.get_context("fork")
    go = context.Event()
    outs = [folder / f"{name}-{i}.txt" for i in range(workers)]
    processes = [
        context.Process(
            target=_many_worker, args=(url, name, str(folder / name), str(out), go), daemon=True
        )
        for out in outs
    ]
    for process in processes:
        process.start()
    held = [0]
    done = threading.Event()

    def sample() -> None:
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        database = make_url(url).database
        while not done.is_set():
            with engine.connect() as connection:
                count = connection.execute(
                    sa.text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = :d "
                        "AND pid <> pg_backend_pid()"
                    ),
                    {"d": database},
                ).scalar_one()
            held[0] = max(held[0], int(count))
            done.wait(0.2)
        engine.dispose()

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    go.set()
    for process in processes:
        process.join()
    wall = time.perf_counter() - started
    done.set()
    sampler.join()
    failed = sum(process.exitcode != 0 for process in processes)
    claims = sorted(
        float(x) * 1000 for out in outs if out.exists() for x in out.read_text().split()
    )
    ideal = population * intervals * Sleepy.seconds / workers
    p50 = claims[len(claims) // 2]
    p99 = claims[min(len(claims) - 1, int(0.99 * len(claims)))]
    return (
        f"{workers:>4} workers: wall/ideal {wall / ideal:.2f} ({wall:.1f} s vs {ideal:.1f} s) | "
        f"claim p50 {p50:.1f} ms, p99 {p99:.1f} ms ({len(claims)} claims) | "
        f"connections held at most {held[0]} ({held[0] / workers:.2f} per worker)"
        + (f" | {failed} worker(s) FAILED" if failed else "")
    )


def main() -> None:
    """Measure SQLite, and PostgreSQL when a server is given."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", default="workers,sizes,many")
    parser.add_argument("--intervals", type=int, default=4)
    parser.add_argument("--sizes", default="64,256,1024,4096")
    parser.add_argument("--seconds", type=float, default=90.0)
    parser.add_argument("--repeat", type=int, default=1, help="sizes: runs per size (median)")
    parser.add_argument("--many", default="24,64,128")
    parser.add_argument("--many-intervals", type=int, default=6)
    parser.add_argument("--postgres", default=os.environ.get("POPTUNE_TEST_POSTGRES"))
    parser.add_argument("--ray", default=None, help="address of a running Ray cluster")
    args = parser.parse_args()
    tables = set(args.tables.split(","))
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        if "workers" in tables:
            workers_table(args, folder)
        if "sizes" in tables:
            sizes = [int(n) for n in args.sizes.split(",")]
            print(
                f"\nno-op members, 2 worker processes, 3 intervals each (at most {args.seconds:.0f}"
                f" s): intervals/s after the warm-up interval (and x the {sizes[0]}-member rate;"
                " target at 1024 >= 0.6x)"
            )
            sqlite = f"sqlite:///{folder / 'sizes.db'}"
            sizes_table("SQLite", sqlite, sizes, args.seconds, folder, args.repeat)
            if args.postgres:
                with temporary_postgres(args.postgres) as url:
                    sizes_table("PostgreSQL", url, sizes, args.seconds, folder, args.repeat)
            else:
                print("PostgreSQL: skipped (pass --postgres URL or set $POPTUNE_TEST_POSTGRES)")
        if "many" in tables:
            counts = [int(n) for n in args.many.split(",")]
            print(
                f"\nmany workers on PostgreSQL: one member each, {args.many_intervals} intervals "
                f"of {Sleepy.seconds} s (sleep), all processes started at once"
            )
            if not args.postgres:
                print("skipped (pass --postgres URL or set $POPTUNE_TEST_POSTGRES)")
            for count in counts if args.postgres else []:
                with temporary_postgres(args.postgres) as url:
                    print(many_workers(url, count, args.many_intervals, folder), flush=True)


def workers_table(args: argparse.Namespace, folder: Path) -> None:
    """The 1-vs-2 workers table."""
    print(
        f"population {POPULATION}, {args.intervals} intervals x {BurnCPU.steps_per_interval} "
        f"steps x {BurnCPU.step_seconds * 1000:.0f} ms, state {BurnCPU.state_bytes / 1e6:.0f} MB"
    )
    measure("SQLite", f"sqlite:///{folder / 'scaling.db'}", args.intervals, folder)
    if args.postgres:
        with temporary_postgres(args.postgres) as url:
            measure("PostgreSQL", url, args.intervals, folder)
    else:
        print("PostgreSQL: skipped (pass --postgres URL or set $POPTUNE_TEST_POSTGRES)")
    if args.ray:
        measure("Ray+SQLite", f"sqlite:///{folder / 'ray.db'}", args.intervals, folder, args.ray)
    else:
        print("Ray: skipped (start one with `ray start --head` and pass --ray ADDRESS)")


if __name__ == "__main__":
    main()
