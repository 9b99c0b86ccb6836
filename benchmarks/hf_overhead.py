"""What PBT adds to Hugging Face Trainer training: the example's work with and without poptune.

Both arms train the same members of ``examples/hf_text.py`` (the same tiny BERT, data and
TrainingArguments, ``eval_steps`` optimizer steps and one evaluation per interval) in this
process, one after the other, with one torch thread:

- **plain**: for each member, one ``Trainer.train()`` of ``intervals x eval_steps`` steps with
  the member's initial hyperparameters, no poptune;
- **PBT**: ``pt_hf.run`` with one in-process worker (exploit and explore on), so the time also
  holds the storage, the checkpoints (model + AdamW moments per interval), the state handed
  to the worker, exploits and the schedule rebuilt at each interval.

It prints both wall times, their ratio, and the overhead per interval: (PBT - plain) divided
by the number of intervals trained. A short warm-up training runs first, so that neither arm
pays for the first Trainer. One run; the machine's other load shows in the figures.

Run:  python benchmarks/hf_overhead.py [--population 4] [--intervals 8]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from poptune.integrations import transformers as pt_hf
from poptune.space import Space

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "hf_text.py"


def _example() -> Any:
    if str(EXAMPLE.parent) not in sys.path:  # as when it runs as a script: it sees _cli.py
        sys.path.insert(0, str(EXAMPLE.parent))
    spec = importlib.util.spec_from_file_location("hf_text_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def plain(example: Any, population: int, intervals: int, seed: int) -> float:
    """Seconds to train every member without poptune, with hparams drawn from the space."""
    space = Space(example.SPACE)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for member in range(population):
        hparams = space.sample(rng)
        trainer = example.build_trainer(hparams, seed + member)
        trainer.args.max_steps = intervals * hparams["eval_steps"]
        trainer.train()
    return time.perf_counter() - start


def pbt(example: Any, population: int, intervals: int, seed: int, folder: str) -> float:
    """Seconds to train the same population with PBT, one in-process worker."""
    start = time.perf_counter()
    result = pt_hf.run(
        example.build_trainer,
        space=example.SPACE,
        metric="eval_accuracy",
        population=population,
        intervals=intervals,
        workers=1,
        storage=f"sqlite:///{folder}/hf.db",
        seed=seed,
        progress=False,
    )
    elapsed = time.perf_counter() - start
    assert len(result.intervals()) == population * intervals
    return elapsed


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Run both arms once and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--population", type=int, default=4)
    parser.add_argument("--intervals", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    example = _example()
    # Warm up (first Trainer, first forward and backward, lazy imports) before either arm.
    warm = example.build_trainer(Space(example.SPACE).sample(np.random.default_rng(0)), 0)
    warm.args.max_steps = warm.args.eval_steps
    warm.train()
    without = plain(example, args.population, args.intervals, args.seed)
    with tempfile.TemporaryDirectory() as folder:
        with_pbt = pbt(example, args.population, args.intervals, args.seed, folder)
    count = args.population * args.intervals
    figures = {
        "plain_seconds": without,
        "pbt_seconds": with_pbt,
        "ratio": with_pbt / without,
        "overhead_ms_per_interval": 1000 * (with_pbt - without) / count,
    }
    steps = Space(example.SPACE).fixed["eval_steps"]
    print(f"{args.population} members x {args.intervals} intervals x {steps} steps")
    print(f"plain Trainer: {without:.2f} s   with PBT: {with_pbt:.2f} s")
    print(
        f"ratio {figures['ratio']:.3f}; overhead "
        f"{figures['overhead_ms_per_interval']:.1f} ms per interval"
    )
    return figures


if __name__ == "__main__":
    main()
