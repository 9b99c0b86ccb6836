"""How often members change workers: intervals that reload a member's own checkpoint.

A worker keeps the members it trains in memory and continues one without a reload when it
claims it again. A claim takes the least-advanced member and, among members at the same step,
prefers one the worker holds at that step. When a member is trained by another worker instead,
the next interval reloads it from its checkpoint: for a 200 MB state that is a read and a
``load_state_dict`` (about 190 ms of CPU on the development machine, docs/overhead.md) on the
training path, and a phase in which members move at almost every interval costs that every
interval.

Each run is ``pt.run`` of a trainable whose interval is a sleep of ``--interval-ms`` (times a
seeded factor in 0.8-1.2, so that workers drift apart as real ones do; a sleep uses no CPU, so
more workers than cores behave as on a bigger machine), with ``workers`` local processes, on a
fresh SQLite file, default strategies. The trainable notes when ``load_state_dict`` ran before
an interval. Counted: the intervals that continue the member's own previous checkpoint (not
the first, not those after an exploit, which load a donor whatever the worker), and among
them those that were reloaded: the member had changed workers (or the worker had let it go).

Printed per configuration (population:workers) and seed, then the median share reloaded over
the seeds with its range.

Run:  python benchmarks/claims.py [--configs 4:2 8:2 16:4] [--seeds 8] [--intervals 12]
          [--interval-ms 30] [--quick]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import poptune as pt


class Sleeper(pt.Trainable):
    """An interval is a sleep; ``loaded`` says whether a checkpoint was loaded before it."""

    interval_seconds = 0.03  # set by main(); inherited by the forked worker processes

    def __init__(self, hparams: Mapping[str, Any], seed: int) -> None:
        self.x = 0.0
        self.loaded = 0
        self.draw = random.Random(seed)

    def train(self, hparams: Mapping[str, Any]) -> None:
        """Sleep one interval, a seeded 0.8-1.2 of the nominal one."""
        time.sleep(type(self).interval_seconds * self.draw.uniform(0.8, 1.2))
        self.x += float(hparams["lr"])

    def evaluate(self) -> dict[str, float]:
        """The score, and whether this interval started from a loaded checkpoint."""
        loaded, self.loaded = self.loaded, 0
        return {"score": self.x, "loaded": float(loaded)}

    def state_dict(self) -> dict[str, Any]:
        """The state: one number."""
        return {"x": self.x}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore, and note it for the next interval."""
        self.x = float(state["x"])
        self.loaded = 1


def reloaded(population: int, workers: int, intervals: int, seed: int) -> tuple[int, int]:
    """One run: (intervals reloaded from the member's own checkpoint, intervals continuing it)."""
    with tempfile.TemporaryDirectory() as folder:
        result = pt.run(
            Sleeper,
            space={"lr": pt.Uniform(0.1, 1.0)},
            metric="score",
            population=population,
            intervals=intervals,
            workers=workers,
            seed=seed,
            storage=f"sqlite:///{Path(folder) / 'claims.db'}",
            checkpoints=Path(folder) / "checkpoints",
            name="claims",
            progress=False,
        )
        continuing = [i for i in result.intervals() if i.origin == (i.member, i.step - 1)]
        return sum(int(i.metrics["loaded"]) for i in continuing), len(continuing)


def configuration(text: str) -> tuple[int, int]:
    """``population:workers`` as two ints (argparse type)."""
    try:
        population, workers = (int(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected population:workers such as 8:2, got {text!r}"
        ) from None
    if population < 2 or workers < 1:
        raise argparse.ArgumentTypeError(f"need a population >= 2 and workers >= 1, got {text!r}")
    return population, workers


def main(argv: Sequence[str] | None = None) -> int:
    """Run every configuration over the seeds and print the shares reloaded."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--configs", type=configuration, nargs="+", default=None, help="population:workers"
    )
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--intervals", type=int, default=12)
    parser.add_argument("--interval-ms", type=float, default=30.0)
    parser.add_argument("--quick", action="store_true", help="smoke test: 4:2, 1 seed, 4 intervals")
    args = parser.parse_args(argv)
    configs = args.configs or ([(4, 2)] if args.quick else [(4, 2), (8, 2), (16, 4)])
    seeds, intervals = (1, 4) if args.quick else (args.seeds, args.intervals)
    if seeds < 1 or intervals < 2 or args.interval_ms <= 0:
        parser.error("need --seeds >= 1, --intervals >= 2 and --interval-ms > 0")
    Sleeper.interval_seconds = args.interval_ms / 1000
    print(
        f"poptune from {Path(pt.__file__).parent}; {intervals} intervals of "
        f"{args.interval_ms:g} ms (x 0.8-1.2) per member; seeds 0-{seeds - 1}",
        flush=True,
    )
    for population, workers in configs:
        shares = []
        for seed in range(seeds):
            count, total = reloaded(population, workers, intervals, seed)
            shares.append(count / total if total else 0.0)
            print(
                f"population {population}, {workers} workers, seed {seed}: "
                f"{count} of {total} intervals reloaded ({shares[-1]:.0%})",
                flush=True,
            )
        print(
            f"population {population}, {workers} workers: reloaded, median "
            f"{statistics.median(shares):.1%} (min {min(shares):.1%}, max {max(shares):.1%}) "
            f"over {seeds} seeds",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
