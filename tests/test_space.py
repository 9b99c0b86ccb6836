"""The search space: sampling, perturbing and validating never leave the space."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import poptune as pt
from poptune.space import (
    Choice,
    Distribution,
    IntUniform,
    LogUniform,
    Space,
    Uniform,
    space_from_dict,
)
from poptune.strategies import Perturb, Resample

factors = st.floats(min_value=0.01, max_value=100.0, allow_nan=False)
seeds = st.integers(min_value=0, max_value=2**32 - 1)
scalars = st.one_of(
    st.text(max_size=5),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def same(a: Any, b: Any) -> bool:
    """Equal and of the same type (``1 == 1.0 == True`` is not enough here)."""
    return type(a) is type(b) and a == b


# --- hypothesis strategies ---------------------------------------------------------------------


@st.composite
def uniforms(draw: st.DrawFn) -> Uniform:
    low = draw(st.floats(-1e6, 1e6))
    return Uniform(low, low + draw(st.floats(1e-3, 1e6)))


@st.composite
def log_uniforms(draw: st.DrawFn) -> LogUniform:
    low = draw(st.floats(1e-8, 1e3))
    return LogUniform(low, low * draw(st.floats(1.001, 1e6)))


@st.composite
def int_uniforms(draw: st.DrawFn) -> IntUniform:
    low = draw(st.integers(-1000, 1000))
    return IntUniform(low, low + draw(st.integers(1, 1000)))


@st.composite
def choices(draw: st.DrawFn, min_size: int = 1) -> Choice:
    # Keyed on (is True, value): 1 and 1.0 collide as they do in Choice, True and 1 do not.
    options = draw(
        st.lists(scalars, min_size=min_size, max_size=6, unique_by=lambda o: (o is True, o))
    )
    return Choice(options, ordered=draw(st.booleans()))


distributions = st.one_of(uniforms(), log_uniforms(), int_uniforms(), choices())


def contained(dist: Distribution) -> st.SearchStrategy[Any]:
    if isinstance(dist, IntUniform):
        return st.integers(dist.low, dist.high)
    if isinstance(dist, Uniform | LogUniform):
        return st.floats(dist.low, dist.high)
    assert isinstance(dist, Choice)
    return st.sampled_from(dist.options)


@st.composite
def spaces(draw: st.DrawFn) -> Space:
    names = draw(st.lists(st.text(min_size=1, max_size=4), min_size=1, max_size=5, unique=True))
    return Space({n: draw(st.one_of(distributions, scalars)) for n in names})


def assert_kept_type(dist: Distribution, value: Any) -> None:
    if isinstance(dist, IntUniform):
        assert type(value) is int
    elif isinstance(dist, Uniform | LogUniform):
        assert type(value) is float
    else:
        assert isinstance(dist, Choice)
        assert any(same(value, option) for option in dist.options)


# --- perturb: properties ----------------------------------------------------------------------


@given(distributions, factors, seeds, st.data())
def test_perturb_stays_inside_and_keeps_its_type(dist, factor, seed, data):
    value = data.draw(contained(dist))
    new = dist.perturb(value, factor, rng(seed))
    assert dist.contains(new)
    assert_kept_type(dist, new)


@given(st.one_of(uniforms(), log_uniforms()), factors, st.floats(-1e9, 1e9))
def test_float_perturb_clips_a_value_from_outside_first(dist, factor, value):
    new = dist.perturb(value, factor, rng())
    assert type(new) is float and dist.low <= new <= dist.high
    start = min(max(value, dist.low), dist.high)
    assert new == min(max(start * factor, dist.low), dist.high)


@given(int_uniforms(), factors, st.data())
def test_int_perturb_moves_small_integers_in_the_factors_direction(dist, factor, data):
    value = data.draw(st.integers(dist.low, dist.high))
    new = dist.perturb(value, factor, rng())
    assert type(new) is int and dist.low <= new <= dist.high
    if factor > 1 and 0 <= value < dist.high:
        assert new > value  # never stuck, even at 0 or 1
    if factor < 1 and value > 0 and value > dist.low:
        assert new < value
    assert dist.perturb(value, 1.0, rng()) == value


@given(int_uniforms(), factors, st.floats(-1e6, 1e6))
def test_int_perturb_snaps_non_integral_and_outside_values(dist, factor, value):
    new = dist.perturb(value, factor, rng())
    assert type(new) is int and dist.low <= new <= dist.high


@given(st.integers(2, 8), factors, st.data())
def test_ordered_choice_moves_to_a_neighbour_reflecting_at_the_ends(count, factor, data):
    dist = Choice([f"o{i}" for i in range(count)], ordered=True)
    index = data.draw(st.integers(0, count - 1))
    new_index = list(dist.options).index(dist.perturb(dist.options[index], factor, rng()))
    assert abs(new_index - index) == 1
    if 0 < index < count - 1:
        assert new_index == index + (1 if factor > 1 else -1)


@given(choices(min_size=2), factors, seeds, st.data())
def test_unordered_choice_draws_a_different_option(dist, factor, seed, data):
    dist = Choice(dist.options, ordered=False)
    value = data.draw(st.sampled_from(dist.options))
    new = dist.perturb(value, factor, rng(seed))
    assert any(same(new, o) for o in dist.options) and not same(new, value)


# --- sample: properties and shape -------------------------------------------------------------


@given(distributions, seeds)
def test_samples_are_inside_and_plain_python(dist, seed):
    value = dist.sample(rng(seed))
    assert dist.contains(value)
    assert_kept_type(dist, value)
    assert not isinstance(value, np.generic)


def test_log_uniform_is_log_uniform():
    dist = LogUniform(1e-4, 1.0)
    generator = rng(0)
    draws = np.array([dist.sample(generator) for _ in range(20000)])
    assert abs(np.mean(draws < 1e-2) - 0.5) < 0.02
    assert abs(np.mean(draws < 1e-3) - 0.25) < 0.02
    assert draws.min() >= 1e-4 and draws.max() <= 1.0


def test_uniform_int_and_choice_cover_their_range():
    generator = rng(0)
    assert {IntUniform(1, 3).sample(generator) for _ in range(300)} == {1, 2, 3}
    assert {Choice(["a", "b", None]).sample(generator) for _ in range(300)} == {"a", "b", None}
    draws = [Uniform(-2.0, 2.0).sample(generator) for _ in range(2000)]
    assert min(draws) < -1.9 and max(draws) > 1.9 and abs(np.mean(draws)) < 0.1


def test_extreme_ranges_sample_inside():
    generator = rng(0)
    wide = IntUniform(-(2**63), 2**63 - 1)
    assert all(wide.contains(wide.sample(generator)) for _ in range(100))
    huge = Uniform(-1e308, 1e308)
    assert all(huge.contains(huge.sample(generator)) for _ in range(100))
    assert huge.perturb(1e308, 100.0, generator) == 1e308


# --- perturb: examples --------------------------------------------------------------------------


def test_numeric_perturb_examples():
    g = rng()
    assert Uniform(0.0, 10.0).perturb(2.0, 1.2, g) == pytest.approx(2.4)
    assert Uniform(0.0, 10.0).perturb(9.0, 1.2, g) == 10.0
    assert Uniform(0.0, 1.0).perturb(5, 0.5, g) == 0.5  # clipped to 1.0 first
    assert Uniform(-10.0, -1.0).perturb(-2.0, 2.0, g) == -4.0  # negative range: still multiplies
    assert Uniform(-10.0, -1.0).perturb(-2.0, 0.1, g) == -1.0  # ... then clips
    assert LogUniform(1e-3, 1.0).perturb(0.5, 4.0, g) == 1.0
    ints = IntUniform(0, 10)
    assert [ints.perturb(v, 1.2, g) for v in (0, 1, 2, 5, 10)] == [1, 2, 3, 6, 10]
    assert [ints.perturb(v, 0.8, g) for v in (0, 1, 2, 5, 10)] == [0, 0, 1, 4, 8]
    assert ints.perturb(12.7, 0.5, g) == 5  # snapped to 10, then halved
    assert IntUniform(-10, 10).perturb(-1, 1.2, g) == 0  # the step follows the factor


def test_choice_perturb_examples():
    g = rng()
    ordered = Choice([16, 32, 64])
    assert ordered.perturb(16, 1.2, g) == 32
    assert ordered.perturb(32, 1.2, g) == 64
    assert ordered.perturb(64, 1.2, g) == 32  # reflected at the end
    assert ordered.perturb(32, 0.8, g) == 16
    assert ordered.perturb(16, 0.8, g) == 32
    assert ordered.perturb(32.0, 1.2, g) == 64  # 32.0 stands for 32
    assert Choice(["only"]).perturb("only", 1.2, g) == "only"
    assert Choice(["only"], ordered=False).perturb("only", 1.2, g) == "only"
    unordered = Choice(["a", "b", "c", "d"], ordered=False)
    seen = {unordered.perturb("a", 1.2, rng(s)) for s in range(100)}
    assert seen == {"b", "c", "d"}


@pytest.mark.parametrize(
    ("dist", "value", "error", "match"),
    [
        (Uniform(0.0, 1.0), math.nan, ValueError, "nan"),
        (Uniform(0.0, 1.0), "0.5", TypeError, "'0.5'"),
        (Uniform(0.0, 1.0), True, TypeError, "True"),
        (IntUniform(0, 3), math.nan, ValueError, "nan"),
        (IntUniform(0, 3), None, TypeError, "None"),
        (Choice(["a", "b"]), "z", ValueError, r"one of the options \['a', 'b'\]\. Got 'z'"),
        (Choice([1, 2]), True, ValueError, r"one of the options \[1, 2\]\. Got True"),
    ],
)
def test_perturb_rejects_a_value_it_cannot_place(dist, value, error, match):
    with pytest.raises(error, match=match):
        dist.perturb(value, 1.2, rng())


@pytest.mark.parametrize("factor", [0.0, -1.0, math.nan, math.inf, "2"])
@pytest.mark.parametrize("dist", [Uniform(0, 1), IntUniform(0, 3), Choice([1, 2])])
def test_perturb_rejects_a_bad_factor(dist, factor):
    match = rf"'factor' parameter of {type(dist).__name__}\.perturb .* Got {factor!r} instead"
    with pytest.raises(pt.InvalidParameterError, match=match):
        dist.perturb(dist.sample(rng()), factor, rng())


# --- definitions ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (
            lambda: Uniform(1.0, 0.0),
            ValueError,
            r"'low' parameter of Uniform must be smaller than high=0.0\. Got 1.0 instead\. Swap",
        ),
        (lambda: Uniform(1.0, 1.0), ValueError, r"'low' .* smaller than high=1.0\. Got 1.0 "),
        (lambda: Uniform(0.0, math.inf), ValueError, r"'high' .* finite number\. Got inf"),
        (lambda: Uniform(math.nan, 1.0), ValueError, r"'low' .* finite number\. Got nan"),
        (lambda: Uniform(0, 10**400), ValueError, r"'high' parameter of Uniform must be a finite"),
        (
            lambda: Uniform("0", 1.0),
            TypeError,
            r"'low' .* a finite number \(an int or a float\)\. Got '0'",
        ),
        (lambda: Uniform(None, 1.0), TypeError, r"'low' .* Got None"),
        (lambda: Uniform(False, 1.0), TypeError, r"'low' .* Got False"),
        (
            lambda: LogUniform(0.0, 1.0),
            ValueError,
            r"'low' parameter of LogUniform must be a number > 0 .* Got 0.0",
        ),
        (lambda: LogUniform(-1.0, 1.0), ValueError, r"Got -1.0 instead\. Use Uniform"),
        (
            lambda: LogUniform(1.0, 0.5),
            ValueError,
            r"'low' parameter of LogUniform must be smaller than high=0.5\. Got 1.0",
        ),
        (
            lambda: IntUniform(1.5, 3),
            ValueError,
            r"'low' parameter of IntUniform must be an integer\. Got 1.5",
        ),
        (lambda: IntUniform(0, 2.5), ValueError, r"'high' .* Got 2.5"),
        (lambda: IntUniform(3, 3), ValueError, r"smaller than high=3\. Got 3 "),
        (lambda: IntUniform(0, math.inf), ValueError, r"'high' .* Got inf"),
        (
            lambda: IntUniform(0, 2**64),
            ValueError,
            r"'high' .* fits in 64 bits\. Got 18446744073709551616",
        ),
        (lambda: IntUniform("1", 3), TypeError, r"'low' .* Got '1'"),
        (
            lambda: Choice([]),
            ValueError,
            r"'options' parameter of Choice must be a non-empty list\. Got \[\]",
        ),
        (
            lambda: Choice([1, 1]),
            ValueError,
            r"distinct values\. Got \[1, 1\] instead\. 1 is there twice",
        ),
        (lambda: Choice([1, 1.0]), ValueError, r"Got \[1, 1.0\] instead\. 1.0 is there twice"),
        (lambda: Choice(["a", math.nan]), ValueError, r"nan"),
        (lambda: Choice([object()]), TypeError, r"JSON.*<object object"),
        (lambda: Choice([[1, 2]]), TypeError, r"\[1, 2\] is of type list"),
        (lambda: Choice("abc"), TypeError, r"'options' .* Got 'abc'"),
        (lambda: Choice({1, 2}), TypeError, r"'options' .* Got \{1, 2\} instead\. It is a set"),
        (
            lambda: Choice([1, 2], ordered="yes"),
            TypeError,
            r"'ordered' parameter of Choice must be True or False\. Got 'yes'",
        ),
        (
            lambda: Space({"layers": [1, 2]}),
            TypeError,
            r"'layers' parameter of Space .* Got \[1, 2\] instead\. It is a list",
        ),
        (lambda: Space({"f": len}), TypeError, r"It is a builtin_function_or_method"),
        (
            lambda: Space({"x": math.nan}),
            ValueError,
            r"'x' parameter of Space must be a number other than NaN",
        ),
        (
            lambda: Space({"": Uniform(0, 1)}),
            ValueError,
            r"names are non-empty strings\. Got '' instead",
        ),
        (
            lambda: Space({1: Uniform(0, 1)}),
            TypeError,
            r"names are non-empty strings\. Got 1 instead",
        ),
        (
            lambda: Space([("lr", Uniform(0, 1))]),
            TypeError,
            r"'params' parameter of Space .* Got \[",
        ),
    ],
)
def test_bad_definitions_raise_naming_the_value(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_definitions_are_normalised_to_plain_python():
    assert Uniform(0, 1) == Uniform(0.0, 1.0) and type(Uniform(0, 1).low) is float
    assert IntUniform(1.0, np.int64(4)) == IntUniform(1, 4)
    assert type(IntUniform(1.0, np.int64(4)).high) is int
    choice = Choice(np.array([1, 2, 3]), ordered=np.bool_(False))
    assert choice.options == (1, 2, 3) and choice.ordered is False
    assert all(type(o) is int for o in choice.options)
    assert type(Choice([np.float64(0.5), np.str_("a")]).options[0]) is float
    space = Space({"n": np.int64(3), "x": np.float32(0.5), "inf": math.inf})
    assert same(space["n"], 3) and same(space["x"], 0.5) and space["inf"] == math.inf


def test_distributions_are_values():
    for dist in (Uniform(0, 1), LogUniform(1e-3, 1), IntUniform(1, 9), Choice(["a", 1, None])):
        assert eval(repr(dist)) == dist
        assert hash(dist) == hash(eval(repr(dist)))
    assert Uniform(1e-3, 1.0) != LogUniform(1e-3, 1.0)
    assert not isinstance(LogUniform(1e-3, 1.0), Uniform)
    assert Choice([1, 2]) != Choice([True, 2])
    assert Choice([1, 2]) != Choice([1, 2], ordered=False)
    assert Choice([1, 2]) == Choice((1, 2))
    with pytest.raises(TypeError):
        Distribution()  # type: ignore[abstract]


def test_choice_membership_is_by_value_but_not_bool_for_int():
    choice = Choice([1, 2, 3.5, "a", None, False])
    assert choice.contains(2.0) and choice.contains(np.int64(1)) and choice.contains(3.5)
    assert choice.contains(False) and choice.contains(None) and choice.contains("a")
    assert not choice.contains(True) and not choice.contains(0) and not choice.contains("b")
    assert not choice.contains(np.array([1, 2]))


# --- the space ------------------------------------------------------------------------------------


def example_space() -> Space:
    return Space(
        {
            "lr": LogUniform(1e-4, 1e-1),
            "momentum": Uniform(0.0, 0.99),
            "units": IntUniform(16, 256),
            "act": Choice(["relu", "tanh", "gelu"], ordered=False),
            "batch": Choice([32, 64, 128]),
            "optimizer": "sgd",
            "seed": 7,
            "clip": None,
        }
    )


def test_space_is_a_read_only_mapping_in_the_order_given():
    space = example_space()
    assert space.names == ("lr", "momentum", "units", "act", "batch", "optimizer", "seed", "clip")
    assert list(space) == list(space.names) and len(space) == 8
    assert "lr" in space and "nope" not in space
    assert space["units"] == IntUniform(16, 256) and space["seed"] == 7
    assert list(space.distributions) == ["lr", "momentum", "units", "act", "batch"]
    assert space.fixed == {"optimizer": "sgd", "seed": 7, "clip": None}
    assert "LogUniform(low=0.0001, high=0.1)" in repr(space) and "'optimizer': 'sgd'" in repr(space)
    copy = Space(space)
    assert copy == space and copy is not space and hash(copy) == hash(space)


def test_space_equality_is_strict_about_order_and_types():
    assert Space({"a": 1, "b": Uniform(0, 1)}) != Space({"b": Uniform(0, 1), "a": 1})
    assert Space({"a": 1}) != Space({"a": True})
    assert Space({"a": 1}) != Space({"a": 1.0})
    assert Space({"a": Uniform(0, 1)}) == Space({"a": Uniform(0.0, 1.0)})
    assert Space({"a": 1}) != {"a": 1}


def test_sample_draws_names_in_order_from_the_given_rng_only():
    space = example_space()
    expected_rng = rng(5)
    expected = {
        name: dist.sample(expected_rng) if isinstance(dist, Distribution) else dist
        for name, dist in space.items()
    }
    random.seed(1)
    np.random.seed(1)
    first = space.sample(rng(5))
    random.seed(2)
    np.random.seed(2)
    assert first == space.sample(rng(5)) == expected
    assert list(first) == list(space.names)


@given(spaces(), seeds, st.floats(0.0, 1.0))
@settings(max_examples=50)
def test_space_operations_stay_inside_and_keep_fixed_values(space, seed, probability):
    generator = rng(seed)
    hparams = space.sample(generator)
    assert space.validate(hparams) == hparams
    perturbed = Perturb((0.8, 1.2), probability)(hparams, space, generator)
    resampled = Resample(probability)(hparams, space, generator)
    for new in (hparams, perturbed, resampled):
        assert list(new) == list(space.names)
        assert space.validate(new) == new
        for name, value in space.fixed.items():
            assert same(new[name], value)


@given(spaces(), seeds)
@settings(max_examples=50)
def test_same_seed_same_result(space, seed):
    def run() -> tuple[dict, dict, dict]:
        generator = rng(seed)
        hparams = space.sample(generator)
        return (
            hparams,
            Perturb((0.5, 0.8, 1.2, 2.0), 0.3)(hparams, space, generator),
            Resample(0.5)(hparams, space, generator),
        )

    assert run() == run()


def test_fixed_values_are_reset_and_never_perturbed():
    space = Space({"lr": Uniform(0.0, 1.0), "optimizer": "sgd", "layers": 3})
    wrong = {"lr": 0.5, "optimizer": "adam", "layers": 4}
    assert Perturb((1.2,))(wrong, space, rng())["optimizer"] == "sgd"
    assert Resample(0.0)(wrong, space, rng()) == {"lr": 0.5, "optimizer": "sgd", "layers": 3}
    only_fixed = Space({"a": 1, "b": "x"})
    assert only_fixed.sample(rng()) == {"a": 1, "b": "x"}
    assert Perturb((2.0,), 1.0)({}, only_fixed, rng()) == {"a": 1, "b": "x"}


def test_perturb_picks_factors_and_resamples_with_the_given_probability():
    space = Space({"x": Uniform(0.0, 100.0), "n": IntUniform(0, 10**6)})
    start = {"x": 10.0, "n": 500_000}
    seen = {Perturb((0.5, 2.0))(start, space, rng(s))["x"] for s in range(50)}
    assert seen == {5.0, 20.0}
    assert Perturb((1.0,))(start, space, rng()) == start  # factor 1, never resampled
    moved = sum(Perturb((1.0,), 1.0)(start, space, rng(s))["n"] != 500_000 for s in range(50))
    assert moved == 50
    half = sum(Perturb((1.0,), 0.5)(start, space, rng(s))["n"] != 500_000 for s in range(400))
    assert 150 < half < 250


def test_resample_with_probability_one_is_a_fresh_sample():
    space = example_space()
    start = space.sample(rng(0))
    assert Resample()(start, space, rng(9)) == space.sample(rng(9))
    assert Resample(0.0)(start, space, rng(9)) == start
    assert any(Resample(0.5)(start, space, rng(s)) != start for s in range(20))


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda s: Perturb(())({"lr": 0.1}, s, rng()), ValueError, r"'factors'.*Got \(\)"),
        (
            lambda s: Perturb((0.8, -1.0))({"lr": 0.1}, s, rng()),
            ValueError,
            r"positive finite numbers such as \(0.8, 1.2\)\. Got \(0.8, -1.0\) instead",
        ),
        (lambda s: Perturb("12")({"lr": 0.1}, s, rng()), ValueError, r"'factors'.*Got '12'"),
        (
            lambda s: Perturb((1.2,), 1.5)({"lr": 0.1}, s, rng()),
            ValueError,
            r"'resample_probability'.*Got 1.5",
        ),
        (lambda s: Perturb((1.2,))({}, s, rng()), ValueError, r"'hparams' .*Perturb.*lacks 'lr'"),
        (lambda s: Perturb((1.2,))([0.1], s, rng()), TypeError, r"Got \[0.1\]"),
        (
            lambda s: Resample(-0.1)({"lr": 0.1}, s, rng()),
            ValueError,
            r"'probability' parameter of Resample.*Got -0.1",
        ),
        (lambda s: Resample(0.0)({}, s, rng()), ValueError, r"'hparams' .*Resample.*lacks 'lr'"),
    ],
)
def test_space_operations_reject_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call(Space({"lr": LogUniform(1e-4, 1.0), "opt": "sgd"}))


def test_validate_names_missing_extra_and_bad_values():
    space = Space({"lr": Uniform(0.0, 1.0), "n": IntUniform(1, 4), "opt": "sgd", "k": 3})
    good = {"lr": 0.5, "n": 2, "opt": "sgd", "k": 3}
    with pytest.raises(ValueError, match=r"missing \['n', 'k'\]"):
        space.validate({"lr": 0.5, "opt": "sgd"})
    with pytest.raises(ValueError, match=r"unknown names \['x'\]"):
        space.validate({**good, "x": 1})
    with pytest.raises(ValueError, match=r"missing \['k'\].*unknown names \['K'\]"):
        space.validate({"lr": 0.5, "n": 2, "opt": "sgd", "K": 3})
    with pytest.raises(
        ValueError,
        match=r"'hparams\['lr'\]' .* its distribution Uniform\(low=0.0, high=1.0\)\. Got 2.0",
    ):
        space.validate({**good, "lr": 2.0})
    with pytest.raises(
        ValueError, match=r"'hparams\['n'\]' .* inside its distribution IntUniform.* Got 2.5"
    ):
        space.validate({**good, "n": 2.5})
    with pytest.raises(ValueError, match=r"'hparams\['lr'\]' .* Got True"):
        space.validate({**good, "lr": True})
    with pytest.raises(
        ValueError, match=r"'hparams\['opt'\]' .* its fixed value 'sgd'\. Got 'adam'"
    ):
        space.validate({**good, "opt": "adam"})
    with pytest.raises(TypeError, match=r"'hparams' parameter of Space.validate .* Got \["):
        space.validate([("lr", 0.5)])


def test_validate_returns_a_plain_copy_in_space_order():
    space = Space({"lr": Uniform(0.0, 1.0), "n": IntUniform(1, 4), "b": Choice([1, 2]), "k": 3})
    given_ = {"k": 3.0, "b": np.int64(2), "n": 2.0, "lr": np.float64(0.25)}
    checked = space.validate(given_)
    assert list(checked) == ["lr", "n", "b", "k"] and checked is not given_
    assert [type(v) for v in checked.values()] == [float, int, int, int]
    assert json.loads(json.dumps(checked)) == {"lr": 0.25, "n": 2, "b": 2, "k": 3}


# --- serialisation --------------------------------------------------------------------------------


def test_to_dict_shape():
    assert Uniform(0, 1).to_dict() == {"type": "Uniform", "low": 0.0, "high": 1.0}
    assert LogUniform(1e-3, 1).to_dict() == {"type": "LogUniform", "low": 1e-3, "high": 1.0}
    assert IntUniform(1, 3).to_dict() == {"type": "IntUniform", "low": 1, "high": 3}
    assert Choice(["a", None], ordered=False).to_dict() == {
        "type": "Choice",
        "options": ["a", None],
        "ordered": False,
    }
    assert Space({"x": Uniform(0, 1), "s": "a"}).to_dict() == {
        "x": {"type": "Uniform", "low": 0.0, "high": 1.0},
        "s": {"type": "Fixed", "value": "a"},
    }


@given(spaces())
def test_round_trip_through_json(space):
    text = json.dumps(space.to_dict())
    rebuilt = space_from_dict(json.loads(text))
    assert rebuilt == space and rebuilt.names == space.names
    assert space_from_dict(space.to_dict()) == space


def test_round_trip_keeps_infinite_fixed_values_and_defaults_ordered():
    space = Space({"clip": math.inf, "c": Choice([1, 2], ordered=False)})
    assert space_from_dict(json.loads(json.dumps(space.to_dict()))) == space
    assert space_from_dict({"c": {"type": "Choice", "options": [1, 2]}})["c"].ordered is True


@pytest.mark.parametrize(
    ("description", "error", "match"),
    [
        (
            {"x": {"type": "Gauss"}},
            ValueError,
            r"'description\['x'\]' .* Its type 'Gauss' is unknown",
        ),
        ({"x": {"low": 0, "high": 1}}, ValueError, r"Its type None is unknown"),
        ({"x": {"type": "Uniform", "low": 0}}, ValueError, r"'x'.*missing \['high'\]"),
        ({"x": {"type": "Fixed"}}, ValueError, r"missing \['value'\]"),
        ({"x": {"type": "IntUniform", "low": 0, "high": 3, "step": 1}}, ValueError, r"\['step'\]"),
        ({"x": {"type": "Uniform", "low": 2, "high": 1}}, ValueError, r"high=1.0\. Got 2.0"),
        ({"x": 0.5}, TypeError, r"'description\['x'\]' .* a dict with a 'type'"),
        ([("x", {"type": "Fixed", "value": 1})], TypeError, r"'description' .* Got \["),
    ],
)
def test_space_from_dict_rejects_bad_descriptions(description, error, match):
    with pytest.raises(error, match=match):
        space_from_dict(description)


def test_a_custom_distribution_works_in_a_space_but_does_not_round_trip():
    class Even(Distribution):
        def sample(self, rng: np.random.Generator) -> int:
            return 2 * int(rng.integers(0, 5))

        def perturb(self, value: Any, factor: float, rng: np.random.Generator) -> int:
            return min(8, value + 2) if factor > 1 else max(0, value - 2)

        def contains(self, value: Any) -> bool:
            return value in (0, 2, 4, 6, 8)

        def to_dict(self) -> dict[str, Any]:
            return {"type": "Even"}

    space = Space({"e": Even()})
    assert space.validate(Perturb((1.2,))(space.sample(rng()), space, rng())) is not None
    with pytest.raises(ValueError, match="'Even'"):
        space_from_dict(space.to_dict())


def test_a_value_beyond_the_float_range_is_outside_not_an_overflow():
    space = Space({"lr": Uniform(0.1, 1.0), "n": IntUniform(1, 9), "clip": math.inf})
    for huge in (10**400, -(10**400)):
        assert not Uniform(0.1, 1.0).contains(huge) and not IntUniform(1, 9).contains(huge)
        with pytest.raises(ValueError, match=r"'hparams\['lr'\]' .* Got -?1000"):
            space.validate({"lr": huge, "n": 3, "clip": math.inf})
    # a fixed infinity is a setting ("no limit") and is kept; NaN is refused with the way out
    assert space.validate({"lr": 0.5, "n": 3, "clip": math.inf})["clip"] == math.inf
    with pytest.raises(ValueError, match=r"other than NaN \(math.inf for 'no limit'\)"):
        Space({"clip": math.nan})
