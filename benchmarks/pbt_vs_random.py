"""PBT against random search with the same population, budget and seeds; writes docs/results.md.

Random search is ``exploit=None``: the same members, sampled from the same priors, trained
independently for the same number of intervals. PBT runs in both modes with the same strategies:
synchronously (generations, reproducible with a fixed seed) and asynchronously (poptune's
default). A member's step is the number of intervals of training behind its weights (an exploit
copies the donor's step), so every count below is training, whatever the mode. For each task the
table gives, over the seeds, the median (and range) of the best final metric, the median number
of intervals behind the first weights that reached the target, the median number of intervals
the population trained and the median wall time; it also shows how the winning lineage's
learning rate (or h, on the toy problem) moved, and says under each table, from the medians,
whether PBT won. The toy problem also gets the paper's figure 2 ablation. A last section
compares PB2 (``pt.PB2()``, GP-bandit explore) with PBT and random search at a population of 4
on the toy problem, digits and CartPole.

Run:  python benchmarks/pbt_vs_random.py            # writes docs/results.md (several minutes)
      python benchmarks/pbt_vs_random.py --quick    # 2 seeds, short budgets: a first look
      python benchmarks/pbt_vs_random.py --smoke    # 1 seed, 2 intervals: what CI runs
      python benchmarks/pbt_vs_random.py --pb2-only # only the PB2 section, replaced in place
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import poptune as pt
from poptune.testing import Quadratic, quadratic_space

ROOT = Path(__file__).resolve().parent.parent
EXPLORE = "Perturb((0.8, 1.2), resample_probability=0.25)"


@functools.cache
def _example(name: str) -> Any:
    """Import ``examples/<name>.py`` once (its data caches and class settings then persist)."""
    folder = str(ROOT / "examples")
    if folder not in sys.path:  # as when an example runs as a script: it sees its neighbours
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(
        f"poptune_example_{name}", ROOT / "examples" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = module  # type: ignore[union-attr]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@dataclass(frozen=True)
class Task:
    """One benchmark task: what to train, how long, and what counts as good."""

    name: str
    trainable: Callable[[], type]
    space: Callable[[], dict[str, Any]]
    metric: str
    target: float
    population: int
    intervals: int
    watch: str  # the hyperparameter whose schedule is shown
    seeds: int | None = None  # None: the --seeds option
    # Class attributes of the trainable that set the work inside one interval (the worker
    # processes are forked, so they inherit them): for the full and quick runs, and for --smoke.
    work: Mapping[str, int] = field(default_factory=dict)
    smoke_work: Mapping[str, int] = field(default_factory=dict)
    gradient_steps: int | None = None  # gradient steps per interval, shown when known
    others: tuple[tuple[str, Callable[[], Any]], ...] = ()  # more (synchronous) exploits


TASKS = [
    Task(
        "toy (Q, max 1.2)",
        lambda: Quadratic,
        quadratic_space,
        "q",
        1.19,
        8,
        50,
        "h1",
        seeds=12,
        gradient_steps=Quadratic.steps,
    ),
    Task(
        "digits (accuracy)",
        lambda: _example("digits").Digits,
        lambda: _example("digits").SPACE,
        "accuracy",
        0.965,
        8,
        20,
        "lr",
    ),
    Task(
        "GAN (quality: modes covered x good samples, non-differentiable)",
        lambda: _example("gan").Ring,
        lambda: _example("gan").SPACE,
        "quality",
        0.5,
        6,
        10,
        "generator_lr",
        smoke_work={"updates": 20},
    ),
    Task(
        "translation (corpus BLEU of 200 held-out sentences)",
        lambda: _example("translate").Translator,
        lambda: _example("translate").SPACE,
        "bleu",
        95.0,
        6,
        8,
        "lr",
        smoke_work={"updates": 3, "held_out": 20},
    ),
    Task(
        "cartpole (mean return of the last 10 episodes)",
        lambda: _example("cartpole").CartPole,
        lambda: _example("cartpole").SPACE,
        "return",
        195.0,
        6,
        8,
        "lr",
        work={"steps": 1500},
        smoke_work={"steps": 100},
        others=(
            ("PBT, tournament", pt.Tournament),
            ("PBT, t-test", lambda: pt.TTest(window=4, alpha=0.1)),
        ),
    ),
]

SYNC, ASYNC, RANDOM = "PBT, sync", "PBT, async", "random search"
PB2, PB2_PBT = "PB2", "PBT"
PB2_POPULATION = 4
PB2_TASKS = ("toy", "digits", "cartpole")  # the tasks of the PB2 comparison (name prefixes)
PB2_HEADING = f"## PB2 against PBT and random search, population {PB2_POPULATION}"


def scaled(task: Task, mode: str, seeds: int) -> Task:
    """The task as a mode runs it: ``full`` as defined, ``quick`` shorter, ``smoke`` minimal.

    Smoke keeps every code path (a population that exploits, an interval after an exploit,
    every task and variant) at the least work: 1 seed, 3 members, 2 intervals, small intervals.
    """
    if mode == "smoke":
        return replace(task, seeds=1, population=3, intervals=2, work=task.smoke_work)
    if mode == "quick":
        return replace(task, seeds=2, population=4, intervals=max(4, task.intervals // 4))
    return replace(task, seeds=task.seeds or seeds)


def variants(task: Task) -> list[tuple[str, Callable[[], Any], bool]]:
    """(label, exploit factory, sync) for every row of a task's table."""
    return [
        (SYNC, lambda: pt.Truncation(0.25), True),
        (ASYNC, lambda: pt.Truncation(0.25), False),
        (RANDOM, lambda: None, True),
        *((label, make, True) for label, make in task.others),
    ]


def pb2_variants() -> list[tuple[str, Callable[[], Any], bool, Callable[[], Any]]]:
    """(label, exploit factory, sync, explore factory) for the PB2 comparison: all synchronous
    (reproducible), with the same exploit; only the explore differs."""
    return [
        (PB2, lambda: pt.Truncation(0.25), True, pt.PB2),
        (PB2_PBT, lambda: pt.Truncation(0.25), True, _perturb),
        (RANDOM, lambda: None, True, _perturb),
    ]


def _perturb() -> Any:
    return pt.Perturb((0.8, 1.2), resample_probability=0.25)


def run_once(
    task: Task,
    label: str,
    exploit: Any,
    sync: bool,
    seed: int,
    workers: int,
    storage: str,
    explore: Any = None,
) -> dict[str, Any]:
    """Train one population (explore: ``Perturb((0.8, 1.2), 0.25)`` unless given); return its
    figures."""
    trainable = task.trainable()
    for name, value in task.work.items():
        setattr(trainable, name, value)
    started = time.perf_counter()
    result = pt.run(
        trainable,
        space=task.space(),
        metric=task.metric,
        population=task.population,
        intervals=task.intervals,
        workers=workers,
        exploit=exploit,
        explore=_perturb() if explore is None else explore,
        name=f"{task.name}-{task.population}-{label}-{seed}",
        storage=storage,
        seed=seed,
        sync=sync,
        progress=False,
    )
    wall = time.perf_counter() - started
    intervals = result.intervals()
    reached = sorted(
        (i.finished_at, i.step) for i in intervals if i.score is not None and i.score >= task.target
    )
    schedule = [entry.hparams.get(task.watch) for entry in result.schedule()]
    return {
        "best": result.best.score,
        # The step of an interval is the training behind the weights it produced, so this is
        # the training behind the first weights (in recorded order) that reached the target.
        "steps": reached[0][1] if reached else math.inf,
        "trained": len(intervals),
        "wall": wall,
        "schedule": schedule,
    }


@dataclass(frozen=True)
class Row:
    """One variant's figures over the seeds."""

    label: str
    bests: list[float]
    steps: list[float]  # math.inf where the target was never reached
    trained: list[int]
    walls: list[float]

    @property
    def best(self) -> float:
        return statistics.median(self.bests)

    @property
    def to_target(self) -> float:
        """Median over all seeds; a seed that never reached the target counts as never."""
        return statistics.median(self.steps)

    @property
    def hits(self) -> int:
        return sum(not math.isinf(s) for s in self.steps)


def _steps(value: float, hits: int, seeds: int, scale: int = 1) -> str:
    shown = "not reached" if math.isinf(value) else f"{value * scale:g}"
    return f"{shown} ({hits}/{seeds} seeds)"


def table(task: Task, rows: list[Row]) -> list[str]:
    """The markdown table of a task."""
    seeds = len(rows[0].bests)
    gradient = task.gradient_steps is not None
    header = (
        "| variant | best final (median, range) | steps to target: intervals behind the "
        "weights (median) |"
        + (f" gradient steps to target (× {task.gradient_steps}, median) |" if gradient else "")
        + " intervals trained (median) | wall s (median) |"
    )
    lines = [header, "|---|---|---|" + ("---|" if gradient else "") + "---|---|"]
    for row in rows:
        cells = [
            row.label,
            f"{row.best:.4f} ({min(row.bests):.4f}–{max(row.bests):.4f})",
            _steps(row.to_target, row.hits, seeds),
        ]
        if gradient:
            cells.append(_steps(row.to_target, row.hits, seeds, task.gradient_steps or 1))
        cells += [f"{statistics.median(row.trained):g}", f"{statistics.median(row.walls):.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _compare(mine: float, theirs: float, better: str, worse: str) -> str:
    return better if mine > theirs else worse if mine < theirs else "equal"


def verdict(task: Task, row: Row, baseline: Row, against: str = "random search") -> str:
    """One plain sentence: did this variant beat ``against`` (random search) on the medians
    shown?"""
    unit = "gradient steps" if task.gradient_steps else "intervals"
    scale = task.gradient_steps or 1
    # Compared as printed (4 decimals), so a win is never one the table cannot show.
    best, base_best = round(row.best, 4), round(baseline.best, 4)
    higher = best > base_best
    sooner = row.to_target < baseline.to_target
    score = (
        f"best final {best:.4f} vs {base_best:.4f} ({_compare(best, base_best, 'higher', 'lower')})"
    )
    if math.isinf(row.to_target) and math.isinf(baseline.to_target):
        target = "target not reached by either (median)"
    else:
        shown = [
            "not reached" if math.isinf(v) else f"{v * scale:g}"
            for v in (row.to_target, baseline.to_target)
        ]
        # Fewer steps to target is better: compare negated values.
        order = _compare(-row.to_target, -baseline.to_target, "sooner", "later")
        target = f"{unit} to target {shown[0]} vs {shown[1]} ({order})"
    if higher and sooner:
        outcome = f"beats {against} on both"
    elif higher or sooner:
        won, lost = (
            ("best final", "steps to target") if higher else ("steps to target", "best final")
        )
        outcome = f"beats {against} on {won} only, **not** on {lost}"
    else:
        outcome = f"does **not** beat {against} here"
    return f"- **{row.label}** {outcome}: {score}; {target}."


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def describe_schedule(values: list[Any]) -> str:
    """The schedule at a few points: start, quarters, end."""
    if not values:
        return "—"
    points = sorted({0, len(values) // 4, len(values) // 2, 3 * len(values) // 4, len(values) - 1})
    return " → ".join(f"{values[i]:.3g}" for i in points)


def _reached(steps: float) -> str:
    return "not reached" if steps == float("inf") else f"{steps:g}"


def intro(command: str, tasks: list[Task], workers: int) -> list[str]:
    """What the tables compare and how every column counts."""
    seeds, toy_seeds = tasks[1].seeds or 1, tasks[0].seeds or 1
    return [
        "# PBT against random search",
        "",
        f"Generated by `{command}` with {_count(workers, 'worker')}: {_count(seeds, 'seed')} "
        f"per variant ({toy_seeds} on the toy problem). Within a task every variant trains the "
        "same population for the same number of intervals, from the same seeds (seed s samples "
        "the same starting hyperparameters in every variant).",
        "",
        f"- **PBT, sync**: `Truncation(0.25)` and `{EXPLORE}`, `sync=True`: generations, every "
        "member finishes interval k before any member exploits at k. Reproducible with a fixed "
        "seed, whatever the number of workers.",
        "- **PBT, async**: the same exploit and explore with `sync=False` (poptune's default): a "
        "member exploits as soon as a worker picks it up again, against the scores every member "
        "recorded at its step. Which member trains when depends on the workers' timing, so "
        "these rows can vary a little between runs even with fixed seeds.",
        "- **random search**: the same population with `exploit=None`, trained independently.",
        "- CartPole also compares `Tournament()` and `TTest(window=4, alpha=0.1)` (both "
        "synchronous, same explore).",
        "",
        "**Step accounting.** A member's step is the number of intervals of training behind the "
        "weights it holds: an exploit copies the donor's weights *and* its step, and in both "
        "modes members are compared and copy at equal steps. So no model trains more than the "
        "budget, and every column counts the training behind weights, in both modes (before "
        "this rule, an asynchronous copy kept the copier's own step count, which hid the "
        "donor's training):",
        "",
        "- *best final*: the best score a member holds at the end (median over seeds, range);",
        "- *steps to target*: the intervals of training behind the first weights (in recorded "
        "order) that reached the target. The median is over all seeds, a seed that never "
        'reached the target counting as never, so "not reached" means half the seeds or more '
        "missed it; `k/n` is how many seeds reached it. On the toy problem, *gradient steps* "
        f"are these intervals × {Quadratic.steps} (`Quadratic.steps`);",
        "- *intervals trained*: intervals the whole population trained, at most population × "
        "intervals (a PBT member that copies weights already at the budget stops), so PBT never "
        "gets more compute than random search;",
        "- *wall s*: the median wall time of one run, start-up included (it depends on the "
        "machine and on what else was running on it).",
        "",
        "Under each table, one line per PBT variant says, from the medians shown, whether it "
        "beat random search, and says so plainly where it did not. With "
        f"{_count(seeds, 'seed')} ({toy_seeds} on the toy problem), a difference that stays "
        "inside the ranges is weak evidence either way.",
        "",
    ]


def compare(
    task: Task,
    rows_of: list[tuple[str, Callable[[], Any], bool, Callable[[], Any] | None]],
    workers: int,
    storage: str,
) -> tuple[list[Row], dict[str, str]]:
    """Run every (label, exploit, sync, explore) variant over the task's seeds; return one row
    per variant and the watched schedule of seed 0 for each exploiting variant."""
    rows, schedules = [], {}
    for label, make, sync, explore in rows_of:
        runs = [
            run_once(
                task,
                label,
                make(),
                sync,
                s,
                workers,
                storage,
                explore() if explore is not None else None,
            )
            for s in range(task.seeds or 1)
        ]
        rows.append(
            Row(
                label,
                [r["best"] for r in runs],
                [r["steps"] for r in runs],
                [r["trained"] for r in runs],
                [r["wall"] for r in runs],
            )
        )
        schedules[label] = describe_schedule(runs[0]["schedule"])
        row = rows[-1]
        print(
            f"{task.name} (population {task.population}): {label}: best {row.best:.4f}, to "
            f"target {row.to_target:g} ({row.hits}/{len(runs)}), trained "
            f"{statistics.median(row.trained):g}, steps {row.steps}",
            flush=True,
        )
    return rows, schedules


def pb2_section(tasks: list[Task], command: str, workers: int, storage: str) -> list[str]:
    """The PB2 comparison: PB2, PBT and random search with a population of 4 on each task."""
    chosen = [
        replace(t, population=min(t.population, PB2_POPULATION))
        for t in tasks
        if t.name.startswith(PB2_TASKS)
    ]
    lines = [
        PB2_HEADING,
        "",
        f"Generated by `{command}` with {_count(workers, 'worker')}. The same tasks, budgets "
        f"and seeds as above, with a population of {PB2_POPULATION} (the setting of the PB2 "
        "paper, where a small population is where a model of the improvements should help "
        "most). All three rows are synchronous with the same exploit, `Truncation(0.25)` (the "
        "worst member copies the best); only the explore differs:",
        "",
        "- **PB2**: `pt.PB2()` (window 10 steps, at most 200 intervals fitted): after an "
        "exploit, the new hyperparameters maximise GP-UCB of the predicted improvement over "
        "the next interval, fitted on the population's recent intervals; before 3 usable "
        "intervals exist (the first exploit) it samples from the prior;",
        f"- **PBT**: `{EXPLORE}`, as above;",
        "- **random search**: `exploit=None`.",
        "",
        "Verdicts compare PB2 with PBT and with random search on the medians shown. With this "
        "few seeds and a population of 4, a difference that stays inside the ranges is weak "
        "evidence either way.",
        "",
    ]
    for task in chosen:
        rows, schedules = compare(task, pb2_variants(), workers, storage)
        by_label = {r.label: r for r in rows}
        lines += [
            f"### {task.name}, population {task.population}",
            "",
            f"{task.intervals} intervals, target {task.metric} ≥ {task.target}, "
            f"{_count(task.seeds or 1, 'seed')}.",
            "",
            *table(task, rows),
            "",
            verdict(task, by_label[PB2], by_label[PB2_PBT], "PBT"),
            verdict(task, by_label[PB2], by_label[RANDOM]),
            verdict(task, by_label[PB2_PBT], by_label[RANDOM]),
            "",
            f"The winning lineage's `{task.watch}` over its schedule (seed 0): PB2 "
            f"{schedules[PB2]}; PBT {schedules[PB2_PBT]}.",
            "",
        ]
    return lines


def splice(text: str, section: list[str]) -> str:
    """``text`` with its PB2 section (from its heading to the next ``## `` heading or the end)
    replaced by ``section``, or with ``section`` appended if it has none."""
    lines = text.split("\n")
    if PB2_HEADING not in lines:
        return "\n".join([*lines, *([""] if lines and lines[-1] else []), *section])
    start = lines.index(PB2_HEADING)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "\n".join([*lines[:start], *section, *lines[end:]])


def main() -> None:
    """Run every task and variant over all seeds; write the markdown file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--quick", action="store_true", help="2 seeds, short budgets")
    modes.add_argument(
        "--smoke", action="store_true", help="1 seed, 3 members, 2 short intervals (CI)"
    )
    parser.add_argument(
        "--pb2-only",
        action="store_true",
        help="run only the PB2 comparison and replace its section of --output in place",
    )
    parser.add_argument("--seeds", type=int, default=5, help="seeds per variant (toy: 12)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "results.md")
    args = parser.parse_args()
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    command = "python benchmarks/pbt_vs_random.py" + {"full": "", "quick": " --quick"}.get(
        mode, " --smoke"
    )
    seeds = {"smoke": 1, "quick": 2}.get(mode, args.seeds)
    tasks = [scaled(t, mode, args.seeds) for t in TASKS]
    if args.pb2_only:
        with tempfile.TemporaryDirectory() as folder:
            storage = f"sqlite:///{Path(folder) / 'pb2.db'}"
            section = pb2_section(tasks, command + " --pb2-only", args.workers, storage)
        old = args.output.read_text() if args.output.exists() else ""
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(splice(old, section))
        print(f"wrote the PB2 section of {args.output}")
        return
    lines = intro(command, tasks, args.workers)
    with tempfile.TemporaryDirectory() as folder:
        storage = f"sqlite:///{Path(folder) / 'bench.db'}"
        for task in tasks:
            rows, schedules = compare(
                task, [(*v, None) for v in variants(task)], args.workers, storage
            )
            baseline = next(r for r in rows if r.label == RANDOM)
            lines += [
                f"## {task.name}",
                "",
                f"Population {task.population}, {task.intervals} intervals, target "
                f"{task.metric} ≥ {task.target}, {_count(task.seeds or 1, 'seed')}.",
                "",
                *table(task, rows),
                "",
                *(verdict(task, r, baseline) for r in rows if r.label != RANDOM),
                "",
                f"PBT's winning lineage, `{task.watch}` over its schedule (seed 0): "
                f"sync {schedules[SYNC]}; async {schedules[ASYNC]}.",
                "",
            ]
        lines += ablation(mode, seeds, f"sqlite:///{Path(folder) / 'toy.db'}")
        # its own database: in --smoke every population is 3 members, and names would clash
        lines += pb2_section(tasks, command, args.workers, f"sqlite:///{Path(folder) / 'pb2.db'}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines))
    print(f"wrote {args.output}")


def ablation(mode: str, seeds: int, storage: str) -> list[str]:
    """The toy problem's figure 2 ablation (examples/toy.py), trained afresh in ``storage``
    (the example reads back a run its storage already holds: the default one, in the current
    folder, may hold an older run's)."""
    toy = _example("toy")
    intervals = {"smoke": "2", "quick": "5"}.get(mode, "10")
    ablation = toy.main(["--seeds", str(seeds), "--intervals", intervals, "--storage", storage])
    pbt = ablation["PBT"]
    alone = all(pbt["best Q"] > row["best Q"] for name, row in ablation.items() if name != "PBT")
    return [
        "## Toy problem: the paper's figure 2 ablation",
        "",
        "Two members starting at h = (1, 0) and (0, 1), as in the paper (`examples/toy.py`), "
        f"synchronous, {_count(seeds, 'seed')}.",
        "",
        "| variant | best Q (median) | intervals to Q ≥ 1.1 (median) |",
        "|---|---|---|",
        *(
            f"| {name} | {row['best Q']:.4f} | {_reached(row['intervals to target'])} |"
            for name, row in ablation.items()
        ),
        "",
        (
            "PBT has the highest median best Q of the four variants."
            if alone
            else "PBT does **not** have the highest median best Q of the four variants here."
        ),
        "",
    ]


if __name__ == "__main__":
    main()
