"""The digits example with your own training loop instead of a Trainable class.

The same MLP, data and hyperparameters as ``examples/digits.py``, written as a plain PyTorch
loop: one function per member, which builds its model once and keeps it in memory. poptune
steps it one interval (one epoch) at a time; after an exploit, ``interval.state`` holds the
better member's weights and optimizer state, and ``interval.hparams`` the explored
hyperparameters, and the loop simply carries on.

Run:  python examples/digits_loop.py [--population 8] [--intervals 30] [--workers 2]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from _cli import guard, report, run_options
from _cli import parser as example_parser
from digits import SPACE, dataset  # the same data and space (examples/digits.py)
from torch import nn

import poptune as pt
from poptune.integrations.torch import apply_hparams, load_state, save_state


def train(ctx: Any) -> None:
    """One member: build once, then one epoch per interval until poptune says stop."""
    torch.set_num_threads(1)
    torch.manual_seed(ctx.seed)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    optimizer = torch.optim.SGD(model.parameters(), **ctx.hparams)
    x, y, x_val, y_val = dataset()
    for interval in ctx.intervals():
        if interval.state is not None:  # a better member's state (exploit), or ours (moved)
            load_state(interval.state, model, optimizer)
        apply_hparams(optimizer, interval.hparams)  # explore may have changed them
        generator = torch.Generator().manual_seed(interval.seed)  # this interval's data order
        model.train()
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), 64):
            batch = order[start : start + 64]
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            logits = model(x_val)
        accuracy = float((logits.argmax(dim=1) == y_val).float().mean())
        interval.report({"accuracy": accuracy}, state=save_state(model, optimizer))


def main(argv: Sequence[str] | None = None) -> pt.Result:
    """Train the population and print the best member and its schedule."""
    parser = example_parser(
        "PBT on the digits data set, your own loop", name="digits-loop", population=8, intervals=30
    )
    args = parser.parse_args(argv)

    result = pt.run(
        train,
        space=SPACE,
        metric="accuracy",
        **run_options(args),
    )
    report(result, "accuracy")
    return result


if __name__ == "__main__":
    guard(main)
