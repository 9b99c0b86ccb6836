"""The search space: sampling, perturbing and validating never leave the space."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import poptune as pt
from poptune.space import space_from_dict

factors = st.floats(min_value=0.01, max_value=100.0, allow_nan=False)
seeds = st.integers(min_value=0, max_value=2**32 - 1)


@st.composite
def uniform_and_value(draw):
    low = draw(st.floats(-1e6, 1e6, allow_nan=False))
    width = draw(st.floats(1e-3, 1e6, allow_nan=False))
    dist = pt.Uniform(low, low + width)
    return dist, draw(st.floats(dist.low, dist.high))


@given(uniform_and_value(), factors)
def test_uniform_perturb_stays_inside_and_float(pair, factor):
    dist, value = pair
    new = dist.perturb(value, factor, np.random.default_rng(0))
    assert type(new) is float and dist.low <= new <= dist.high


@given(st.floats(1e-8, 1.0), st.floats(1.5, 1e4), factors, st.floats(0.0, 1.0))
def test_log_uniform_perturb_stays_inside(low, ratio, factor, where):
    dist = pt.LogUniform(low, low * ratio)
    value = dist.low + where * (dist.high - dist.low)
    new = dist.perturb(value, factor, np.random.default_rng(0))
    assert type(new) is float and dist.low <= new <= dist.high


@given(st.integers(-1000, 1000), st.integers(1, 1000), factors, st.data())
def test_int_uniform_perturb_stays_integer_inside_and_moves(low, width, factor, data):
    dist = pt.IntUniform(low, low + width)
    value = data.draw(st.integers(dist.low, dist.high))
    new = dist.perturb(value, factor, np.random.default_rng(0))
    assert type(new) is int and dist.low <= new <= dist.high
    if factor > 1 and value < dist.high and value >= 0:
        assert new > value  # small integers are not stuck
    if factor < 1 and value > dist.low and value > 0:
        assert new < value


@given(st.integers(2, 8), st.booleans(), factors, seeds, st.data())
def test_choice_perturb(count, ordered, factor, seed, data):
    dist = pt.Choice([f"o{i}" for i in range(count)], ordered=ordered)
    index = data.draw(st.integers(0, count - 1))
    new = dist.perturb(dist.options[index], factor, np.random.default_rng(seed))
    assert new in dist.options and new != dist.options[index]
    if ordered:
        assert abs(dist.options.index(new) - index) == 1


@given(seeds)
@settings(max_examples=50)
def test_samples_are_inside_and_plain_python(seed):
    space = pt.Space(
        {
            "a": pt.Uniform(-1.0, 1.0),
            "b": pt.LogUniform(1e-5, 1.0),
            "c": pt.IntUniform(1, 3),
            "d": pt.Choice([1, "x", None]),
            "e": "fixed",
        }
    )
    hparams = space.sample(np.random.default_rng(seed))
    assert space.validate(hparams) == hparams
    assert type(hparams["a"]) is float and type(hparams["c"]) is int and hparams["e"] == "fixed"


def test_log_uniform_is_log_uniform():
    dist = pt.LogUniform(1e-4, 1.0)
    rng = np.random.default_rng(0)
    draws = np.array([dist.sample(rng) for _ in range(20000)])
    assert abs(np.mean(draws < 1e-2) - 0.5) < 0.02
    assert draws.min() >= 1e-4 and draws.max() <= 1.0


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: pt.Uniform(1.0, 0.0), r"low=1.0, high=0.0"),
        (lambda: pt.Uniform(1.0, 1.0), r"`low` must be smaller than `high`"),
        (lambda: pt.Uniform(0.0, math.inf), r"high=inf"),
        (lambda: pt.Uniform(math.nan, 1.0), r"low=nan"),
        (lambda: pt.LogUniform(0.0, 1.0), r"low=0.0"),
        (lambda: pt.LogUniform(-1.0, 1.0), r"low=-1.0"),
        (lambda: pt.IntUniform(1.5, 3), r"low=1.5"),
        (lambda: pt.IntUniform(3, 3), r"low=3, high=3"),
        (lambda: pt.Choice([]), r"empty"),
        (lambda: pt.Choice([1, 1]), r"distinct.*\[1, 1\]"),
    ],
)
def test_bad_definitions_name_the_value(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_types():
    with pytest.raises(TypeError, match="'0'"):
        pt.Uniform("0", 1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="object"):
        pt.Choice([object()])
    with pytest.raises(TypeError, match=r"'layers'.*list"):
        pt.Space({"layers": [1, 2]})
    with pytest.raises(TypeError, match="non-empty strings"):
        pt.Space({"": pt.Uniform(0, 1)})


def test_fixed_values_pass_through_everything():
    space = pt.Space({"lr": pt.Uniform(0.0, 1.0), "optimizer": "sgd", "layers": 3})
    rng = np.random.default_rng(0)
    hparams = space.sample(rng)
    for new in (
        space.perturb(hparams, (0.8, 1.2), rng, 0.5),
        space.resample(hparams, rng),
        space.validate(hparams),
    ):
        assert (new["optimizer"], new["layers"]) == ("sgd", 3)
    assert space.fixed == {"optimizer": "sgd", "layers": 3}
    assert list(space.distributions) == ["lr"]


def test_validate_names_missing_extra_and_out_of_range():
    space = pt.Space({"lr": pt.Uniform(0.0, 1.0), "n": pt.IntUniform(1, 4)})
    with pytest.raises(ValueError, match=r"lack \['n'\]"):
        space.validate({"lr": 0.5})
    with pytest.raises(ValueError, match=r"unknown names \['x'\]"):
        space.validate({"lr": 0.5, "n": 2, "x": 1})
    with pytest.raises(ValueError, match=r"'lr'=2.0 is outside"):
        space.validate({"lr": 2.0, "n": 2})
    with pytest.raises(ValueError, match=r"'n'=2.5"):
        space.validate({"lr": 0.5, "n": 2.5})


def test_round_trip_and_determinism():
    space = pt.Space(
        {
            "lr": pt.LogUniform(1e-4, 1e-1),
            "m": pt.Uniform(0.0, 0.99),
            "units": pt.IntUniform(16, 256),
            "act": pt.Choice(["relu", "tanh"], ordered=False),
            "seed": 7,
        }
    )
    assert space_from_dict(space.to_dict()) == space
    a = space.perturb(space.sample(np.random.default_rng(3)), (0.8, 1.2), np.random.default_rng(4))
    b = space.perturb(space.sample(np.random.default_rng(3)), (0.8, 1.2), np.random.default_rng(4))
    assert a == b
    with pytest.raises(ValueError, match="Unknown distribution type 'Gauss'"):
        space_from_dict({"x": {"type": "Gauss"}})
