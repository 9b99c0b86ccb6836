"""The digits example with the whole population in one process: 64 MLPs trained together.

The same MLP, data and hyperparameters as ``examples/digits.py``, but one worker claims a block
of 64 members (``block=64``) and trains them in one call: their parameters are stacked
(``poptune.integrations.torch.Stack``) and every SGD step updates all 64 at once with
``torch.func.vmap``, each member with its own learning rate, momentum and weight decay and its
own data order. An exploit copies the donor's slice into the member's slot, from memory when
the donor is in the block. Each member is still a member of its own: its intervals,
checkpoints, lineage and schedule are recorded as in the other examples, and the best one is an
ordinary ``nn.Module`` again at the end (:func:`best_model`).

Run:  python examples/digits_vectorized.py [--population 64] [--intervals 30] [--block 64]
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
from poptune.integrations.torch import Stack

BATCH = 64


def build() -> nn.Module:
    """One member's model, the MLP of ``examples/digits.py``."""
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def train(ctx: Any) -> None:
    """A block of members: built once, then one epoch of each per block interval."""
    # No torch.set_num_threads(1) as in the other examples: this one process holds the whole
    # population, so torch's default (a thread per core) is what it should use.
    members = len(ctx.members)
    # Member m starts from the weights seed_everything(ctx.seed + m); build() would give.
    stack = Stack(
        build, seeds=[ctx.seed + m for m in ctx.members], optimizer="sgd", **_settings(ctx.hparams)
    )
    x, y, x_val, y_val = dataset()
    for block in ctx.intervals():
        for i, interval in enumerate(block):
            if interval.state is not None:  # a better member's state (exploit), or its own
                stack.load(i, interval.state)
        stack.set_hparams([interval.hparams for interval in block])  # explore may change them
        # Each member's own data order, drawn from its interval's seed as digits_loop.py does.
        orders = torch.stack(
            [torch.randperm(len(x), generator=torch.Generator().manual_seed(i.seed)) for i in block]
        )
        stack.train()
        for start in range(0, len(x), BATCH):
            batch = orders[:, start : start + BATCH]  # (members, batch)
            logits = stack(x[batch])  # (members, batch, 10)
            losses = nn.functional.cross_entropy(
                logits.flatten(0, 1), y[batch].flatten(), reduction="none"
            ).view(members, -1)
            stack.zero_grad()
            losses.mean(dim=1).sum().backward()  # a sum: each member's gradient is its own
            stack.step()
        stack.eval()
        with torch.no_grad():
            logits = stack(x_val, in_dims=None)  # every member on the same validation split
        accuracy = (logits.argmax(dim=2) == y_val).float().mean(dim=1)
        block.report(
            [{"accuracy": float(a)} for a in accuracy],
            states=[stack.state(i) for i in range(members)],
        )


def _settings(hparams: Sequence[dict[str, Any]]) -> dict[str, list[float]]:
    """The block's first hparams as the Stack's per-member SGD settings."""
    return {name: [h[name] for h in hparams] for name in ("lr", "momentum", "weight_decay")}


def best_model(result: pt.Result) -> nn.Module:
    """The best member as an ordinary module: its checkpoint has ``state_dict``'s layout.

    (``result.best.load(Digits)`` with ``examples/digits.py``'s class gives the plain trainable,
    model and SGD state included: the checkpoint is ``save_state(model, optimizer)``'s.)
    """
    model = build()
    model.load_state_dict(result.best.state()["model"])
    return model.eval()


def accuracy(model: nn.Module) -> float:
    """A plain module's accuracy on the validation split."""
    _, _, x_val, y_val = dataset()
    with torch.no_grad():
        return float((model(x_val).argmax(dim=1) == y_val).float().mean())


def main(argv: Sequence[str] | None = None) -> pt.Result:
    """Train the population in blocks and print the best member, its schedule, and the best
    member's accuracy as a plain module."""
    parser = example_parser(
        "PBT on the digits data set, 64 members trained together in one process",
        name="digits-vectorized",
        population=64,
        intervals=30,
    )
    parser.set_defaults(workers=1)
    parser.add_argument("--block", type=int, default=64, help="members trained together")
    args = parser.parse_args(argv)

    result = pt.run(
        train,
        space=SPACE,
        metric="accuracy",
        block=args.block,
        **run_options(args),
    )
    model = best_model(result)
    print(
        f"\nthe best member as a plain nn.Module (best_model): accuracy {accuracy(model):.4f} "
        "on the validation split"
    )
    report(result, "accuracy")
    return result


if __name__ == "__main__":
    guard(main)
