"""What PBT adds to the Lightning example, against the same training without PBT.

Both sides train ``population`` members of ``examples/lightning_digits.py`` for ``intervals``
epochs each, one member after the other in this process, with the same Trainer options (no
logger, checkpointing, progress bar, summary or sanity check) and one thread:

- PBT: ``pt.run`` of the example's ``train`` (one ``trainer.fit()`` per member with the
  ``PBTCallback``, SQLite storage in a temporary folder, checkpoints, exploits and explores);
- plain: the same modules, each fitted by a plain ``Trainer(max_epochs=intervals)``.

A one-epoch fit first warms up Lightning and the data set for both. Prints both wall times,
their ratio (PBT / plain, one run each) and the difference per interval (the framework's
overhead per interval: reporting, checkpointing, storage, exploit and explore, thread hand-offs).

Run:  python benchmarks/lightning_overhead.py [--population 8] [--intervals 10]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
import lightning_digits as example

import poptune as pt

HPARAMS = {"lr": 0.05, "momentum": 0.5, "weight_decay": 1e-4}  # training time does not vary
TRAINER = {  # what poptune.integrations.lightning.fit uses, minus its callback
    "enable_checkpointing": False,
    "logger": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "num_sanity_val_steps": 0,
    "accelerator": "cpu",
}


def plain(population: int, intervals: int) -> float:
    """Seconds to fit ``population`` modules for ``intervals`` epochs each, without PBT."""
    started = time.perf_counter()
    for member in range(population):
        torch.manual_seed(member)
        train, val = example.loaders()
        trainer = pl.Trainer(max_epochs=intervals, **TRAINER)
        trainer.fit(example.Classifier(**HPARAMS), train_dataloaders=train, val_dataloaders=val)
    return time.perf_counter() - started


def with_pbt(population: int, intervals: int, folder: Path) -> float:
    """Seconds for the example's PBT run, in this process (one worker)."""
    started = time.perf_counter()
    result = pt.run(
        example.train,
        space=example.SPACE,
        metric="val_acc",
        population=population,
        intervals=intervals,
        workers=1,
        exploit=pt.Truncation(0.25),
        explore=pt.Perturb((0.8, 1.2), resample_probability=0.25),
        storage=f"sqlite:///{folder / 'poptune.db'}",
        name="overhead",
        seed=0,
        progress=False,
    )
    elapsed = time.perf_counter() - started
    assert len(result.intervals()) == population * intervals
    return elapsed


def main() -> None:
    """Warm up, run both sides once and print the ratio and the overhead per interval."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--population", type=int, default=8)
    parser.add_argument("--intervals", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    plain(1, 1)  # imports, first Trainer, the data set's cache
    baseline = plain(args.population, args.intervals)
    with tempfile.TemporaryDirectory() as name:
        pbt = with_pbt(args.population, args.intervals, Path(name))
    count = args.population * args.intervals
    print(f"population {args.population} x {args.intervals} intervals (1 epoch each), 1 worker")
    print(f"plain Lightning: {baseline:.2f} s ({baseline / count * 1000:.1f} ms per epoch)")
    print(f"with PBT:        {pbt:.2f} s ({pbt / count * 1000:.1f} ms per interval)")
    print(
        f"ratio PBT / plain: {pbt / baseline:.3f}; overhead per interval: "
        f"{(pbt - baseline) / count * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main()
