"""Many members in one process: N copies of a torch module stacked and trained together.

A :class:`Stack` holds the parameters and buffers of N copies of one ``nn.Module`` as tensors
with a leading member dimension (``torch.func.stack_module_state``), runs them all in one call
(``torch.func.vmap`` over ``torch.func.functional_call``) and updates them with an optimizer
whose hyperparameters are one value per member (SGD with momentum, Adam, AdamW). One member's
slice goes in and out in the format of an ordinary module and optimizer, so a member moves
between a stack and a plain ``nn.Module`` (the best member of a vectorised run loads into the
model you deploy), and a donor's state copied into another slot trains on exactly as the donor
would have::

    import torch
    from poptune.integrations.torch import Stack

    def build():
        return torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.Tanh(), torch.nn.Linear(64, 2))

    stack = Stack(build, seeds=range(64), optimizer="adam", lr=[1e-3] * 64)
    x, y = torch.randn(64, 32, 8), torch.randint(0, 2, (64, 32))  # a batch for each member
    losses = torch.nn.functional.cross_entropy(
        stack(x).flatten(0, 1), y.flatten(), reduction="none"
    ).view(64, 32).mean(dim=1)
    stack.zero_grad()
    losses.sum().backward()   # a sum: each member's gradient is its own loss's
    stack.step()
    stack.load(3, stack.state(0))   # exploit: member 3 continues from member 0's weights
    model = build()
    model.load_state_dict(stack.state(0)["model"])   # an ordinary module again

The layout of :meth:`Stack.state` is the one :func:`poptune.integrations.torch.save_state`
writes for a plain model and optimizer: ``{"model": module.state_dict(), "optimizer":
optimizer.state_dict()}`` (plus any extras), so a checkpoint moves freely between a stacked
member and a ``pt.Trainable`` built on the plain helpers.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import operator
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from .._validation import check_choice, check_int, invalid

try:
    import torch
    from torch.func import functional_call, stack_module_state, vmap
except ImportError as error:  # pragma: no cover - exercised only without torch
    raise ImportError(
        "poptune.integrations.vectorized needs PyTorch: pip install torch==2.13.0 (CPU build) "
        "or pip install 'poptune[torch]'."
    ) from error

__all__ = ["OPTIMIZERS", "Stack"]

#: The optimizers a :class:`Stack` trains with, by the name its ``optimizer=`` takes.
OPTIMIZERS = ("sgd", "adam", "adamw")

# The per-member settings of each optimizer, as torch.optim names them, with torch's defaults.
_SETTINGS: dict[str, dict[str, Any]] = {
    "sgd": {"lr": 1e-3, "momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False},
    "adam": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0},
    "adamw": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2},
}
_TORCH_CLASS = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}
# Settings of torch.optim's param groups that a Stack does not vary, with the only value it
# can load (a state trained with amsgrad=True has moments a Stack does not keep).
_FIXED = {"amsgrad": False, "maximize": False}


class Stack:
    """N copies of a torch module, stacked, run with ``vmap`` and trained by one optimizer.

    Args:
        build: a function of no arguments that returns a new ``nn.Module`` (on any device; it
            is moved to ``device``). It is called once per member, right after
            ``torch.manual_seed(seed)`` with that member's seed, so member ``k`` starts from the
            weights ``seed_everything(seeds[k]); build()`` gives a plain module. The caller's
            torch generator is left as it was.
        seeds: one int per member; their number is the number of members N.
        optimizer: ``"sgd"`` (settings ``lr``, ``momentum``, ``dampening``, ``weight_decay``,
            ``nesterov``), ``"adam"`` or ``"adamw"`` (``lr``, ``betas``, ``eps``,
            ``weight_decay``), with torch.optim's defaults and update rules.
        device: where the stacked tensors live (``"cpu"``, ``"cuda:0"``...); by default, where
            ``build`` put the module.
        randomness: how random operations (dropout) draw under ``vmap``: ``"different"`` for
            each member (default), ``"same"``, or ``"error"`` to refuse them.
        **settings: the optimizer's settings, each a number (every member) or N numbers (a
            list, tuple, array or 1-D tensor, one per member); ``betas`` is a pair
            ``(beta1, beta2)`` of either. See :meth:`set_hparams`.

    Calling the stack runs every member: ``stack(x)`` with ``x`` of shape ``(N, batch, ...)``
    (one batch per member) returns the outputs with the same leading N; ``stack(x,
    in_dims=None)`` gives every member the same ``x``. Sum the members' losses before
    ``backward()``: each member's gradient is then exactly its own loss's (a mean over members
    would divide them by N).

    Raises:
        InvalidParameterError: (a ``ValueError`` and ``TypeError``) for an unknown optimizer or
            setting, a setting with a number of values other than N, a value torch.optim
            refuses, seeds that are not ints, or a ``build`` that returns no ``nn.Module``.

    Examples:
        >>> stack = Stack(lambda: torch.nn.Linear(3, 1), seeds=[0, 1], optimizer="sgd",
        ...               lr=[0.1, 0.01], momentum=0.9)
        >>> stack(torch.randn(2, 5, 3)).shape
        torch.Size([2, 5, 1])
        >>> stack.hparams["lr"]
        [0.1, 0.01]
    """

    def __init__(
        self,
        build: Callable[[], torch.nn.Module],
        seeds: Iterable[int],
        *,
        optimizer: str,
        device: str | torch.device | None = None,
        randomness: str = "different",
        **settings: Any,
    ) -> None:
        if not callable(build):
            raise invalid("build", "a function that returns an nn.Module", build, "Stack")
        if isinstance(seeds, str | bytes) or not isinstance(seeds, Iterable):
            raise invalid("seeds", "a sequence of ints, one per member", seeds, "Stack")
        seeds = [check_int("seeds", seed, owner="Stack") for seed in seeds]
        if not seeds:
            raise invalid("seeds", "a non-empty sequence of ints, one per member", seeds, "Stack")
        name = check_choice("optimizer", optimizer, OPTIMIZERS, "Stack")
        self._randomness = check_choice(
            "randomness", randomness, ("different", "same", "error"), "Stack"
        )
        modules = [_built(build, seed, device) for seed in seeds]
        try:
            params, buffers = stack_module_state(modules)  # type: ignore[arg-type]
        except (RuntimeError, ValueError) as error:
            raise invalid(
                "build",
                "a function that returns modules of one structure (the same parameter names, "
                "shapes and dtypes for every seed)",
                build,
                "Stack",
                hint=f"Stacking them failed: {error}",
            ) from None
        if not params:
            raise invalid(
                "build", "a function that returns a module with parameters", build, "Stack"
            )
        self.params: dict[str, torch.Tensor] = params
        """The stacked parameters, by the module's parameter names: leaf tensors of shape
        ``(N, *shape)`` whose ``.grad`` the optimizer reads."""
        self.buffers: dict[str, torch.Tensor] = buffers
        """The stacked buffers (BatchNorm's running statistics...), shape ``(N, *shape)``."""
        # The module's code, run by functional_call with the stacked tensors; it holds no data.
        self._template = copy.deepcopy(modules[0]).to("meta")
        self._keys = _state_keys(modules[0], params, buffers)
        self._aliases = _aliases(modules[0])
        self._metadata = getattr(modules[0].state_dict(), "_metadata", None)
        self._size = len(seeds)
        self._optimizer = _OPTIMIZER_CLASSES[name](name, list(params.values()), self._size)
        if settings:
            self.set_hparams(**settings)

    # -- running -----------------------------------------------------------------------------

    def __len__(self) -> int:
        """The number of members N."""
        return self._size

    def __call__(self, *inputs: Any, in_dims: int | tuple[int | None, ...] | None = 0) -> Any:
        """Every member's forward pass on its inputs: ``in_dims`` says, as for
        ``torch.func.vmap``, which dimension of each input holds the members (``0``: each
        member its own slice; ``None``: one input shared by all)."""
        dims = in_dims if isinstance(in_dims, tuple) else (in_dims,) * len(inputs)
        if len(dims) != len(inputs):
            raise invalid(
                "in_dims",
                f"an int, None, or a tuple of one per input ({len(inputs)})",
                in_dims,
                "Stack.__call__",
            )
        batched = vmap(self._forward, in_dims=(0, 0, *dims), randomness=self._randomness)
        return batched(self.params, self.buffers, *inputs)

    def _forward(self, params: Any, buffers: Any, *inputs: Any) -> Any:
        if self._aliases:  # tied weights: each name the module uses gets the one tensor
            params = {**params, **{a: params[n] for a, n in self._aliases if n in params}}
            buffers = {**buffers, **{a: buffers[n] for a, n in self._aliases if n in buffers}}
        return functional_call(self._template, (params, buffers), inputs)

    def parameters(self) -> Iterator[torch.Tensor]:
        """The stacked parameters (for gradient clipping and the like)."""
        return iter(self.params.values())

    def train(self, mode: bool = True) -> Stack:
        """Training mode (dropout on, BatchNorm updating its statistics) for every member."""
        self._template.train(mode)
        return self

    def eval(self) -> Stack:
        """Evaluation mode for every member: ``train(False)``."""
        return self.train(False)

    @property
    def training(self) -> bool:
        """Whether the members are in training mode."""
        return self._template.training

    @property
    def device(self) -> torch.device:
        """Where the stacked tensors live."""
        return next(iter(self.params.values())).device

    def zero_grad(self) -> None:
        """Forget the gradients of the last ``backward()`` (set them to ``None``)."""
        for param in self.params.values():
            param.grad = None

    def step(self) -> None:
        """One optimizer step for every member, each with its own settings; parameters whose
        ``.grad`` is ``None`` are left as they are."""
        with torch.no_grad():
            self._optimizer.step()

    # -- hyperparameters ---------------------------------------------------------------------

    @property
    def optimizer(self) -> str:
        """The optimizer's name: ``"sgd"``, ``"adam"`` or ``"adamw"``."""
        return self._optimizer.name

    @property
    def hparams(self) -> dict[str, list[Any]]:
        """The optimizer's settings, each a list of one value per member (``betas`` a list of
        pairs)."""
        return self._optimizer.settings()

    def set_hparams(
        self, hparams: Sequence[Mapping[str, Any]] | None = None, /, **settings: Any
    ) -> dict[str, list[Any]]:
        """Change the optimizer's settings, keeping its moments and momentum buffers.

        ``settings`` by name: a number for every member, or N numbers, one per member (a list,
        tuple, numpy array or 1-D tensor); ``betas`` is a pair ``(beta1, beta2)`` of either.
        Or ``hparams``, one mapping per member (their hyperparameters, e.g. ``[interval.hparams
        for interval in block]``): every key that is a setting of the optimizer is applied and
        the others (model or data settings) are ignored, as
        :func:`~poptune.integrations.torch.apply_hparams` does. Settings given by name win. The
        values are all checked before any is set. Returns the settings applied, by name.

        Examples:
            >>> stack = Stack(lambda: torch.nn.Linear(3, 1), seeds=[0, 1], optimizer="adam")
            >>> stack.set_hparams(lr=[0.1, 0.01], betas=(0.9, [0.99, 0.999]))
            {'lr': [0.1, 0.01], 'betas': [(0.9, 0.99), (0.9, 0.999)]}
            >>> stack.set_hparams([{"lr": 0.2, "units": 64}, {"lr": 0.3, "units": 32}])
            {'lr': [0.2, 0.3]}

        Raises:
            InvalidParameterError: for a name that is not a setting of the optimizer, a number
                of values other than N, or a value torch.optim refuses (a negative ``lr``,
                ``betas`` outside [0, 1), ``nesterov`` without momentum...).
        """
        merged: dict[str, Any] = {}
        if hparams is not None:
            merged.update(self._from_members(hparams))
        merged.update(settings)
        return self._optimizer.set(merged)

    def _from_members(self, hparams: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if (
            isinstance(hparams, Mapping | str)
            or not isinstance(hparams, Sequence)
            or len(hparams) != self._size
            or not all(isinstance(h, Mapping) for h in hparams)
        ):
            raise invalid(
                "hparams",
                f"a sequence of {self._size} mappings, one per member",
                hparams,
                "Stack.set_hparams",
                hint="Pass settings by name to give every member the same value.",
            )
        found: dict[str, Any] = {}
        for setting in self._optimizer.defaults:
            having = [h for h in hparams if setting in h]
            if having and len(having) != self._size:
                raise invalid(
                    "hparams",
                    f"mappings that all have {setting!r} or none has it",
                    hparams,
                    "Stack.set_hparams",
                )
            if having:
                found[setting] = [h[setting] for h in hparams]
        pairs = found.get("betas")
        if pairs is not None:
            if not all(isinstance(p, Sequence) and len(p) == 2 for p in pairs):
                raise invalid(
                    "hparams", "mappings whose 'betas' are pairs", hparams, "Stack.set_hparams"
                )
            # One pair per member, as JSON stores them, to betas' (beta1s, beta2s).
            found["betas"] = ([p[0] for p in pairs], [p[1] for p in pairs])
        return found

    # -- one member in and out ---------------------------------------------------------------

    def state(self, i: int, **extra: Any) -> dict[str, Any]:
        """Member ``i``'s state: ``{"model": ..., "optimizer": ..., **extra}``.

        ``"model"`` is what ``module.state_dict()`` gives for the module ``build`` returns (the
        same keys in the same order, persistent buffers included), and ``"optimizer"`` what
        ``optimizer.state_dict()`` gives for torch.optim's SGD, Adam or AdamW over
        ``module.parameters()`` with this member's settings: ``{"state": {index: {...}},
        "param_groups": [{...}]}``. So ``module.load_state_dict(state["model"])`` and
        ``optimizer.load_state_dict(state["optimizer"])`` continue the member in plain torch,
        and :func:`~poptune.integrations.torch.load_state` reads it too. Every tensor is a
        detached copy on the CPU (``extra`` tensors included), never a view of the stack.
        """
        index = self._index(i, "state")
        with torch.no_grad():
            model = OrderedDict((key, _copy(self._tensor(name)[index])) for key, name in self._keys)
            if self._metadata is not None:
                model._metadata = copy.copy(self._metadata)  # type: ignore[attr-defined]
            state: dict[str, Any] = {
                "model": model,
                "optimizer": self._optimizer.state(index),
            }
        for key, value in extra.items():
            state[key] = _detached(value)
        return state

    def load(self, i: int, state: Mapping[str, Any]) -> dict[str, Any]:
        """Make member ``i`` continue from ``state``; return its extra entries.

        ``state`` has :meth:`state`'s layout (from this stack, another, or
        :func:`~poptune.integrations.torch.save_state` on a plain module and torch.optim
        optimizer of the same kind): the weights and buffers, the optimizer's moments, step
        counts and settings are all copied into slot ``i``, so that it then trains exactly as
        the member ``state`` came from would have. Everything is checked before anything is
        copied: a refused state leaves the stack as it was.

        Raises:
            IndexError: if ``i`` is not a member index (0 to N - 1).
            KeyError: if ``state`` has no ``"model"`` or ``"optimizer"`` entry.
            ValueError: if the model's keys or shapes differ from this stack's module (the
                message lists them), or the optimizer state is not one this stack's optimizer
                could have written (another optimizer, several param groups, amsgrad...).
        """
        index = self._index(i, "load")
        if not isinstance(state, Mapping):
            raise TypeError(
                f"Stack.load: the state must be a mapping like Stack.state() returns; got "
                f"{type(state).__name__}."
            )
        for key in ("model", "optimizer"):
            if key not in state:
                raise KeyError(
                    f"Stack.load: the state has no {key!r} entry; it has keys {list(state)}. "
                    "Was it written by Stack.state or save_state(model, optimizer)?"
                )
        model = self._checked_model(state["model"])
        load_optimizer = self._optimizer.checked(state["optimizer"])
        with torch.no_grad():
            for name, value in model.items():
                self._tensor(name)[index].copy_(value)
            load_optimizer(index)
        return {k: v for k, v in state.items() if k not in ("model", "optimizer")}

    def _tensor(self, name: str) -> torch.Tensor:
        return self.params[name] if name in self.params else self.buffers[name]

    def _index(self, i: Any, method: str) -> int:
        if isinstance(i, bool) or not hasattr(i, "__index__"):
            raise TypeError(f"Stack.{method}: the member index must be an int; got {i!r}.")
        index = operator.index(i)
        if not 0 <= index < self._size:
            raise IndexError(
                f"Stack.{method}: member index {index} is out of range for a stack of "
                f"{self._size} members (0 to {self._size - 1})."
            )
        return index

    def _checked_model(self, model: Any) -> dict[str, torch.Tensor]:
        """``model``'s tensors by stacked name, once its keys and shapes match this stack's."""
        if not isinstance(model, Mapping):
            raise ValueError(
                f"Stack.load: state['model'] must be a module's state_dict (a mapping of names "
                f"to tensors); got {type(model).__name__}."
            )
        expected = [key for key, _ in self._keys]
        missing = [key for key in expected if key not in model]
        unexpected = [key for key in model if key not in dict(self._keys)]
        wrong: dict[str, tuple[Any, tuple[int, ...]]] = {}
        for key, name in self._keys:
            want = tuple(self._tensor(name).shape[1:])
            value = model.get(key)
            if key in model and not isinstance(value, torch.Tensor):
                wrong[key] = (_describe(value), want)
            elif isinstance(value, torch.Tensor) and tuple(value.shape) != want:
                wrong[key] = (tuple(value.shape), want)
        if missing or unexpected or wrong:
            problems = []
            if missing:
                problems.append(f"missing keys {missing}")
            if unexpected:
                problems.append(f"unexpected keys {unexpected}")
            if wrong:
                problems.append(
                    "values (state's, stack's shape) that differ "
                    + ", ".join(f"{k}: {got} vs {want}" for k, (got, want) in wrong.items())
                )
            raise ValueError(
                "Stack.load: state['model'] is not a state_dict of this stack's module: "
                + "; ".join(problems)
                + ". Load states of the module that build returns."
            )
        return {name: model[key] for key, name in self._keys}


# -- optimizers ------------------------------------------------------------------------------


class _Optimizer:
    """An optimizer over stacked parameters with settings that are one value per member.

    Settings are kept as Python values (what ``state`` reports and ``set`` checks) and as
    float64 tensors on the parameters' device, from which each step derives, in float64 as
    torch.optim does with its Python floats, the factors it applies in the parameters' dtype.
    """

    defaults: dict[str, Any]

    def __init__(self, name: str, params: list[torch.Tensor], size: int) -> None:
        self.name = name
        self.params = params
        self.size = size
        self.defaults = _SETTINGS[name]
        self.device = params[0].device if params else torch.device("cpu")
        self.values: dict[str, list[Any]] = {}
        self.stale = False  # are the device tensors behind self.values
        # torch.optim's own param group for this optimizer, so that state() writes the keys
        # the installed torch writes (foreach, fused, decoupled_weight_decay...).
        self.group = dict(_torch_group(_TORCH_CLASS[name]))
        self.set({k: v for k, v in self.defaults.items()})

    # settings

    def settings(self) -> dict[str, list[Any]]:
        return {k: list(v) for k, v in self.values.items()}

    def set(self, settings: Mapping[str, Any]) -> dict[str, list[Any]]:
        unknown = [k for k in settings if k not in self.defaults]
        if unknown:
            raise invalid(
                "settings",
                f"settings of {self.name} ({', '.join(self.defaults)})",
                unknown,
                "Stack.set_hparams",
                hint="Use the names torch.optim uses.",
            )
        checked = {k: self._checked(k, v) for k, v in settings.items()}
        self._check_together({**self.values, **checked})
        self.values.update(checked)
        self._tensors()
        self.stale = False
        return {k: list(v) for k, v in checked.items()}

    def _checked(self, name: str, value: Any, size: int | None = None) -> list[Any]:
        """``value`` as one value per member (``size`` of them: N by default), checked."""
        size = self.size if size is None else size
        if name == "betas":
            if isinstance(value, torch.Tensor | str) or not (
                isinstance(value, Sequence) and len(value) == 2
            ):
                raise invalid(
                    "betas",
                    "a pair (beta1, beta2), each a number or one number per member",
                    value,
                    "Stack",
                )
            first = _per_member("betas[0]", value[0], size, float)
            second = _per_member("betas[1]", value[1], size, float)
            for beta in (*first, *second):
                if not 0.0 <= beta < 1.0:
                    raise invalid("betas", "two numbers in [0, 1)", value, "Stack")
            return list(zip(first, second, strict=True))
        if name == "nesterov":
            return _per_member(name, value, size, bool)
        values = _per_member(name, value, size, float)
        for number in values:
            if not math.isfinite(number) or (name != "dampening" and number < 0.0):
                raise invalid(
                    name,
                    "a finite number >= 0" if name != "dampening" else "a finite number",
                    value,
                    "Stack",
                    hint="torch.optim refuses the same value; bound it in the search space.",
                )
        return values

    def _check_together(self, values: Mapping[str, list[Any]]) -> None:
        """Constraints between settings (hook for subclasses)."""

    def _tensors(self) -> None:
        """Rebuild the device tensors of the settings after a change."""
        raise NotImplementedError

    def _column(self, name: str, index: int | None = None) -> torch.Tensor:
        values = self.values[name]
        if index is not None:
            values = [v[index] for v in values]
        return torch.tensor(values, dtype=torch.float64, device=self.device)

    # steps, state in and out

    def step(self) -> None:
        raise NotImplementedError

    def state(self, i: int) -> dict[str, Any]:
        raise NotImplementedError

    def checked(self, state: Any) -> Callable[[int], None]:
        """A function that loads ``state`` into a member, once ``state`` is checked."""
        raise NotImplementedError

    def _group(self, i: int) -> dict[str, Any]:
        group = dict(self.group)
        for name, values in self.values.items():
            group[name] = values[i]
        group["params"] = list(range(len(self.params)))
        return group

    def _checked_group(self, state: Any, entries: tuple[str, ...]) -> tuple[dict[str, Any], dict]:
        """The settings of ``state``'s one param group and its per-parameter state, checked
        against this optimizer's parameters; ``entries`` are the state keys each has."""
        kind = _TORCH_CLASS[self.name]
        if not (isinstance(state, Mapping) and "state" in state and "param_groups" in state):
            raise ValueError(
                f"Stack.load: state['optimizer'] must be a torch.optim {kind} state_dict (with "
                f"'state' and 'param_groups'); got {_describe(state)}."
            )
        groups = state["param_groups"]
        if not isinstance(groups, Sequence) or len(groups) != 1:
            count = len(groups) if isinstance(groups, Sequence) else groups
            raise ValueError(
                f"Stack.load: state['optimizer'] must have one param group (one setting for "
                f"every parameter of the member); it has {count}."
            )
        group = groups[0]
        indices = list(range(len(self.params)))
        if not isinstance(group, Mapping) or list(group.get("params", ())) != indices:
            raise ValueError(
                f"Stack.load: state['optimizer']'s param group must hold the module's "
                f"{len(indices)} parameters in order (params={indices}); got "
                f"{_describe(group.get('params') if isinstance(group, Mapping) else group)}."
            )
        for flag, value in _FIXED.items():
            if flag in self.group and bool(group.get(flag, value)) != value:
                raise ValueError(
                    f"Stack.load: state['optimizer'] was trained with {flag}={group[flag]!r}, "
                    f"which a Stack does not support; load states trained with {flag}={value}."
                )
        decoupled = group.get("decoupled_weight_decay")
        if (
            self.name != "sgd"
            and decoupled is not None
            and bool(decoupled) != (self.name == "adamw")
        ):
            other = "AdamW" if decoupled else "Adam"
            raise ValueError(
                f"Stack.load: state['optimizer'] is an {other} state and this stack trains "
                f"with {kind}; build the Stack with optimizer={other.lower()!r}."
            )
        missing = [k for k in self.defaults if k not in group]
        if missing:
            raise ValueError(
                f"Stack.load: state['optimizer'] is not a {kind} state: its param group has no "
                f"{missing} (it has {sorted(k for k in group if k != 'params')})."
            )
        try:
            settings = {
                k: tuple(float(b) for b in group[k])
                if k == "betas"
                else bool(group[k])
                if k == "nesterov"
                else float(group[k])
                for k in self.defaults
            }
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(
                f"Stack.load: state['optimizer']'s settings must be numbers (betas a pair); got "
                f"{_describe({k: group[k] for k in self.defaults})}."
            ) from None
        # Checked as set_hparams checks them: a member slice takes no value a Stack refuses.
        for name, setting in settings.items():
            self._checked(name, setting, size=1)
        return settings, self._checked_entries(state["state"], entries, kind)

    def _checked_entries(self, per_param: Any, entries: tuple[str, ...], kind: str) -> dict:
        """The per-parameter state of an optimizer state_dict, checked: every entry of every
        parameter present, step counts and tensors of the parameter's (member) shape."""
        indices = list(range(len(self.params)))
        if not isinstance(per_param, Mapping) or any(k not in indices for k in per_param):
            raise ValueError(
                f"Stack.load: state['optimizer']['state'] must map parameter indices "
                f"{indices[0]} to {indices[-1]} to their state; got keys "
                f"{list(per_param) if isinstance(per_param, Mapping) else _describe(per_param)}."
            )
        for index, entry in per_param.items():
            shape = tuple(self.params[index].shape[1:])
            for key in entries:
                found = entry.get(key) if isinstance(entry, Mapping) else None
                if key == "step":
                    ok = _is_count(found)
                else:
                    ok = isinstance(found, torch.Tensor) and tuple(found.shape) == shape
                if not ok:
                    raise ValueError(
                        f"Stack.load: state['optimizer']['state'][{index}][{key!r}] must be "
                        + ("a step count" if key == "step" else f"a tensor of shape {shape}")
                        + f"; got {_describe(found)}. Is it a {kind} state of this module?"
                    )
        return dict(per_param)

    def _write_settings(self, i: int, settings: Mapping[str, Any]) -> None:
        for name, value in settings.items():
            self.values[name][i] = value
        # Rebuilt at the next step, not once per loaded member (a block loads many at once).
        self.stale = True

    def _refresh(self) -> None:
        if self.stale:
            self._tensors()
            self.stale = False


class _SGD(_Optimizer):
    """torch.optim.SGD's update, member by member: momentum buffers start as the first
    gradient after momentum becomes non-zero, as torch.optim's do."""

    def __init__(self, name: str, params: list[torch.Tensor], size: int) -> None:
        self.buffers = [torch.zeros_like(p) for p in params]
        self.buffered = [False] * size  # has member k a momentum buffer yet
        super().__init__(name, params, size)

    def _check_together(self, values: Mapping[str, list[Any]]) -> None:
        for k, nesterov in enumerate(values["nesterov"]):
            if nesterov and (values["momentum"][k] <= 0 or values["dampening"][k] != 0):
                raise invalid(
                    "nesterov",
                    "False for members without momentum or with dampening (torch.optim's rule)",
                    f"member {k}: nesterov=True, momentum={values['momentum'][k]}, "
                    f"dampening={values['dampening'][k]}",
                    "Stack",
                )

    def _tensors(self) -> None:
        momentum = self.values["momentum"]
        self.active = [m != 0 for m in momentum]
        self.factors = {
            "neg_lr": -self._column("lr"),
            "weight_decay": self._column("weight_decay"),
            "momentum": self._column("momentum"),
            "undamped": 1 - self._column("dampening"),
        }
        self.any_decay = any(w != 0 for w in self.values["weight_decay"])
        self.any_damping = any(d != 0 for d in self.values["dampening"])
        self.any_nesterov = any(self.values["nesterov"])
        self.masks = {
            "active": torch.tensor(self.active, device=self.device),
            "nesterov": torch.tensor(self.values["nesterov"], device=self.device),
        }
        self.views: dict[tuple[str, torch.dtype, int], torch.Tensor] = {}

    def _view(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """Setting ``name`` per member, shaped and typed to broadcast against ``like``."""
        key = (name, like.dtype, like.dim())
        if key not in self.views:
            source = self.factors[name] if name in self.factors else self.masks[name]
            dtype = like.dtype if source.is_floating_point() else source.dtype
            self.views[key] = source.to(dtype).view(-1, *[1] * (like.dim() - 1))
        return self.views[key]

    def step(self) -> None:
        self._refresh()
        any_active = any(self.active)
        all_buffered = all(b or not a for a, b in zip(self.active, self.buffered, strict=True))
        fresh = [a and not b for a, b in zip(self.active, self.buffered, strict=True)]
        fresh_mask = torch.tensor(fresh, device=self.device) if not all_buffered else None
        for param, buf in zip(self.params, self.buffers, strict=True):
            grad = param.grad
            if grad is None:
                continue
            if self.any_decay:
                grad = grad.addcmul(param, self._view("weight_decay", param))
            if any_active:
                momentum = self._view("momentum", param)
                incoming = grad * self._view("undamped", param) if self.any_damping else grad
                if fresh_mask is None and all(self.active):
                    buf.mul_(momentum).add_(incoming)
                else:
                    updated = buf * momentum + incoming
                    if fresh_mask is not None:
                        updated = torch.where(_shaped(fresh_mask, param), grad, updated)
                    buf.copy_(torch.where(self._view("active", param), updated, buf))
                direction = buf
                if self.any_nesterov:
                    direction = torch.where(
                        self._view("nesterov", param), grad + buf * momentum, buf
                    )
                if not all(self.active):
                    direction = torch.where(self._view("active", param), direction, grad)
                grad = direction
            param.addcmul_(grad, self._view("neg_lr", param))
        if any_active and any(p.grad is not None for p in self.params):
            self.buffered = [a or b for a, b in zip(self.active, self.buffered, strict=True)]

    def state(self, i: int) -> dict[str, Any]:
        per_param = (
            {k: {"momentum_buffer": _copy(buf[i])} for k, buf in enumerate(self.buffers)}
            if self.buffered[i]
            else {}
        )
        return {"state": per_param, "param_groups": [self._group(i)]}

    def checked(self, state: Any) -> Callable[[int], None]:
        settings, per_param = self._checked_group(state, ())
        buffers = {
            k: entry.get("momentum_buffer")
            for k, entry in per_param.items()
            if entry.get("momentum_buffer") is not None
        }
        for k, value in buffers.items():
            shape = tuple(self.params[k].shape[1:])
            if not (isinstance(value, torch.Tensor) and tuple(value.shape) == shape):
                raise ValueError(
                    f"Stack.load: state['optimizer']['state'][{k}]['momentum_buffer'] must be a "
                    f"tensor of shape {shape}; got {_describe(value)}."
                )
        if buffers and len(buffers) != len(self.params):
            raise ValueError(
                f"Stack.load: state['optimizer'] has momentum buffers for parameters "
                f"{sorted(buffers)} only; a Stack keeps one for every parameter of a member or "
                "none."
            )
        nesterov = settings["nesterov"]
        if nesterov and (settings["momentum"] <= 0 or settings["dampening"] != 0):
            raise ValueError(
                "Stack.load: state['optimizer'] has nesterov=True without momentum or with "
                "dampening, which torch.optim.SGD refuses."
            )

        def load(i: int) -> None:
            for k, buf in enumerate(self.buffers):
                if buffers:
                    buf[i].copy_(buffers[k])
                else:
                    buf[i].zero_()
            self.buffered[i] = bool(buffers)
            self._write_settings(i, settings)

        return load


class _Adam(_Optimizer):
    """torch.optim.Adam's update (``"adamw"``: AdamW's decoupled weight decay), member by
    member, each with its own step count."""

    def __init__(self, name: str, params: list[torch.Tensor], size: int) -> None:
        self.exp_avgs = [torch.zeros_like(p) for p in params]
        self.exp_avg_sqs = [torch.zeros_like(p) for p in params]
        self.counts = [0] * size  # steps taken by each member, as torch.optim's state["step"]
        self.steps = torch.zeros(size, dtype=torch.float64, device=params[0].device)
        super().__init__(name, params, size)

    def _tensors(self) -> None:
        lr = self._column("lr")
        beta1 = torch.tensor([b[0] for b in self.values["betas"]], dtype=torch.float64)
        beta2 = torch.tensor([b[1] for b in self.values["betas"]], dtype=torch.float64)
        decay = self._column("weight_decay")
        self.factors = {
            "lr": lr,
            "beta1": beta1.to(self.device),
            "beta2": beta2.to(self.device),
            "one_minus_beta1": (1 - beta1).to(self.device),
            "one_minus_beta2": (1 - beta2).to(self.device),
            "eps": self._column("eps"),
            "weight_decay": decay,
            "shrink": 1 - lr * decay,  # AdamW's decoupled decay: param *= 1 - lr * wd
        }
        self.any_decay = any(w != 0 for w in self.values["weight_decay"])
        self.views: dict[tuple[str, torch.dtype, int], torch.Tensor] = {}

    def _view(self, name: str, like: torch.Tensor) -> torch.Tensor:
        key = (name, like.dtype, like.dim())
        if key not in self.views:
            self.views[key] = _shaped(self.factors[name].to(like.dtype), like)
        return self.views[key]

    def step(self) -> None:
        if all(p.grad is None for p in self.params):
            return
        self._refresh()
        self.steps += 1
        self.counts = [c + 1 for c in self.counts]
        # As torch.optim computes them with Python floats: in float64, then cast once.
        bias1 = 1 - self.factors["beta1"] ** self.steps
        bias2_sqrt = (1 - self.factors["beta2"] ** self.steps) ** 0.5
        neg_step_size = -(self.factors["lr"] / bias1)
        per_step: dict[tuple[str, torch.dtype, int], torch.Tensor] = {}

        def view(name: str, source: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
            key = (name, like.dtype, like.dim())
            if key not in per_step:
                per_step[key] = _shaped(source.to(like.dtype), like)
            return per_step[key]

        decoupled = self.name == "adamw"
        for param, exp_avg, exp_avg_sq in zip(
            self.params, self.exp_avgs, self.exp_avg_sqs, strict=True
        ):
            grad = param.grad
            if grad is None:
                continue
            if self.any_decay:
                if decoupled:
                    param.mul_(self._view("shrink", param))
                else:
                    grad = grad.addcmul(param, self._view("weight_decay", param))
            exp_avg.lerp_(grad, self._view("one_minus_beta1", param))
            exp_avg_sq.mul_(self._view("beta2", param)).addcmul_(
                grad * self._view("one_minus_beta2", param), grad
            )
            denom = (exp_avg_sq.sqrt() / view("bias2_sqrt", bias2_sqrt, param)).add_(
                self._view("eps", param)
            )
            param.addcdiv_(exp_avg * view("neg_step_size", neg_step_size, param), denom)

    def state(self, i: int) -> dict[str, Any]:
        per_param: dict[int, dict[str, Any]] = {}
        if self.counts[i]:
            for k, (exp_avg, exp_avg_sq) in enumerate(
                zip(self.exp_avgs, self.exp_avg_sqs, strict=True)
            ):
                per_param[k] = {
                    # torch.optim keeps the step count as a float32 tensor on the CPU.
                    "step": torch.tensor(float(self.counts[i]), dtype=torch.float32),
                    "exp_avg": _copy(exp_avg[i]),
                    "exp_avg_sq": _copy(exp_avg_sq[i]),
                }
        return {"state": per_param, "param_groups": [self._group(i)]}

    def checked(self, state: Any) -> Callable[[int], None]:
        settings, per_param = self._checked_group(state, ("step", "exp_avg", "exp_avg_sq"))
        if per_param and len(per_param) != len(self.params):
            raise ValueError(
                f"Stack.load: state['optimizer'] has moments for parameters {sorted(per_param)} "
                "only; a Stack keeps them for every parameter of a member or none."
            )
        counts = {_count(entry["step"]) for entry in per_param.values()}
        if len(counts) > 1:
            raise ValueError(
                f"Stack.load: state['optimizer']'s parameters have different step counts "
                f"({sorted(counts)}); a Stack keeps one per member."
            )
        count = counts.pop() if counts else 0

        def load(i: int) -> None:
            for k, (exp_avg, exp_avg_sq) in enumerate(
                zip(self.exp_avgs, self.exp_avg_sqs, strict=True)
            ):
                if per_param:
                    exp_avg[i].copy_(per_param[k]["exp_avg"])
                    exp_avg_sq[i].copy_(per_param[k]["exp_avg_sq"])
                else:
                    exp_avg[i].zero_()
                    exp_avg_sq[i].zero_()
            self.counts[i] = count
            self.steps[i] = count
            self._write_settings(i, settings)

        return load


_OPTIMIZER_CLASSES: dict[str, type[_Optimizer]] = {"sgd": _SGD, "adam": _Adam, "adamw": _Adam}


# -- helpers ---------------------------------------------------------------------------------


@functools.cache
def _torch_group(kind: str) -> dict[str, Any]:
    """The param group, without its params, that ``torch.optim.<kind>`` gives a parameter
    passed without settings: the defaults the class hands to ``Optimizer.__init__``.

    They are caught by a class placed between the two in the method resolution order, so no
    optimizer is built: building torch's first optimizer imports ``torch._dynamo`` (about 1 s,
    and 0.3 s more at exit, on the development machine), which nothing else in a Stack needs.
    A torch whose class does not pass them that way is asked the plain way.
    """
    torch_class = getattr(torch.optim, kind)
    caught: dict[str, Any] = {}

    class Catch(torch.optim.Optimizer):
        def __init__(self, params: Any, defaults: dict[str, Any]) -> None:
            caught.update(defaults)

    probe = type(f"_{kind}Probe", (torch_class, Catch), {})
    # Code after super().__init__ may need what Catch skips: what was caught is enough.
    with contextlib.suppress(Exception):
        probe([torch.zeros(1, requires_grad=True)])
    if caught:
        return caught
    group = torch_class([torch.zeros(1, requires_grad=True)]).param_groups[0]
    return {k: v for k, v in group.items() if k != "params"}


def _built(
    build: Callable[[], torch.nn.Module], seed: int, device: str | torch.device | None
) -> torch.nn.Module:
    """``build()`` right after ``torch.manual_seed(seed)``, without moving the caller's
    generator, moved to ``device``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = build()
    if not isinstance(module, torch.nn.Module):
        raise invalid(
            "build",
            "a function that returns an nn.Module",
            f"{build!r} returning {type(module).__name__}",
            "Stack",
        )
    return module.to(device) if device is not None else module


def _state_keys(
    module: torch.nn.Module, params: Mapping[str, Any], buffers: Mapping[str, Any]
) -> list[tuple[str, str]]:
    """``(state_dict key, stacked name)`` for each entry of ``module.state_dict()``, in its
    order: a tied parameter appears under each of its keys, a non-persistent buffer under
    none."""
    names = {id(t): n for n, t in (*module.named_parameters(), *module.named_buffers())}
    keys = []
    for key, tensor in module.state_dict(keep_vars=True).items():
        name = names.get(id(tensor))
        if name is None or (name not in params and name not in buffers):
            raise invalid(
                "build",
                "a function that returns a module whose state_dict holds only parameters and "
                "buffers",
                f"a module with state_dict key {key!r}",
                "Stack",
                hint="Extra state (get_extra_state) cannot be stacked.",
            )
        keys.append((key, name))
    return keys


def _aliases(module: torch.nn.Module) -> list[tuple[str, str]]:
    """``(alias, name)`` for each parameter or buffer that ``module`` reaches under a second
    name (tied weights), ``name`` being the one ``stack_module_state`` stacks it under."""
    found = []
    for named in (module.named_parameters, module.named_buffers):
        first = {id(t): n for n, t in named()}
        found += [(n, first[id(t)]) for n, t in named(remove_duplicate=False) if first[id(t)] != n]
    return found


def _per_member(name: str, value: Any, size: int, kind: type) -> list[Any]:
    """``value`` as a list of ``size`` values of ``kind`` (float or bool): a single value for
    every member, or one per member."""
    if isinstance(value, torch.Tensor):
        if value.dim() > 1:
            raise invalid(name, f"a number or {size} numbers (one per member)", value, "Stack")
        value = value.tolist()
    elif hasattr(value, "tolist") and hasattr(value, "ndim"):  # numpy arrays and scalars
        value = value.tolist()
    values = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else None
    if values is not None and len(values) != size:
        raise invalid(
            name,
            f"a number or {size} numbers (one per member)",
            value,
            "Stack",
            hint=f"Got {len(values)} values for a stack of {size} members.",
        )
    items = values if values is not None else [value] * size
    result: list[Any] = []
    for item in items:
        if kind is bool:
            if not isinstance(item, bool):
                raise invalid(name, f"a bool or {size} bools (one per member)", value, "Stack")
            result.append(item)
        else:
            if isinstance(item, bool) or not isinstance(item, int | float):
                raise invalid(name, f"a number or {size} numbers (one per member)", value, "Stack")
            result.append(float(item))
    return result


def _shaped(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-member vector viewed to broadcast against a stacked tensor."""
    return values.view(-1, *[1] * (like.dim() - 1))


def _copy(tensor: torch.Tensor) -> torch.Tensor:
    """A detached copy of one member's slice, on the CPU (one copy either way)."""
    tensor = tensor.detach()
    return tensor.clone() if tensor.device.type == "cpu" else tensor.cpu()


def _detached(value: Any) -> Any:
    """``value`` with every tensor copied to the CPU and detached; containers rebuilt."""
    if isinstance(value, torch.Tensor):
        return _copy(value)
    if isinstance(value, Mapping):
        return {k: _detached(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_detached(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_detached(v) for v in value)
    return value


def _is_count(value: Any) -> bool:
    try:
        count = float(value)
    except (TypeError, ValueError, RuntimeError):
        return False
    return math.isfinite(count) and count >= 0 and count == int(count)


def _count(value: Any) -> int:
    return int(float(value))


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    shown = repr(value)
    return shown if len(shown) <= 80 else f"{shown[:79]}…"
