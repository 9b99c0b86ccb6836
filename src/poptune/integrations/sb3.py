"""Stable-Baselines3: an agent trained by one ``model.learn`` call is a PBT member.

Write a training function (:mod:`poptune.loop`), build the agent with the member's
hyperparameters and hand it to :func:`learn`::

    import gymnasium as gym
    import poptune as pt
    from stable_baselines3 import PPO
    from poptune.integrations import sb3 as pt_sb3

    def train(ctx):
        model = PPO("MlpPolicy", "CartPole-v1", learning_rate=ctx.hparams["learning_rate"],
                    ent_coef=ctx.hparams["ent_coef"], seed=ctx.seed, device="cpu")
        pt_sb3.learn(ctx, model, interval_timesteps=10_240, eval_env="CartPole-v1")

    pt.run(train, space={"learning_rate": pt.LogUniform(1e-4, 3e-3),
                         "ent_coef": pt.LogUniform(1e-4, 0.05)},
           metric="mean_reward", population=8, intervals=10)

``model.learn`` runs once for the member's whole budget; a :class:`PBTCallback` ends an interval
every ``interval_timesteps`` environment steps. There it evaluates the policy (given an
environment id or a function that builds the environment, on one copy per evaluation episode
at once: see :func:`evaluate`), reports
``{"mean_reward", "std_reward", "timesteps"}`` with the member's state (the policy's and every
optimizer's ``state_dict``, SAC's entropy coefficient, the update counters and the
``VecNormalize`` statistics), and waits for the worker. After an exploit it loads the donor's
state into the live agent, ``num_timesteps`` included; then it applies the interval's
hyperparameters to the live agent (see :func:`tunable`). A name in the space that the algorithm
cannot change while it learns is refused before anything trains. docs/sb3.md says what an
exploit copies and what happens to an off-policy replay buffer.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from copy import deepcopy
from typing import Any, TypeAlias

try:
    import gymnasium as gym
    import numpy as np
    import torch
    from gymnasium import spaces
    from stable_baselines3 import DQN, PPO, SAC, TD3
    from stable_baselines3.common.base_class import BaseAlgorithm
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.distributions import CategoricalDistribution
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.logger import HumanOutputFormat, KVWriter, Logger
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
    from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
    from stable_baselines3.common.policies import ActorCriticPolicy, BaseModel, BasePolicy
    from stable_baselines3.common.preprocessing import is_image_space, preprocess_obs
    from stable_baselines3.common.running_mean_std import RunningMeanStd
    from stable_baselines3.common.torch_layers import FlattenExtractor, MlpExtractor
    from stable_baselines3.common.type_aliases import PyTorchObs, TrainFreq, TrainFrequencyUnit
    from stable_baselines3.common.utils import FloatSchedule, LinearSchedule
    from stable_baselines3.common.vec_env import (
        DummyVecEnv,
        VecEnv,
        VecNormalize,
        unwrap_vec_normalize,
    )
except ImportError as error:  # pragma: no cover - exercised only without stable-baselines3
    raise ImportError(
        "poptune.integrations.sb3 needs Stable-Baselines3 and Gymnasium: pip install "
        "'poptune[sb3]' (install torch==2.13.0, the CPU build, first on machines without a GPU)."
    ) from error

from .._validation import check_int, invalid
from ..loop import Context, Interval, LoopError
from .torch import _detached

__all__ = [
    "EVAL_ENVS",
    "METRICS",
    "EvalEnv",
    "PBTCallback",
    "apply",
    "check",
    "evaluate",
    "learn",
    "load",
    "save",
    "tunable",
]

#: What every interval reports: the evaluation's mean and standard deviation of the episode
#: return, and the environment steps behind the weights.
METRICS: tuple[str, ...] = ("mean_reward", "std_reward", "timesteps")

#: What ``eval_env`` may be: a Gymnasium environment id (``"CartPole-v1"``), a function that
#: builds the environment (for options: ``lambda: gym.make("CartPole-v1", max_episode_steps=
#: 200)``), one ``gymnasium.Env``, or an SB3 ``VecEnv`` used as it is.
EvalEnv: TypeAlias = "str | Callable[[], gym.Env] | gym.Env | VecEnv"

#: An evaluation built from an id or a function plays on ``min(eval_episodes, EVAL_ENVS)``
#: copies of the environment at once: one policy forward serves them all, and every copy plays
#: the same number of episodes, as in SB3's ``evaluate_policy`` (so short episodes are not
#: favoured).
EVAL_ENVS = 16

# Which hyperparameters each algorithm takes while it learns (the names of its constructor's
# arguments). They are read at every update, or re-applied by the callback where SB3 caches them
# (the rollout buffer's gamma and gae_lambda, the schedules, train_freq).
_ALL = ("learning_rate", "gamma")
_ON_POLICY = ("ent_coef", "vf_coef", "max_grad_norm", "gae_lambda")
_OFF_POLICY = ("tau", "batch_size", "gradient_steps", "train_freq")
_OWN: tuple[tuple[type, tuple[str, ...]], ...] = (
    (PPO, ("clip_range", "clip_range_vf", "n_epochs", "batch_size", "target_kl")),
    (DQN, (
        "target_update_interval",
        "max_grad_norm",
        "exploration_fraction",
        "exploration_initial_eps",
        "exploration_final_eps",
    )),
    (SAC, ("ent_coef", "target_update_interval")),
    (TD3, ("policy_delay", "target_policy_noise", "target_noise_clip")),
)  # fmt: skip
_INTEGERS = frozenset(
    ("n_epochs", "batch_size", "gradient_steps", "train_freq", "target_update_interval",
     "policy_delay")
)  # fmt: skip
_NOT_NEGATIVE = frozenset(
    ("ent_coef", "vf_coef", "tau", "target_policy_noise", "target_noise_clip")
)
_FRACTIONS = frozenset(("gamma", "gae_lambda", "exploration_initial_eps", "exploration_final_eps"))
_POSITIVE = frozenset(
    ("learning_rate", "max_grad_norm", "clip_range", "clip_range_vf", "target_kl",
     "exploration_fraction")
)  # fmt: skip
_OPEN_ENDED = 2**62  # model.learn's total_timesteps when the budget is not given


def tunable(model: BaseAlgorithm) -> tuple[str, ...]:
    """The hyperparameters :func:`learn` changes in ``model`` while it learns.

    Every algorithm: ``learning_rate`` (through ``lr_schedule``, which SB3 re-applies to the
    optimizers at every update) and ``gamma``. On-policy (PPO, A2C): ``ent_coef``, ``vf_coef``,
    ``max_grad_norm``, ``gae_lambda``; PPO also ``clip_range``, ``clip_range_vf`` (when built
    with one), ``n_epochs``, ``batch_size`` and ``target_kl``. Off-policy (DQN, SAC, TD3):
    ``tau``, ``batch_size``, ``gradient_steps`` and ``train_freq`` (in steps); DQN also
    ``target_update_interval``, ``max_grad_norm`` and the exploration schedule's
    ``exploration_fraction``, ``exploration_initial_eps`` and ``exploration_final_eps``; SAC
    ``ent_coef`` (a fixed coefficient, or the learned one's value: see docs/sb3.md) and
    ``target_update_interval``; TD3 ``policy_delay``, ``target_policy_noise`` and
    ``target_noise_clip``. Anything else (``n_steps``, ``buffer_size``, network sizes...) is
    fixed once the agent is built.

    Raises:
        TypeError: if ``model`` is not an on- or off-policy Stable-Baselines3 algorithm.
    """
    _check_model(model, "tunable")
    names = list(_ALL)
    names += _ON_POLICY if isinstance(model, OnPolicyAlgorithm) else _OFF_POLICY
    for kind, own in _OWN:
        if isinstance(model, kind):
            names += own
    if isinstance(model, PPO) and model.clip_range_vf is None:
        names.remove("clip_range_vf")  # no value clipping to tune
    return tuple(dict.fromkeys(names))


class PBTCallback(BaseCallback):
    """Makes every ``interval_timesteps`` environment steps of ``model.learn`` one PBT interval.

    :func:`learn` builds it and calls ``model.learn`` with it; use it directly only to add
    callbacks of your own. An interval ends when ``model.num_timesteps`` reaches its end and the
    updates of the steps before it are done: at the start of the next rollout (PPO, A2C: a
    rollout is ``n_steps x n_envs`` steps; off-policy algorithms: the callback shortens the
    last rollout of an interval so that it ends exactly there).

    Attributes:
        interval: the interval being trained, or ``None`` before the first and after the last.
        timings: seconds spent, over the member's life, in ``"evaluate"`` (the evaluation
            episodes), ``"report"`` (saving the state, handing the interval to the worker and
            waiting for the next: recording, exploit and explore decisions, and, when the worker
            trains other members meanwhile, their training too) and ``"apply"`` (loading a
            state, setting the hyperparameters). The rest of ``model.learn``'s time is training.
    """

    def __init__(
        self,
        ctx: Context,
        interval_timesteps: int,
        eval_env: EvalEnv | None = None,
        eval_episodes: int = 10,
        deterministic: bool = True,
        total_timesteps: int | None = None,
        static: Iterable[str] = (),
    ) -> None:
        super().__init__()
        self.ctx = ctx
        self.static = frozenset([static] if isinstance(static, str) else static)
        self.interval_timesteps = interval_timesteps
        self.eval_episodes = eval_episodes
        self.deterministic = deterministic
        self.total_timesteps = total_timesteps
        # a VecEnv built here (from an id, a function or one gym.Env) gets the training
        # environment's VecNormalize if it has one; environments made here (from an id or a
        # function) are closed at the end, the user's own are not
        self._evaluation = (
            None if eval_env is None else _Evaluation(eval_env, eval_episodes, "learn")
        )
        self.interval: Interval | None = None
        self.timings = {"evaluate": 0.0, "report": 0.0, "apply": 0.0}
        self._intervals: Iterator[Interval] | None = None
        self._finished = False
        self._returns: list[float] = []  # episodes that ended in this interval (no eval_env)
        self._applied: dict[str, Any] = {}  # hparams of the previous interval
        self._learning_starts = 0
        self._train_freq = 1

    @property
    def eval_env(self) -> VecEnv | None:
        """The ``VecEnv`` evaluations play on (SB3's ``evaluate_policy``): the one passed as
        ``eval_env``, or the one built from it (whose environments :func:`evaluate` steps
        directly where it can), or ``None``."""
        return None if self._evaluation is None else self._evaluation.venv

    @property
    def _given(self) -> VecEnv | None:
        """The VecEnv the user passed as eval_env, which check() holds to the training env's
        VecNormalize (one built here gets it)."""
        evaluation = self._evaluation
        return None if evaluation is None or evaluation.built else evaluation.venv

    @property
    def finished(self) -> bool:
        """Whether poptune has ended the member's training (its intervals ran out)."""
        return self._finished

    # --- SB3's events ----------------------------------------------------------------------

    def _on_training_start(self) -> None:
        check(self.model, self.interval_timesteps, self.ctx.hparams, self._given, self.static)
        if isinstance(self.model, OffPolicyAlgorithm):
            self._learning_starts = int(self.model.learning_starts)
        self._intervals = self.ctx.intervals()
        self._next()
        self._plan_rollout(first=True)

    def _on_rollout_start(self) -> None:
        # Here the previous rollout's updates are done: the weights are those of num_timesteps.
        if self.interval is not None and self.model.num_timesteps >= self._end():
            self._boundary()
        self._plan_rollout(first=False)

    def _on_step(self) -> bool:
        if self._finished:
            return False  # ends model.learn (the worker let the member go)
        for info in self.locals.get("infos", ()):
            episode = info.get("episode") if isinstance(info, Mapping) else None
            if episode is not None:
                self._returns.append(float(episode["r"]))
        return True

    def _on_training_end(self) -> None:
        if self.interval is not None and self.model.num_timesteps >= self._end():
            self._boundary()
        if self._evaluation is not None:
            self._evaluation.close()
        if self._intervals is not None and not self._finished:
            step = self.interval.step if self.interval is not None else "?"
            raise LoopError(
                f"model.learn() ended at {self.model.num_timesteps} timesteps while poptune still "
                f"had intervals for member {self.ctx.member} (at step {step}). Pass "
                "total_timesteps = the run's intervals x interval_timesteps, or leave it out."
            )

    # --- one interval ----------------------------------------------------------------------

    def _end(self) -> int:
        assert self.interval is not None
        return self.interval.step * self.interval_timesteps

    def _boundary(self) -> None:
        """Report the interval that ended, then take the next one."""
        interval = self.interval
        assert interval is not None
        model = self.model
        if model.num_timesteps != self._end():
            raise LoopError(
                f"Interval {interval.step} should end at {self._end()} timesteps, but the agent "
                f"is at {model.num_timesteps}. Was a state reported by another set-up (other "
                "interval_timesteps or n_envs) loaded?"
            )
        started = time.perf_counter()
        metrics = self._evaluate(interval)
        self.timings["evaluate"] += time.perf_counter() - started
        started = time.perf_counter()
        interval.report(metrics, state=save(model))
        self.interval = None
        self.timings["report"] += time.perf_counter() - started
        self._next()

    def _next(self) -> None:
        """Wait for the next interval; load its state and apply its hparams, or stop."""
        assert self._intervals is not None
        started = time.perf_counter()
        interval = next(self._intervals, None)  # seeds the global generators (interval.seed)
        begun = time.perf_counter()
        self.timings["report"] += begun - started
        if interval is None:
            self._finished = True
            return
        model = self.model
        if interval.state is not None:  # the donor's after an exploit, or ours (moved worker)
            load(model, interval.state)
            if isinstance(model, OffPolicyAlgorithm) and not _has_transitions(model):
                # A member rebuilt from its checkpoint has an empty replay buffer: collect a
                # few steps again before training on it.
                model.learning_starts = model.num_timesteps + max(
                    self._learning_starts, int(model.batch_size)
                )
        start = (interval.step - 1) * self.interval_timesteps
        if model.num_timesteps != start:
            if interval.state is None:
                raise LoopError(
                    f"Interval {interval.step} starts at {start} timesteps, but the agent is at "
                    f"{model.num_timesteps} and poptune gave it no state to load."
                )
            raise LoopError(
                f"The state for interval {interval.step} was taken at {model.num_timesteps} "
                f"timesteps, but the interval starts at {start} (interval_timesteps="
                f"{self.interval_timesteps}). Every member must use the same interval_timesteps."
            )
        for name in self.static:
            if interval.hparams.get(name) != self.ctx.hparams.get(name):
                raise ValueError(
                    f"Hyperparameter {name!r} is static (it only builds the agent) but is "
                    f"{interval.hparams.get(name)!r} at step {interval.step}, not "
                    f"{self.ctx.hparams.get(name)!r}. Make it a fixed value of the space."
                )
        apply(model, interval.hparams, previous=self._applied)
        self._applied = dict(interval.hparams)
        self._returns = []
        self.interval = interval
        self.timings["apply"] += time.perf_counter() - begun

    def _evaluate(self, interval: Interval) -> dict[str, float]:
        model = self.model
        if self._evaluation is not None:
            returns = self._evaluation.play(
                model, self.eval_episodes, interval.seed, self.deterministic
            )
            mean, std = float(np.mean(returns)), float(np.std(returns))
        else:
            if not self._returns:
                raise LoopError(
                    f"No training episode ended during interval {interval.step} "
                    f"({self.interval_timesteps} timesteps), so there is no return to report. "
                    "Pass eval_env= (episodes played for evaluation), or lengthen "
                    "interval_timesteps."
                )
            mean = float(np.mean(self._returns))
            std = float(np.std(self._returns))
        return {"mean_reward": mean, "std_reward": std, "timesteps": float(model.num_timesteps)}

    def _plan_rollout(self, first: bool) -> None:
        """Off-policy: set the length of the next rollout so that none crosses an interval's
        end (SB3 reads ``train_freq`` when a rollout starts, so this plans the one after the
        rollout starting now, or the first one)."""
        model = self.model
        if not isinstance(model, OffPolicyAlgorithm) or self.interval is None:
            return
        tuned = int(self._applied.get("train_freq", self._train_freq))
        n_envs = model.n_envs
        after = model.num_timesteps
        if not first:  # the rollout starting now, whose length was planned before
            after += _frequency(model) * n_envs
        left = (self._end() - after) // n_envs
        if left <= 0:  # it ends this interval: the next one opens the next interval
            left = self.interval_timesteps // n_envs
        model.train_freq = TrainFreq(min(tuned, left), TrainFrequencyUnit.STEP)  # type: ignore[assignment]

    def init_callback(self, model: BaseAlgorithm) -> None:
        """Remember the agent's own ``train_freq`` (before any rollout is planned)."""
        super().init_callback(model)
        if isinstance(model, OffPolicyAlgorithm):
            model._convert_train_freq()
            self._train_freq = _frequency(model)


def learn(
    ctx: Context,
    model: BaseAlgorithm,
    interval_timesteps: int,
    eval_env: EvalEnv | None = None,
    eval_episodes: int = 10,
    deterministic: bool = True,
    *,
    total_timesteps: int | None = None,
    static: Iterable[str] = (),
    callback: Any = None,
) -> PBTCallback:
    """Train ``model`` as one PBT member with a single ``model.learn`` call.

    Every ``interval_timesteps`` environment steps (a multiple of ``n_steps x n_envs`` for PPO
    and A2C, of ``n_envs`` for off-policy algorithms) is one interval. At its end the policy
    plays ``eval_episodes`` episodes on ``eval_env`` (see :func:`evaluate`: seeded with the
    interval's seed, ``deterministic`` actions by default), or, without ``eval_env``, the
    returns of the training episodes that ended during the interval are used; the interval
    reports :data:`METRICS` (use ``metric="mean_reward"``). Then the agent continues with what
    poptune brings: the donor's state after an exploit, the explored hyperparameters.

    Pass ``eval_env`` as an environment id (``"CartPole-v1"``) or a function that builds one:
    :func:`learn` then makes ``min(eval_episodes, EVAL_ENVS)`` copies that play the episodes at
    once, normalized like the training environment if that is a ``VecNormalize``, and closes
    them at the end. One ``gymnasium.Env`` plays the episodes one after the other; a ``VecEnv``
    is used as it is (it must have the training environment's ``VecNormalize``, whose
    statistics are copied before each evaluation).

    ``total_timesteps`` is the member's budget (the run's ``intervals x interval_timesteps``),
    over which SB3's schedules of progress run (DQN's exploration rate, ``lin_`` learning rates
    of untuned settings). Without it the agent learns until poptune ends it and those schedules
    stay at their start value, so DQN requires it. ``static`` names hyperparameters that only
    build the agent (``n_steps``, ``buffer_size``, network sizes, the environment's id): they
    must be fixed values of the space. ``callback`` adds SB3 callbacks of your own.
    Returns the :class:`PBTCallback`, whose ``timings`` say where the time outside training
    went.

    Raises:
        TypeError: if ``model`` is not a Stable-Baselines3 on- or off-policy algorithm, or
            ``eval_env`` is none of the forms above (or its function builds no
            ``gymnasium.Env``).
        ValueError: before training, if ``interval_timesteps`` is not on a rollout boundary
            (the message gives the nearest valid values), a hyperparameter cannot be changed
            while the agent learns (the message lists those that can), ``eval_env`` is an id
            Gymnasium does not know, or a ``VecEnv`` that lacks the ``VecNormalize`` wrapper
            the training environment has.
    """
    _check_model(model, "learn")
    check_int("interval_timesteps", interval_timesteps, 1, owner="learn")
    check_int("eval_episodes", eval_episodes, 1, owner="learn")
    if isinstance(model, DQN) and total_timesteps is None:
        raise invalid(
            "total_timesteps",
            "an int >= 1 for DQN",
            total_timesteps,
            "learn",
            hint="DQN anneals its exploration rate over the budget, so pass total_timesteps = "
            "the run's intervals x interval_timesteps.",
        )
    if total_timesteps is not None:
        check_int("total_timesteps", total_timesteps, 1, owner="learn")
        if total_timesteps % interval_timesteps:
            raise invalid(
                "total_timesteps",
                f"a multiple of interval_timesteps={interval_timesteps}",
                total_timesteps,
                "learn",
                hint="Pass intervals x interval_timesteps.",
            )
    pbt = PBTCallback(
        ctx, interval_timesteps, eval_env, eval_episodes, deterministic, total_timesteps, static
    )
    check(model, interval_timesteps, ctx.hparams, pbt._given, pbt.static)  # before any step
    callbacks = [pbt] + (list(callback) if isinstance(callback, list | tuple) else [callback])
    with _no_log_folder(model):
        model.learn(
            total_timesteps=total_timesteps or _OPEN_ENDED,
            callback=[c for c in callbacks if c is not None],
            reset_num_timesteps=True,
        )
    return pbt


@contextmanager
def _no_log_folder(model: BaseAlgorithm) -> Iterator[None]:
    """Let ``model`` learn with the logger SB3 would configure, without the empty folder SB3
    creates for it in the temporary directory (``SB3-<date and time>``, one per ``learn``: one
    per member a worker trains) when nothing is written there: no ``tensorboard_log``, no
    ``$SB3_LOGDIR``, no logger of the user's (``set_logger``). Its output is the same: the
    standard output when ``verbose >= 1``, else none."""
    if model._custom_logger or model.tensorboard_log is not None or os.getenv("SB3_LOGDIR"):
        yield
        return
    formats: list[KVWriter] = [HumanOutputFormat(sys.stdout)] if model.verbose >= 1 else []
    model.set_logger(Logger(folder=None, output_formats=formats))
    try:
        yield
    finally:
        model._custom_logger = False  # a later learn() of the user's configures as SB3 does


def evaluate(
    model: BaseAlgorithm,
    env: EvalEnv,
    episodes: int = 10,
    *,
    seed: int | None = None,
    deterministic: bool = True,
) -> list[float]:
    """The return of each of ``episodes`` episodes the policy of ``model`` plays on ``env``, in
    the order they end: :func:`learn`'s evaluation.

    They are the episodes SB3's ``evaluate_policy`` plays on ``env`` as :func:`learn` takes
    ``eval_env`` (an id or a function: ``min(episodes, EVAL_ENVS)`` copies at once, each with
    the same number of episodes; one ``gymnasium.Env``: one episode after the other; a
    ``VecEnv``: as it is), with returns counted by SB3's ``Monitor`` (added when the
    environment has none) and the policy in eval mode. ``seed`` seeds copy ``i`` with
    ``seed + i`` (``VecEnv.seed``), so ``episodes`` copies play the episodes a single
    environment reset with seeds ``seed``, ``seed + 1``... would. When ``model`` trains on a
    ``VecNormalize``, the observations are normalized with its current statistics (not
    updated), the rewards are left as they are.

    Environments built from an id, a function or one ``gymnasium.Env`` are stepped by poptune
    itself, in under 40% of ``evaluate_policy``'s time on CartPole: one forward of the policy per
    step for all the copies (the layers' own ``forward`` under ``torch.no_grad()``, then
    ``predict``'s clipping or unscaling of Box actions), no ``VecEnv`` in between. The actions
    and returns are ``evaluate_policy``'s, in the same order, stochastic ones included (the same
    draws from torch's generator). ``evaluate_policy`` itself plays when that could differ: a
    ``VecEnv`` given, an algorithm or policy with a ``predict`` of its own (recurrent policies;
    DQN when not ``deterministic``, which explores), observations that are not one array (a
    ``Dict`` space) or not of the policy's shape. docs/sb3.md says what it costs.

    Raises:
        TypeError: if ``env`` is none of those forms, or its function builds no
            ``gymnasium.Env``.
        ValueError: if ``env`` is an id Gymnasium does not know, ``episodes`` is not an int
            >= 1, or ``env`` is a ``VecEnv`` without the ``VecNormalize`` ``model`` trains on.
    """
    _check_model(model, "evaluate")
    check_int("episodes", episodes, 1, owner="evaluate")
    evaluation = _Evaluation(env, episodes, "evaluate")
    try:
        return evaluation.play(model, episodes, seed, deterministic)
    finally:
        evaluation.close()


# --- checks --------------------------------------------------------------------------------


def check(
    model: BaseAlgorithm,
    interval_timesteps: int,
    hparams: Mapping[str, Any],
    eval_env: VecEnv | None = None,
    static: Iterable[str] = (),
) -> None:
    """Refuse, before anything trains, what :func:`learn` could not do faithfully.

    Raises:
        TypeError: if ``model`` is not an on- or off-policy Stable-Baselines3 algorithm.
        ValueError: if ``interval_timesteps`` does not fall on a rollout boundary, a name of
            ``hparams`` is not in :func:`tunable`, or ``eval_env`` lacks the ``VecNormalize``
            the training environment has.
    """
    names = tunable(model)
    static = frozenset([static] if isinstance(static, str) else static)
    refused = sorted(set(hparams) - set(names) - static)
    if refused:
        raise ValueError(
            f"poptune's SB3 integration cannot change {refused} while {type(model).__name__} "
            f"learns; it can tune {list(names)}. Make the others fixed values of the space and "
            "declare them static=[...] (the training function reads them to build the agent)."
        )
    unknown = sorted(static - set(hparams))
    if unknown:
        raise invalid(
            "static", f"names of hyperparameters of this run ({sorted(hparams)})", unknown, "check"
        )
    n_envs = model.n_envs
    if isinstance(model, OnPolicyAlgorithm):
        rollout = model.n_steps * n_envs
        what = f"a rollout is n_steps x n_envs = {model.n_steps} x {n_envs} = {rollout} steps"
    else:
        assert isinstance(model, OffPolicyAlgorithm)  # _check_model
        rollout = n_envs
        what = f"every env.step() is n_envs = {n_envs} steps"
        train_freq = model.train_freq
        unit = train_freq.unit if isinstance(train_freq, TrainFreq) else None
        if unit is None and isinstance(train_freq, tuple) and len(train_freq) == 2:
            unit = TrainFrequencyUnit(train_freq[1])
        if unit == TrainFrequencyUnit.EPISODE:
            raise ValueError(
                f"{type(model).__name__} trains every {train_freq} episodes; an interval ends "
                "after a number of steps, which episodes do not fall on. Pass train_freq in "
                "steps (an int)."
            )
    if interval_timesteps % rollout:
        lower = max(rollout, interval_timesteps // rollout * rollout)
        upper = (interval_timesteps // rollout + 1) * rollout
        raise ValueError(
            f"interval_timesteps={interval_timesteps} does not fall on a rollout boundary of "
            f"{type(model).__name__} ({what}). Use a multiple of {rollout}: the nearest are "
            f"{lower} and {upper}."
        )
    normalized = model.get_vec_normalize_env() is not None
    if eval_env is not None and normalized and unwrap_vec_normalize(eval_env) is None:
        raise ValueError(_UNNORMALIZED)
    for name in names:
        if name in hparams and name not in static:
            _value(name, hparams[name], model)


_UNNORMALIZED = (
    "The training environment normalizes observations (VecNormalize), but the eval_env "
    "VecEnv does not; pass the environment's id (or a function that builds it) and poptune "
    "normalizes it the same way, or wrap it yourself, e.g. VecNormalize(DummyVecEnv([make]), "
    "training=False, norm_reward=False): poptune copies the statistics before each evaluation."
)


def _check_model(model: Any, owner: str) -> None:
    if not isinstance(model, OnPolicyAlgorithm | OffPolicyAlgorithm):
        raise invalid(
            "model",
            "a Stable-Baselines3 algorithm (PPO, A2C, DQN, SAC, TD3, or a subclass of "
            "OnPolicyAlgorithm/OffPolicyAlgorithm), which poptune's SB3 integration trains",
            model,
            owner,
            hint=f"It is a {type(model).__module__}.{type(model).__qualname__}. Build the agent "
            "first, e.g. PPO('MlpPolicy', env).",
        )


def _value(name: str, value: Any, model: BaseAlgorithm) -> Any:
    """``value`` as ``name`` takes it, or a ValueError naming the hparam."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"Hyperparameter {name!r} must be a number; got {value!r}.")
    number = float(value)
    if name in _INTEGERS:
        if not number.is_integer() or number < 1:
            raise ValueError(
                f"Hyperparameter {name!r} must be an int >= 1; got {value!r}. Use "
                "pt.IntUniform or a Choice of ints in the space."
            )
        if name == "batch_size" and isinstance(model, PPO) and number < 2:
            raise ValueError(
                f"PPO's 'batch_size' must be >= 2 (advantages are normalized); got {value!r}."
            )
        return int(number)
    if not math.isfinite(number):
        raise ValueError(f"Hyperparameter {name!r} must be finite; got {value!r}.")
    if name in _FRACTIONS and not 0.0 <= number <= 1.0:
        raise ValueError(
            f"Hyperparameter {name!r} must be in [0, 1]; got {value!r}. Bound it in the space."
        )
    if name in _POSITIVE and not number > 0.0:
        raise ValueError(
            f"Hyperparameter {name!r} must be > 0; got {value!r}. Bound it in the space."
        )
    if name in _NOT_NEGATIVE and not number >= 0.0:
        raise ValueError(
            f"Hyperparameter {name!r} must be >= 0; got {value!r}. Bound it in the space."
        )
    if (
        name == "ent_coef"
        and isinstance(model, SAC)
        and model.log_ent_coef is not None
        and not number > 0
    ):
        raise ValueError(
            f"SAC learns its entropy coefficient in log space, so 'ent_coef' must be > 0; got "
            f"{value!r}."
        )
    return number


# --- hyperparameters -----------------------------------------------------------------------


def apply(
    model: BaseAlgorithm, hparams: Mapping[str, Any], previous: Mapping[str, Any] | None = None
) -> None:
    """Set ``hparams`` on the live ``model``, where its next update reads them.

    ``previous`` are the hparams of the member's previous interval: SAC's learned entropy
    coefficient is set to ``ent_coef`` only when that value changes (the first interval, and
    after an explore that changed it); otherwise it keeps learning from where it is.
    """
    names = tunable(model)
    values = {name: _value(name, hparams[name], model) for name in names if name in hparams}
    for name, value in values.items():
        if name == "learning_rate":
            # SB3 sets every optimizer's lr from lr_schedule at each train(): set the schedule.
            model.learning_rate = value
            model.lr_schedule = FloatSchedule(value)
        elif name in ("clip_range", "clip_range_vf"):
            setattr(model, name, FloatSchedule(value))
        elif name in ("gamma", "gae_lambda"):
            setattr(model, name, value)
            if isinstance(model, OnPolicyAlgorithm):  # GAE reads the buffer's own copy
                setattr(model.rollout_buffer, name, value)
        elif name == "train_freq":
            pass  # the callback plans each rollout's length from it
        elif name == "ent_coef" and isinstance(model, SAC):
            if model.log_ent_coef is not None:
                if previous is None or previous.get(name) != hparams[name]:
                    with torch.no_grad():
                        model.log_ent_coef.fill_(math.log(value))
            else:
                model.ent_coef = value
                model.ent_coef_tensor = torch.tensor(value, device=model.device)
        elif name.startswith("exploration_"):
            setattr(model, name, value)
        else:
            setattr(model, name, value)
    if isinstance(model, DQN) and any(n.startswith("exploration_") for n in values):
        model.exploration_schedule = LinearSchedule(
            model.exploration_initial_eps,
            model.exploration_final_eps,
            model.exploration_fraction,
        )
        model.exploration_rate = model.exploration_schedule(model._current_progress_remaining)


# --- state ---------------------------------------------------------------------------------


def save(model: BaseAlgorithm) -> dict[str, Any]:
    """The member's state: ``state_dict`` of the policy and of every optimizer (SB3's own list,
    ``_get_torch_save_params``), its other tensors (SAC's ``log_ent_coef``), the timestep and
    update counters, and the ``VecNormalize`` statistics when the environment has them. Every
    tensor is copied to the CPU, so the state never aliases the live agent."""
    _, variables = model._get_torch_save_params()
    state: dict[str, Any] = {
        "algorithm": type(model).__name__,
        "parameters": _detached(model.get_parameters()),
        "variables": {name: _detached(_attribute(model, name)) for name in variables},
        "num_timesteps": int(model.num_timesteps),
        "n_updates": int(model._n_updates),
    }
    if isinstance(model, DQN):
        state["n_calls"] = int(model._n_calls)
    normalize = model.get_vec_normalize_env()
    if normalize is not None:
        state["vec_normalize"] = {
            "obs_rms": _rms_state(getattr(normalize, "obs_rms", None)),
            "ret_rms": _rms_state(normalize.ret_rms),
        }
    return state


def load(model: BaseAlgorithm, state: Mapping[str, Any]) -> None:
    """Load :func:`save` output into the live ``model``, exactly (tensors copied in place, so
    optimizers keep referring to the same parameters).

    Raises:
        LoopError: if the state is not one :func:`save` wrote for this kind of agent.
    """
    if not isinstance(state, Mapping) or state.get("algorithm") != type(model).__name__:
        kind = state.get("algorithm") if isinstance(state, Mapping) else type(state).__name__
        raise LoopError(
            f"The state to load was saved by poptune's SB3 integration for {kind!r}, not for "
            f"this {type(model).__name__}; every member must build the same algorithm."
        )
    model.set_parameters(dict(state["parameters"]), exact_match=True, device=model.device)
    for name, value in state["variables"].items():
        with torch.no_grad():
            _attribute(model, name).copy_(value)
    model.num_timesteps = int(state["num_timesteps"])
    model._n_updates = int(state["n_updates"])
    if isinstance(model, DQN) and "n_calls" in state:
        model._n_calls = int(state["n_calls"])
    if model._total_timesteps > 0:  # inside model.learn: the schedules follow the step too
        model._update_current_progress_remaining(model.num_timesteps, model._total_timesteps)
    normalize = model.get_vec_normalize_env()
    saved = state.get("vec_normalize")
    if (normalize is None) != (saved is None):
        raise LoopError(
            "The state to load and this agent differ in VecNormalize: every member must wrap "
            "its environment the same way."
        )
    if normalize is not None and saved is not None:
        if saved["obs_rms"] is not None:
            normalize.obs_rms = _rms(saved["obs_rms"])
        normalize.ret_rms = _rms(saved["ret_rms"])


def _attribute(model: BaseAlgorithm, dotted: str) -> Any:
    value: Any = model
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _rms_state(rms: Any) -> Any:
    if rms is None:
        return None
    if isinstance(rms, Mapping):  # one per key of a Dict observation space
        return {key: _rms_state(value) for key, value in rms.items()}
    return {"mean": np.array(rms.mean), "var": np.array(rms.var), "count": float(rms.count)}


def _rms(saved: Mapping[str, Any]) -> Any:
    if "count" not in saved:
        return {key: _rms(value) for key, value in saved.items()}
    rms = RunningMeanStd(shape=np.shape(saved["mean"]))
    rms.mean = np.array(saved["mean"], dtype=np.float64)
    rms.var = np.array(saved["var"], dtype=np.float64)
    rms.count = float(saved["count"])
    return rms


# --- helpers -------------------------------------------------------------------------------


class _Evaluation:
    """Where evaluations play (see :data:`EvalEnv`), built once: the ``VecEnv`` SB3's
    ``evaluate_policy`` steps and, when the environments are built here (from an id, a function
    or one ``gymnasium.Env``), those environments, ``Monitor``-wrapped, which
    :func:`_play_directly` steps itself."""

    def __init__(self, env: EvalEnv, episodes: int, owner: str) -> None:
        self.made = _makes_envs(env)  # made here from an id or a function: closed at the end
        self.envs: list[gym.Env] | None = None
        if isinstance(env, VecEnv):
            self.venv: VecEnv = env
        else:
            self.envs = _eval_envs(env, episodes, owner)
            self.venv = DummyVecEnv([_returning(made) for made in self.envs])

    @property
    def built(self) -> bool:
        """Whether the ``VecEnv`` was built here (else it is the user's, used as it is)."""
        return self.envs is not None

    def play(
        self, model: BaseAlgorithm, episodes: int, seed: int | None, deterministic: bool
    ) -> list[float]:
        """Each episode's return, in the order the episodes end (``evaluate_policy``'s)."""
        self.venv = _normalized_like(model, self.venv, self.built)
        if self.envs is not None and _plays_directly(model, self.envs[0], deterministic):
            normalize = self.venv if isinstance(self.venv, VecNormalize) else None
            return _play_directly(model.policy, self.envs, episodes, seed, deterministic, normalize)
        return _play(model, self.venv, episodes, seed, deterministic)

    def close(self) -> None:
        """Close the environments made here (not the user's own)."""
        if self.made:
            self.venv.close()


def _eval_envs(env: EvalEnv, episodes: int, owner: str) -> list[gym.Env]:
    """``env`` (an id, a function or one gym.Env) as the ``Monitor``-wrapped environments to
    evaluate on: ``min(episodes, EVAL_ENVS)`` copies, or the one given."""
    if isinstance(env, gym.Env):
        # Monitor records whole episodes, so evaluate_policy counts returns as the env
        # defines them.
        return [_monitored(env)]
    if isinstance(env, str):
        try:
            gym.spec(env)
        except gym.error.Error as error:
            raise invalid(
                "eval_env", "a registered Gymnasium environment id", env, owner, hint=str(error)
            ) from None
        name = env
        factory: Callable[[], Any] = lambda: gym.make(name)  # noqa: E731
    elif callable(env):
        factory = env
    else:
        raise invalid(
            "eval_env",
            "an environment id (str), a function that builds a gymnasium.Env, a gymnasium.Env "
            "or an SB3 VecEnv",
            env,
            owner,
            hint=f"It is a {type(env).__module__}.{type(env).__qualname__}. Pass e.g. "
            "eval_env='CartPole-v1'.",
        )
    envs = []
    for _ in range(min(episodes, EVAL_ENVS)):
        made = factory()
        if not isinstance(made, gym.Env):
            raise invalid(
                "eval_env",
                "a function that returns a gymnasium.Env",
                env,
                owner,
                hint=f"It returned a {type(made).__module__}.{type(made).__qualname__}.",
            )
        envs.append(_monitored(made))
    return envs


def _returning(env: gym.Env) -> Callable[[], gym.Env]:
    return lambda: env


def _makes_envs(env: EvalEnv | None) -> bool:
    """Whether :func:`_eval_envs` makes the environments (from an id or a function)."""
    return env is not None and not isinstance(env, VecEnv | gym.Env)


def _monitored(env: gym.Env) -> gym.Env:
    return env if _is_monitored(env) else Monitor(env)


def _normalized_like(model: BaseAlgorithm, venv: VecEnv, built: bool) -> VecEnv:
    """``venv`` observing as ``model``'s training environment: with its ``VecNormalize``
    statistics, frozen, when it has them (``built``: ``venv`` was made here, and gets a
    ``VecNormalize`` with the training one's settings if it has none)."""
    training = model.get_vec_normalize_env()
    if training is None:
        return venv
    evaluating = unwrap_vec_normalize(venv)
    if evaluating is None:
        if not built:
            raise ValueError(_UNNORMALIZED)
        evaluating = venv = VecNormalize(
            venv,
            training=False,
            norm_obs=training.norm_obs,
            norm_reward=False,
            clip_obs=training.clip_obs,
            epsilon=training.epsilon,
            norm_obs_keys=training.norm_obs_keys,
        )
    evaluating.obs_rms = deepcopy(training.obs_rms)
    evaluating.training = False
    evaluating.norm_reward = False
    return venv


def _play(
    model: BaseAlgorithm, venv: VecEnv, episodes: int, seed: int | None, deterministic: bool
) -> list[float]:
    """Each episode's return (``evaluate_policy``), ``venv`` seeded with ``seed``."""
    if seed is not None:
        venv.seed(seed)
    with _predicting(model.policy):
        returns, _ = evaluate_policy(  # type: ignore[misc]
            model,
            venv,
            n_eval_episodes=episodes,
            deterministic=deterministic,
            return_episode_rewards=True,
            warn=False,
        )
    return [float(r) for r in returns]  # type: ignore[union-attr]


def _unchanged(mode: bool) -> None:
    """What ``set_training_mode`` does while :func:`_predicting`: nothing."""


@contextmanager
def _predicting(policy: BasePolicy) -> Iterator[None]:
    """The policy in eval mode once for a whole evaluation. SB3's ``predict`` switches it at
    every call (``set_training_mode(False)``, a walk over all the policy's modules that costs
    about a third of a small MLP's forward pass); nothing switches it back during the episodes,
    so doing it once changes no action. The training loop sets its own mode afterwards."""
    policy.set_training_mode(False)
    previous = policy.__dict__.get("set_training_mode")
    policy.__dict__["set_training_mode"] = _unchanged  # shadows the method on this instance
    try:
        yield
    finally:
        if previous is None:
            del policy.__dict__["set_training_mode"]
        else:
            policy.__dict__["set_training_mode"] = previous


# Observation spaces whose batch is one array, as DummyVecEnv stacks it.
_ARRAY_SPACES = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)


def _plays_directly(model: BaseAlgorithm, env: gym.Env, deterministic: bool) -> bool:
    """Whether :func:`_play_directly` plays exactly ``evaluate_policy``'s episodes for ``model``
    on ``env``: its actions come from SB3's ``BasePolicy.predict`` (not a ``predict`` of the
    algorithm's or the policy's own: recurrent policies, DQN's exploring actions when not
    ``deterministic``), and its observations stack into one array of the policy's shape."""
    algorithm = type(model).predict
    if algorithm is not BaseAlgorithm.predict and not (
        algorithm is DQN.predict and deterministic  # DQN explores only when not deterministic
    ):
        return False
    policy = model.policy
    space = env.observation_space
    return (
        type(policy).predict is BasePolicy.predict
        and isinstance(space, _ARRAY_SPACES)
        and space.shape == policy.observation_space.shape
    )


def _play_directly(
    policy: BasePolicy,
    envs: list[gym.Env],
    episodes: int,
    seed: int | None,
    deterministic: bool,
    normalize: VecNormalize | None,
) -> list[float]:
    """What ``evaluate_policy`` returns on ``DummyVecEnv(envs)`` seeded with ``seed``, without
    it: the same batches of observations, one policy forward per step for all the
    environments, the same calls to each environment in the same order (step; reset when an
    episode ends; copy ``i`` first reset with ``seed + i``), and each copy's share of the
    episodes counted from its ``Monitor`` as ``evaluate_policy`` counts them. What is left out
    is SB3's machinery around those calls: ``predict``'s checks and conversions at every step,
    the VecEnv's buffers and the deep copy of every step's infos."""
    count = len(envs)
    targets = [(episodes + i) // count for i in range(count)]  # evaluate_policy's split
    played = [0] * count
    space = envs[0].observation_space
    # DummyVecEnv's buffer: observations stored in the space's dtype
    observations = np.zeros((count, *(space.shape or ())), dtype=space.dtype)
    for i, env in enumerate(envs):
        observation, _ = env.reset(seed=None if seed is None else seed + i)
        observations[i] = observation
    act = _actor(policy, deterministic)
    policy.set_training_mode(False)  # what predict does at every step
    returns: list[float] = []
    while len(returns) < episodes:
        # Every copy steps until the last has played its share, as in evaluate_policy: the
        # batch, and so every action, is the same.
        batch = observations.copy() if normalize is None else normalize.normalize_obs(observations)
        actions = act(batch)
        for i, env in enumerate(envs):
            observation, _, terminated, truncated, info = env.step(actions[i])
            if terminated or truncated:
                if played[i] < targets[i] and "episode" in info:  # Monitor's whole episode
                    returns.append(float(info["episode"]["r"]))
                    played[i] += 1
                observation, _ = env.reset()
            observations[i] = observation
    return returns


def _actor(policy: BasePolicy, deterministic: bool) -> Callable[[Any], np.ndarray]:
    """The batch of observations -> the actions ``policy.predict`` gives for it: its
    conversion to a tensor, its forward under ``torch.no_grad()`` and its post-processing
    (reshaped; Box actions unscaled when the policy squashes them, else clipped)."""
    space = policy.observation_space
    plain = (
        type(policy).obs_to_tensor is BaseModel.obs_to_tensor
        and isinstance(space, spaces.Box)
        and not is_image_space(space)
    )
    device = policy.device
    argmax = _argmax_forward(policy) if deterministic else None
    action_space = policy.action_space
    shape = (-1, *(action_space.shape or ()))
    box = action_space if isinstance(action_space, spaces.Box) else None
    squash = policy.squash_output

    def act(observations: np.ndarray) -> np.ndarray:
        # a plain Box's batch is the tensor obs_to_tensor makes of it (copied, same shape)
        tensor = (
            torch.as_tensor(observations, device=device)
            if plain
            else policy.obs_to_tensor(observations)[0]
        )
        with torch.no_grad():
            if argmax is not None:
                actions = argmax(tensor)
            else:
                actions = policy._predict(tensor, deterministic=deterministic).cpu().numpy()
        actions = actions.reshape(shape)
        if box is not None:
            actions = (
                policy.unscale_action(actions) if squash else np.clip(actions, box.low, box.high)
            )
        return actions

    return act


def _argmax_forward(policy: BasePolicy) -> Callable[[PyTorchObs], np.ndarray] | None:
    """For an actor-critic policy with discrete actions (SB3's own ``_predict``): the tensor
    -> the deterministic actions, from the actor's logits without building SB3's
    ``Categorical`` distribution at every step, which costs more than the network. None for
    any other policy."""
    if not isinstance(policy, ActorCriticPolicy):
        return None
    kind = type(policy)
    if not (
        type(policy.action_dist) is CategoricalDistribution
        and kind._predict is ActorCriticPolicy._predict
        and kind.get_distribution is ActorCriticPolicy.get_distribution
        and kind._get_action_dist_from_latent is ActorCriticPolicy._get_action_dist_from_latent
    ):
        return None
    calls = _logit_calls(policy)
    distribution = policy.action_dist

    def forward(observations: PyTorchObs) -> np.ndarray:
        logits: Any = observations
        for call in calls:
            logits = call(logits)
        chosen = _clear_argmax(logits)
        if chosen is None:  # a near tie (or no finite logits): SB3's own distribution decides
            mode = distribution.proba_distribution(action_logits=logits).get_actions(True)
            chosen = mode.cpu().numpy()
        return chosen

    return forward


def _logit_calls(policy: ActorCriticPolicy) -> list[Callable[[Any], Any]]:
    """The calls ``get_distribution`` makes from the observations to the actor's logits
    (features, ``forward_actor``, ``action_net``), where SB3's own classes make them down to
    each layer's ``forward`` (see :func:`_direct_calls`)."""
    calls: list[Callable[[Any], Any]] = []
    extract = super(ActorCriticPolicy, policy).extract_features  # as get_distribution calls it
    extractor = policy.pi_features_extractor
    if getattr(extract, "__func__", None) is BaseModel.extract_features:
        space, images = policy.observation_space, policy.normalize_images
        calls.append(lambda obs: preprocess_obs(obs, space, normalize_images=images))
        calls += _direct_calls(extractor)
    else:
        calls.append(lambda obs: extract(obs, extractor))
    mlp = policy.mlp_extractor
    calls += _direct_calls(mlp.policy_net) if type(mlp) is MlpExtractor else [mlp.forward_actor]
    return calls + _direct_calls(policy.action_net)


# Where torch keeps the hooks every module runs; one it no longer has counts as hooked.
_GLOBAL_HOOKS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
)


def _direct_calls(module: torch.nn.Module) -> list[Callable[[Any], Any]]:
    """``module``'s forward as a list of calls to apply in turn: a ``Sequential`` (or SB3's
    ``FlattenExtractor``) as its layers' calls, a layer without children as its own
    ``forward``. ``module(x)`` runs exactly ``module.forward(x)`` when no hook is registered
    (on the module or globally), the module is not compiled and its class keeps
    ``nn.Module``'s call; skipping that call's machinery saves more than half of a small MLP's
    forward. Otherwise ``[module]``."""
    kind = type(module)
    if (
        kind.__call__ is not torch.nn.Module.__call__
        or kind._call_impl is not torch.nn.Module._call_impl
        or any(getattr(torch.nn.modules.module, name, True) for name in _GLOBAL_HOOKS)
        or module._forward_hooks
        or module._forward_pre_hooks
        or module._backward_hooks
        or module._backward_pre_hooks
        or getattr(module, "_compiled_call_impl", None) is not None
    ):
        return [module]
    if type(module) is torch.nn.Sequential:  # its forward calls each layer in turn
        return [call for layer in module for call in _direct_calls(layer)]
    if type(module) is FlattenExtractor:  # its forward is self.flatten(observations)
        return _direct_calls(module.flatten)
    if next(module.children(), None) is None:
        return [module.forward]
    return [module]


# SB3's deterministic discrete action is argmax(softmax(logits - logsumexp(logits))). In float32
# (unit roundoff u = 2**-24) those roundings move the difference of two logits by less than
# u * (8L + 2 log k) (L the largest |logit|, k the number of actions), and exp and the division
# can only reorder values a few ulps (about 2e-6) apart. So where the largest logit leads every
# other by more than _TIE * (1 + L + log k), over 50 times that bound, its argmax is SB3's action.
_TIE = 1e-4


def _clear_argmax(logits: torch.Tensor) -> np.ndarray | None:
    """Each row's argmax, when every row's largest logit clearly leads (see ``_TIE``); else
    None."""
    if logits.dtype not in (torch.float32, torch.float64) or logits.shape[-1] < 2:
        return None
    values = logits.cpu().numpy()
    top = np.sort(values, axis=-1)
    leads = top[:, -1] - top[:, -2]
    margin = _TIE * (1.0 + float(np.abs(values).max()) + math.log(values.shape[-1]))
    if not bool((leads > margin).all()):  # also False for NaN, and for infinite logits
        return None
    return np.asarray(values.argmax(axis=-1))


def _is_monitored(env: gym.Env) -> bool:
    while isinstance(env, gym.Wrapper):
        if isinstance(env, Monitor):
            return True
        env = env.env
    return False


def _frequency(model: OffPolicyAlgorithm) -> int:
    train_freq = model.train_freq
    assert isinstance(train_freq, TrainFreq)
    return int(train_freq.frequency)


def _has_transitions(model: OffPolicyAlgorithm) -> bool:
    buffer = model.replay_buffer
    return buffer is not None and (buffer.full or buffer.pos > 0)
