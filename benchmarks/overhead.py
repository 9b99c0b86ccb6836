"""How much wall time poptune adds on top of the training work itself.

A synthetic trainable (``poptune.testing.BurnCPU``) burns a fixed 20 ms of CPU per step, 5 steps
per interval, and carries a 1 MB state. A population of 16 trains 20 intervals with 2 worker
processes. Ideal time is the total CPU work divided by the 2 workers; the benchmark prints
wall / ideal (start-up included) and the median per-interval framework time (claim, restore,
save, record, exploit, garbage collection: everything but the user's train and evaluate),
measured in-process over the same kind of run: the part on the training path plus the part on
the background writer (which overlaps with the next interval's training).

Run:  python benchmarks/overhead.py [--population 16] [--intervals 20] [--workers 2]
Targets (issue #26): wall / ideal <= 1.05 (issue #3's was 1.10); median framework time per
interval <= 5 ms (SQLite). ``--repeat N`` measures the wall N times and prints the median.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import poptune as pt
from poptune.runners import InProcessRunner
from poptune.testing import BurnCPU
from poptune.worker import Worker

SPACE = {"lr": pt.LogUniform(1e-3, 1.0)}


class TimedWorker(Worker):
    """A worker that measures its own time per interval, minus the user's train/evaluate: on the
    training path (claim, exploit, restore) and on the background writer (save, record)."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.framework: list[float] = []
        self.background: list[float] = []

    def work_on(self, claim):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        self._user = 0.0
        super().work_on(claim)
        self.framework.append(time.perf_counter() - started - self._user)

    def train_one_interval(self, live, member, **options):  # type: ignore[no-untyped-def]
        interval, state = super().train_one_interval(live, member, **options)
        self._user += interval.wall_time
        return interval, state

    def save_and_record(self, claim, live, interval, state, *rest):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        super().save_and_record(claim, live, interval, state, *rest)
        if threading.current_thread() is not threading.main_thread():  # not in work_on's time
            self.background.append(time.perf_counter() - started)


def wall_over_ideal(population: int, intervals: int, workers: int, folder: Path) -> tuple:
    """Run the population with local worker processes; return (wall, ideal)."""
    work = population * intervals * BurnCPU.steps_per_interval * BurnCPU.step_seconds
    started = time.perf_counter()
    pt.run(
        BurnCPU,
        space=SPACE,
        metric="score",
        population=population,
        intervals=intervals,
        workers=workers,
        storage=f"sqlite:///{folder / 'overhead.db'}",
        name="overhead",
        seed=0,
        progress=False,
    )
    wall = time.perf_counter() - started
    return wall, work / workers


def framework_time(
    population: int, intervals: int, folder: Path
) -> tuple[list[float], list[float]]:
    """Per-interval framework seconds of one in-process worker: on the training path, and on
    the background writer."""
    timings: list[float] = []
    background: list[float] = []

    class TimedRunner(InProcessRunner):
        def run(self, target, storage, checkpoints, on_started=lambda: None):  # type: ignore[no-untyped-def]
            worker = TimedWorker(target.spec, storage, checkpoints, target.population_id)
            on_started()
            worker.run()
            timings.extend(worker.framework)
            background.extend(worker.background)

    pt.run(
        BurnCPU,
        space=SPACE,
        metric="score",
        population=population,
        intervals=intervals,
        storage=f"sqlite:///{folder / 'framework.db'}",
        name="framework",
        seed=0,
        progress=False,
        runner=TimedRunner(),
    )
    return timings, background


def main() -> None:
    """Run both measurements and print them against the targets."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--intervals", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs of the wall measurement, for a spread"
    )
    args = parser.parse_args()
    ratios = []
    with tempfile.TemporaryDirectory() as name:
        for run in range(args.repeat):
            folder = Path(name) / str(run)
            folder.mkdir()
            wall, ideal = wall_over_ideal(args.population, args.intervals, args.workers, folder)
            ratios.append(wall / ideal)
        timings, background = framework_time(args.population, max(args.intervals // 4, 2), folder)
    print(
        f"population {args.population}, {args.intervals} intervals x "
        f"{BurnCPU.steps_per_interval} steps x {BurnCPU.step_seconds * 1000:.0f} ms, "
        f"{args.workers} workers, state {BurnCPU.state_bytes / 1e6:.0f} MB"
    )
    print(f"wall {wall:.2f} s, ideal {ideal:.2f} s, wall/ideal {wall / ideal:.3f} (target <= 1.05)")
    if args.repeat > 1:
        ordered = sorted(ratios)
        print(
            f"wall/ideal over {args.repeat} runs: median {statistics.median(ordered):.3f} (min "
            f"{ordered[0]:.3f}, max {ordered[-1]:.3f}): {', '.join(f'{r:.3f}' for r in ratios)}"
        )
    loop_ms = sorted(t * 1000 for t in timings)
    background_ms = sorted(t * 1000 for t in background) or [0.0]
    total = statistics.median(loop_ms) + statistics.median(background_ms)
    print(
        f"framework time per interval: median {total:.2f} ms (target <= 5 ms): in the worker's "
        f"loop (claim, exploit, restore, and save and record when written in line) median "
        f"{statistics.median(loop_ms):.2f} ms, p90 {_p90(loop_ms):.2f} ms over {len(loop_ms)} "
        f"intervals; on the background writer median {statistics.median(background_ms):.2f} ms "
        f"over {len(background)} intervals"
    )


def _p90(values: list[float]) -> float:
    return values[int(0.9 * (len(values) - 1))]


if __name__ == "__main__":
    main()
