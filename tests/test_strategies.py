"""Exploit, explore and ready strategies: pure, seeded decisions."""

from __future__ import annotations

import math

import numpy as np
import pytest

import poptune as pt
from poptune.records import Candidate
from poptune.strategies import describe, rebuild


def population(*fitness: float) -> list[Candidate]:
    return [
        Candidate(member=i, step=3, score=f, fitness=f, hparams={"x": float(i)})
        for i, f in enumerate(fitness)
    ]


def test_truncation_bottom_copies_top():
    pop = population(0.1, 0.9, 0.5, 0.7, 0.3, 0.8, 0.2, 0.6)  # ranks: 1,5,3,7,2,4,6,0
    exploit = pt.Truncation(0.25)
    donors = set()
    for seed in range(200):
        rng = np.random.default_rng(seed)
        donor = exploit(pop[0], pop, rng)  # the worst member
        assert donor is not None
        donors.add(donor.member)
    assert donors == {1, 5}  # exactly the top 25%, both drawn
    for member in (1, 2, 3, 4, 5, 7):  # not in the bottom 25%
        assert exploit(pop[member], pop, np.random.default_rng(0)) is None
    assert exploit(pop[6], pop, np.random.default_rng(0)).member in {1, 5}


def test_truncation_small_population_and_ties():
    exploit = pt.Truncation(0.2)
    pop = population(0.0, 1.0)
    assert exploit(pop[0], pop, np.random.default_rng(0)).member == 1
    assert exploit(pop[1], pop, np.random.default_rng(0)) is None
    tied = population(0.5, 0.5, 0.5, 0.5)  # rank alone decides, ties broken by member id
    assert [exploit(c, tied, np.random.default_rng(0)) is None for c in tied] == [
        True,
        True,
        True,
        False,
    ]
    assert exploit(tied[3], tied, np.random.default_rng(0)).member == 0


def test_truncation_treats_nan_as_worst():
    pop = [
        Candidate(0, 1, float("nan"), -math.inf, {}),
        *population(0.1, 0.2, 0.3)[1:],
    ]
    donor = pt.Truncation(0.25)(pop[0], pop, np.random.default_rng(1))
    assert donor is not None and donor.member == 2


@pytest.mark.parametrize("fraction", [0.0, -0.1, 0.51, 1.0, float("nan")])
def test_truncation_rejects_bad_fraction(fraction):
    with pytest.raises(ValueError, match=r"'fraction' parameter of Truncation.*\(0, 0.5\]"):
        pt.Truncation(fraction)


def test_truncation_rejects_non_number():
    with pytest.raises(TypeError, match="fraction"):
        pt.Truncation("0.2")  # type: ignore[arg-type]


def test_tournament_copies_only_better_opponents():
    pop = population(0.1, 0.9, 0.5)
    exploit = pt.Tournament()
    outcomes = [exploit(pop[2], pop, np.random.default_rng(s)) for s in range(100)]
    assert {None if o is None else o.member for o in outcomes} == {None, 1}
    assert all(exploit(pop[1], pop, np.random.default_rng(s)) is None for s in range(50))
    assert exploit(pop[0], pop[:1], np.random.default_rng(0)) is None


def test_strategies_are_deterministic_given_the_seed():
    pop = population(*np.linspace(0, 1, 16))
    for exploit in (pt.Truncation(0.3), pt.Tournament()):
        a = [exploit(pop[0], pop, np.random.default_rng(7)) for _ in range(3)]
        assert len({None if c is None else c.member for c in a}) == 1


def test_perturb_and_resample_stay_in_space():
    space = pt.Space({"lr": pt.LogUniform(1e-4, 1.0), "n": pt.IntUniform(1, 8), "fixed": "a"})
    rng = np.random.default_rng(0)
    hparams = {"lr": 0.9, "n": 8, "fixed": "a"}
    for explore in (pt.Perturb((0.5, 2.0), resample_probability=0.3), pt.Resample()):
        for _ in range(200):
            new = explore(hparams, space, rng)
            assert space.validate(new) == new
            assert new["fixed"] == "a"
            assert isinstance(new["n"], int)


def test_perturb_multiplies_by_one_of_the_factors():
    space = pt.Space({"lr": pt.Uniform(0.0, 10.0)})
    values = {
        pt.Perturb((0.8, 1.2))({"lr": 1.0}, space, np.random.default_rng(s))["lr"]
        for s in range(50)
    }
    assert sorted(values) == pytest.approx([0.8, 1.2])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"factors": ()}, "factors"),
        ({"factors": (0.8, -1.0)}, "positive"),
        ({"factors": "0.8"}, "factors"),
        ({"resample_probability": 1.5}, "resample_probability"),
    ],
)
def test_perturb_rejects_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pt.Perturb(**kwargs)


def test_every_ready_schedule():
    ready = pt.Every(intervals=2, burn_in=4)
    due = [s for s in range(0, 12) if ready(Candidate(0, s, 0.0, 0.0))]
    assert due == [4, 6, 8, 10]
    assert [s for s in range(0, 4) if pt.Every()(Candidate(0, s, 0.0, 0.0))] == [1, 2, 3]
    with pytest.raises(ValueError, match="'intervals' parameter of Every"):
        pt.Every(intervals=0)
    with pytest.raises(ValueError, match="burn_in"):
        pt.Every(burn_in=-1)


def test_builtin_strategies_round_trip_through_their_description():
    for strategy in (
        pt.Truncation(0.3),
        pt.Tournament(),
        pt.Perturb((0.5, 1.5), 0.1),
        pt.Resample(0.5),
        pt.Every(3, 2),
    ):
        assert rebuild(describe(strategy), "exploit") == strategy
    assert describe(None) is None and rebuild(None, "exploit") is None


def _module_level_exploit(member, population, rng):
    return None


def test_callables_are_described_by_reference():
    description = describe(_module_level_exploit)
    assert description["ref"].endswith(":_module_level_exploit")
    lam = describe(lambda m, p, r: None)
    assert lam["ref"] is None
    with pytest.raises(ValueError, match="resume"):
        rebuild(lam, "exploit")
