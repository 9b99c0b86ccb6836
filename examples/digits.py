"""PBT on scikit-learn's bundled digits: a PyTorch MLP, tuning lr, momentum and weight decay.

Each interval is one epoch of SGD over the training split; the score is accuracy on a held-out
split. PBT copies the weights *and* optimizer state of better members and perturbs their
hyperparameters, so the result is a schedule (e.g. the learning rate moving over training)
rather than one fixed setting.

Run:  python examples/digits.py [--population 8] [--intervals 30] [--workers 2]
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from _cli import guard, report, run_options
from _cli import parser as example_parser
from sklearn.datasets import load_digits
from torch import nn

import poptune as pt
from poptune.integrations.torch import apply_hparams, load_state, save_state, seed_everything

SPACE = {
    "lr": pt.LogUniform(1e-3, 0.5),
    "momentum": pt.Uniform(0.0, 0.99),
    "weight_decay": pt.LogUniform(1e-6, 1e-2),
}


@functools.cache
def dataset() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The digits (8×8 images, 10 classes), split 2/3 train, 1/3 validation, always the same."""
    images, labels = load_digits(return_X_y=True)
    x = torch.tensor(images / 16.0, dtype=torch.float32)
    y = torch.tensor(labels, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    cut = 2 * len(x) // 3
    return x[:cut], y[:cut], x[cut:], y[cut:]


class Digits(pt.Trainable):
    """A two-layer MLP trained with SGD; one interval is one epoch."""

    batch_size = 64
    hidden = 64

    def __init__(self, hparams: Mapping[str, Any], seed: int) -> None:
        torch.set_num_threads(1)
        self.generator = seed_everything(seed)
        self.model = nn.Sequential(
            nn.Linear(64, self.hidden), nn.ReLU(), nn.Linear(self.hidden, 10)
        )
        self.optimizer = torch.optim.SGD(
            self.model.parameters(),
            lr=hparams["lr"],
            momentum=hparams["momentum"],
            weight_decay=hparams["weight_decay"],
        )

    def reseed(self, seed: int) -> None:
        """Each interval draws from its own seed, whether this instance was kept or rebuilt (so a
        synchronous run is the same for any number of workers)."""
        super().reseed(seed)  # torch's global generator (dropout, initialisation)
        self.generator = torch.Generator().manual_seed(seed)

    def train(self, hparams: Mapping[str, Any]) -> None:
        """One epoch with the current hparams (they change after an exploit)."""
        apply_hparams(self.optimizer, hparams)
        x, y, _, _ = dataset()
        self.model.train()
        order = torch.randperm(len(x), generator=self.generator)
        for start in range(0, len(x), self.batch_size):
            batch = order[start : start + self.batch_size]
            self.optimizer.zero_grad()
            loss = nn.functional.cross_entropy(self.model(x[batch]), y[batch])
            loss.backward()
            self.optimizer.step()

    def evaluate(self) -> dict[str, float]:
        """Accuracy (the metric PBT maximises) and loss on the validation split."""
        _, _, x, y = dataset()
        self.model.eval()
        with torch.no_grad():
            logits = self.model(x)
        return {
            "accuracy": float((logits.argmax(dim=1) == y).float().mean()),
            "loss": float(nn.functional.cross_entropy(logits, y)),
        }

    def state_dict(self) -> dict[str, Any]:
        """Model weights and SGD momentum buffers."""
        return save_state(self.model, self.optimizer)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore weights and optimizer state (possibly a better member's)."""
        load_state(state, self.model, self.optimizer)


def main(argv: Sequence[str] | None = None) -> pt.Result:
    """Train the population and print the best member and its schedule."""
    parser = example_parser("PBT on the digits data set", name="digits", population=8, intervals=30)
    args = parser.parse_args(argv)

    result = pt.run(
        Digits,
        space=SPACE,
        metric="accuracy",
        mode="max",
        **run_options(args),
    )
    report(result, "accuracy")
    return result


if __name__ == "__main__":
    guard(main)
