"""Whole populations in one process: a block of stacked members against one member at a time.

The members are policy-sized MLPs (8 -> 64 -> 64 -> 2, tanh) trained with Adam on batches of 32
of a synthetic regression: each member learns the same fixed random teacher network from its
own stream of inputs (drawn from its interval's seed), and its score is the mean squared error
on 1,024 fixed inputs (lower is better). One interval is ``--steps`` Adam steps; PBT tunes the
learning rate (poptune's default Truncation, Perturb and Every(1), asynchronous). For each
population size (``--populations``, default 64 and 256) the same population, task, seeds and
budget are trained twice, each time as a subprocess of this script:

- **one at a time**: a training function per member (``def train(ctx)``, ``torch.optim.Adam``)
  on 2 worker processes, one torch thread each;
- **block**: ``block=64`` in one worker (this subprocess), the members of a block stacked with
  ``poptune.integrations.torch.Stack`` and trained together with ``vmap``, one torch thread.

The one-at-a-time side uses both cores; the block side may use two torch threads
(``--threads 2``) but by default uses one, because two made its block interval slower on the
2-core development machine (580 ms instead of 484 for 100 steps of 64 members, back to back in
one quiet process): the ops of policy-sized members are too small to split, and waking the
second thread costs more than it saves. Both run with ``OMP_WAIT_POLICY=PASSIVE`` (unless it is
set): idle OpenMP threads then sleep instead of spinning, which on a busy machine made 2 torch
threads 10x slower here; it changes nothing for one torch thread.
What is measured, and how:

- wall: ``time.perf_counter()`` around the subprocess, Python's and torch's start-up included;
- CPU: user + system time of the subprocess and every process it started and waited for
  (``resource.getrusage(RUSAGE_CHILDREN)`` here, before and after); throughput is the
  member-intervals recorded per CPU-second;
- framework time: the training function stamps when each (block) interval is handed to it and
  when it reports; the time between a report and the next interval handed over in the same
  process, less the user code run in between (building a model when the worker switches to
  another member or block), is the framework's (save and record the checkpoints, claim, exploit
  and explore, restore). Per member-interval it is that time divided by the members of the
  interval; its share of a block interval is framework / (framework + the function's own time
  for that block interval). The first interval of each process is start-up, not counted here;
- peak memory: each process's own peak RSS (``ru_maxrss``), read by the subprocess at its end
  for itself and for its worker processes (largest, and the sum, which counts shared pages such
  as torch's libraries once per process);
- final scores: every member's latest score at the end, median and interquartile range.

Targets on the 2-core development machine (issue 24): the block side at least 3x faster in
wall time and at least 5x more member-intervals per CPU-second; the framework's share of a
block interval under 10%. Each is printed against its target, met or NOT met; the exit code is
0 whatever they are (nonzero only on errors).

Run:  python benchmarks/vectorized.py [--populations 64,256] [--intervals 20] [--steps 100]
                                      [--block 64] [--threads 1] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

import poptune as pt
from poptune.integrations.torch import Stack, apply_hparams, load_state, save_state

INPUTS, HIDDEN, OUTPUTS = 8, 64, 2
BATCH = 32
EVALUATION = 1024
SPACE = {"lr": pt.LogUniform(1e-4, 3e-2)}
TARGETS = {"wall": 3.0, "throughput": 5.0, "share": 0.10}
# (populations, intervals, steps, block) of the full run and of --smoke.
DEFAULT = ("64,256", 20, 100, 64)
SMOKE = ("8", 2, 5, 4)
_TIMINGS = "POPTUNE_BENCH_TIMINGS"  # the folder each process appends its timings to
_THREADS = "POPTUNE_BENCH_THREADS"  # the block side's torch threads


# --- the task --------------------------------------------------------------------------------


def build() -> nn.Module:
    """One member: the policy-sized MLP."""
    return nn.Sequential(
        nn.Linear(INPUTS, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, HIDDEN), nn.Tanh(),
        nn.Linear(HIDDEN, OUTPUTS),
    )  # fmt: skip


def init_seed(base: int, member: int) -> int:
    """Member ``member``'s initial weights, the same on both sides."""
    return base * 100_003 + member


@cache
def teacher() -> nn.Module:
    """The fixed function every member learns."""
    torch.manual_seed(12345)  # built once per process, before any member: its own weights
    model = nn.Sequential(nn.Linear(INPUTS, 32), nn.Tanh(), nn.Linear(32, OUTPUTS))
    return model.requires_grad_(False)


def batches(seed: int, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An interval's inputs and targets for one member: ``(steps, BATCH, INPUTS)`` and
    ``(steps, BATCH, OUTPUTS)``, drawn from the interval's seed."""
    x = torch.randn(steps, BATCH, INPUTS, generator=torch.Generator().manual_seed(seed))
    return x, teacher()(x)


@cache
def evaluation() -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed inputs every member is scored on, and their targets."""
    x = torch.randn(EVALUATION, INPUTS, generator=torch.Generator().manual_seed(7))
    return x, teacher()(x)


# --- the timings each process records ---------------------------------------------------------


class Clock:
    """This process's stamps: the framework's time between a report and the next interval
    handed to a training function, and the user code's time per interval."""

    def __init__(self) -> None:
        self.reported_at: float | None = None
        self.user_between = 0.0  # user code since the last report (a model built)
        self.started = 0.0

    def handed(self) -> float:
        """An interval (or block interval) was handed over: return the framework's gap."""
        self.started = time.perf_counter()
        if self.reported_at is None:
            return float("nan")  # the process's first interval: start-up
        return self.started - self.reported_at - self.user_between

    def built(self, seconds: float) -> None:
        """User code ran outside an interval (a new call built its models)."""
        self.user_between += seconds

    def reporting(self, gap: float, members: int) -> None:
        """Append (gap, the interval's user time, its members) to this process's file, then
        stamp the report (the write is in neither figure)."""
        user = time.perf_counter() - self.started
        folder = os.environ.get(_TIMINGS)
        if folder:
            with open(Path(folder, f"{os.getpid()}.txt"), "a") as file:
                file.write(f"{gap!r} {user!r} {members}\n")
        self.user_between = 0.0
        self.reported_at = time.perf_counter()


CLOCK = Clock()


# --- the two sides' training functions --------------------------------------------------------


def train_one(ctx: Any) -> None:
    """One member at a time, as one would write it with torch.optim (one torch thread)."""
    started = time.perf_counter()
    torch.set_num_threads(1)
    steps, base = int(ctx.hparams["steps"]), int(ctx.hparams["init"])
    torch.manual_seed(init_seed(base, ctx.member))
    model = build()
    optimizer = torch.optim.Adam(model.parameters(), lr=ctx.hparams["lr"])
    x_val, y_val = evaluation()
    CLOCK.built(time.perf_counter() - started)
    for interval in ctx.intervals():
        gap = CLOCK.handed()
        if interval.state is not None:
            load_state(interval.state, model, optimizer)
        apply_hparams(optimizer, interval.hparams, names=("lr",))
        x, y = batches(interval.seed, steps)
        for step in range(steps):
            loss = nn.functional.mse_loss(model(x[step]), y[step])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            mse = float(nn.functional.mse_loss(model(x_val), y_val))
        state = save_state(model, optimizer)
        CLOCK.reporting(gap, 1)
        interval.report({"mse": mse}, state=state)


def train_block(ctx: Any) -> None:
    """A block of members stacked and trained together (one torch thread, see --threads)."""
    started = time.perf_counter()
    torch.set_num_threads(int(os.environ.get(_THREADS, "1")))
    first = ctx.hparams[0]
    steps, base = int(first["steps"]), int(first["init"])
    size = len(ctx.members)
    stack = Stack(
        build,
        seeds=[init_seed(base, member) for member in ctx.members],
        optimizer="adam",
        lr=[h["lr"] for h in ctx.hparams],
    )
    x_val, y_val = evaluation()
    CLOCK.built(time.perf_counter() - started)
    for block in ctx.intervals():
        gap = CLOCK.handed()
        for i, interval in enumerate(block):
            if interval.state is not None:
                stack.load(i, interval.state)
        stack.set_hparams(lr=[interval.hparams["lr"] for interval in block])
        drawn = [batches(interval.seed, steps) for interval in block]
        x = torch.stack([x for x, _ in drawn], dim=1)  # (steps, members, BATCH, INPUTS)
        y = torch.stack([y for _, y in drawn], dim=1)
        for step in range(steps):
            losses = ((stack(x[step]) - y[step]) ** 2).mean(dim=(1, 2))  # each member's mse
            stack.zero_grad()
            losses.sum().backward()
            stack.step()
        with torch.no_grad():
            mse = ((stack(x_val, in_dims=None) - y_val) ** 2).mean(dim=(1, 2))
        states = [stack.state(i) for i in range(size)]
        CLOCK.reporting(gap, size)
        block.report([{"mse": float(m)} for m in mse], states=states)


# --- one side, in its own process ---------------------------------------------------------------


def run_side(side: str, population: int, intervals: int, steps: int, block: int, seed: int) -> None:
    """Train the population on one side and print what it measured as one JSON line."""
    with tempfile.TemporaryDirectory(prefix=f"poptune-vectorized-{side}-") as name:
        print(json.dumps(_train_side(Path(name), side, population, intervals, steps, block, seed)))


def _train_side(
    folder: Path, side: str, population: int, intervals: int, steps: int, block: int, seed: int
) -> dict[str, Any]:
    """Train the population in ``folder`` (its storage, checkpoints and timings); its figures."""
    timings = folder / "timings"
    timings.mkdir()
    os.environ[_TIMINGS] = str(timings)
    space = {**SPACE, "steps": steps, "init": seed}
    options: dict[str, Any] = (
        {"workers": 2} if side == "one" else {"workers": 1, "block": min(block, population)}
    )
    result = pt.run(
        train_one if side == "one" else train_block,
        space=space,
        metric="mse",
        mode="min",
        population=population,
        intervals=intervals,
        storage=f"sqlite:///{folder / 'population.db'}",
        checkpoints=folder / "checkpoints",
        name=f"vectorized-{side}",
        seed=seed,
        progress=False,
        **options,
    )
    rows = [
        [float(value) for value in line.split()]
        for path in timings.glob("*.txt")
        for line in path.read_text().splitlines()
    ]
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    figures = {
        "intervals": len(result.intervals()),
        "exploits": len(result.exploits()),
        "status": result.status,
        "scores": [m.score for m in result.members if m.score is not None],
        "timings": rows,  # (gap seconds, user seconds, members) per (block) interval
        "rss_self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "rss_workers": workers if side == "one" else 0,
        "processes": 1 + len(list(timings.glob("*.txt"))) if side == "one" else 1,
    }
    result.storage.close()
    return figures


# --- the comparison -------------------------------------------------------------------------------


@dataclass
class Side:
    """One side's figures."""

    wall: float
    cpu: float
    data: dict[str, Any]

    @property
    def throughput(self) -> float:
        return self.data["intervals"] / self.cpu

    def gaps(self) -> list[tuple[float, float, int]]:
        """(framework seconds, user seconds, members) of every interval after a process's
        first."""
        return [(g, u, int(m)) for g, u, m in self.data["timings"] if g == g]  # not NaN

    def framework_per_member_interval(self) -> float:
        rows = self.gaps()
        return sum(g for g, _, _ in rows) / max(1, sum(m for _, _, m in rows))

    def share(self) -> float:
        """The framework's share of an interval of the function, median."""
        return statistics.median(g / (g + u) for g, u, _ in self.gaps())

    def scores(self) -> tuple[float, float, float]:
        """The final scores' (first quartile, median, third quartile)."""
        return quartiles(self.data["scores"])

    def rss_max(self) -> float:
        return max(self.data["rss_self"], self.data["rss_workers"])

    def rss_sum(self) -> float:
        # The one-at-a-time side: the parent and its 2 workers (each as large as the largest at
        # most); the block side is one process.
        workers = self.data["processes"] - 1
        return self.data["rss_self"] + workers * self.data["rss_workers"]


def measure(side: str, population: int, args: argparse.Namespace) -> Side:
    """Run one side as a subprocess; its wall, its CPU (children included) and its report."""
    command = [
        sys.executable,
        __file__,
        "--side",
        side,
        "--population",
        str(population),
        "--intervals",
        str(args.intervals),
        "--steps",
        str(args.steps),
        "--block",
        str(args.block),
        "--seed",
        str(args.seed),
        "--threads",
        str(args.threads),
    ]
    label = "one member at a time" if side == "one" else f"block={args.block}"
    print(f"population {population}, {label}...", end=" ", flush=True)
    # Idle OpenMP threads sleep instead of spinning: a spinning torch thread burns a core that
    # another thread (the worker's own, or another process) needs, and on a busy machine 2
    # spinning threads made the stacked step 10x slower here. One torch thread (the
    # one-at-a-time side) starts no OpenMP threads, so this changes nothing for it.
    environment = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    run = subprocess.run(command, capture_output=True, text=True, env=environment)
    wall = time.perf_counter() - started
    print(f"{wall:.1f} s", flush=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if run.returncode != 0:
        sys.exit(f"error: the {side!r} side failed (exit {run.returncode}):\n{run.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Side(wall, cpu, json.loads(run.stdout.strip().splitlines()[-1]))


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """(first quartile, median, third quartile)."""
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, median, q3


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def compare(population: int, block: int, one: Side, stacked: Side) -> dict[str, float]:
    """Print one population's table and its figures against the targets; return the ratios."""
    figures: list[tuple[str, Any]] = [
        ("wall, start-up included (s)", lambda s: f"{s.wall:.1f}"),
        ("CPU, every process (s)", lambda s: f"{s.cpu:.1f}"),
        ("member-intervals recorded", lambda s: str(s.data["intervals"])),
        ("member-intervals per CPU-second", lambda s: f"{s.throughput:.2f}"),
        (
            "framework time per member-interval (ms)",
            lambda s: f"{1000 * s.framework_per_member_interval():.2f}",
        ),
        (
            "framework time per interval of the function, median (ms)",
            lambda s: f"{1000 * statistics.median(g for g, _, _ in s.gaps()):.1f}",
        ),
        (
            "the function's own time per interval, median (ms)",
            lambda s: f"{1000 * statistics.median(u for _, u, _ in s.gaps()):.1f}",
        ),
        (
            "framework share of an interval of the function, median",
            lambda s: f"{100 * s.share():.1f}%",
        ),
        ("peak RSS, largest process (MB)", lambda s: f"{s.rss_max() / 1e6:.0f}"),
        ("peak RSS, sum over processes (MB)", lambda s: f"{s.rss_sum() / 1e6:.0f}"),
        ("processes", lambda s: str(s.data["processes"])),
        ("exploits", lambda s: str(s.data["exploits"])),
        ("final mse: median [IQR]", lambda s: "{1:.3g} [{0:.3g} to {2:.3g}]".format(*s.scores())),
    ]
    rows = [(title, show(one), show(stacked)) for title, show in figures]
    size = min(block, population)
    header = (f"population {population}", "one at a time", f"block of {size}")
    # Each column is as wide as its widest cell plus two spaces, so cells never run together.
    width = [max(len(row[k]) for row in [header, *rows]) + 2 for k in range(3)]
    print()
    for title, a, b in [header, *rows]:
        print(f"{title:<{width[0]}}{a:>{width[1]}}{b:>{width[2]}}")
    wall = one.wall / stacked.wall
    throughput = stacked.throughput / one.throughput
    share = stacked.share()
    (q1a, ma, q3a), (q1b, mb, q3b) = one.scores(), stacked.scores()
    equal = q1a <= mb <= q3a and q1b <= ma <= q3b
    print(
        f"wall ratio (one at a time / block): {wall:.2f}x "
        f"(target >= 3x: {verdict(wall >= TARGETS['wall'])})"
    )
    print(
        f"member-intervals per CPU-second (block / one at a time): {throughput:.2f}x "
        f"(target >= 5x: {verdict(throughput >= TARGETS['throughput'])})"
    )
    print(
        f"framework share of a block interval (claim, exploit, restore, save and record "
        f"{size} states): {100 * share:.1f}% (target < 10%: {verdict(share < TARGETS['share'])})"
    )
    print(
        f"final scores: medians {ma:.4g} and {mb:.4g}, each inside the other's IQR: "
        + ("yes, equal within noise" if equal else "NO, the distributions differ")
    )
    return {"wall": wall, "throughput": throughput, "share": share}


def main(argv: Sequence[str] | None = None) -> int:
    """Run both sides for every population size and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--populations", default=None, help=f"default {DEFAULT[0]}")
    parser.add_argument("--intervals", type=int, default=None, help=f"default {DEFAULT[1]}")
    parser.add_argument(
        "--steps", type=int, default=None, help=f"Adam steps per interval (default {DEFAULT[2]})"
    )
    parser.add_argument("--block", type=int, default=None, help=f"default {DEFAULT[3]}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the block side")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"a seconds-long check: population {SMOKE[0]}, {SMOKE[1]} intervals of {SMOKE[2]} "
        f"steps, block {SMOKE[3]}",
    )
    parser.add_argument("--side", choices=("one", "block"), help=argparse.SUPPRESS)
    parser.add_argument("--population", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    populations, intervals, steps, block = SMOKE if args.smoke else DEFAULT
    args.intervals = args.intervals if args.intervals is not None else intervals
    args.steps = args.steps if args.steps is not None else steps
    args.block = args.block if args.block is not None else block
    if args.side:
        os.environ[_THREADS] = str(args.threads)
        run_side(args.side, args.population, args.intervals, args.steps, args.block, args.seed)
        return 0
    try:
        sizes = [int(n) for n in (args.populations or populations).split(",")]
    except ValueError:
        parser.error(f"--populations takes sizes separated by commas; got {args.populations!r}")
    if min(sizes) < 2 or args.intervals < 1 or args.steps < 1 or args.block < 1:
        parser.error("need populations >= 2, --intervals >= 1, --steps >= 1, --block >= 1")
    print(
        f"MLP {INPUTS}-{HIDDEN}-{HIDDEN}-{OUTPUTS} (tanh), Adam, batch {BATCH}; "
        f"{args.intervals} intervals of {args.steps} steps; PBT on lr, asynchronous. One at a "
        f"time: 2 worker processes, 1 torch thread each. Block: block={args.block} in 1 worker, "
        f"{args.threads} torch threads. OMP_WAIT_POLICY="
        f"{os.environ.get('OMP_WAIT_POLICY', 'PASSIVE')}."
    )
    print(
        f"poptune from {Path(pt.__file__).parent}; torch {torch.__version__}; {os.cpu_count()} "
        f"CPUs, load average {os.getloadavg()[0]:.2f} (1 min) at the start",
        flush=True,
    )
    results = {}
    for population in sizes:
        one = measure("one", population, args)
        stacked = measure("block", population, args)
        results[population] = compare(population, args.block, one, stacked)
    print(
        f"\nload average {os.getloadavg()[0]:.2f} (1 min) at the end: other work skews both sides"
    )
    missed = [
        f"{name} at {population}"
        for population, figures in results.items()
        for name, met in (
            ("wall", figures["wall"] >= TARGETS["wall"]),
            ("throughput", figures["throughput"] >= TARGETS["throughput"]),
            ("framework share", figures["share"] < TARGETS["share"]),
        )
        if not met
    ]
    print("targets: " + ("all met" if not missed else "NOT met: " + ", ".join(missed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
