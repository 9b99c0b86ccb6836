"""What a stop criterion reads after every interval: the best score of each step.

A population of ``--population`` members that each recorded ``--steps`` intervals (random
scores, written straight into a fresh SQLite database, and PostgreSQL with ``--postgres``).
Times ``Storage.best_by_step`` (one stored row per step, kept by ``record_interval``) against
the query it replaced (the best of every step computed from every interval), and checks that
both give the same answer.

Run:  python benchmarks/stop_check.py [--population 1024] [--steps 100] [--postgres URL]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from scaling import temporary_postgres

from poptune.records import Mode
from poptune.storage import SQLStorage
from poptune.storage._schema import FINITE, intervals, step_bests


def _every_interval(storage: SQLStorage, pid: int) -> list[tuple[int, float]]:
    """The query stop criteria ran before schema 9: a group-by over every interval."""
    i = intervals.c
    with storage._engine.connect() as connection:
        rows = connection.execute(
            sa.select(i.step, sa.func.max(i.score))
            .where(i.population_id == pid, i.score.between(-FINITE, FINITE))
            .group_by(i.step)
            .order_by(i.step)
        ).all()
    return [(int(step), float(best)) for step, best in rows]


def _median_ms(read: Callable[[], Any], runs: int = 15) -> float:
    read()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        read()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def measure(label: str, url: str, population: int, steps: int) -> None:
    """Fill one population and print both reads' median time."""
    storage = SQLStorage(url)
    config = {"metric": "q", "mode": "max", "intervals": steps}
    pid = storage.create_population("stop", config, [{"x": 1.0}] * population).id
    draw = random.Random(0)
    rows = [
        {
            "population_id": pid, "member_id": m, "step": s, "hparams": "{}",
            "score": draw.random(), "metrics": "{}", "wall_time": 0.1, "finished_at": 1.0,
            "origin_member": None, "origin_step": None,
        }
        for m in range(population)
        for s in range(1, steps + 1)
    ]  # fmt: skip
    best: dict[int, float] = {}
    for row in rows:
        best[row["step"]] = max(best.get(row["step"], -1.0), row["score"])
    with storage._engine.begin() as connection:
        connection.execute(intervals.insert(), rows)
        connection.execute(
            step_bests.insert(),
            [{"population_id": pid, "step": s, "high": b, "low": b} for s, b in best.items()],
        )  # fmt: skip  (what record_interval keeps, for the max; min is not read here)
    if storage.best_by_step(pid, Mode.MAX) != _every_interval(storage, pid):
        raise SystemExit("best_by_step disagrees with the best over every interval")
    now = _median_ms(lambda: storage.best_by_step(pid, Mode.MAX))
    before = _median_ms(lambda: _every_interval(storage, pid))
    print(
        f"{label:<10} {population} members x {steps} steps: best_by_step {now:.2f} ms, "
        f"from every interval {before:.1f} ms ({before / now:.0f}x)",
        flush=True,
    )
    storage.close()


def main() -> None:
    """Measure SQLite, and PostgreSQL when a server is given."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--population", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--postgres", default=os.environ.get("POPTUNE_TEST_POSTGRES"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'stop.db'}"
        measure("SQLite", url, args.population, args.steps)
    if args.postgres:
        with temporary_postgres(args.postgres) as url:
            measure("PostgreSQL", url, args.population, args.steps)
    else:
        print("PostgreSQL: skipped (pass --postgres URL or set $POPTUNE_TEST_POSTGRES)")


if __name__ == "__main__":
    main()
