"""The PBT paper's toy problem (Jaderberg et al. 2017, figure 2) with poptune.

θ ∈ R² starts at (0.9, 0.9). The objective is Q(θ) = 1.2 − (θ0² + θ1²), but each member follows
the gradient of the surrogate Q̂(θ|h) = 1.2 − (h0·θ0² + h1·θ1²): its hyperparameters h decide
which coordinates it can improve. As in the paper, two members start with h = (1, 0) and
h = (0, 1), and four variants train them for the same budget:

- PBT: exploit (truncation: the worse member copies the better's θ and h) and explore (perturb
  h by 0.8 / 1.2, or resample it with probability 0.25);
- explore only: each member perturbs its own h at every ready step, no copying;
- exploit only: the worse member copies the better one, h never changes;
- grid: the two starting h, no exploit and no explore (independent training).

Unlike the paper's figure, poptune's exploit copies h together with θ (that is PBT as used on
real tasks), so exploit-only ends with both members sharing one h and stalls at Q ≈ 0.39, like
the grid. The table gives the median over seeds of the best member's Q at the end and the
intervals the best member needed to reach Q ≥ 1.1.

Run:  python examples/toy.py [--seeds 5] [--intervals 10] [--population 2] [--storage URL]
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from _cli import at_least_one, guard

import poptune as pt
from poptune.storage import command_hint, default_storage_url
from poptune.testing import Quadratic, quadratic_space


def keep_own(
    member: pt.Candidate, population: Sequence[pt.Candidate], rng: np.random.Generator
) -> pt.Candidate:
    """An exploit that "copies" the member itself, so only explore changes anything."""
    return member


def no_change(hparams: Mapping[str, Any], space: pt.Space, rng: np.random.Generator) -> dict:
    """An explore that keeps the copied hparams unchanged."""
    return dict(hparams)


# The paper's starting points: each member can improve only one coordinate of θ.
PAPER_START = [{"h0": 1.0, "h1": 0.0}, {"h0": 0.0, "h1": 1.0}]
EXPLORE = pt.Perturb((0.8, 1.2), resample_probability=0.25)

VARIANTS: dict[str, dict[str, Any]] = {
    "PBT": {"exploit": pt.Truncation(0.5), "explore": EXPLORE},
    "explore only": {"exploit": keep_own, "explore": EXPLORE},
    "exploit only": {"exploit": pt.Truncation(0.5), "explore": no_change},
    "grid": {"exploit": None},
}
TARGET = 1.1


def run_variant(
    variant: str,
    seed: int,
    population: int,
    intervals: int,
    storage: str,
    workers: int = 1,
    name: str = "toy",
    progress: bool = False,
) -> pt.Result:
    """Train one variant of the toy problem and return its result (synchronous: the same for
    any number of workers)."""
    return pt.run(
        Quadratic,
        space=quadratic_space(),
        metric="q",
        mode="max",
        population=population,
        intervals=intervals,
        workers=workers,
        name=population_name(name, variant, population, intervals, seed),
        storage=storage,
        seed=seed,
        sync=True,
        progress=progress,
        initial=PAPER_START[:population],
        **VARIANTS[variant],
    )


def population_name(name: str, variant: str, population: int, intervals: int, seed: int) -> str:
    """One population per variant, size and seed: ``toy-PBT-p2-i10-s0``."""
    return f"{name}-{variant.replace(' ', '-')}-p{population}-i{intervals}-s{seed}"


def intervals_to_target(result: pt.Result) -> int | None:
    """The first step at which the best member's lineage reached ``TARGET``, if it did."""
    for entry in result.schedule():
        if entry.score is not None and entry.score >= TARGET:
            return entry.step
    return None


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Run every variant over several seeds and print a table of medians."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--seeds", type=int, default=5, help="runs per variant (the median)")
    parser.add_argument("--population", type=int, default=2, help="members")
    parser.add_argument("--intervals", type=int, default=10, help="the budget per member")
    parser.add_argument(
        "--storage",
        default=default_storage_url(),
        help="where the populations are stored, one per variant and seed (a run already there "
        "is read back, not trained again)",
    )
    parser.add_argument("--workers", type=int, default=1, help="synchronous: same result")
    parser.add_argument("--name", default="toy", help="the prefix of the populations' names")
    parser.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=False, help="per run"
    )
    args = parser.parse_args(argv)
    at_least_one(parser, seeds=args.seeds)
    table: dict[str, dict[str, float]] = {}
    for variant in VARIANTS:
        bests, reached = [], []
        for seed in range(args.seeds):
            result = run_variant(
                variant,
                seed,
                args.population,
                args.intervals,
                args.storage,
                workers=args.workers,
                name=args.name,
                progress=args.progress,
            )
            bests.append(result.best.score)
            steps = intervals_to_target(result)
            reached.append(math.inf if steps is None else steps)
        table[variant] = {
            "best Q": statistics.median(bests),
            "intervals to target": statistics.median(reached),
        }
    print(
        f"toy problem: population {args.population}, {args.intervals} intervals of "
        f"{Quadratic.steps} steps, median over {args.seeds} seeds (Q* = 1.2)"
    )
    print(f"{'variant':<14} {'best Q':>8} {f'intervals to Q >= {TARGET}':>24}")
    for variant, row in table.items():
        steps = row["intervals to target"]
        shown = "not reached" if math.isinf(steps) else f"{steps:g}"
        print(f"{variant:<14} {row['best Q']:>8.4f} {shown:>24}")
    first = population_name(args.name, "PBT", args.population, args.intervals, 0)
    print(f"\nLook at one: {command_hint('status', first, args.storage)}")
    return table


if __name__ == "__main__":
    guard(main)
