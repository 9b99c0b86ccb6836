"""The digits example as a PyTorch Lightning module: PBT without leaving ``trainer.fit()``.

The same MLP, data and hyperparameters as ``examples/digits.py`` (lr, momentum and weight decay
of SGD), written as a LightningModule. Each member calls ``trainer.fit()`` once; every
validation epoch is one PBT interval. After an exploit, the callback loads the better member's
weights and SGD momentum into the running module and optimizer and sets the explored
hyperparameters on the optimizer, and training simply carries on.

Run:  python examples/lightning_digits.py [--population 8] [--intervals 20] [--workers 2]
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from _cli import guard, report, run_options
from _cli import parser as example_parser
from digits import SPACE, dataset  # the same data and space (examples/digits.py)
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import poptune as pt
from poptune.integrations.lightning import fit


class Classifier(pl.LightningModule):
    """A two-layer MLP on 8×8 digits, trained with SGD; logs val_acc and val_loss."""

    def __init__(self, lr: float, momentum: float, weight_decay: float, hidden: int = 64) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """Cross-entropy on one batch."""
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Accuracy (what PBT maximises) and loss on the validation split."""
        x, y = batch
        logits = self.net(x)
        self.log("val_acc", (logits.argmax(dim=1) == y).float().mean())
        self.log("val_loss", nn.functional.cross_entropy(logits, y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """SGD; poptune changes its lr, momentum and weight_decay in place after explore."""
        h = self.hparams
        return torch.optim.SGD(
            self.parameters(), lr=h.lr, momentum=h.momentum, weight_decay=h.weight_decay
        )


def loaders(batch_size: int = 64) -> tuple[DataLoader, DataLoader]:
    """Training batches (reshuffled every epoch from the interval's seed) and the validation
    split in one batch."""
    x, y, x_val, y_val = dataset()
    train = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True)
    return train, DataLoader(TensorDataset(x_val, y_val), batch_size=len(x_val))


def train(ctx: Any) -> None:
    """One member: build the module once, then fit until poptune ends the member."""
    torch.set_num_threads(1)
    # Every member builds a Trainer: keep Lightning's start-up banner (GPU available...) quiet.
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    torch.manual_seed(ctx.seed)  # the member's initial weights
    train_loader, val_loader = loaders()
    fit(
        ctx,
        Classifier(**ctx.hparams),
        metric="val_acc",
        train_dataloaders=train_loader,
        val_dataloaders=val_loader,
        accelerator="cpu",
    )


def main(argv: Sequence[str] | None = None) -> pt.Result:
    """Train the population and print the best member and its schedule."""
    parser = example_parser(
        "PBT on the digits data set, with Lightning",
        name="lightning-digits",
        population=8,
        intervals=20,
    )
    args = parser.parse_args(argv)

    result = pt.run(
        train,
        space=SPACE,
        metric="val_acc",
        **run_options(args),
    )
    report(result, "val_acc")
    return result


if __name__ == "__main__":
    guard(main)
