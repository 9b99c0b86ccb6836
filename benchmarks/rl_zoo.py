"""PBT on Stable-Baselines3 agents against rl-zoo's tuned hyperparameters and random search.

Three tasks (PPO on CartPole-v1 and Acrobot-v1, PPO on Pendulum-v1), three variants each, at
the same environment steps per member:

- **rl-zoo**: rl-zoo's tuned hyperparameters for that environment, read from the installed
  ``rl_zoo3`` package's ``hyperparams/ppo.yml`` (not copied by hand), trained alone; its
  ``lin_`` schedules run over this benchmark's budget;
- **random search**: 8 members sampled from a broad prior (``examples/sb3_ppo.py``'s
  ``SPACE``: learning rate, entropy coefficient, clip range, discount, GAE lambda, epochs,
  value coefficient, gradient clipping), trained independently;
- **PBT**: the same prior and population, ``Truncation(0.25)`` and ``Perturb((0.8, 1.2),
  resample_probability=0.25)``, synchronous.

What is not tuned comes from rl-zoo's entry in every variant: the rollout's shape
(``n_envs``, ``n_steps``, ``batch_size``), ``VecNormalize`` (Acrobot) and gSDE (Pendulum).
Every member is scored after each interval on 5 evaluation episodes; at the end each variant's
best member (by its last score) plays 20 held-out episodes on seeds no evaluation used. The
table gives medians over seeds of that held-out return, of the timesteps behind the first
weights that reached the solved threshold (Gymnasium's ``reward_threshold``: 475 on CartPole,
-100 on Acrobot; Pendulum has none, -200 is used), and of the wall time of a variant's run,
on one core (``workers=1``, one torch thread). It also measures what PBT costs besides
training: evaluation, and reporting plus exploit (the worker's bookkeeping, loading a donor's
state, applying hyperparameters), as shares of the members' wall time.

Run:  python benchmarks/rl_zoo.py                # 3 seeds; writes its section of docs/results.md
      python benchmarks/rl_zoo.py --seeds 5      # as many seeds as you can afford
      python benchmarks/rl_zoo.py --smoke        # seconds: every task and variant, tiny (CI)
      python benchmarks/rl_zoo.py --overhead-only  # ~1 min: CartPole's PBT run, its costs only
"""

from __future__ import annotations

import argparse
import importlib.resources
import importlib.util
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

import poptune as pt
from poptune.integrations import sb3 as pt_sb3
from poptune.trainable import seed_globals

ROOT = Path(__file__).resolve().parent.parent
HEADING = "## Reinforcement learning with Stable-Baselines3 (against rl-zoo)"
ZOO, RANDOM, PBT = "rl-zoo (tuned)", "random search", "PBT"
HELD_OUT_SEED = 1_000_003  # held-out episodes' seeds start here: no interval's seed is this big


def _example(name: str) -> Any:
    folder = str(ROOT / "examples")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(
        f"rl_zoo_{name}", ROOT / "examples" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = module  # type: ignore[union-attr]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


PRIOR: dict[str, Any] = dict(_example("sb3_ppo").SPACE)


@dataclass(frozen=True)
class Task:
    """One environment: rl-zoo's PPO entry for it, the budget and the solved threshold."""

    env_id: str
    threshold: float
    interval_timesteps: int
    intervals: int
    seeds: int = 3
    population: int = 8
    eval_episodes: int = 5
    held_out_episodes: int = 20
    n_steps: int | None = None  # None: rl-zoo's (the smoke run shortens rollouts)

    @property
    def timesteps(self) -> int:
        """Environment steps per member."""
        return self.interval_timesteps * self.intervals


TASKS = (
    Task("CartPole-v1", 475.0, interval_timesteps=10_240, intervals=4),
    Task("Acrobot-v1", -100.0, interval_timesteps=4096, intervals=8),
    Task("Pendulum-v1", -200.0, interval_timesteps=4096, intervals=8),
)


def zoo(env_id: str) -> dict[str, Any]:
    """rl-zoo's PPO hyperparameters for ``env_id``, from the installed package's YAML."""
    text = importlib.resources.files("rl_zoo3").joinpath("hyperparams", "ppo.yml").read_text()
    entry = yaml.safe_load(text)[env_id]
    return dict(entry)


def _schedule(value: Any) -> Any:
    """rl-zoo's ``lin_<x>``: x times the progress remaining (1 at the start, 0 at the end)."""
    if isinstance(value, str) and value.startswith("lin_"):
        start = float(value[4:])
        return lambda progress: progress * start
    return value


# --- one member ----------------------------------------------------------------------------

FINAL: dict[tuple[str, int], PPO] = {}  # (run name, member) -> the agent when it finished
TIMINGS: dict[str, list[dict[str, float]]] = {}  # run name -> per member: timings and wall


def _envs(task: Task, config: Mapping[str, Any], n_envs: int, seed: int, train: bool) -> VecEnv:
    env: VecEnv = make_vec_env(task.env_id, n_envs=n_envs, seed=seed)
    normalize = config.get("normalize", False)
    if normalize:
        options = normalize if isinstance(normalize, dict) else {}
        env = (
            VecNormalize(env, **options)
            if train
            else VecNormalize(env, training=False, norm_reward=False)
        )
    return env


def build(task: Task, hparams: Mapping[str, Any], seed: int) -> PPO:
    """A PPO agent: rl-zoo's entry, with the tuned names (if any) from ``hparams``."""
    config = zoo(task.env_id)
    settings = {
        k: _schedule(v)
        for k, v in config.items()
        if k not in ("n_envs", "n_timesteps", "policy", "normalize")
    }
    if task.n_steps is not None:
        settings["n_steps"] = task.n_steps
        settings["batch_size"] = min(
            settings.get("batch_size", 64), task.n_steps * config["n_envs"]
        )
    settings.update({name: hparams[name] for name in PRIOR if name in hparams})
    env = _envs(task, config, config["n_envs"], seed, train=True)
    return PPO(config["policy"], env, seed=seed, device="cpu", **settings)


def member(ctx: Any) -> None:
    """One member of any variant: rl-zoo's agent with the member's tuned hyperparameters."""
    torch.set_num_threads(1)
    h = ctx.hparams
    task = TASK_BY_ID[h["task"]]
    begun = time.perf_counter()
    model = build(task, h, ctx.seed)
    started = time.perf_counter()
    # the id: one copy per evaluation episode, normalized like the training env (Acrobot)
    callback = pt_sb3.learn(
        ctx,
        model,
        task.interval_timesteps,
        eval_env=task.env_id,
        eval_episodes=task.eval_episodes,
        total_timesteps=task.timesteps,
        static=["task", "run"],
    )
    wall = time.perf_counter() - started
    t = callback.timings
    # with one worker, members take turns: "report" also holds the others' turns, so training
    # is what remains of model.learn's time
    training = wall - t["evaluate"] - t["report"] - t["apply"]
    TIMINGS.setdefault(h["run"], []).append(
        {"setup": started - begun, "training": training, "evaluate": t["evaluate"]}
    )
    if callback.finished:  # not a member evicted before its end
        FINAL[(h["run"], ctx.member)] = model


TASK_BY_ID: dict[str, Task] = {}


@dataclass
class _SoloInterval:
    """An interval of a lone agent: what PBTCallback reads, and its report kept."""

    hparams: dict[str, Any]
    seed: int
    step: int
    scores: list[tuple[int, float]]
    state: Any = None

    def report(self, metrics: Mapping[str, float], state: Any = None) -> None:
        self.scores.append((self.step, float(metrics["mean_reward"])))


class _Solo:
    """The context of one agent trained alone (rl-zoo's settings, no population): the same
    intervals, evaluations and seeds per interval as a member, without a worker."""

    def __init__(self, hparams: dict[str, Any], seed: int, intervals: int) -> None:
        self.hparams, self.seed, self.member = hparams, seed, 0
        self.count = intervals
        self.scores: list[tuple[int, float]] = []

    def intervals(self) -> Iterator[_SoloInterval]:
        for step in range(1, self.count + 1):
            seed = self.seed * 100_003 + step
            seed_globals(seed)  # as a worker does before each interval
            yield _SoloInterval(dict(self.hparams), seed, step, self.scores)


def held_out(task: Task, model: PPO, seed: int) -> float:
    """Mean return of ``model`` over the task's held-out episodes (seeds no interval used)."""
    config = zoo(task.env_id)
    env = _envs(task, config, 1, HELD_OUT_SEED + seed, train=False)
    training = model.get_vec_normalize_env()
    if training is not None:
        evaluating = env
        assert isinstance(evaluating, VecNormalize)
        evaluating.obs_rms = training.obs_rms.copy()
    rewards, _ = evaluate_policy(
        model, env, n_eval_episodes=task.held_out_episodes, return_episode_rewards=True
    )
    return float(np.mean(rewards))


# --- one variant, one seed -----------------------------------------------------------------


@dataclass
class Outcome:
    """What one run of a variant gave."""

    held_out: float
    to_threshold: int | None  # timesteps behind the first weights at the threshold
    wall: float
    evaluate_share: float  # of the run's wall time
    pbt_share: float  # the rest besides set-up, training, evaluation: report, exploit, apply


def _shares(name: str, wall: float) -> tuple[float, float]:
    """Evaluation's share of a run's wall time, and what is left besides the members' set-up
    (building agents and environments), training and evaluation: reporting, the worker's
    records and checkpoints, exploit and explore, loading states, thread hand-offs."""
    members = TIMINGS[name]
    evaluate = sum(m["evaluate"] for m in members)
    rest = wall - sum(m["setup"] + m["training"] for m in members) - evaluate
    return evaluate / wall, rest / wall


def run_alone(task: Task, seed: int) -> Outcome:
    """rl-zoo's agent, trained alone for the same budget, scored the same way."""
    name = f"{task.env_id}-zoo-{seed}".lower()
    started = time.perf_counter()
    solo = _Solo({"task": task.env_id, "run": name}, seed, task.intervals)
    member(solo)
    wall = time.perf_counter() - started
    reached = [
        step * task.interval_timesteps for step, score in solo.scores if score >= task.threshold
    ]
    evaluate_share, rest = _shares(name, wall)
    return Outcome(
        held_out=held_out(task, FINAL[(name, 0)], seed),
        to_threshold=min(reached) if reached else None,
        wall=wall,
        evaluate_share=evaluate_share,
        pbt_share=rest,
    )


def run_variant(task: Task, variant: str, seed: int, storage: str) -> Outcome:
    """Random search or PBT, population 8, in one process."""
    if variant == ZOO:
        return run_alone(task, seed)
    name = f"{task.env_id}-{variant.split()[0]}-{seed}".lower()
    space: dict[str, Any] = {"task": task.env_id, "run": name, **PRIOR}
    options: dict[str, Any] = {"population": task.population, "exploit": None}
    if variant == PBT:
        options.update(
            exploit=pt.Truncation(0.25),
            explore=pt.Perturb((0.8, 1.2), resample_probability=0.25),
        )
    started = time.perf_counter()
    result = pt.run(
        member,
        space=space,
        metric="mean_reward",
        intervals=task.intervals,
        workers=1,
        sync=True,
        seed=seed,
        storage=storage,
        name=name,
        progress=False,
        resident=options["population"],
        **options,
    )
    wall = time.perf_counter() - started
    last: dict[int, tuple[int, float]] = {}
    reached: list[int] = []
    for interval in result.intervals():
        if interval.score is None:
            continue
        if interval.step >= last.get(interval.member, (0, 0.0))[0]:
            last[interval.member] = (interval.step, interval.score)
        if interval.score >= task.threshold:
            reached.append(interval.step * task.interval_timesteps)
    best = max(last, key=lambda m: (last[m][0], last[m][1]))
    score = held_out(task, FINAL[(name, best)], seed)
    evaluate_share, rest = _shares(name, wall)
    return Outcome(
        held_out=score,
        to_threshold=min(reached) if reached else None,
        wall=wall,
        evaluate_share=evaluate_share,
        pbt_share=rest,
    )


# --- the report ----------------------------------------------------------------------------


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def _steps(outcomes: list[Outcome]) -> str:
    reached = [o.to_threshold for o in outcomes if o.to_threshold is not None]
    n = len(outcomes)
    # a seed that never reached it counts as never: the median is "not reached" if half missed
    median = statistics.median_high(
        [float(o.to_threshold) if o.to_threshold is not None else float("inf") for o in outcomes]
    )
    shown = "not reached" if median == float("inf") else f"{int(median):,}"
    return f"{shown} ({len(reached)}/{n})"


def section(
    tasks: list[Task], results: dict[str, dict[str, list[Outcome]]], command: str
) -> list[str]:
    seeds = tasks[0].seeds
    lines = [
        HEADING,
        "",
        f"Generated by `{command}` on one core (`workers=1`, one torch thread): "
        f"{seeds} seed{'s' if seeds != 1 else ''} per variant"
        + (
            ", fewer than the 5 the comparison asks for, to fit the compute at hand"
            if seeds < 5
            else ""
        )
        + ". PPO in all three tasks; the budgets are far below rl-zoo's own "
        "(CartPole 1e5, Acrobot 1e6, Pendulum 1e5 steps), so these are results at a small budget.",
        "",
        "- **rl-zoo (tuned)**: rl-zoo's hyperparameters for the environment, read from the "
        "installed `rl_zoo3` package (`hyperparams/ppo.yml`), one agent; its `lin_` schedules "
        "run over this budget.",
        "- **random search**: 8 agents from a broad prior (`examples/sb3_ppo.py`'s `SPACE`), "
        "trained independently.",
        "- **PBT**: the same prior and population, `Truncation(0.25)`, "
        "`Perturb((0.8, 1.2), resample_probability=0.25)`, synchronous.",
        "- Not tuned, from rl-zoo's entry in every variant: `n_envs`, `n_steps`, `batch_size`, "
        "`VecNormalize` (Acrobot), gSDE (Pendulum).",
        "- *held-out return*: the variant's best agent by its last 5-episode evaluation, on 20 "
        "episodes with unused seeds; median (range) over seeds. *steps to threshold*: timesteps "
        "behind the first weights whose 5-episode evaluation reached it (median over seeds, a "
        "miss counting as never; k/n seeds reached it). *wall s*: one variant's run (rl-zoo "
        "trains one agent, the others eight), median over seeds; it depends on the machine and on "
        "what else ran on it.",
        "",
    ]
    for task in tasks:
        rows = results[task.env_id]
        lines += [
            f"### {task.env_id} (PPO; {task.timesteps:,} steps per member, {task.intervals} "
            f"intervals of {task.interval_timesteps:,}; threshold {task.threshold:g})",
            "",
            "| variant | held-out return | steps to threshold | wall s |",
            "|---|---|---|---|",
        ]
        for variant in (ZOO, RANDOM, PBT):
            outcomes = rows[variant]
            scores = [o.held_out for o in outcomes]
            lines.append(
                f"| {variant} | {_median(scores):.1f} ({min(scores):.1f} to {max(scores):.1f}) | "
                f"{_steps(outcomes)} | {_median([o.wall for o in outcomes]):.0f} |"
            )
        pbt = _median([o.held_out for o in rows[PBT]])
        lines += [""]
        for other in (RANDOM, ZOO):
            value = _median([o.held_out for o in rows[other]])
            verb = "beats" if pbt > value else "ties" if pbt == value else "does **not** beat"
            lines.append(
                f"- **PBT** {verb} {other} on median held-out return ({pbt:.1f} vs {value:.1f})."
            )
        shares = rows[PBT]
        lines += [
            f"- Cost besides training, PBT runs (median over seeds, share of the run's wall "
            f"time): evaluation {100 * _median([o.evaluate_share for o in shares]):.1f}% "
            f"({task.eval_episodes} episodes per member and interval); reporting, checkpoints, "
            f"exploit and explore, loading states and hyperparameters "
            f"{100 * _median([o.pbt_share for o in shares]):.2f}% (everything in the run's wall "
            "time that is not building, training or evaluating an agent, start-up included).",
            "",
        ]
    lines += summary(tasks, results)
    return lines


def summary(tasks: list[Task], results: dict[str, dict[str, list[Outcome]]]) -> list[str]:
    """The issue's targets, met or not, from the medians above."""

    def held(env_id: str, variant: str) -> float:
        return _median([o.held_out for o in results[env_id][variant]])

    names = [t.env_id for t in tasks]
    random = [n for n in names if held(n, PBT) >= held(n, RANDOM)]
    zoo_ = [n for n in names if held(n, PBT) >= held(n, ZOO)]
    ties = [n for n in names if held(n, PBT) == held(n, ZOO) == held(n, RANDOM)]
    lines = [
        "**Against the targets.** PBT at least random search on every task: "
        + ("met" if len(random) == len(names) else "**not met**")
        + f" ({len(random)} of {len(names)}: {', '.join(random) or 'none'}). PBT at least "
        "rl-zoo's tuned settings on two of three tasks: "
        + ("met" if len(zoo_) >= 2 else "**not met**")
        + f" ({len(zoo_)} of {len(names)}: {', '.join(zoo_) or 'none'}"
        + (
            f"; not on {', '.join(n for n in names if n not in zoo_)}"
            if len(zoo_) < len(names)
            else ""
        )
        + ")."
        + (
            f" On {' and '.join(ties)} the three medians are equal, so that task does not tell "
            "the variants apart."
            if ties
            else ""
        )
        + " With "
        + f"{tasks[0].seeds} seeds and ranges that overlap, these are weak evidence either way.",
    ]
    cartpole = next((t for t in tasks if t.env_id == "CartPole-v1"), None)
    if cartpole is not None:
        shares = results[cartpole.env_id][PBT]
        rest = 100 * _median([o.pbt_share for o in shares])
        evaluate = 100 * _median([o.evaluate_share for o in shares])
        lines += [
            "",
            f"**Overhead** (PPO on CartPole, {cartpole.interval_timesteps:,}-step intervals): "
            f"reporting, checkpoints, exploit and explore take {rest:.2f}% of the wall time, "
            + ("under" if rest < 2 else "**over**")
            + f" the 2% target; evaluation ({cartpole.eval_episodes} episodes per member and "
            f"interval) takes {evaluate:.1f}% more, "
            + (
                "so the two together stay under 2%."
                if rest + evaluate < 2
                else "so the two together are **over** 2%. Evaluation is the cost: its episodes "
                "run at once, one environment each, with one policy forward per step for all of "
                "them, so it lasts as long as the longest episode (on CartPole 500 forwards and "
                "2,500 environment steps, whose own cost is most of it: see docs/sb3.md); under "
                "2% takes fewer or shorter episodes, or an evaluation every few intervals."
            ),
        ]
    return [*lines, ""]


def splice(text: str, lines: list[str]) -> str:
    """``text`` with this benchmark's section replaced (or appended when it has none)."""
    old = text.split("\n")
    if HEADING not in old:
        return "\n".join([*old, *([""] if old and old[-1] else []), *lines])
    start = old.index(HEADING)
    end = next((i for i in range(start + 1, len(old)) if old[i].startswith("## ")), len(old))
    return "\n".join([*old[:start], *lines, *old[end:]])


LINE = re.compile(
    r"^(?P<env>\S+)\s+(?P<variant>.+?)\s+seed (?P<seed>\d+): held-out\s+(?P<held>\S+)\s+"
    r"to threshold (?P<steps>\S+)\s+wall\s+(?P<wall>\S+)s\s+evaluate (?P<evaluate>\S+)%\s+"
    r"report\+exploit (?P<rest>\S+)%$"
)


def read_log(text: str) -> dict[str, dict[str, list[Outcome]]]:
    """The outcomes a run printed, one line per variant and seed (see ``main``)."""
    results: dict[str, dict[str, list[Outcome]]] = {}
    for line in text.splitlines():
        match = LINE.match(line.strip())
        if match is None:
            continue
        steps = match["steps"]
        outcome = Outcome(
            held_out=float(match["held"]),
            to_threshold=None if steps == "None" else int(steps),
            wall=float(match["wall"]),
            evaluate_share=float(match["evaluate"]) / 100,
            pbt_share=float(match["rest"]) / 100,
        )
        results.setdefault(match["env"], {}).setdefault(match["variant"], []).append(outcome)
    return results


def overhead(task: Task, seed: int, storage: str) -> str:
    """One PBT run of ``task`` (its population, intervals and evaluation episodes, as in the
    full benchmark): the line saying what evaluation and reporting plus exploit cost."""
    outcome = run_variant(task, PBT, seed, storage)
    name = f"{task.env_id}-{PBT.split()[0]}-{seed}".lower()
    members = TIMINGS[name]
    count = task.population * task.intervals  # member-intervals (an exploit keeps the count)
    training = sum(m["training"] for m in members) / count
    evaluate = sum(m["evaluate"] for m in members) / count
    return (
        f"{task.env_id} PBT seed {seed}: wall {outcome.wall:.1f}s  evaluate "
        f"{100 * outcome.evaluate_share:.2f}%  report+exploit {100 * outcome.pbt_share:.2f}%  "
        f"together {100 * (outcome.evaluate_share + outcome.pbt_share):.2f}%  (per member and "
        f"interval: training {training:.2f}s, evaluation {1000 * evaluate:.0f}ms)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="every task and variant, tiny (CI)")
    parser.add_argument(
        "--overhead-only",
        action="store_true",
        help="only CartPole's PBT run: print the shares of its wall time that evaluation and "
        "report+exploit take (the issue's overhead target); writes nothing",
    )
    parser.add_argument("--seeds", type=int, default=None, help="3 (--overhead-only: 1)")
    parser.add_argument("--tasks", nargs="*", default=None, help="environment ids (default: all)")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "results.md")
    parser.add_argument(
        "--from-log",
        type=Path,
        default=None,
        help="write the section from the lines a full run printed, without training",
    )
    args = parser.parse_args(argv)
    seeds = args.seeds if args.seeds is not None else 1 if args.overhead_only else 3
    tasks = [replace(t, seeds=seeds) for t in TASKS]
    if args.tasks:
        tasks = [t for t in tasks if t.env_id in args.tasks]
    command = "python benchmarks/rl_zoo.py" + (f" --seeds {seeds}" if seeds != 3 else "")
    if args.smoke:
        # one short rollout per interval (n_steps=32 on rl-zoo's n_envs), one episode per score
        tasks = [
            replace(t, seeds=1, population=3, intervals=2, n_steps=32, eval_episodes=1,
                    held_out_episodes=1, interval_timesteps=zoo(t.env_id)["n_envs"] * 32)
            for t in tasks
        ]  # fmt: skip
        command = "python benchmarks/rl_zoo.py --smoke"
    TASK_BY_ID.update({t.env_id: t for t in tasks})
    if args.overhead_only:  # with --smoke, the tiny CartPole run
        cartpole = next((t for t in tasks if t.env_id == "CartPole-v1"), None)
        if cartpole is None:
            parser.error("--overhead-only measures CartPole-v1: leave it in --tasks")
        with tempfile.TemporaryDirectory() as folder:
            storage = f"sqlite:///{Path(folder) / 'rl_zoo.db'}"
            for seed in range(cartpole.seeds):
                print(overhead(cartpole, seed, storage), flush=True)
        return
    results: dict[str, dict[str, list[Outcome]]] = {}
    if args.from_log is not None:
        results = read_log(args.from_log.read_text())
        tasks = [t for t in tasks if t.env_id in results]
    with tempfile.TemporaryDirectory() as folder:
        storage = f"sqlite:///{Path(folder) / 'rl_zoo.db'}"
        for task in tasks if args.from_log is None else []:
            results[task.env_id] = {}
            for variant in (ZOO, RANDOM, PBT):
                outcomes = []
                for seed in range(task.seeds):
                    outcome = run_variant(task, variant, seed, storage)
                    line = (
                        f"{task.env_id:12s} {variant:15s} seed {seed}: held-out "
                        f"{outcome.held_out:8.1f}  to threshold {outcome.to_threshold}  "
                        f"wall {outcome.wall:6.1f}s  evaluate {100 * outcome.evaluate_share:.1f}%"
                        f"  report+exploit {100 * outcome.pbt_share:.2f}%"
                    )
                    print(line, flush=True)
                    # The section shows the printed (rounded) values, so that --from-log
                    # writes it again exactly: a wall time of 1.46 s is 1.5 in both.
                    outcomes.extend(read_log(line)[task.env_id][variant])
                results[task.env_id][variant] = outcomes
    lines = section(tasks, results, command)
    old = args.output.read_text() if args.output.exists() else ""
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(splice(old, lines))
    print(f"wrote the section {HEADING[3:]!r} of {args.output}")


if __name__ == "__main__":
    main()
