"""PyTorch helpers for trainables: seeding, state in and out, hparams applied to an optimizer.

No base class is needed; a trainable calls these from its own methods::

    import poptune as pt
    from poptune.integrations.torch import apply_hparams, load_state, save_state, seed_everything

    class Net(pt.Trainable):
        def __init__(self, hparams, seed):
            self.generator = seed_everything(seed)  # before building the model
            self.model = build_model()
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=hparams["lr"])
            self.epoch = 0

        def train(self, hparams):
            apply_hparams(self.optimizer, hparams)  # lr, momentum, weight_decay... in place
            ...  # one interval, drawing data order from self.generator
            self.epoch += 1

        def state_dict(self):
            return save_state(self.model, self.optimizer, epoch=self.epoch)

        def load_state_dict(self, state):
            self.epoch = load_state(state, self.model, self.optimizer)["epoch"]

What :func:`save_state` returns round-trips exactly through :mod:`poptune.serialization`,
optimizer state (int keys, momentum buffers, Adam moments and step counts) included.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .._validation import invalid

try:
    import torch
except ImportError as error:  # pragma: no cover - exercised only without torch
    raise ImportError(
        "poptune.integrations.torch needs PyTorch: pip install torch==2.13.0 (CPU build) or "
        "pip install 'poptune[torch]'."
    ) from error

# The vectorised population lives in its own module; its public names are torch helpers too.
from .vectorized import OPTIMIZERS, Stack, _detached

__all__ = ["OPTIMIZERS", "Stack", "apply_hparams", "load_state", "save_state", "seed_everything"]

# Settings that PyTorch's optimizers refuse to be negative when they are constructed.
_NON_NEGATIVE = ("lr", "momentum", "weight_decay", "eps", "dampening", "lr_decay", "alpha")


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch for one member and return a generator for its own random draws.

    Calls ``torch.manual_seed(seed)``, so that modules built right after (their initial weights)
    are reproducible, and returns a new ``torch.Generator`` seeded with ``seed``, to pass to
    ``torch.randperm``, ``torch.randn``, ``DataLoader(generator=...)``... so that data order does
    not depend on what else drew from the global generator. numpy's and Python's global
    generators are left alone: draw from ``np.random.default_rng(seed)`` instead.

    Example:
        >>> generator = seed_everything(0)
        >>> order = torch.randperm(10, generator=generator)
    """
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def save_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None, **extra: Any
) -> dict[str, Any]:
    """``{"model": model.state_dict(), "optimizer": optimizer.state_dict(), **extra}``.

    Tensors are detached and copied to the CPU, so the checkpoint never aliases live parameters
    or optimizer buffers (which keep changing as training goes on). ``extra`` holds anything
    else the member needs (an epoch count, recent returns...); its tensors are copied too.
    """
    state: dict[str, Any] = {"model": _detached(model.state_dict())}
    if optimizer is not None:
        state["optimizer"] = _detached(optimizer.state_dict())
    for key, value in extra.items():
        state[key] = _detached(value)
    return state


def load_state(
    state: Mapping[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
) -> dict[str, Any]:
    """Restore ``model`` (and ``optimizer``) from :func:`save_state` output; return the extras.

    The optimizer's state is cast to its parameters' dtype and device, as
    ``Optimizer.load_state_dict`` does, so a checkpoint saved on the CPU loads onto a GPU model.

    Raises:
        KeyError: if an entry is missing (the message lists the keys the state has).
    """
    for key, target in (("model", model), ("optimizer", optimizer)):
        if target is not None and key not in state:
            raise KeyError(
                f"load_state: the state has no {key!r} entry; it has keys {list(state)}. Was it "
                "written by save_state with the same arguments?"
            )
    model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    return {k: v for k, v in state.items() if k not in ("model", "optimizer")}


def apply_hparams(
    optimizer: torch.optim.Optimizer,
    hparams: Mapping[str, Any],
    names: Iterable[str] | None = None,
    mapping: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Set optimizer settings from ``hparams`` on every param group, without rebuilding it.

    Momentum buffers and Adam moments survive, which is what PBT needs after an exploit; an SGD
    built with ``momentum=0`` starts keeping momentum buffers once ``momentum`` is set above 0.
    By default every hparam whose name is a setting of the optimizer (a key of
    ``optimizer.defaults``: ``lr``, ``momentum``, ``weight_decay``, ``betas``, ``eps``...) is
    applied, and the others (model or data settings) are ignored. ``names`` restricts to those
    hparams, each of which must then be a setting. ``mapping`` renames hparams to settings, e.g.
    ``{"learning_rate": "lr"}``. A setting held as a tensor (``lr=torch.tensor(0.01)``) is filled
    in place. Returns the settings applied, by setting name.

    Example:
        >>> opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
        >>> hparams = {"learning_rate": 0.05, "units": 64}
        >>> apply_hparams(opt, hparams, mapping={"learning_rate": "lr"})
        {'lr': 0.05}

    Raises:
        ValueError: if a name in ``names`` or a target of ``mapping`` is not a setting of the
            optimizer, a name in ``names`` is missing from ``hparams``, two hparams set the same
            setting, or a value is one PyTorch refuses (a negative ``lr``, ``betas`` outside
            [0, 1)...).
    """
    mapping = dict(mapping or {})
    settings = optimizer.defaults
    optimizer_name = type(optimizer).__name__
    wrong_targets = {k: v for k, v in mapping.items() if v not in settings}
    if wrong_targets:
        raise invalid(
            "mapping",
            f"a dict of hparam -> a setting of {optimizer_name} ({sorted(settings)})",
            wrong_targets,
            "apply_hparams",
        )
    if names is not None:
        keys = [names] if isinstance(names, str) else list(names)
        unknown = [k for k in keys if mapping.get(k, k) not in settings]
        if unknown:
            raise invalid(
                "names",
                f"settings of {optimizer_name}, or hparams that mapping= renames to them",
                unknown,
                "apply_hparams",
                hint=f"{unknown} are not settings of {optimizer_name}; its settings are "
                f"{sorted(settings)}. Rename them with mapping=, e.g. "
                f"mapping={{{unknown[0]!r}: 'lr'}}.",
            )
        missing = [k for k in keys if k not in hparams]
        if missing:
            raise invalid(
                "names",
                f"names of the hparams ({sorted(hparams)})",
                missing,
                "apply_hparams",
                hint=f"The hparams lack {missing}: pass only names the search space defines.",
            )
    else:
        keys = [k for k in hparams if mapping.get(k, k) in settings]
    sources: dict[str, str] = {}
    for key in keys:
        setting = mapping.get(key, key)
        if setting in sources:
            raise invalid(
                "mapping",
                "a map that leaves one hparam per optimizer setting",
                mapping,
                "apply_hparams",
                hint=f"Here both hparams {sources[setting]!r} and {key!r} set {setting!r}; keep "
                "one of them, or restrict with names=.",
            )
        sources[setting] = key
    # Check every value before setting any, so a refused one leaves the optimizer untouched.
    applied = {setting: _checked(setting, hparams[key], key) for setting, key in sources.items()}
    for setting, value in applied.items():
        for group in optimizer.param_groups:
            if isinstance(group.get(setting), torch.Tensor) and not isinstance(value, tuple):
                group[setting].fill_(value)  # a tensor lr (capturable, compiled steps) in place
            else:
                group[setting] = value
    return applied


def _checked(setting: str, value: Any, key: str) -> Any:
    """``value`` as the optimizer expects it, or a ValueError naming the hparam."""
    if isinstance(value, list):
        value = tuple(value)  # betas from a JSON-stored hparam come back as a list
    if setting in _NON_NEGATIVE and _is_number(value) and not float(value) >= 0.0:
        raise ValueError(
            f"apply_hparams: {setting!r} must be >= 0 (PyTorch refuses other values); got "
            f"{value!r} from hparams[{key!r}]. Bound it in the search space."
        )
    if setting == "betas" and not (
        isinstance(value, tuple)
        and len(value) == 2
        and all(_is_number(b) and 0.0 <= float(b) < 1.0 for b in value)
    ):
        raise ValueError(
            f"apply_hparams: 'betas' must be two numbers in [0, 1); got {value!r} from "
            f"hparams[{key!r}]."
        )
    return value


def _is_number(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True
