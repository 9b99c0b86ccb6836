"""What the examples share: their command line and how they print a finished population."""

from __future__ import annotations

import argparse
from typing import Any

import poptune as pt

#: The explore strategies an example can be run with (``--explore``).
EXPLORES = {
    "perturb": lambda: pt.Perturb((0.8, 1.2), resample_probability=0.25),
    "pb2": pt.PB2,
}


def parser(
    description: str, *, name: str, population: int, intervals: int
) -> argparse.ArgumentParser:
    """The options every example takes (defaults: the example's own size, 2 workers)."""
    options = argparse.ArgumentParser(description=description)
    options.add_argument("--population", type=int, default=population)
    options.add_argument("--intervals", type=int, default=intervals)
    options.add_argument("--workers", type=int, default=2)
    options.add_argument("--name", default=name)
    options.add_argument("--storage", default=None, help="default: sqlite:///runs/poptune.db")
    options.add_argument("--seed", type=int, default=0)
    options.add_argument("--sync", action="store_true", help="generations: reproducible runs")
    options.add_argument(
        "--explore",
        choices=sorted(EXPLORES),
        default="perturb",
        help="perturb: the paper's perturb-or-resample; pb2: a GP bandit (pt.PB2)",
    )
    options.add_argument("--no-progress", action="store_true")
    return options


def run_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``pt.run`` arguments the command line gives, with the examples' strategies (the
    paper's truncation, and perturb-or-resample unless ``--explore pb2``)."""
    return {
        "population": args.population,
        "intervals": args.intervals,
        "workers": args.workers,
        "exploit": pt.Truncation(0.25),
        "explore": EXPLORES[args.explore](),
        "name": args.name,
        "storage": args.storage,
        "seed": args.seed,
        "sync": args.sync,
        "progress": not args.no_progress,
    }


def _value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def report(result: pt.Result, label: str) -> None:
    """Print the best member, its hyperparameters and the schedule its weights trained with
    (``label``: how to call the score, e.g. ``accuracy``)."""
    best = result.best
    print(f"\nbest member {best.member}: {label} {best.score:.4f} after {best.step} intervals")
    print("hparams: " + ", ".join(f"{k}={_value(v)}" for k, v in best.hparams.items()))
    print(f"exploits: {len(result.exploits())}")
    schedule = result.schedule()
    names = list(schedule[0].hparams) if schedule else []
    print(f"\nschedule of the winning lineage (step: member, {', '.join(names)}, {label})")
    for entry in schedule:
        values = "  ".join(f"{k}={_value(v)}" for k, v in entry.hparams.items())
        print(f"  {entry.step:3d}: member {entry.member}  {values}  {label}={entry.score:.4f}")
    print(f"\nInspect it later: poptune status {result.name}; poptune schedule {result.name}")
