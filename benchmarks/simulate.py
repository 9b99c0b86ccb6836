"""Deterministic simulation of workers, clocks and faults, over many seeds.

Each seed is one population trained by real workers over a real storage, driven step by step
by one seeded scheduler that injects faults (crashes, pauses past the lease, lost or failed
commits, damaged or removed checkpoints, clock skew, restarts and resumes); the invariants are
checked after every recorded interval and after the run (see ``poptune.simulation``).
Prints the seeds run, the faults injected by kind, how the runs ended, every violation (with
its seed and the steps before it) and the time; exits with status 1 if there was a violation.

Run:  python benchmarks/simulate.py --seeds 10000 [--start 0] [--workers 3]
          [--storage memory|sqlite|postgres]   (postgres: at $POPTUNE_TEST_POSTGRES)
          [--kind member|block|function]       (only the seeds of that kind, from --start)
"""

from __future__ import annotations

import argparse
import sys
import time

from poptune.simulation import KINDS, SimulationResult, simulate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1000, help="how many seeds to run")
    parser.add_argument("--start", type=int, default=0, help="the first seed")
    parser.add_argument("--workers", type=int, default=3, help="at most this many workers")
    parser.add_argument("--storage", choices=("memory", "sqlite", "postgres"), default="memory")
    parser.add_argument(
        "--kind",
        choices=sorted(set(KINDS)),
        help="only seeds whose members are of this kind (by default every seed)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress line every 500 seeds")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.workers < 1:
        parser.error(f"--seeds and --workers must be at least 1 (got {args.seeds}, {args.workers})")
    started = time.perf_counter()
    seeds = [
        seed
        for seed in range(args.start, args.start + args.seeds * (len(KINDS) if args.kind else 1))
        if args.kind is None or KINDS[seed % len(KINDS)] == args.kind
    ][: args.seeds]
    done = 0

    def progress(result: SimulationResult) -> None:
        nonlocal done
        done += 1
        if not args.quiet and done % 500 == 0:
            print(f"  {done} seeds, {time.perf_counter() - started:.0f} s", flush=True)

    report = simulate(
        seeds,
        workers=args.workers,
        storage=args.storage,
        on_result=progress,
    )
    print(
        f"seeds run: {report.seeds} ({seeds[0]}..{seeds[-1]}"
        f"{f', {args.kind} seeds only' if args.kind else ''}), "
        f"storage {args.storage}, up to {args.workers} workers"
    )
    described = {"member": "Trainable class", "block": "blocks", "function": "training function"}
    kinds = ", ".join(
        f"{kind} {count} ({described.get(kind, kind)})"
        for kind, count in sorted(report.kinds.items())
    )
    print(f"by kind: {kinds}")
    faults = ", ".join(f"{kind} {count}" for kind, count in sorted(report.faults.items()))
    print(f"faults injected: {sum(report.faults.values())} ({faults})")
    ended = ", ".join(f"{status} {count}" for status, count in sorted(report.statuses.items()))
    print(f"runs ended: {ended}; {report.steps} scheduler steps")
    print(f"violations: {len(report.violations)}")
    for violation in report.violations[:5]:
        print(violation)
    print(f"time: {report.seconds:.1f} s ({1000 * report.seconds / report.seeds:.1f} ms per seed)")
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
