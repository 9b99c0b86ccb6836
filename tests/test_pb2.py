"""PB2: the GP, the categorical bandit, the strategy (pure, seeded) and the worker's data seam."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

import poptune as pt
from poptune.records import ExploreData, IntervalChange
from poptune.space import Distribution, Space
from poptune.strategies import describe, rebuild
from poptune.strategies.pb2 import GaussianProcess, exp3_probabilities
from poptune.testing import quadratic_space

# --- the Gaussian process ------------------------------------------------------------------------


def test_gp_posterior_mean_follows_a_known_function_and_is_sure_only_near_data():
    x = np.linspace(0.0, 1.0, 25)[:, None]
    y = np.sin(6.0 * x[:, 0])
    gp = GaussianProcess().fit(x, y)
    between = np.linspace(0.02, 0.98, 40)[:, None]
    mean, _ = gp.predict(between)
    assert np.max(np.abs(mean - np.sin(6.0 * between[:, 0]))) < 0.05
    _, sd_at_data = gp.predict(x)
    assert np.max(sd_at_data) < 0.05 * y.std()
    # Far away: back to the prior (mean 0, the fitted signal's spread), many times less sure.
    mean_far, sd_far = gp.predict(np.array([[3.0], [-2.0]]))
    assert mean_far == pytest.approx([y.mean()] * 2, abs=1e-6)
    assert np.min(sd_far) > 0.25 * y.std() and np.min(sd_far) > 10 * np.max(sd_at_data)


def test_gp_with_noise_smooths_and_in_two_dimensions_finds_the_shape():
    rng = np.random.default_rng(0)
    x = rng.random((150, 2))
    truth = np.exp(-((x - [0.7, 0.3]) ** 2).sum(1) / 0.05)
    gp = GaussianProcess().fit(x, truth + rng.normal(0.0, 0.05, len(x)))
    assert gp.noise > 1e-3  # it saw noise
    grid = rng.random((200, 2))
    mean, _ = gp.predict(grid)
    error = mean - np.exp(-((grid - [0.7, 0.3]) ** 2).sum(1) / 0.05)
    assert np.sqrt(np.mean(error**2)) < 0.06


def test_gp_time_varying_kernel_trusts_recent_data_more():
    # The best x drifts: early on the improvement rises with x, lately it falls with it.
    x = np.tile(np.linspace(0, 1, 6), 10)[:, None]
    t = np.repeat(np.arange(10.0), 6)
    y = np.where(t < 5, x[:, 0], 1.0 - x[:, 0])
    gp = GaussianProcess().fit(x, y, t)
    assert gp.epsilon > 0
    mean, _ = gp.predict(np.array([[0.0], [1.0]]), np.array([10.0, 10.0]))
    assert mean[0] > mean[1] + 0.5


def test_gp_categories_share_information_only_within_a_category():
    codes = np.array([0, 1] * 20)[:, None]
    x = np.repeat(np.linspace(0, 1, 20), 2)[:, None]
    y = np.where(codes[:, 0] == 0, x[:, 0], -x[:, 0])
    gp = GaussianProcess().fit(x, y, c=codes)
    mean, _ = gp.predict(np.array([[0.9], [0.9]]), c=np.array([[0], [1]]))
    assert mean[0] > 0.6 and mean[1] < -0.6


# --- the categorical bandit ----------------------------------------------------------------------


def test_exp3_prefers_the_rewarding_arm_and_stays_a_distribution():
    plays = [(step, arm, 1.0 if arm == 2 else 0.2) for step in range(10) for arm in (0, 1, 2, 2)]
    p = exp3_probabilities(plays, 3)
    assert p.sum() == pytest.approx(1.0) and np.all(p > 0)
    assert np.argmax(p) == 2 and p[2] > 0.6
    assert exp3_probabilities([], 4) == pytest.approx([0.25] * 4)  # no data: uniform


# --- the strategy --------------------------------------------------------------------------------


def _changes(space: Space, improvement: Any, steps: int, members: int, seed: int = 0):
    """Intervals from random hparams whose improvement is ``improvement(hparams, step)``."""
    rng = np.random.default_rng(seed)
    changes = []
    for step in range(1, steps + 1):
        for member in range(members):
            hparams = space.sample(rng)
            gain = improvement(hparams, step) + rng.normal(0.0, 0.02)
            changes.append(IntervalChange(member, step, hparams, 0.5, 0.5 + gain))
    return ExploreData(step=steps, fitness=0.5, changes=tuple(changes))


PEAK = (0.7, 0.3)


def _peaked(hparams: dict[str, Any], step: int) -> float:
    return math.exp(-((hparams["a"] - PEAK[0]) ** 2 + (hparams["b"] - PEAK[1]) ** 2) / 0.02)


def _near_peak(hparams: dict[str, Any]) -> bool:
    return math.hypot(hparams["a"] - PEAK[0], hparams["b"] - PEAK[1]) < 0.15


def test_pb2_proposes_near_the_peak_of_improvement_far_more_often_than_random():
    space = Space({"a": pt.Uniform(0, 1), "b": pt.Uniform(0, 1)})
    data = _changes(space, _peaked, steps=10, members=8)
    pb2 = pt.PB2()
    start = {"a": 0.1, "b": 0.9}
    proposals = [pb2(start, space, np.random.default_rng(seed), data=data) for seed in range(50)]
    randoms = [space.sample(np.random.default_rng(seed)) for seed in range(50)]
    assert sum(map(_near_peak, proposals)) >= 45
    assert sum(map(_near_peak, randoms)) <= 10  # the disc is 7% of the square


def test_pb2_is_deterministic_given_the_seed_and_data():
    space = Space({"a": pt.Uniform(0, 1), "b": pt.Uniform(0, 1)})
    data = _changes(space, _peaked, steps=5, members=4)
    first = pt.PB2()({"a": 0.5, "b": 0.5}, space, np.random.default_rng(3), data=data)
    again = pt.PB2()({"a": 0.5, "b": 0.5}, space, np.random.default_rng(3), data=data)
    assert first == again


def test_pb2_follows_the_best_value_when_it_drifts():
    space = Space({"a": pt.Uniform(0, 1)})
    # The best a was high for 10 steps and is low for the last 4: follow the recent data.
    data = _changes(space, lambda h, step: h["a"] if step <= 10 else 1 - h["a"], 14, 6)
    proposals = [
        pt.PB2(window=14)({"a": 0.5}, space, np.random.default_rng(s), data=data) for s in range(20)
    ]
    assert np.median([p["a"] for p in proposals]) < 0.3


def test_pb2_picks_the_clearly_better_category_most_often():
    space = Space(
        {"opt": pt.Choice(["sgd", "adam", "rmsprop"], ordered=False), "lr": pt.Uniform(0, 1)}
    )
    data = _changes(space, lambda h, step: 0.5 if h["opt"] == "adam" else 0.0, 10, 6)
    picks = [
        pt.PB2()({"opt": "sgd", "lr": 0.5}, space, np.random.default_rng(s), data=data)["opt"]
        for s in range(100)
    ]
    assert picks.count("adam") > 60
    assert picks.count("adam") > 2 * max(picks.count("sgd"), picks.count("rmsprop"))


def test_pb2_tunes_the_numbers_given_the_chosen_category():
    space = Space({"opt": pt.Choice(["sgd", "adam"], ordered=False), "lr": pt.Uniform(0, 1)})

    def gain(h: dict[str, Any], step: int) -> float:  # sgd wants a high lr, adam a low one
        return h["lr"] if h["opt"] == "sgd" else 1.0 - h["lr"]

    data = _changes(space, gain, 10, 8)
    for seed in range(30):
        new = pt.PB2()({"opt": "sgd", "lr": 0.5}, space, np.random.default_rng(seed), data=data)
        assert new["lr"] > 0.7 if new["opt"] == "sgd" else new["lr"] < 0.3


MIXED = Space(
    {
        "lr": pt.LogUniform(1e-4, 1e-1),
        "momentum": pt.Uniform(0.0, 0.99),
        "layers": pt.IntUniform(1, 6),
        "batch": pt.Choice([16, 32, 64, 128]),
        "activation": pt.Choice(["relu", "tanh", "gelu"], ordered=False),
        "single": pt.Choice(["only"]),
        "seed": 7,
    }
)


def test_pb2_proposals_stay_in_a_mixed_space_with_integers_as_ints():
    def gain(h: dict[str, Any], step: int) -> float:
        return -abs(h["layers"] - 4) - abs(math.log10(h["lr"]) + 2) + (h["batch"] == 64)

    data = _changes(MIXED, gain, 6, 6)
    layers = []
    for seed in range(30):
        new = pt.PB2()(
            MIXED.sample(np.random.default_rng(99)), MIXED, np.random.default_rng(seed), data=data
        )
        assert MIXED.validate(new) == new
        assert type(new["layers"]) is int and type(new["batch"]) is int
        assert new["seed"] == 7 and new["single"] == "only"
        layers.append(new["layers"])
    assert np.median(layers) == 4


def test_pb2_without_enough_data_samples_from_the_prior():
    space = Space({"a": pt.Uniform(0, 1), "n": pt.IntUniform(0, 3)})
    few = ExploreData(2, 0.5, (IntervalChange(0, 2, {"a": 0.5, "n": 1}, 0.1, 0.2),))
    for data in (None, ExploreData(2, 0.5), few):
        new = pt.PB2()({"a": 0.5, "n": 1}, space, np.random.default_rng(0), data=data)
        assert new == space.sample(np.random.default_rng(0))


def test_pb2_treats_a_diverged_interval_as_the_worst_and_skips_unknown_starts():
    space = Space({"a": pt.Uniform(0, 1)})
    data = _changes(space, lambda h, step: h["a"], 6, 6)
    broken = (
        IntervalChange(9, 6, {"a": 0.95}, 0.5, -math.inf),  # diverged at a high a
        IntervalChange(8, 6, {"a": 0.9}, -math.inf, 0.9),  # started from a diverged score
        IntervalChange(7, 6, {"b": 0.9}, 0.5, 0.9),  # another space's hparams
        IntervalChange(6, 6, {"a": "high"}, 0.5, 0.9),
    )
    data = ExploreData(6, 0.5, data.changes + broken)
    new = pt.PB2()({"a": 0.5}, space, np.random.default_rng(0), data=data)
    assert space.validate(new) == new and new["a"] > 0.5


def test_pb2_fits_only_the_window_and_at_most_max_points(monkeypatch):
    fitted = []
    fit = GaussianProcess.fit

    def recording(self, x, y, t=None, c=None):
        fitted.append((len(y), set(np.asarray(t).tolist())))
        return fit(self, x, y, t, c)

    monkeypatch.setattr(GaussianProcess, "fit", recording)
    space = Space({"a": pt.Uniform(0, 1)})
    data = _changes(space, lambda h, step: h["a"], steps=40, members=20)  # 800 intervals
    pt.PB2(window=5, max_points=1000)({"a": 0.5}, space, np.random.default_rng(0), data=data)
    pt.PB2(window=30, max_points=50)({"a": 0.5}, space, np.random.default_rng(0), data=data)
    (n_window, steps_window), (n_capped, steps_capped) = fitted
    assert n_window == 100 and steps_window == {36.0, 37.0, 38.0, 39.0, 40.0}
    assert n_capped == 50 and min(steps_capped) >= 38  # the most recent ones


def test_pb2_round_trips_through_its_description():
    pb2 = pt.PB2(window=7, max_points=64)
    description = describe(pb2)
    assert description == {"type": "PB2", "window": 7, "max_points": 64}
    assert rebuild(description, "explore") == pb2
    assert repr(pb2) == "PB2(window=7, max_points=64)"
    assert pt.PB2() != pb2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"window": 0}, r"'window' parameter of PB2 must be an int >= 1. Got 0"),
        ({"window": 2.5}, r"'window' parameter of PB2 .* Got 2.5"),
        ({"window": True}, r"'window' parameter of PB2 .* Got True"),
        ({"max_points": 2}, r"'max_points' parameter of PB2 must be an int >= 3. Got 2"),
    ],
)
def test_pb2_rejects_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pt.PB2(**kwargs)


@dataclass(frozen=True)
class _Odd(Distribution):
    def sample(self, rng):
        return 1

    def perturb(self, value, factor, rng):
        return 1

    def contains(self, value):
        return value == 1

    def to_dict(self):
        return {"type": "_Odd"}


def test_pb2_refuses_a_space_it_cannot_tune(tmp_path, quick_run):
    fixed = Space({"lr": 0.1, "optimizer": "sgd"})
    with pytest.raises(
        ValueError, match=r"PB2 needs at least one tuned .*'lr': 0.1.*distributions"
    ):
        pt.PB2()({"lr": 0.1, "optimizer": "sgd"}, fixed, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"PB2 cannot model hyperparameter 'x'.*_Odd\(\).*Perturb"):
        pt.PB2().check_space(Space({"x": _Odd()}))
    with pytest.raises(ValueError, match="PB2 needs at least one tuned"):  # before any training
        quick_run(space={"h0": 1.0, "h1": 1.0}, population=2, explore=pt.PB2())
    assert not (tmp_path / "poptune.db").exists()


# --- in a run: the worker's data seam ------------------------------------------------------------


class _Recording(pt.PB2):
    """PB2 that keeps what the worker gave it (an in-process run: the same object)."""

    def __init__(self, window: int = 3) -> None:
        super().__init__(window=window)
        self.seen: list[tuple[dict[str, Any], ExploreData | None]] = []

    def to_config(self) -> dict[str, Any]:
        return {"window": self.window}

    def __call__(self, hparams, space, rng, data=None):
        self.seen.append((dict(hparams), data))
        return super().__call__(hparams, space, rng, data=data)


# Synchronous PBT at the size these tests read: 12 generations of 4 members.
GENERATIONS = {"population": 4, "intervals": 12, "sync": True}


def test_the_worker_gives_pb2_the_windows_intervals_with_their_starting_scores(quick_run):
    explore = _Recording(window=3)
    result = quick_run(name="pb2", explore=explore, exploit=pt.Truncation(0.25), **GENERATIONS)
    intervals = {(i.member, i.step): i for i in result.intervals()}
    exploits = result.exploits()
    assert exploits and len(explore.seen) == len(exploits)
    for event, (hparams, data) in zip(exploits, explore.seen, strict=True):
        assert data is not None and data.step == event.donor_step
        assert data.fitness == pytest.approx(intervals[event.donor, event.donor_step].score)
        assert hparams == dict(intervals[event.donor, event.donor_step].hparams)
        expected = sorted(
            (i.member, i.step)
            for i in intervals.values()
            if event.donor_step - 3 < i.step <= event.donor_step and i.origin is not None
        )
        assert sorted((c.member, c.step) for c in data.changes) == expected
        for change in data.changes:
            recorded = intervals[change.member, change.step]
            assert change.after == pytest.approx(recorded.score)
            assert change.before == pytest.approx(intervals[recorded.origin].score)
            assert change.hparams == recorded.hparams


def test_pb2_in_a_synchronous_run_is_reproducible_whatever_the_workers(quick_run):
    options = {"explore": pt.PB2(), "exploit": pt.Truncation(0.25), "seed": 5, **GENERATIONS}
    one = quick_run(name="one", workers=1, **options)
    two = quick_run(name="two", workers=2, **options)
    assert [dict(e.hparams_after) for e in one.exploits()] == [
        dict(e.hparams_after) for e in two.exploits()
    ]
    stored = pt.open_storage(quick_run.storage).population("one").config
    assert rebuild(stored["explore"], "explore") == pt.PB2()


def test_pb2_on_the_papers_toy_problem_finishes_and_beats_random_search(quick_run):
    # Synchronous runs are deterministic, so this is one fixed outcome, not a draw. Over seeds
    # 0-39 (population 4, 12 intervals), PB2's best and population-mean final Q were at least
    # random search's in 40/40 seeds; against PBT (Perturb) only in 35/40 and 28/40, which is
    # why PB2 is not asserted to beat PBT here.
    result = quick_run(name="pb2", explore=pt.PB2(), exploit=pt.Truncation(0.25), **GENERATIONS)
    baseline = quick_run(name="random", explore=pt.Perturb(), exploit=None, **GENERATIONS)
    assert result.status == "finished"
    exploits = result.exploits()
    assert len(exploits) == 11  # one per generation after the first: the worst copies the best
    space = Space(quadratic_space())
    for event in exploits:
        assert space.validate(event.hparams_after) == dict(event.hparams_after)
    assert result.best.score >= baseline.best.score
    mean = np.mean([m.score for m in result.members])
    assert mean >= np.mean([m.score for m in baseline.members])
