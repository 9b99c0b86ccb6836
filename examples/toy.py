"""The PBT paper's toy problem (Jaderberg et al. 2017, figure 2) with poptune.

θ ∈ R² starts at (0.9, 0.9). The objective is Q(θ) = 1.2 − (θ0² + θ1²), but each member follows
the gradient of the surrogate Q̂(θ|h) = 1.2 − (h0·θ0² + h1·θ1²): its hyperparameters h decide
which coordinates it can improve. Four variants train the same population for the same budget:

- PBT: exploit (truncation) and explore (perturb);
- explore only: each ready member perturbs its own h, no copying;
- exploit only: bottom members copy top members, h never changes;
- grid: a fixed grid of h, no exploit and no explore (independent training).

The figure of merit is the population's mean Q at the end and the best Q, as medians over seeds.

Run:  python examples/toy.py [--seeds 5] [--population 4] [--intervals 20]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import poptune as pt
from poptune.testing import Quadratic, quadratic_space


def keep_own(
    member: pt.Candidate, population: Sequence[pt.Candidate], rng: np.random.Generator
) -> pt.Candidate:
    """An exploit that "copies" the member itself, so only explore changes anything."""
    return member


def no_change(hparams: Mapping[str, Any], space: pt.Space, rng: np.random.Generator) -> dict:
    """An explore that keeps the copied hparams unchanged."""
    return dict(hparams)


def grid(population: int) -> list[dict[str, float]]:
    """An evenly spaced grid of (h0, h1) in [0, 1]² with ``population`` points."""
    side = int(np.ceil(np.sqrt(population)))
    values = np.linspace(0.0, 1.0, side)
    points = [{"h0": float(a), "h1": float(b)} for a in values for b in values]
    return points[:population]


VARIANTS: dict[str, dict[str, Any]] = {
    "PBT": {"exploit": pt.Truncation(0.5), "explore": pt.Perturb((0.8, 1.2))},
    "explore only": {"exploit": keep_own, "explore": pt.Perturb((0.8, 1.2))},
    "exploit only": {"exploit": pt.Truncation(0.5), "explore": no_change},
    "grid": {"exploit": None, "grid": True},
}


def run_variant(
    variant: str, seed: int, population: int, intervals: int, storage: str
) -> pt.Result:
    """Train one variant of the toy problem and return its result."""
    options = dict(VARIANTS[variant])
    initial = grid(population) if options.pop("grid", False) else None
    return pt.run(
        Quadratic,
        space=quadratic_space(),
        metric="q",
        mode="max",
        population=population,
        intervals=intervals,
        workers=1,
        name=f"toy-{variant}-{seed}",
        storage=storage,
        seed=seed,
        sync=True,
        progress=False,
        initial=initial,
        **options,
    )


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Run every variant over several seeds and print a table of medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--population", type=int, default=4)
    parser.add_argument("--intervals", type=int, default=20)
    args = parser.parse_args(argv)
    table: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        storage = f"sqlite:///{Path(folder) / 'toy.db'}"
        for variant in VARIANTS:
            means, bests = [], []
            for seed in range(args.seeds):
                result = run_variant(variant, seed, args.population, args.intervals, storage)
                scores = [m.score for m in result.members]
                means.append(statistics.fmean(scores))
                bests.append(max(scores))
            table[variant] = {
                "median mean Q": statistics.median(means),
                "median best Q": statistics.median(bests),
            }
    print(
        f"toy problem: population {args.population}, {args.intervals} intervals, "
        f"{args.seeds} seeds (Q* = 1.2)"
    )
    print(f"{'variant':<14} {'median mean Q':>14} {'median best Q':>14}")
    for variant, row in table.items():
        print(f"{variant:<14} {row['median mean Q']:>14.4f} {row['median best Q']:>14.4f}")
    return table


if __name__ == "__main__":
    main()
