"""PBT on Stable-Baselines3's PPO, on CartPole-v1 or any other classic-control environment.

Each member is one PPO agent trained by a single ``model.learn`` call; every
``--interval-timesteps`` environment steps it plays ``--eval-episodes`` (10) evaluation
episodes, reports their mean return, and continues with what PBT brings: the better agent's
weights, optimizer state and step after an exploit, the perturbed hyperparameters (learning
rate, entropy coefficient, clip range, discount, GAE lambda, epochs, value coefficient,
gradient clipping) at its next update. The prior is broad, not rl-zoo's tuned values: PBT
does the tuning.

Run:  python examples/sb3_ppo.py [--env Acrobot-v1] [--population 8] [--intervals 10]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import torch
from _cli import at_least_one, guard, report, run_options
from _cli import parser as example_parser
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env

import poptune as pt
from poptune.integrations import sb3 as pt_sb3

#: The tuned hyperparameters: wide ranges around SB3's defaults (PPO's are 3e-4, 0.0, 0.2,
#: 0.99, 0.95, 10, 0.5, 0.5).
SPACE: dict[str, Any] = {
    "learning_rate": pt.LogUniform(1e-5, 1e-2),
    "ent_coef": pt.LogUniform(1e-6, 0.1),
    "clip_range": pt.Uniform(0.05, 0.4),
    "gamma": pt.Uniform(0.9, 0.9999),
    "gae_lambda": pt.Uniform(0.8, 1.0),
    "n_epochs": pt.IntUniform(1, 20),
    "vf_coef": pt.Uniform(0.2, 1.0),
    "max_grad_norm": pt.LogUniform(0.3, 5.0),
}
#: Values that only build the agent (fixed in the space, so every worker process sees them).
STATIC = (
    "env_id",
    "n_envs",
    "n_steps",
    "batch_size",
    "interval_timesteps",
    "total_timesteps",
    "eval_episodes",
)


def build(hparams: dict[str, Any], seed: int) -> PPO:
    """A PPO agent with the member's hyperparameters, on ``n_envs`` copies of the environment."""
    env = make_vec_env(hparams["env_id"], n_envs=hparams["n_envs"], seed=seed)
    tuned = {name: hparams[name] for name in SPACE}
    return PPO(
        "MlpPolicy",
        env,
        n_steps=hparams["n_steps"],
        batch_size=hparams["batch_size"],
        seed=seed,
        device="cpu",
        **tuned,
    )


def train(ctx: Any) -> None:
    """One member: one agent, one ``model.learn`` until poptune is done with it."""
    torch.set_num_threads(1)  # members share the machine's cores
    hparams = ctx.hparams
    model = build(hparams, ctx.seed)
    pt_sb3.learn(
        ctx,
        model,
        interval_timesteps=hparams["interval_timesteps"],
        eval_env=hparams["env_id"],  # one copy per evaluation episode, played at once
        eval_episodes=hparams["eval_episodes"],
        total_timesteps=hparams["total_timesteps"],
        static=STATIC,
    )


def classic_control(env_id: str) -> str:
    """``env_id`` if it names one of Gymnasium's classic-control environments."""
    try:
        spec = gym.spec(env_id)
    except gym.error.Error as error:
        raise SystemExit(f"--env {env_id!r} is not a Gymnasium environment: {error}") from None
    entry = str(spec.entry_point)
    if not entry.startswith("gymnasium.envs.classic_control"):
        raise SystemExit(
            f"--env {env_id!r} is not a classic-control environment (its entry point is "
            f"{entry}); use CartPole-v1, Acrobot-v1, MountainCar-v0, Pendulum-v1 or "
            "MountainCarContinuous-v0."
        )
    return env_id


def main(argv: Sequence[str] | None = None) -> pt.Result:
    """Train the population and print the best agent and its schedule."""
    parser = example_parser(
        "PBT with Stable-Baselines3's PPO on a classic-control environment",
        name="sb3-ppo",
        population=8,
        intervals=10,
    )
    parser.add_argument("--env", default="CartPole-v1", help="a classic-control environment id")
    parser.add_argument(
        "--interval-timesteps",
        type=int,
        default=4096,
        help="environment steps per interval: a multiple of --n-envs x --n-steps",
    )
    parser.add_argument("--n-envs", type=int, default=8, help="environment copies per agent")
    parser.add_argument("--n-steps", type=int, default=64, help="steps per env per rollout")
    parser.add_argument(
        "--eval-episodes", type=int, default=10, help="episodes per evaluation (the score)"
    )
    args = parser.parse_args(argv)
    at_least_one(
        parser,
        interval_timesteps=args.interval_timesteps,
        n_envs=args.n_envs,
        n_steps=args.n_steps,
        eval_episodes=args.eval_episodes,
    )
    rollout = args.n_envs * args.n_steps
    if rollout < 2:
        parser.error("PPO needs a rollout of at least 2 steps: --n-envs x --n-steps >= 2")
    if args.interval_timesteps % rollout:
        lower = max(rollout, args.interval_timesteps // rollout * rollout)
        parser.error(
            f"--interval-timesteps {args.interval_timesteps} is not a multiple of a rollout, "
            f"--n-envs x --n-steps = {rollout}: the nearest are {lower} and "
            f"{(args.interval_timesteps // rollout + 1) * rollout}"
        )
    env_id = classic_control(args.env)
    space = dict(SPACE)
    space.update(
        env_id=env_id,
        n_envs=args.n_envs,
        n_steps=args.n_steps,
        batch_size=min(256, args.n_envs * args.n_steps),
        interval_timesteps=args.interval_timesteps,
        total_timesteps=args.intervals * args.interval_timesteps,
        eval_episodes=args.eval_episodes,
    )
    options = run_options(args)
    if args.name == "sb3-ppo":
        options["name"] = f"sb3-ppo-{env_id.lower()}"
    result = pt.run(train, space=space, metric="mean_reward", **options)
    report(result, "mean return", hidden=STATIC)
    return result


if __name__ == "__main__":
    guard(main)
