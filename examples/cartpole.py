"""PBT on reinforcement learning: an advantage actor-critic (A2C) agent on CartPole-v1.

The hyperparameters are the ones the paper tuned on its RL tasks: learning rate, entropy cost,
unroll length (an integer: how many steps each n-step return looks ahead) and discount. Each
interval trains ``steps`` environment steps; the metric is the mean return of the agent's last
10 finished episodes, a noisy reward, which is what the paper's t-test selection (``pt.TTest``)
was made for.

Run:  python examples/cartpole.py [--population 8] [--intervals 20] [--exploit ttest]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from _cli import EXPLORES, at_least_one, guard, where
from _cli import parser as example_parser
from torch import nn

import poptune as pt
from poptune.integrations.torch import apply_hparams, load_state, save_state, seed_everything

SPACE = {
    "lr": pt.LogUniform(1e-4, 3e-2),
    "entropy_cost": pt.LogUniform(1e-4, 1e-1),
    "unroll_length": pt.IntUniform(4, 64),
    "discount": pt.Uniform(0.9, 0.999),
}


class CartPole(pt.Trainable):
    """A2C with a shared two-layer network; episodes restart at every interval."""

    steps = 2000  # environment steps per interval

    def __init__(self, hparams: Mapping[str, Any], seed: int) -> None:
        torch.set_num_threads(1)
        self.generator = seed_everything(seed)
        self.env = gym.make("CartPole-v1")
        self.seed = seed
        self.body = nn.Sequential(nn.Linear(4, 64), nn.Tanh())
        self.policy = nn.Linear(64, 2)
        self.value = nn.Linear(64, 1)
        self.parameters = [
            *self.body.parameters(),
            *self.policy.parameters(),
            *self.value.parameters(),
        ]
        self.optimizer = torch.optim.Adam(self.parameters, lr=hparams["lr"])
        self.returns: list[float] = []  # finished episodes' returns, most recent last

    def reseed(self, seed: int) -> None:
        """Each interval draws from its own seed, whether this instance was kept or rebuilt (so a
        synchronous run is the same for any number of workers)."""
        super().reseed(seed)  # torch's global generator (dropout, initialisation)
        self.generator = torch.Generator().manual_seed(seed)
        self.seed = seed  # the episodes of the coming interval start from it

    def train(self, hparams: Mapping[str, Any]) -> None:
        """``steps`` environment steps of n-step A2C with the current hyperparameters."""
        apply_hparams(self.optimizer, hparams)
        unroll, gamma = int(hparams["unroll_length"]), float(hparams["discount"])
        observation, _ = self.env.reset(seed=self.seed)
        episode_return, done_steps = 0.0, 0
        steps = int(hparams.get("steps", self.steps))  # --steps, recorded in the space
        while done_steps < steps:
            log_probs, values, rewards, entropies, masks = [], [], [], [], []
            for _ in range(unroll):
                hidden = self.body(torch.as_tensor(observation, dtype=torch.float32))
                distribution = torch.distributions.Categorical(logits=self.policy(hidden))
                action = torch.multinomial(distribution.probs, 1, generator=self.generator)[0]
                observation, reward, terminated, truncated, _ = self.env.step(int(action))
                log_probs.append(distribution.log_prob(action))
                entropies.append(distribution.entropy())
                values.append(self.value(hidden)[0])
                rewards.append(float(reward))
                masks.append(0.0 if terminated else 1.0)
                episode_return += float(reward)
                done_steps += 1
                if terminated or truncated:
                    self.returns = [*self.returns[-99:], episode_return]
                    episode_return = 0.0
                    observation, _ = self.env.reset()
                    if truncated and not terminated:
                        masks[-1] = 0.0  # do not bootstrap across a reset
                    break
            with torch.no_grad():
                hidden = self.body(torch.as_tensor(observation, dtype=torch.float32))
                bootstrap = float(self.value(hidden)[0]) * masks[-1]
            targets, running = [], bootstrap
            for reward, mask in zip(reversed(rewards), reversed(masks), strict=True):
                running = reward + gamma * running * mask
                targets.append(running)
            targets.reverse()
            target = torch.tensor(targets)
            value = torch.stack(values)
            advantage = (target - value).detach()
            loss = (
                -(torch.stack(log_probs) * advantage).mean()
                + 0.5 * (target - value).pow(2).mean()
                - float(hparams["entropy_cost"]) * torch.stack(entropies).mean()
            )
            self.optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(self.parameters, 1.0)
            self.optimizer.step()

    def evaluate(self) -> dict[str, float]:
        """Mean return of the last 10 finished episodes (the paper's RL metric)."""
        recent = self.returns[-10:] or [0.0]
        return {"return": float(np.mean(recent)), "episodes": float(len(self.returns))}

    def state_dict(self) -> dict[str, Any]:
        """Network, optimizer moments and the recent returns."""
        modules = nn.ModuleDict({"body": self.body, "policy": self.policy, "value": self.value})
        return save_state(modules, self.optimizer, returns=list(self.returns))

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a (possibly better member's) agent."""
        modules = nn.ModuleDict({"body": self.body, "policy": self.policy, "value": self.value})
        extra = load_state(state, modules, self.optimizer)
        self.returns = list(extra["returns"])


EXPLOITS = {
    "truncation": lambda: pt.Truncation(0.25),
    "tournament": pt.Tournament,
    "ttest": lambda: pt.TTest(window=4, alpha=0.1),
    "none": lambda: None,
}


def main(argv: Sequence[str] | None = None) -> pt.Result:
    """Train the population and print the best agent and its schedule."""
    parser = example_parser("PBT with A2C on CartPole-v1", name=None, population=8, intervals=20)
    parser.add_argument("--steps", type=int, default=CartPole.steps, help="env steps/interval")
    parser.add_argument("--exploit", choices=sorted(EXPLOITS), default="truncation")
    args = parser.parse_args(argv)
    at_least_one(parser, steps=args.steps)
    result = pt.run(
        CartPole,
        space={**SPACE, "steps": args.steps},  # fixed, recorded: a resume trains as many
        metric="return",
        mode="max",
        population=args.population,
        intervals=args.intervals,
        workers=args.workers,
        exploit=EXPLOITS[args.exploit](),
        explore=EXPLORES[args.explore](),
        name=args.name or f"cartpole-{args.exploit}",
        storage=args.storage,
        seed=args.seed,
        sync=args.sync,
        progress=not args.no_progress,
    )
    best = result.best
    print(f"\nbest member {best.member}: mean return {best.score:.1f} after {best.step} intervals")
    print("hparams: " + ", ".join(f"{k}={v:.4g}" for k, v in best.hparams.items()))
    for entry in result.schedule():
        h = entry.hparams
        print(
            f"  {entry.step:3d}: member {entry.member}  lr={h['lr']:.3g}  "
            f"entropy={h['entropy_cost']:.3g}  unroll={h['unroll_length']}  "
            f"discount={h['discount']:.3f}  return={entry.score:.1f}"
        )
    where(result)
    return result


if __name__ == "__main__":
    guard(main)
