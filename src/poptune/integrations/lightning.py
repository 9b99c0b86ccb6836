"""PyTorch Lightning as a member: every validation (or every ``every``-th) is one PBT interval.

Write a training function as usual for :mod:`poptune.loop`, build your LightningModule and call
:func:`fit` (or put a :class:`PBTCallback` in your own ``Trainer``)::

    import poptune as pt
    from poptune.integrations.lightning import fit

    def train(ctx):                                   # one member, on its own thread
        torch.manual_seed(ctx.seed)                   # initial weights, per member
        module = MyModule(**ctx.hparams)              # a LightningModule
        fit(ctx, module, metric="val_acc", datamodule=MyData())

    pt.run(train, space={"lr": pt.LogUniform(1e-3, 0.3)}, metric="val_acc", ...)

``trainer.fit()`` runs once per member and is never left: at the end of each interval the
callback reports ``trainer.callback_metrics`` and a checkpoint (module ``state_dict``,
optimizers' and LR schedulers' states, the precision plugin's scaler), then waits for poptune.
After an exploit it loads the donor's checkpoint into the running module and optimizers; then
it applies the interval's hyperparameters: optimizer settings (``lr``, ``momentum``,
``weight_decay``, ``betas``...) on every param group, in place, and the rest as attributes of
the module (``self.dropout_p = ...`` set in ``__init__`` and read while training; entries of
``module.hparams`` with the same names are updated too). When poptune is done with the member it
sets ``trainer.should_stop``. What is and is not copied: docs/lightning.md.

Every hyperparameter must be one of those (or be declared ``static``): one the callback could
not apply is refused when ``fit`` starts, rather than silently ignored.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

try:
    import lightning.pytorch as pl
    import torch
except ImportError as error:  # pragma: no cover - exercised only without lightning
    raise ImportError(
        "poptune.integrations.lightning needs PyTorch Lightning: pip install 'poptune[lightning]' "
        "(install torch==2.13.0, the CPU build, first on machines without a GPU)."
    ) from error

from .._validation import invalid
from ..loop import Context, Interval, LoopError
from .torch import apply_hparams, load_state, save_state

__all__ = ["PBTCallback", "fit"]


class PBTCallback(pl.Callback):
    """Make every ``every``-th validation of ``trainer.fit()`` one interval of a PBT member.

    Args:
        ctx: the training function's context (``def train(ctx)``).
        metric: the metric PBT scores, as logged with ``self.log`` during validation (the run's
            ``metric=``). Every metric in ``trainer.callback_metrics`` is reported with it.
        every: how many validation runs make one interval (1: each validation epoch).
        static: hyperparameters used only to build the module or the data (layer sizes, batch
            size...). They are not applied during training and must not change: make them
            fixed values of the space.
        mapping: hyperparameter name -> optimizer setting, e.g. ``{"learning_rate": "lr"}``.

    Attributes:
        interval: the interval being trained (its ``step``, ``hparams``, ``seed``), or ``None``
            before the first and after the last.

    Raises (from ``trainer.fit``):
        ValueError: when fit starts, if a hyperparameter is neither an optimizer setting nor an
            attribute of the module (nor static), or ``lr`` is tuned while an LR scheduler sets
            it too; at a validation, if ``metric`` was not logged (the message lists what was).
        LoopError: if training ends (``max_epochs``, ``max_steps``, another callback's
            ``should_stop``) while poptune still has intervals for the member.
    """

    def __init__(
        self,
        ctx: Context,
        metric: str,
        every: int = 1,
        static: Iterable[str] = (),
        mapping: Mapping[str, str] | None = None,
    ) -> None:
        if not isinstance(metric, str) or not metric:
            raise invalid(
                "metric", "the name of a logged metric, such as 'val_loss'", metric, "PBTCallback"
            )
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise invalid(
                "every", "an int >= 1 (validation runs per interval)", every, "PBTCallback"
            )
        self.ctx = ctx
        self.metric = metric
        self.every = every
        self.static = {static} if isinstance(static, str) else set(static)
        self.mapping = dict(mapping or {})
        self.interval: Interval | None = None
        self._intervals: Iterator[Interval] | None = None
        self._finished = False
        self._validations = 0
        unknown_static = sorted(self.static - set(ctx.hparams))
        if unknown_static:
            raise invalid(
                "static",
                f"names of hyperparameters of this run ({sorted(ctx.hparams)})",
                unknown_static,
                "PBTCallback",
            )

    @property
    def finished(self) -> bool:
        """Whether poptune has ended the member's training (the intervals ran out)."""
        return self._finished

    # --- Lightning's hooks ---------------------------------------------------------------

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Refuse hyperparameters that could not be applied; then wait for the member's first
        interval and set it up."""
        self._check_hparams(trainer, pl_module)
        # Here rather than in on_train_start: Lightning draws the first epoch's data order
        # before that hook, and it must come from the interval's seed, as every later epoch's
        # does (the sanity check in between runs with the generators' state isolated).
        self._intervals = self.ctx.intervals()
        self._next(trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """At the end of an interval: report, then wait for the next one and set it up."""
        if trainer.sanity_checking or self.interval is None or trainer.state.fn != "fit":
            return  # not an interval's end: the sanity check, or trainer.validate()
        self._validations += 1
        if self._validations % self.every:
            return
        interval, self.interval = self.interval, None
        interval.report(self._metrics(trainer), state=self._state(trainer, pl_module))
        self._next(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Training may end only when poptune ends it."""
        if self._intervals is not None and not self._finished:
            step = self.interval.step if self.interval is not None else "?"
            raise LoopError(
                f"trainer.fit() ended while poptune still had intervals for member "
                f"{self.ctx.member} (at step {step}, epoch {trainer.current_epoch}, "
                f"max_epochs={trainer.max_epochs}, max_steps={trainer.max_steps}). Let poptune "
                "end training: Trainer(max_epochs=-1), and no EarlyStopping or max_time."
            )

    # --- one interval ----------------------------------------------------------------------

    def _next(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        """Wait for the next interval; load its state and apply its hparams, or stop."""
        assert self._intervals is not None
        interval = next(self._intervals, None)  # seeds the global generators (interval.seed)
        if interval is None:
            self._finished = True
            trainer.should_stop = True
            return
        if interval.state is not None:  # the donor's after an exploit, or ours (moved worker)
            self._load(trainer, module, interval.state)
        self._apply(trainer, module, interval.hparams, interval.step)
        self.interval = interval

    def _metrics(self, trainer: pl.Trainer) -> dict[str, float]:
        metrics = {
            name: float(value)
            for name, value in trainer.callback_metrics.items()
            if not isinstance(value, torch.Tensor) or value.numel() == 1
        }
        if self.metric not in metrics:
            raise ValueError(
                f"PBTCallback: the metric {self.metric!r} was not logged by this validation; "
                f"the trainer logged {sorted(metrics)}. Log it during validation "
                f"(self.log({self.metric!r}, ...) in validation_step), or pass metric= one of "
                "those (the run's metric= too)."
            )
        return metrics

    def _state(self, trainer: pl.Trainer, module: pl.LightningModule) -> dict[str, Any]:
        extra: dict[str, Any] = {
            "optimizers": [optimizer.state_dict() for optimizer in trainer.optimizers],
            "schedulers": [c.scheduler.state_dict() for c in trainer.lr_scheduler_configs],
        }
        precision = getattr(trainer.precision_plugin, "state_dict", None)
        precision_state = precision() if callable(precision) else {}
        if precision_state:
            extra["precision"] = precision_state
        return save_state(module, **extra)  # copies every tensor: no aliasing of live buffers

    def _load(self, trainer: pl.Trainer, module: pl.LightningModule, state: Any) -> None:
        extra = load_state(state, module)
        optimizers, configs = trainer.optimizers, trainer.lr_scheduler_configs
        saved_optimizers = extra.get("optimizers", [])
        saved_schedulers = extra.get("schedulers", [])
        if len(saved_optimizers) != len(optimizers) or len(saved_schedulers) != len(configs):
            raise LoopError(
                f"The state to load has {len(saved_optimizers)} optimizer(s) and "
                f"{len(saved_schedulers)} LR scheduler(s); this trainer has {len(optimizers)} and "
                f"{len(configs)}. Every member must build the same configure_optimizers()."
            )
        for optimizer, saved in zip(optimizers, saved_optimizers, strict=True):
            optimizer.load_state_dict(saved)
        for config, saved in zip(configs, saved_schedulers, strict=True):
            config.scheduler.load_state_dict(saved)
        load_precision = getattr(trainer.precision_plugin, "load_state_dict", None)
        if "precision" in extra and callable(load_precision):
            load_precision(extra["precision"])

    def _apply(
        self,
        trainer: pl.Trainer,
        module: pl.LightningModule,
        hparams: Mapping[str, Any],
        step: int,
    ) -> None:
        """Optimizer settings on every optimizer that has them; the rest on the module."""
        for name in self.static:
            if hparams[name] != self.ctx.hparams[name]:
                raise ValueError(
                    f"PBTCallback: hyperparameter {name!r} is static (used only to build the "
                    f"module or data) but is {hparams[name]!r} at step {step}, not "
                    f"{self.ctx.hparams[name]!r}. Make it a fixed value in the space, or apply it "
                    "as a module attribute."
                )
        names = [name for name in hparams if name not in self.static]
        for optimizer in trainer.optimizers:
            own = [name for name in names if self.mapping.get(name, name) in optimizer.defaults]
            apply_hparams(
                optimizer,
                hparams,
                names=own,
                mapping={k: v for k, v in self.mapping.items() if k in own},
            )
        for name in names:
            if _is_plain_attribute(module, name):
                setattr(module, name, hparams[name])
            if name in module.hparams:  # kept in step, for loggers and Lightning's checkpoints
                module.hparams[name] = hparams[name]

    def _check_hparams(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        settings: set[str] = set()
        for optimizer in trainer.optimizers:
            settings.update(optimizer.defaults)
        wrong = {k: v for k, v in self.mapping.items() if v not in settings}
        if wrong:
            raise invalid(
                "mapping",
                f"hyperparameter -> a setting the optimizers have ({sorted(settings)})",
                wrong,
                "PBTCallback",
            )
        refused = []
        for name in self.ctx.hparams:
            if name in self.static or self.mapping.get(name, name) in settings:
                continue
            # An entry of module.hparams alone is no proof: save_hyperparameters() also records
            # what only built a layer (nn.Dropout(p)), so setting it would change nothing.
            if not _is_plain_attribute(module, name):
                refused.append(name)
        if refused:
            optimizers = ", ".join(type(o).__name__ for o in trainer.optimizers) or "none"
            raise ValueError(
                f"PBTCallback cannot apply the hyperparameters {refused}: they are neither "
                f"settings of the optimizers ({optimizers}: {sorted(settings)}) nor attributes of "
                f"{type(module).__name__} (plain values set in __init__, e.g. self.{refused[0]} "
                f"= {refused[0]}, that the module reads while training). Add such an attribute, "
                "rename an optimizer setting with mapping={name: setting}, or pass static=[...] "
                "for those used only to build the module or the data."
            )
        tuned_lr = [n for n in self.ctx.hparams if self.mapping.get(n, n) == "lr"]
        schedulers = [type(c.scheduler).__name__ for c in trainer.lr_scheduler_configs]
        if tuned_lr and schedulers and not set(tuned_lr) <= self.static:
            raise ValueError(
                f"PBTCallback: hyperparameter {tuned_lr[0]!r} sets the learning rate, but the "
                f"module also configures LR scheduler(s) {schedulers}, which set it themselves: "
                "the two would overwrite each other. Tune the scheduler through a module "
                "attribute instead (e.g. a decay factor), or drop the scheduler."
            )


def _is_plain_attribute(module: pl.LightningModule, name: str) -> bool:
    """Whether ``name`` is a value the module set on itself (not a layer, tensor or method)."""
    if name.startswith("_") or name == "training" or name not in vars(module):
        return False
    value = vars(module)[name]
    return not isinstance(value, torch.nn.Module | torch.Tensor) and not callable(value)


def fit(
    ctx: Context,
    module: pl.LightningModule,
    metric: str,
    *,
    datamodule: pl.LightningDataModule | None = None,
    train_dataloaders: Any = None,
    val_dataloaders: Any = None,
    every: int = 1,
    static: Iterable[str] = (),
    mapping: Mapping[str, str] | None = None,
    **trainer_options: Any,
) -> pl.Trainer:
    """Train ``module`` as one PBT member: ``Trainer(callbacks=[PBTCallback(...)]).fit(...)``.

    The trainer runs until poptune ends the member (``max_epochs=-1``), without its own
    checkpoints (poptune keeps them), logger, progress bar, model summary or sanity check (a
    population prints from every member at once); ``trainer_options`` override any of these and
    pass anything else to ``Trainer`` (``accelerator``, ``precision``, ``callbacks``...).
    Returns the trainer, once poptune has ended the member.

    Example:
        >>> def train(ctx):
        ...     torch.manual_seed(ctx.seed)
        ...     module = Classifier(**ctx.hparams)
        ...     fit(ctx, module, "val_acc", datamodule=Digits(), static=["hidden"])
    """
    callback = PBTCallback(ctx, metric, every=every, static=static, mapping=mapping)
    options: dict[str, Any] = {
        "max_epochs": -1,
        "enable_checkpointing": False,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
    }
    options.update(trainer_options)
    options["callbacks"] = [callback, *(options.get("callbacks") or [])]
    trainer = pl.Trainer(**options)
    trainer.fit(
        module,
        train_dataloaders=train_dataloaders,
        val_dataloaders=val_dataloaders,
        datamodule=datamodule,
    )
    return trainer
