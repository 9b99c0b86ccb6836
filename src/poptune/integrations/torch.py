"""PyTorch helpers for trainables: state in and out, hparams applied to an optimizer in place.

Example:
    >>> from poptune.integrations.torch import apply_hparams, load_state, save_state
    >>> class Net(pt.Trainable):                                       # doctest: +SKIP
    ...     def train(self, hparams):
    ...         apply_hparams(self.optimizer, hparams)   # lr, momentum, weight_decay...
    ...     def state_dict(self):
    ...         return save_state(self.model, self.optimizer)
    ...     def load_state_dict(self, state):
    ...         load_state(state, self.model, self.optimizer)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

try:
    import torch
except ImportError as error:  # pragma: no cover - exercised only without torch
    raise ImportError(
        "poptune.integrations.torch needs PyTorch: pip install torch==2.13.0 (CPU build) or "
        "pip install 'poptune[torch]'."
    ) from error

__all__ = ["apply_hparams", "load_state", "save_state", "seed_everything"]


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's global generator (so module initialisation is reproducible) and return a
    new ``torch.Generator`` seeded with ``seed`` for data order and other draws."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _detached(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, Mapping):
        return {k: _detached(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_detached(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_detached(v) for v in value)
    return value


def save_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None, **extra: Any
) -> dict[str, Any]:
    """``{"model": ..., "optimizer": ..., **extra}`` with tensors copied to the CPU, so the
    checkpoint never aliases live parameters."""
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

    Raises:
        KeyError: if an entry is missing (the message lists the keys the state has).
    """
    for key, target in (("model", model), ("optimizer", optimizer)):
        if target is not None and key not in state:
            raise KeyError(
                f"load_state: the state has no {key!r} entry; it has keys {sorted(state)}. Was "
                "it written by save_state with the same arguments?"
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

    Momentum buffers and Adam moments survive, which is what PBT needs after an exploit. By
    default every hparam whose name is an optimizer setting (``lr``, ``momentum``,
    ``weight_decay``, ``betas``, ``eps``...) is applied and the others (model settings) are
    ignored. ``names`` restricts to those keys (each must be a setting), and ``mapping`` renames
    hparams to settings, e.g. ``{"learning_rate": "lr"}``. Returns what was applied.

    Raises:
        ValueError: if a key in ``names`` is not a setting of this optimizer.
    """
    mapping = dict(mapping or {})
    settings = set(optimizer.defaults)
    if names is not None:
        keys = list(names)
        unknown = [k for k in keys if mapping.get(k, k) not in settings]
        if unknown:
            raise ValueError(
                f"apply_hparams: {unknown} are not settings of {type(optimizer).__name__}; its "
                f"settings are {sorted(settings)}. Rename them with mapping=."
            )
        missing = [k for k in keys if k not in hparams]
        if missing:
            raise ValueError(f"apply_hparams: hparams lack {missing}; they have {sorted(hparams)}.")
    else:
        keys = [k for k in hparams if mapping.get(k, k) in settings]
    applied: dict[str, Any] = {}
    for key in keys:
        setting = mapping.get(key, key)
        value = hparams[key]
        if isinstance(optimizer.defaults.get(setting), tuple) and isinstance(value, list):
            value = tuple(value)
        for group in optimizer.param_groups:
            group[setting] = value
        applied[setting] = value
    return applied
