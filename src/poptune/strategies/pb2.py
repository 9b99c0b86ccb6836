"""PB2: explore by a time-varying GP bandit fitted on the population's recent improvements.

Population Based Bandits (Parker-Holder et al., NeurIPS 2020) replace PBT's random perturbation
by a model: a Gaussian process over (time, score before the interval, hyperparameters) predicts
how much one interval improves the score, and the new hyperparameters maximise an upper
confidence bound (GP-UCB) of that improvement, at the step and score of the copied weights. The
kernel forgets old data as training moves on (a time-varying kernel, parameter ``epsilon``).

Mixed spaces follow the follow-up paper (Parker-Holder et al., 2021, "Tuning Mixed Input
Hyperparameters on the Fly for Efficient Population Based AutoRL"): each unordered ``Choice`` is
a bandit arm set chosen by EXP3 on the recent improvements, and the numeric hyperparameters are
then chosen by GP-UCB conditioned on the chosen categories (a CoCaBO-style kernel that mixes an
overlap kernel on the categories with the squared-exponential kernel on the numbers).

Everything here is pure: the worker passes the data (:class:`~poptune.records.ExploreData`),
the space and a seeded generator; nothing is remembered between calls, so a decision depends
only on what is stored, and synchronous runs stay reproducible.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from .._validation import check_int
from ..records import ExploreData, IntervalChange
from ..space import Choice, IntUniform, LogUniform, Uniform
from ._base import Builtin, register, settle

if TYPE_CHECKING:
    from ..space import Space

__all__ = ["PB2", "GaussianProcess", "exp3_probabilities"]

#: Fewer usable intervals than this in the window: no model yet, sample from the prior.
MIN_POINTS = 3
# Random candidates for the acquisition, how many of the best are refined, refinement rounds.
_CANDIDATES, _REFINED, _ROUNDS = 512, 5, 16
# Grids searched for the kernel's parameters by marginal likelihood (inputs scaled to [0, 1]).
_LENGTHSCALES = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6)
_EPSILONS = (0.0, 0.1, 0.25, 0.5)
_NOISES = (1e-3, 1e-2, 0.1, 0.5)
# Weight of the product term in the mixed kernel (CoCaBO's lambda).
_MIX = 0.5


# --- the Gaussian process ------------------------------------------------------------------------


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """Run the small linear algebra of one decision on one BLAS thread, when threadpoolctl is
    installed (it comes with scikit-learn). On matrices of a few hundred rows, OpenBLAS's
    threads cost more than they save, up to ten times more on cores busy with training."""
    try:
        from threadpoolctl import threadpool_limits  # optional: only a speed-up
    except ImportError:
        yield
        return
    with threadpool_limits(1, "blas"):
        yield


def _mix(numeric: np.ndarray | None, categorical: np.ndarray | None, n: int, m: int) -> np.ndarray:
    """CoCaBO's mixture of the numeric and the categorical kernel, scaled so that k(a, a) = 1."""
    if numeric is not None and categorical is not None:
        return ((1 - _MIX) * (numeric + categorical) + _MIX * numeric * categorical) / (2 - _MIX)
    if numeric is not None:
        return numeric
    if categorical is not None:
        return categorical
    return np.ones((n, m))


class GaussianProcess:
    """Gaussian-process regression with PB2's time-varying kernel, in numpy.

    Inputs: numeric features ``x`` (scaled to about [0, 1]), a time ``t`` per point (in
    intervals) and integer category codes ``c``. The kernel is

        k = (1 - eps) ** (|t - t'| / 2) * mix(exp(-|x - x'|^2 / (2 l^2)), overlap(c, c'))

    PB2's time factor trusts data ``|t - t'|`` intervals apart less, so the model follows
    hyperparameters whose best value drifts during training; ``mix`` is CoCaBO's mixture of a
    squared-exponential kernel on the numbers and the share of equal categories. The targets are
    standardised; the signal variance is fitted in closed form, and the lengthscale ``l``, the
    time decay ``eps`` and the noise by maximising the marginal likelihood over a small grid
    (one eigendecomposition per (l, eps) serves every noise level: a few dozen
    factorisations of at most a few hundred points).

    Example:
        >>> import numpy as np
        >>> x = np.linspace(0, 1, 20)[:, None]
        >>> gp = GaussianProcess().fit(x, np.sin(6 * x[:, 0]))
        >>> mean, sd = gp.predict(np.array([[0.5]]))
        >>> bool(abs(mean[0] - np.sin(3.0)) < 0.05)
        True
    """

    def __init__(self) -> None:
        self.lengthscale = 1.0
        self.epsilon = 0.0
        self.noise = 1e-2
        self.variance = 1.0

    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray,
        t: np.ndarray | None = None,
        c: np.ndarray | None = None,
    ) -> GaussianProcess:
        """Fit to ``n`` points: ``x`` (n, d) numbers, ``y`` (n,), ``t`` (n,) times, ``c`` (n, k)
        category codes. Returns ``self``."""
        x, t, c = self._inputs(x, t, c)
        y = np.asarray(y, dtype=float)
        self._x, self._t, self._c = x, t, c
        self._mean = float(y.mean())
        self._scale = float(y.std()) or 1.0
        z = (y - self._mean) / self._scale
        n = len(z)
        sq = self._squared(x, x)
        categorical = self._overlap(c, c)
        apart = np.abs(t[:, None] - t[None, :]) / 2.0
        epsilons = _EPSILONS if np.ptp(t) > 0 else (0.0,)
        lengthscales = _LENGTHSCALES if x.shape[1] else (1.0,)
        best: tuple[float, tuple[Any, ...]] = (-math.inf, ())
        for lengthscale in lengthscales:
            numeric = None if sq is None else np.exp(-0.5 * sq / lengthscale**2)
            base = _mix(numeric, categorical, n, n)
            for epsilon in epsilons:
                k = base * (1.0 - epsilon) ** apart if epsilon > 0 else base
                values, vectors = np.linalg.eigh(k)
                values = np.maximum(values, 0.0)
                projected = vectors.T @ z
                for noise in _NOISES:
                    spectrum = values + noise
                    variance = max(float((projected**2 / spectrum).sum()) / n, 1e-12)
                    # log marginal likelihood, the signal variance profiled out
                    evidence = -0.5 * n * math.log(variance) - 0.5 * float(np.log(spectrum).sum())
                    if evidence > best[0]:
                        best = (evidence, (lengthscale, epsilon, noise, variance, values, vectors))
        lengthscale, epsilon, noise, variance, values, vectors = best[1]
        self.lengthscale, self.epsilon, self.noise, self.variance = (
            lengthscale,
            epsilon,
            noise,
            variance,
        )
        self._vectors = vectors
        self._spectrum = values + noise
        self._alpha = vectors @ ((vectors.T @ z) / self._spectrum)
        return self

    def predict(
        self, x: np.ndarray, t: np.ndarray | None = None, c: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation of the latent function at ``x`` (in y's units).

        Far from the data the standard deviation tends to the prior's (about y's spread); at a
        data point it shrinks to the size of the fitted noise.
        """
        x, t, c = self._inputs(x, t, c)
        sq = self._squared(x, self._x)
        numeric = None if sq is None else np.exp(-0.5 * sq / self.lengthscale**2)
        k = _mix(numeric, self._overlap(c, self._c), len(x), len(self._x))
        if self.epsilon > 0:
            k = k * (1.0 - self.epsilon) ** (np.abs(t[:, None] - self._t[None, :]) / 2.0)
        mean = k @ self._alpha
        explained = ((k @ self._vectors) ** 2 / self._spectrum).sum(axis=1)
        var = np.maximum(1.0 - explained, 1e-12) * self.variance
        return mean * self._scale + self._mean, np.sqrt(var) * self._scale

    @staticmethod
    def _squared(a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
        if not a.shape[1]:
            return None
        sq = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2.0 * a @ b.T
        return np.maximum(sq, 0.0)

    @staticmethod
    def _overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
        if not a.shape[1]:
            return None
        return (a[:, None, :] == b[None, :, :]).mean(axis=2)

    @staticmethod
    def _inputs(
        x: np.ndarray, t: np.ndarray | None, c: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = np.asarray(x, dtype=float).reshape(len(x), -1)
        t = np.zeros(len(x)) if t is None else np.asarray(t, dtype=float)
        c = np.zeros((len(x), 0), dtype=int) if c is None else np.asarray(c).reshape(len(x), -1)
        return x, t, c


# --- the categorical bandit ----------------------------------------------------------------------


def exp3_probabilities(
    plays: Sequence[tuple[int, int, float]], arms: int, gamma: float | None = None
) -> np.ndarray:
    """EXP3's probabilities over ``arms`` after replaying ``plays`` = (time, arm, reward in
    [0, 1]) in time order, the plays of one time step forming one batch (as in EXP3.M).

    Replaying the window from uniform weights, rather than keeping weights between calls, makes
    the bandit time-varying (what left the window is forgotten) and keeps the strategy pure.
    ``gamma`` (uniform exploration) defaults to Auer et al.'s ``sqrt(K ln K / ((e - 1) T))``
    for ``T`` time steps, capped to [0.05, 1].
    """
    steps = sorted({time for time, _, _ in plays})
    if gamma is None:
        horizon = max(len(steps), 1)
        gamma = math.sqrt(arms * math.log(max(arms, 2)) / ((math.e - 1) * horizon))
        gamma = min(max(gamma, 0.05), 1.0)

    def probabilities(log_weights: np.ndarray) -> np.ndarray:
        weights = np.exp(log_weights - log_weights.max())
        return (1 - gamma) * weights / weights.sum() + gamma / arms

    log_weights = np.zeros(arms)
    for step in steps:
        p = probabilities(log_weights)
        estimate = np.zeros(arms)
        for time, arm, reward in plays:
            if time == step:
                estimate[arm] += reward / p[arm]  # importance-weighted: unbiased for every arm
        log_weights = log_weights + gamma * estimate / arms
    return probabilities(log_weights)


# --- encoding the space --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Numeric:
    """A hyperparameter PB2 models as a number in [0, 1]: floats (log scale for LogUniform),
    integers and ordered choices (on their grid of ``levels`` points; 0 = continuous)."""

    name: str
    low: float
    high: float
    log: bool = False
    levels: int = 0
    options: tuple[Any, ...] = ()  # an ordered Choice: the level is the option's index

    def encode(self, value: Any) -> float:
        if self.options:
            index = next(
                (i for i, o in enumerate(self.options) if type(o) is type(value) and o == value),
                None,
            )
            if index is None:
                index = next(i for i, o in enumerate(self.options) if o == value)
            return index / (len(self.options) - 1)
        number = float(value)
        if self.log:
            number, low, high = math.log(number), math.log(self.low), math.log(self.high)
        else:
            low, high = self.low, self.high
        return min(max((number - low) / (high - low), 0.0), 1.0)

    def snap(self, u: np.ndarray) -> np.ndarray:
        """Points of [0, 1] moved to the nearest legal value (a grid for integers, choices)."""
        u = np.clip(u, 0.0, 1.0)
        if self.levels:
            return np.round(u * (self.levels - 1)) / (self.levels - 1)
        return u

    def decode(self, u: float) -> Any:
        if self.options:
            return self.options[round(u * (len(self.options) - 1))]
        if self.levels:
            return int(min(max(round(self.low + u * (self.high - self.low)), self.low), self.high))
        if self.log:
            value = math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        else:
            value = self.low + u * (self.high - self.low)
        return float(min(max(value, self.low), self.high))


@dataclass(frozen=True)
class _Categorical:
    """An unordered choice: a bandit arm per option."""

    name: str
    options: tuple[Any, ...]

    def encode(self, value: Any) -> int:
        for index, option in enumerate(self.options):
            if type(option) is type(value) and option == value:
                return index
        return next(i for i, o in enumerate(self.options) if o == value)


def _encoding(space: Space) -> tuple[list[_Numeric], list[_Categorical]]:
    numeric: list[_Numeric] = []
    categorical: list[_Categorical] = []
    for name, dist in space.distributions.items():
        if isinstance(dist, LogUniform):
            numeric.append(_Numeric(name, dist.low, dist.high, log=True))
        elif isinstance(dist, Uniform):
            numeric.append(_Numeric(name, dist.low, dist.high))
        elif isinstance(dist, IntUniform):
            numeric.append(_Numeric(name, dist.low, dist.high, levels=dist.high - dist.low + 1))
        elif isinstance(dist, Choice):
            options = tuple(dist.options)
            if len(options) < 2:
                continue  # one option: nothing to choose
            if dist.ordered:
                numeric.append(_Numeric(name, 0, 1, levels=len(options), options=options))
            else:
                categorical.append(_Categorical(name, options))
        else:
            raise ValueError(
                f"PB2 cannot model hyperparameter {name!r}: its distribution {dist!r} is not one "
                "of Uniform, LogUniform, IntUniform or Choice. Use one of those, or another "
                "explore strategy (pt.Perturb, pt.Resample)."
            )
    return numeric, categorical


# --- the strategy --------------------------------------------------------------------------------


@register
@dataclass(frozen=True)
class PB2(Builtin):
    """Explore by GP-UCB on the population's recent improvements (Population Based Bandits).

    After an exploit, the copied hyperparameters are replaced by those that maximise an upper
    confidence bound of the predicted improvement over the next interval, at the step and score
    of the copied weights. The model is fitted on the population's intervals of the last
    ``window`` steps (at most ``max_points`` of them, the most recent), so a decision costs
    the same late in a run as early. Unordered ``Choice`` hyperparameters are chosen first, by an
    EXP3 bandit on the same data, and the numeric ones by GP-UCB given those categories;
    integers and ordered choices are optimised on their own grid, never by rounding a
    continuous proposal. With fewer than three usable intervals (a member's first interval has
    no score before it), the hyperparameters are sampled from the prior.

    The worker passes the data because PB2 declares a ``window``; called without data (e.g. by
    your own code), PB2 samples from the prior.

    Args:
        window: how many recent steps of the population's history to fit (>= 1).
        max_points: at most this many intervals, the most recent, are fitted (>= 3).

    Example:
        >>> import poptune as pt
        >>> explore = pt.PB2(window=10)
    """

    role: ClassVar[str] = "explore"

    window: int = 10
    max_points: int = 200

    def __post_init__(self) -> None:
        settle(
            self,
            window=check_int("window", self.window, 1, owner="PB2"),
            max_points=check_int("max_points", self.max_points, MIN_POINTS, owner="PB2"),
        )

    def check_space(self, space: Space) -> None:
        """Raise a ``ValueError`` if PB2 cannot tune ``space`` (nothing tuned, or a distribution
        it cannot model); ``pt.run`` calls this before training."""
        if not space.distributions:
            raise ValueError(
                "PB2 needs at least one tuned hyperparameter (Uniform, LogUniform, IntUniform or "
                f"Choice), but every hyperparameter of the space is fixed: {space.fixed!r}. Make "
                "the hyperparameters to tune distributions, e.g. {'lr': pt.LogUniform(1e-4, "
                "1e-1)}; with nothing to tune, keep the default explore=pt.Perturb(), which then "
                "only copies weights."
            )
        _encoding(space)

    def __call__(
        self,
        hparams: Mapping[str, Any],
        space: Space,
        rng: np.random.Generator,
        data: ExploreData | None = None,
    ) -> dict[str, Any]:
        """New hyperparameters for weights at ``data.step`` with fitness ``data.fitness``."""
        with _one_blas_thread():
            return self._explore(hparams, space, rng, data)

    def _explore(
        self,
        hparams: Mapping[str, Any],
        space: Space,
        rng: np.random.Generator,
        data: ExploreData | None,
    ) -> dict[str, Any]:
        self.check_space(space)
        numeric, categorical = _encoding(space)
        changes = self._window(data, numeric, categorical) if data is not None else []
        if data is None or len(changes) < MIN_POINTS:
            return space.sample(rng)  # from the prior, as pt.Resample() would
        y = np.array([c.after - c.before for c in changes], dtype=float)
        finite = np.isfinite(y)
        if not finite.any():
            return space.sample(rng)  # from the prior, as pt.Resample() would
        # A diverged interval (score NaN or infinite) is the worst improvement seen, not lost.
        low = float(y[finite].min())
        spread = float(np.ptp(y[finite])) or 1.0
        y = np.where(finite, y, low - spread)
        steps = np.array([c.step for c in changes], dtype=float)

        chosen: dict[str, Any] = {}
        codes = np.array([[d.encode(c.hparams[d.name]) for d in categorical] for c in changes])
        codes = codes.reshape(len(changes), len(categorical)).astype(int)
        rewards = (y - y.min()) / (np.ptp(y) or 1.0)
        choice = np.zeros(len(categorical), dtype=int)
        for j, dim in enumerate(categorical):
            plays = [
                (int(s), int(a), float(r))
                for s, a, r in zip(steps, codes[:, j], rewards, strict=True)
            ]
            p = exp3_probabilities(plays, len(dim.options))
            choice[j] = int(rng.choice(len(dim.options), p=p))
            chosen[dim.name] = dim.options[choice[j]]

        if numeric:
            chosen.update(self._acquire(changes, y, steps, codes, choice, numeric, data, rng))
        result = dict(space.fixed)
        for name, dist in space.distributions.items():
            result[name] = chosen[name] if name in chosen else dist.sample(rng)
        return {name: result[name] for name in space.names}

    def _window(
        self, data: ExploreData, numeric: list[_Numeric], categorical: list[_Categorical]
    ) -> list[IntervalChange]:
        """The usable intervals of the last ``window`` steps, at most ``max_points``, oldest
        first: known starting score, every modelled hyperparameter present and legal."""
        usable = []
        for change in data.changes:
            if not data.step - self.window < change.step <= data.step:
                continue
            if not math.isfinite(change.before):
                continue
            try:
                for dim in numeric + categorical:
                    dim.encode(change.hparams[dim.name])
            except (KeyError, StopIteration, TypeError, ValueError):
                continue  # another space's hparams (e.g. before a resume with a new space)
            usable.append(change)
        usable.sort(key=lambda c: (c.step, c.member))
        return usable[-self.max_points :]

    def _acquire(
        self,
        changes: list[IntervalChange],
        y: np.ndarray,
        steps: np.ndarray,
        codes: np.ndarray,
        choice: np.ndarray,
        numeric: list[_Numeric],
        data: ExploreData,
        rng: np.random.Generator,
    ) -> dict[str, Any]:
        """GP-UCB over the numeric hyperparameters, at the copied weights' step and score."""
        before = np.array([c.before for c in changes], dtype=float)
        low, high = float(before.min()), float(before.max())
        scale = (high - low) or 1.0

        def score_feature(values: np.ndarray) -> np.ndarray:
            return ((values - low) / scale)[:, None]

        h = np.array([[d.encode(c.hparams[d.name]) for d in numeric] for c in changes])
        x = np.hstack([score_feature(before), h])
        y_std = np.clip((y - y.mean()) / (y.std() or 1.0), -2.0, 2.0)  # as PB2: outliers capped
        gp = GaussianProcess().fit(x, y_std, steps, codes)
        # beta_n = 0.2 log(0.4 n): the schedule of the PB2 authors' implementation, floored so
        # that the first few points still explore a little.
        kappa = math.sqrt(max(0.2 * math.log(0.4 * len(changes)), 0.04))
        here = score_feature(np.array([data.fitness if math.isfinite(data.fitness) else low]))
        time = float(data.step + 1)  # the interval these hyperparameters will train

        def ucb(u: np.ndarray) -> np.ndarray:
            n = len(u)
            inputs = np.hstack([np.repeat(here, n, axis=0), u])
            mean, sd = gp.predict(inputs, np.full(n, time), np.repeat(choice[None, :], n, axis=0))
            return mean + kappa * sd

        def snap(u: np.ndarray) -> np.ndarray:
            return np.column_stack([d.snap(u[:, i]) for i, d in enumerate(numeric)])

        candidates = snap(np.vstack([rng.random((_CANDIDATES, len(numeric))), h]))
        values = ucb(candidates)
        top = np.argsort(-values)[:_REFINED]
        best, best_values = candidates[top], values[top]
        # Local refinement: Gaussian steps that shrink, kept when they raise the bound.
        for round_ in range(_ROUNDS):
            sigma = 0.1 * 0.75**round_
            moved = snap(best + rng.normal(0.0, sigma, best.shape))
            moved_values = ucb(moved)
            better = moved_values > best_values
            best[better], best_values[better] = moved[better], moved_values[better]
        winner = best[int(np.argmax(best_values))]
        return {d.name: d.decode(float(winner[i])) for i, d in enumerate(numeric)}
