"""Hugging Face ``transformers``: every evaluation of a ``Trainer`` is one PBT interval.

One call, in the spirit of ``Trainer.hyperparameter_search``: a factory builds a member's
``Trainer`` (its ``TrainingArguments`` evaluate every interval: ``eval_strategy="steps"``,
``eval_steps`` = the interval's length in optimizer steps), poptune does the rest::

    import poptune as pt
    from poptune.integrations import transformers as pt_hf

    def build(hparams, seed):
        args = TrainingArguments(output_dir="out", eval_strategy="steps", eval_steps=50,
                                 seed=seed, report_to=[], save_strategy="no")
        return Trainer(model=BertForSequenceClassification(config), args=args,
                       train_dataset=train, eval_dataset=val, compute_metrics=accuracy)

    result = pt_hf.run(build, space={"learning_rate": pt.LogUniform(1e-5, 1e-3),
                                     "weight_decay": pt.Uniform(0.0, 0.1)},
                       metric="eval_accuracy", population=8, intervals=20)

Each member trains with one ``trainer.train()`` call, which never restarts: at each evaluation
:class:`PBTCallback` reports ``metrics[metric]`` and the member's state (model, optimizer, LR
scheduler, global step), then waits for the worker. After an exploit it loads the donor's state
into the live model and optimizer; after explore it applies the new hyperparameters to the live
optimizer and LR schedule (see :data:`APPLIED`). Names the integration cannot apply to a running
trainer are refused before anything trains. See docs/transformers.md for what an exploit copies.

Write your own training function instead of :func:`run` to control the trainer's life::

    def train(ctx):
        trainer = build(ctx.hparams, ctx.seed)
        trainer.args.max_steps = INTERVALS * trainer.args.eval_steps
        trainer.add_callback(pt_hf.PBTCallback(ctx, trainer, metric="eval_accuracy"))
        trainer.train()
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

try:
    import torch
    from transformers import (
        Trainer,
        TrainerCallback,
        TrainerControl,
        TrainerState,
        TrainingArguments,
    )
    from transformers.optimization import get_scheduler
    from transformers.trainer_utils import IntervalStrategy
except ImportError as error:  # pragma: no cover - exercised only without transformers
    raise ImportError(
        "poptune.integrations.transformers needs transformers and accelerate: pip install "
        "'poptune[transformers]' (install torch==2.13.0, the CPU build, first on machines "
        "without a GPU)."
    ) from error

from .._validation import invalid
from ..loop import Context, Interval
from ..population import run as _run
from ..results import Result
from ..space import Space
from ..trainable import seed_globals
from .torch import apply_hparams, load_state, save_state

__all__ = ["APPLIED", "PBTCallback", "run", "trainable"]

#: The hyperparameters (``TrainingArguments`` fields) a running trainer takes between intervals:
#: ``learning_rate`` (the LR schedule's base), ``weight_decay`` (on the parameter groups that
#: decay), ``warmup_steps`` (and ``warmup_ratio`` where transformers still has it),
#: ``adam_beta1``, ``adam_beta2``, ``adam_epsilon`` (for optimizers with ``betas``/``eps``) and
#: ``max_grad_norm``. Anything else is fixed when the trainer is built.
APPLIED: tuple[str, ...] = (
    "learning_rate",
    "weight_decay",
    "warmup_steps",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_grad_norm",
) + (("warmup_ratio",) if hasattr(TrainingArguments, "warmup_ratio") else ())
_OPTIMIZER_SETTINGS = {"adam_beta1": "betas", "adam_beta2": "betas", "adam_epsilon": "eps"}


class PBTCallback(TrainerCallback):
    """Makes each evaluation of ``trainer`` one PBT interval of the member ``ctx`` trains.

    Add it to the trainer and call ``trainer.train()`` once: on ``on_train_begin`` it takes the
    member's first interval, at every evaluation it reports ``metrics[metric]`` with the state
    (model, optimizer, LR scheduler and ``TrainerState.global_step``/``epoch``) and continues
    with the next interval, and when the worker lets the member go it stops training
    (``control.should_training_stop``).

    Before each interval it loads ``interval.state`` (a donor's after an exploit), then applies
    ``interval.hparams`` to the live trainer: the :data:`APPLIED` fields of ``trainer.args``,
    the optimizer's ``weight_decay`` (decaying groups only), ``betas`` and ``eps``, and the LR
    schedule of ``args.lr_scheduler_type``, rebuilt for the new ``learning_rate`` and warmup and
    positioned at the global step (so a copied member continues the donor's schedule).

    The trainer must evaluate once per interval (``eval_strategy="steps"``,
    ``eval_steps`` = interval length) and train ``max_steps`` = intervals x ``eval_steps``
    (:func:`run` sets that). ``static`` names hparams that the trainer's builder used and that
    never change (fixed values of the space); any other hparam not in :data:`APPLIED` is
    refused when training begins.
    """

    def __init__(
        self, ctx: Context, trainer: Trainer, metric: str, *, static: Iterable[str] = ()
    ) -> None:
        if not isinstance(metric, str) or not metric:
            raise invalid(
                "metric", "a non-empty string such as 'eval_accuracy'", metric, "PBTCallback"
            )
        self.ctx = ctx
        self.trainer = trainer
        self.metric = metric
        self.static = frozenset([static] if isinstance(static, str) else static)
        self.interval: Interval | None = None  # the interval being trained, None when done
        self._intervals: Iterator[Interval] | None = None
        self._decays: list[bool] = []  # per param group: does weight_decay apply to it
        self._lr_scales: list[float] = []  # per param group: its base LR / args.learning_rate

    # --- the trainer's events --------------------------------------------------------------

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        """Check the set-up, then take and apply the member's first interval."""
        self._check_setup(args, state)
        self._intervals = self.ctx.intervals()
        self._next(state, control)

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Report the interval that just ended, then wait for and apply the next one."""
        interval = self.interval
        if interval is None:  # an evaluation outside the member's intervals (after the last)
            return
        metrics = dict(metrics or {})
        end = interval.step * state.eval_steps
        if state.global_step != end:
            raise RuntimeError(
                f"PBTCallback: the trainer evaluated at global step {state.global_step}, but "
                f"interval {interval.step} ends at step {end} (eval_steps={state.eval_steps}). "
                "Evaluate only every eval_steps steps (eval_strategy='steps', no extra "
                "trainer.evaluate() calls during training)."
            )
        if self.metric not in metrics:
            hint = ""
            if f"eval_{self.metric}" in metrics:
                hint = f" Did you mean metric='eval_{self.metric}'?"
            raise ValueError(
                f"PBTCallback: the trainer's evaluation has no metric {self.metric!r}; it logged "
                f"{sorted(metrics)}.{hint} Evaluation metrics carry the prefix 'eval_'; return "
                "the metric from compute_metrics."
            )
        reported = {k: float(v) for k, v in metrics.items() if _is_real(v)}
        interval.report(reported, state=self._state(state))
        self._next(state, control)

    # --- one interval ----------------------------------------------------------------------

    def _next(self, state: TrainerState, control: TrainerControl) -> None:
        assert self._intervals is not None
        self.interval = next(self._intervals, None)
        if self.interval is None:  # the worker let the member go: budget spent, moved, stopping
            control.should_training_stop = True
            return
        if self.interval.state is not None:
            self._load(self.interval.state, state)
        self._apply(self.interval.hparams, state)
        start = (self.interval.step - 1) * state.eval_steps
        if state.global_step != start:
            raise RuntimeError(
                f"PBTCallback: interval {self.interval.step} starts at global step {start} "
                f"(eval_steps={state.eval_steps}), but the trainer is at {state.global_step}. "
                "Was the state reported by another trainer set-up (other eval_steps)?"
            )

    def _parts(self) -> tuple[torch.nn.Module, torch.optim.Optimizer, Any]:
        """The trainer's model, optimizer and LR scheduler, which exist once training began."""
        trainer = self.trainer
        model, optimizer, scheduler = trainer.model, trainer.optimizer, trainer.lr_scheduler
        if model is None or optimizer is None or scheduler is None:
            raise RuntimeError(
                "PBTCallback: the trainer has no model, optimizer or LR scheduler yet; the "
                "callback acts from on_train_begin on. Add it with trainer.add_callback before "
                "trainer.train()."
            )
        return model, optimizer, scheduler

    def _state(self, state: TrainerState) -> dict[str, Any]:
        model, optimizer, scheduler = self._parts()
        return save_state(
            model,
            optimizer,
            scheduler=scheduler.state_dict(),
            trainer_state={"global_step": state.global_step, "epoch": state.epoch},
        )

    def _load(self, saved: Mapping[str, Any], state: TrainerState) -> None:
        model, optimizer, scheduler = self._parts()
        extra = load_state(saved, model, optimizer)
        if "scheduler" in extra:
            scheduler.load_state_dict(extra["scheduler"])
        trainer_state = extra.get("trainer_state")
        if not isinstance(trainer_state, Mapping) or "global_step" not in trainer_state:
            raise KeyError(
                "PBTCallback: the state to load has no trainer_state['global_step']; it has "
                f"keys {sorted(saved)}. Was it reported by PBTCallback?"
            )
        state.global_step = int(trainer_state["global_step"])
        if trainer_state.get("epoch") is not None:
            state.epoch = float(trainer_state["epoch"])

    def _apply(self, hparams: Mapping[str, Any], state: TrainerState) -> None:
        refused = sorted(set(hparams) - set(APPLIED) - self.static)
        if refused:
            raise ValueError(_refusal(refused))
        args, (_, optimizer, _) = self.trainer.args, self._parts()
        for name in APPLIED:
            if name in hparams:
                setattr(args, name, hparams[name])
        settings: dict[str, Any] = {}
        if "adam_beta1" in hparams or "adam_beta2" in hparams:
            settings["betas"] = (float(args.adam_beta1), float(args.adam_beta2))
        if "adam_epsilon" in hparams:
            settings["eps"] = float(args.adam_epsilon)
        apply_hparams(optimizer, settings, names=list(settings))
        if "weight_decay" in hparams:
            decay = float(args.weight_decay)
            if not decay >= 0.0:
                raise ValueError(
                    f"PBTCallback: 'weight_decay' must be >= 0; got {hparams['weight_decay']!r}. "
                    "Bound it in the search space."
                )
            for group, decays in zip(optimizer.param_groups, self._decays, strict=True):
                if decays:
                    group["weight_decay"] = decay
        self._schedule(state)

    def _schedule(self, state: TrainerState) -> None:
        """Rebuild the LR schedule for ``args`` and put it at ``state.global_step``.

        Trainer's schedules are ``LambdaLR``: lr = base_lr x f(step). The function f comes from
        a fresh scheduler built as the Trainer builds its own (on a throw-away optimizer, so the
        real one is untouched); base_lr is the new learning rate.
        """
        args, (_, optimizer, scheduler) = self.trainer.args, self._parts()
        lr = float(args.learning_rate)
        if not lr >= 0.0:
            raise ValueError(
                f"PBTCallback: 'learning_rate' must be >= 0; got {args.learning_rate!r}. Bound "
                "it in the search space."
            )
        factor = self._factor(state.max_steps)
        step = state.global_step
        scheduler.lr_lambdas = [factor] * len(optimizer.param_groups)
        scheduler.base_lrs = [lr * scale for scale in self._lr_scales]
        for group, base in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
            group["initial_lr"] = base
            value = base * factor(step)
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(value)
            else:
                group["lr"] = value
        scheduler.last_epoch = step
        scheduler._last_lr = [float(group["lr"]) for group in optimizer.param_groups]

    def _factor(self, max_steps: int) -> Callable[[int], float]:
        args = self.trainer.args
        dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        fresh = get_scheduler(
            args.lr_scheduler_type,
            optimizer=dummy,
            num_warmup_steps=args.get_warmup_steps(max_steps),
            num_training_steps=max_steps,
            scheduler_specific_kwargs=args.lr_scheduler_kwargs,  # type: ignore[arg-type]
        )
        return fresh.lr_lambdas[0]

    # --- set-up checks ---------------------------------------------------------------------

    def _check_setup(self, args: TrainingArguments, state: TrainerState) -> None:
        """Refuse, before anything trains, what the callback could not do faithfully."""
        if args.eval_strategy != IntervalStrategy.STEPS or not state.eval_steps:
            raise ValueError(
                "PBTCallback: an interval ends at an evaluation, so the trainer must evaluate "
                f"every eval_steps steps; its eval_strategy is {_value(args.eval_strategy)!r}. "
                "Set TrainingArguments(eval_strategy='steps', eval_steps=<interval length>)."
            )
        if state.max_steps % state.eval_steps:
            raise ValueError(
                f"PBTCallback: max_steps={state.max_steps} is not a multiple of eval_steps="
                f"{state.eval_steps}; set max_steps = intervals x eval_steps."
            )
        trainer = self.trainer
        model, optimizer, scheduler = self._parts()
        if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
            raise ValueError(
                f"PBTCallback: the trainer's LR scheduler is a {type(scheduler).__name__}; PBT "
                "changes the learning rate of the schedules that TrainingArguments' "
                "lr_scheduler_type builds as a LambdaLR (linear, cosine, constant, ...). Use "
                "one of those, e.g. lr_scheduler_type='linear'."
            )
        expected = _function(self._factor(state.max_steps))
        if _function(scheduler.lr_lambdas[0]) is not expected:
            raise ValueError(
                "PBTCallback: the trainer's LR scheduler is not the "
                f"{_value(args.lr_scheduler_type)!r} schedule its TrainingArguments describe "
                "(was one passed in Trainer(optimizers=...)?). PBTCallback rebuilds the "
                "schedule from TrainingArguments when learning_rate or warmup change; set "
                "lr_scheduler_type (and lr_scheduler_kwargs) instead."
            )
        lr = float(args.learning_rate)
        self._lr_scales = [float(base) / lr if lr else 1.0 for base in scheduler.base_lrs]
        names = set(trainer.get_decay_parameter_names(model))
        decaying = {id(p) for n, p in model.named_parameters() if n in names}
        self._decays = [
            any(id(p) in decaying for p in group["params"]) for group in optimizer.param_groups
        ]
        inner = getattr(optimizer, "optimizer", optimizer)  # under accelerate's wrapper
        for name, setting in _OPTIMIZER_SETTINGS.items():
            if name in self.ctx.hparams and setting not in optimizer.defaults:
                raise ValueError(
                    f"PBTCallback: hparam {name!r} sets the optimizer's {setting!r}, which "
                    f"{type(inner).__name__} does not have (its settings are "
                    f"{sorted(optimizer.defaults)}). Remove it from the space or train with an "
                    "Adam-type optim."
                )


def trainable(
    factory: Callable[[dict[str, Any], int], Trainer],
    metric: str,
    intervals: int,
    *,
    static: Iterable[str] = (),
) -> Callable[[Context], None]:
    """A training function for :func:`poptune.run`: each member builds its trainer with
    ``factory(hparams, seed)``, trains ``intervals`` x ``eval_steps`` steps (``max_steps`` is
    set) and is stepped by :class:`PBTCallback`.

    ``factory`` should pass ``seed`` to ``TrainingArguments(seed=...)`` so that members differ;
    poptune also seeds Python's, NumPy's and torch's generators with it before the call.
    """
    static = frozenset([static] if isinstance(static, str) else static)

    def train(ctx: Context) -> None:
        seed_globals(ctx.seed)
        trainer = factory(dict(ctx.hparams), ctx.seed)
        if not isinstance(trainer, Trainer):
            raise TypeError(
                f"The trainer factory {_name(factory)} must return a transformers.Trainer; it "
                f"returned {type(trainer).__name__}."
            )
        args = trainer.args
        eval_steps = args.eval_steps
        if args.eval_strategy != IntervalStrategy.STEPS or not _is_count(eval_steps):
            raise ValueError(
                f"The trainer factory {_name(factory)} built TrainingArguments with eval_strategy"
                f"={_value(args.eval_strategy)!r} and eval_steps={eval_steps!r}; one interval "
                "is the steps between two evaluations, so set eval_strategy='steps' and "
                "eval_steps=<interval length> (an int >= 1)."
            )
        args.max_steps = intervals * int(eval_steps)  # type: ignore[arg-type]  # _is_count
        trainer.add_callback(PBTCallback(ctx, trainer, metric, static=static))
        trainer.train()

    # Only the name: the qualname keeps "<locals>", so that the population records no import
    # reference for this closure (pass it again to pt.resume).
    train.__name__ = f"pbt_{_name(factory)}"
    return train


def run(
    factory: Callable[[dict[str, Any], int], Trainer],
    space: Mapping[str, Any] | Space,
    metric: str,
    mode: str = "max",
    *,
    intervals: int = 10,
    name: str | None = None,
    **options: Any,
) -> Result:
    """Train a population of ``factory(hparams, seed)`` trainers with PBT; one interval is
    ``eval_steps`` optimizer steps, scored by ``metric`` (e.g. ``"eval_accuracy"``).

    The tuned names of ``space`` must be in :data:`APPLIED`; fixed values may be anything the
    factory reads (model sizes, batch size...). ``options`` go to :func:`poptune.run`
    (``population``, ``workers``, ``exploit``, ``explore``, ``storage``, ``seed``...). The run
    is named after the factory unless ``name`` is given. To resume it later, pass
    ``trainable=trainable(factory, metric, intervals, static=...)`` to ``pt.resume``.

    Raises:
        ValueError: if a tuned hyperparameter cannot be applied to a running trainer.
    """
    space = Space(space)
    refused = [n for n in space.distributions if n not in APPLIED]
    if refused:
        raise ValueError(_refusal(refused))
    function = trainable(factory, metric, intervals, static=space.fixed)
    return _run(
        function,
        space=space,
        metric=metric,
        mode=mode,
        intervals=intervals,
        name=name or _name(factory),
        **options,
    )


def _refusal(names: list[str]) -> str:
    return (
        f"poptune's transformers integration cannot change {names} in a running Trainer; it "
        f"applies {list(APPLIED)}. Make the others fixed values of the space (the trainer "
        "factory reads them once), or tune them with a Trainable of your own."
    )


def _function(factor: Any) -> Any:
    """The function behind an LR factor (``functools.partial`` objects unwrapped)."""
    return getattr(factor, "func", factor)


def _value(setting: Any) -> Any:
    return getattr(setting, "value", setting)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _name(function: Any) -> str:
    return getattr(function, "__name__", None) or type(function).__name__
