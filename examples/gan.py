"""PBT on a GAN: a small generator and discriminator on a ring of 8 Gaussians in 2-D.

The hyperparameters are the ones the paper tuned for its GANs: the generator's and the
discriminator's learning rates. The metric is computed each interval and is not differentiable:

    quality = (modes covered / 8) × (fraction of samples that are "good")

over 2,000 generated points, where a sample is good if it lies within 3 standard deviations of
one of the 8 mode centres, and a mode is covered if at least 2% of the samples are good samples
of it. It is 0 for a generator that collapsed or produces noise and 1 for one that puts every
sample near a mode and covers all of them: the two failure modes of GAN training (mode collapse,
poor samples) both lower it.

Run:  python examples/gan.py [--population 8] [--intervals 20]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from _cli import EXPLORES, at_least_one, guard, where
from _cli import parser as example_parser
from torch import nn

import poptune as pt
from poptune.integrations.torch import apply_hparams, load_state, save_state, seed_everything

SPACE = {
    "generator_lr": pt.LogUniform(1e-5, 1e-2),
    "discriminator_lr": pt.LogUniform(1e-5, 1e-2),
}
MODES, RADIUS, SIGMA = 8, 2.0, 0.1
CENTRES = torch.tensor(
    [[RADIUS * math.cos(2 * math.pi * k / MODES), RADIUS * math.sin(2 * math.pi * k / MODES)]
     for k in range(MODES)]
)  # fmt: skip


def real_batch(size: int, generator: torch.Generator) -> torch.Tensor:
    """Samples of the target distribution: a mode drawn uniformly, plus Gaussian noise."""
    modes = torch.randint(0, MODES, (size,), generator=generator)
    return CENTRES[modes] + SIGMA * torch.randn(size, 2, generator=generator)


def quality(samples: torch.Tensor) -> tuple[float, int, float]:
    """(quality score, modes covered, fraction of good samples) of generated points."""
    distances = torch.cdist(samples, CENTRES)
    nearest, mode = distances.min(dim=1)
    good = nearest < 3 * SIGMA
    counts = torch.bincount(mode[good], minlength=MODES)
    covered = int((counts >= 0.02 * len(samples)).sum())
    fraction = float(good.float().mean())
    return covered / MODES * fraction, covered, fraction


class Ring(pt.Trainable):
    """A vanilla (non-saturating) GAN with two small MLPs; 300 updates per interval."""

    updates = 300
    batch = 128

    def __init__(self, hparams: Mapping[str, Any], seed: int) -> None:
        torch.set_num_threads(1)
        self.rng = seed_everything(seed)
        self.generator = nn.Sequential(
            nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2)
        )
        self.discriminator = nn.Sequential(
            nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1)
        )
        self.g_optimizer = torch.optim.Adam(
            self.generator.parameters(), lr=hparams["generator_lr"], betas=(0.5, 0.999)
        )
        self.d_optimizer = torch.optim.Adam(
            self.discriminator.parameters(), lr=hparams["discriminator_lr"], betas=(0.5, 0.999)
        )

    def reseed(self, seed: int) -> None:
        """Each interval draws from its own seed, whether this instance was kept or rebuilt (so a
        synchronous run is the same for any number of workers)."""
        super().reseed(seed)  # torch's global generator (dropout, initialisation)
        self.rng = torch.Generator().manual_seed(seed)

    def train(self, hparams: Mapping[str, Any]) -> None:
        """Alternate discriminator and generator updates with the current learning rates."""
        apply_hparams(self.g_optimizer, {"lr": hparams["generator_lr"]})
        apply_hparams(self.d_optimizer, {"lr": hparams["discriminator_lr"]})
        loss = nn.functional.binary_cross_entropy_with_logits
        ones, zeros = torch.ones(self.batch, 1), torch.zeros(self.batch, 1)
        for _ in range(int(hparams.get("updates", self.updates))):  # --updates, recorded
            noise = torch.randn(self.batch, 2, generator=self.rng)
            fake = self.generator(noise)
            real = real_batch(self.batch, self.rng)
            d_loss = loss(self.discriminator(real), ones) + loss(
                self.discriminator(fake.detach()), zeros
            )
            self.d_optimizer.zero_grad()
            d_loss.backward()
            self.d_optimizer.step()
            g_loss = loss(self.discriminator(fake), ones)
            self.g_optimizer.zero_grad()
            g_loss.backward()
            self.g_optimizer.step()

    def evaluate(self) -> dict[str, float]:
        """The quality score on 2,000 fresh samples (fixed noise, so it is comparable)."""
        noise = torch.randn(2000, 2, generator=torch.Generator().manual_seed(12345))
        with torch.no_grad():
            score, covered, fraction = quality(self.generator(noise))
        return {"quality": score, "modes": float(covered), "good_fraction": fraction}

    def state_dict(self) -> dict[str, Any]:
        """Both networks and both optimizers."""
        return {
            "generator": save_state(self.generator, self.g_optimizer),
            "discriminator": save_state(self.discriminator, self.d_optimizer),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore both networks (possibly a better member's pair)."""
        load_state(state["generator"], self.generator, self.g_optimizer)
        load_state(state["discriminator"], self.discriminator, self.d_optimizer)


def main(argv: Sequence[str] | None = None) -> pt.Result:
    """Train the population and print the best pair and its schedule."""
    parser = example_parser(
        "PBT on a GAN (ring of 8 Gaussians)", name="gan", population=8, intervals=20
    )
    parser.add_argument("--updates", type=int, default=Ring.updates)
    parser.add_argument("--random-search", action="store_true", help="exploit=None baseline")
    args = parser.parse_args(argv)
    at_least_one(parser, updates=args.updates)
    result = pt.run(
        Ring,
        space={**SPACE, "updates": args.updates},  # fixed, recorded: a resume trains as many
        metric="quality",
        mode="max",
        population=args.population,
        intervals=args.intervals,
        workers=args.workers,
        exploit=None if args.random_search else pt.Truncation(0.25),
        explore=EXPLORES[args.explore](),
        name=args.name or ("gan-random-search" if args.random_search else "gan"),
        storage=args.storage,
        seed=args.seed,
        sync=args.sync,
        progress=not args.no_progress,
    )
    best = result.best
    print(
        f"\nbest member {best.member}: quality {best.score:.3f} "
        f"({best.metrics['modes']:.0f}/8 modes, {best.metrics['good_fraction']:.0%} good samples)"
    )
    for entry in result.schedule():
        h = entry.hparams
        print(
            f"  {entry.step:3d}: member {entry.member}  generator_lr={h['generator_lr']:.3g}  "
            f"discriminator_lr={h['discriminator_lr']:.3g}  quality={entry.score:.3f}"
        )
    where(result)
    return result


if __name__ == "__main__":
    guard(main)
