"""Exploit, explore and ready strategies: pure, seeded decisions."""

from __future__ import annotations

import json
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
    ready = pt.Every(period=2, burn_in=4)
    due = [s for s in range(0, 12) if ready(Candidate(0, s, 0.0, 0.0))]
    assert due == [4, 6, 8, 10]
    assert [s for s in range(0, 4) if pt.Every()(Candidate(0, s, 0.0, 0.0))] == [1, 2, 3]
    with pytest.raises(ValueError, match="'period' parameter of Every"):
        pt.Every(period=0)
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


def _module_level_exploit(member, peers, rng):
    return None


def test_callables_are_described_by_reference():
    description = describe(_module_level_exploit)
    assert description["ref"].endswith(":_module_level_exploit")
    lam = describe(lambda m, p, r: None)
    assert lam["ref"] is None
    with pytest.raises(ValueError, match="resume"):
        rebuild(lam, "exploit")


def test_welch_p_value_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    from poptune.strategies.exploit import welch_p_value

    rng = np.random.default_rng(0)
    for _ in range(50):
        a = rng.normal(0, rng.uniform(0.1, 3), int(rng.integers(2, 20)))
        b = rng.normal(rng.uniform(-2, 2), rng.uniform(0.1, 3), int(rng.integers(2, 20)))
        expected = stats.ttest_ind(a, b, equal_var=False).pvalue
        assert welch_p_value(list(a), list(b)) == pytest.approx(expected, rel=1e-9, abs=1e-15)
    assert welch_p_value([1.0], [2.0, 3.0]) == 1.0
    assert welch_p_value([1.0, 1.0], [2.0, 2.0]) == 0.0


def with_history(member: int, scores: list[float]) -> Candidate:
    return Candidate(member, len(scores), scores[-1], scores[-1], {}, tuple(scores))


def test_ttest_copies_only_significantly_better_members():
    exploit = pt.TTest(window=5, alpha=0.05)
    weak = with_history(0, [0.10, 0.12, 0.11, 0.09, 0.10])
    strong = with_history(1, [0.90, 0.92, 0.91, 0.89, 0.90])
    noisy = with_history(1, [0.0, 0.4, 0.05, 0.3, 0.2])  # mean higher, not significant
    assert exploit(weak, [weak, strong], np.random.default_rng(0)) == strong
    assert exploit(strong, [weak, strong], np.random.default_rng(0)) is None
    assert exploit(weak, [weak, noisy], np.random.default_rng(0)) is None
    diverged = Candidate(0, 5, float("nan"), -math.inf, {}, ())
    assert exploit(diverged, [diverged, noisy], np.random.default_rng(0)) == noisy
    short = with_history(1, [0.9])
    assert exploit(weak, [weak, short], np.random.default_rng(0)) is None
    assert rebuild(describe(exploit), "exploit") == exploit
    with pytest.raises(ValueError, match="'window' parameter of TTest"):
        pt.TTest(window=1)
    with pytest.raises(ValueError, match="'alpha' parameter of TTest"):
        pt.TTest(alpha=1.5)


def test_ttest_in_a_run_sees_each_members_recent_scores(quick_run):
    seen = []

    class Recording(pt.TTest):
        def __call__(self, member, peers, rng):
            seen.append((member.step, {c.member: c.history for c in peers}))
            return super().__call__(member, peers, rng)

    result = quick_run(name="t", population=4, intervals=8, exploit=Recording(window=3), sync=True)
    assert seen
    by_key = {(i.member, i.step): i.score for i in result.intervals()}
    for step, histories in seen:
        for member, history in histories.items():
            expected = [by_key[(member, s)] for s in range(max(1, step - 2), step + 1)]
            assert list(history) == pytest.approx(expected)
    assert len(result.intervals()) == 32


def test_strategy_parameters_from_numpy_are_accepted_and_recorded_as_built_ins():
    """A sweep over strategy settings hands numpy scalars (``np.arange``, ``np.linspace``): they
    are accepted, and recorded as plain JSON numbers (``json.dumps`` refuses numpy integers)."""
    made = [
        pt.Truncation(np.float32(0.25)),
        pt.TTest(window=np.int64(5), alpha=np.float32(0.1)),
        pt.Every(np.int64(2), burn_in=np.int32(1)),
        pt.PB2(window=np.int64(4), max_points=np.int64(50)),
        pt.Perturb((np.float32(0.5), np.float64(2.0)), resample_probability=np.float32(0.25)),
        pt.Target(np.float32(0.5)),
        pt.Plateau(np.int64(3), min_delta=np.float32(0.01)),
        pt.WallClock(np.int64(60)),
    ]
    for strategy in made:
        recorded = json.loads(json.dumps(describe(strategy, "strategy")))
        rebuilt = rebuild(recorded, "strategy")
        assert type(rebuilt) is type(strategy)
        assert rebuilt.to_config() == strategy.to_config()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: pt.TTest(window=1), "'window' parameter of TTest must be an int >= 2"),
        (lambda: pt.TTest(alpha=1.0), r"'alpha' parameter of TTest must be a number in the range"),
        (lambda: pt.Every(0), "'period' parameter of Every must be an int >= 1"),
        (lambda: pt.Every(burn_in=-1), "'burn_in' parameter of Every must be an int >= 0"),
        (lambda: pt.PB2(max_points=2), "'max_points' parameter of PB2 must be an int >= 3"),
        (lambda: pt.Perturb((0.8, 0)), "'factors' parameter of Perturb must be a non-empty"),
        (lambda: pt.Perturb("0.8"), "'factors' parameter of Perturb must be a non-empty"),
        (lambda: pt.Target(float("nan")), "'score' parameter of Target must be a finite number"),
        (lambda: pt.Plateau(0), "'patience' parameter of Plateau must be an int >= 1"),
        (lambda: pt.Plateau(2, min_delta=-1), "'min_delta' parameter of Plateau must be a number"),
        (lambda: pt.Plateau(2, metric=""), "'metric' parameter of Plateau must be a metric's"),
        (lambda: pt.WallClock(0), "'seconds' parameter of WallClock must be a number > 0"),
        (lambda: pt.Every(2.0), "'period' parameter of Every must be an int >= 1"),
    ],
)
def test_bad_strategy_parameters_say_what_was_wrong_and_the_value(make, message):
    with pytest.raises(pt.InvalidParameterError, match=message) as error:
        make()
    assert "Got " in str(error.value) and str(error.value).endswith("instead.")


BUILT_INS = [
    pt.Truncation(0.3),
    pt.Tournament(),
    pt.TTest(window=4, alpha=0.1),
    pt.Perturb((0.5, 1.5), 0.1),
    pt.Resample(0.5),
    pt.chain(pt.Perturb((2.0,)), pt.Resample(0.25)),
    pt.PB2(window=3, max_points=40),
    pt.Every(3, 2),
    pt.Target(0.9, metric="q"),
    pt.Plateau(4, min_delta=0.01),
    pt.WallClock(60),
]


@pytest.mark.parametrize("strategy", BUILT_INS, ids=lambda s: type(s).__name__)
def test_builtins_are_frozen_values_whose_repr_rebuilds_them(strategy):
    """repr, == and the recorded parameters all come from the fields: the repr is the call
    that rebuilds an equal strategy, and a built-in cannot be changed after it was checked."""
    assert eval(repr(strategy), {**vars(pt), "Chain": pt.strategies.Chain}) == strategy
    assert rebuild(json.loads(json.dumps(describe(strategy))), "strategy") == strategy
    assert hash(strategy) == hash(rebuild(describe(strategy), "strategy"))
    field = next(iter(strategy.to_config()), None)
    if field is not None:
        with pytest.raises(AttributeError):
            setattr(strategy, field, None)


@pytest.mark.parametrize(
    ("description", "expected"),
    [
        # As recorded before the built-ins were dataclasses (and Every's and Plateau's
        # parameters were renamed): every stored population must rebuild the same strategies.
        ({"type": "Truncation", "fraction": 0.25}, pt.Truncation(0.25)),
        ({"type": "Tournament"}, pt.Tournament()),
        ({"type": "TTest", "window": 5, "alpha": 0.05}, pt.TTest(5, 0.05)),
        ({"type": "Perturb", "factors": [0.8, 1.2], "resample_probability": 0.25}, pt.Perturb()),
        ({"type": "Resample", "probability": 1.0}, pt.Resample()),
        ({"type": "PB2", "window": 10, "max_points": 200}, pt.PB2()),
        ({"type": "Every", "intervals": 2, "burn_in": 4}, pt.Every(2, 4)),
        ({"type": "Target", "score": 0.98, "metric": None}, pt.Target(0.98)),
        ({"type": "Plateau", "intervals": 5, "min_delta": 0.0, "metric": None}, pt.Plateau(5)),
        ({"type": "WallClock", "seconds": 3600.0}, pt.WallClock(3600)),
        (
            {
                "type": "Chain",
                "steps": [
                    {"type": "Perturb", "factors": [2.0], "resample_probability": 0.0},
                    {"type": "Resample", "probability": 0.25},
                ],
            },
            pt.chain(pt.Perturb((2.0,)), pt.Resample(0.25)),
        ),
    ],
)
def test_descriptions_recorded_by_earlier_releases_rebuild_equal_strategies(
    description, expected, recwarn
):
    if description["type"] == "Perturb":
        expected = pt.Perturb((0.8, 1.2), resample_probability=0.25)
    assert rebuild(description, "strategy") == expected
    assert not [w for w in recwarn if issubclass(w.category, DeprecationWarning)]


def test_old_parameter_names_still_work_with_a_deprecation_warning():
    pop = population(0.1, 0.9)
    with pytest.warns(DeprecationWarning, match="'intervals' parameter of Every.*'period'"):
        assert pt.Every(intervals=4, burn_in=2) == pt.Every(period=4, burn_in=2)
    with pytest.warns(DeprecationWarning, match="'intervals' parameter of Plateau.*'patience'"):
        assert pt.Plateau(intervals=3) == pt.Plateau(patience=3)
    for exploit in (pt.Truncation(0.5), pt.Tournament(), pt.TTest()):
        owner = f"{type(exploit).__name__}.__call__"
        with pytest.warns(DeprecationWarning, match=f"'population' parameter of {owner}.*'peers'"):
            by_old = exploit(pop[0], population=pop, rng=np.random.default_rng(3))
        assert by_old == exploit(pop[0], peers=pop, rng=np.random.default_rng(3))
    with pytest.warns(DeprecationWarning, match=r"Target\.score"):
        assert pt.Target(0.5).target == 0.5
    with pytest.raises(pt.InvalidParameterError, match="'intervals' parameter of Every must be"):
        pt.Every(intervals=2, period=2)


def test_the_builtins_declare_their_capabilities():
    from poptune.strategies import _capabilities as capabilities

    assert [capabilities.history(e) for e in (pt.Truncation(), pt.TTest(window=7))] == [0, 7]
    assert not any(capabilities.needs_hparams(e) for e in BUILT_INS[:3])
    assert [capabilities.window(e) for e in (pt.Perturb(), pt.PB2(window=6))] == [0, 6]
    assert capabilities.window(pt.chain(pt.Resample(), pt.PB2(window=5))) == 5
    assert [capabilities.watched_metric(s) for s in BUILT_INS[-3:]] == ["q", None, None]


@pytest.mark.parametrize(
    ("options", "said"),
    [
        ({"exploit": pt.Truncation}, r"'exploit' parameter must be a strategy instance"),
        ({"explore": pt.Perturb}, r"'explore' parameter must be a strategy instance"),
        ({"ready": pt.Every}, r"'ready' parameter must be a strategy instance"),
        ({"stop": pt.Target}, r"'stop' parameter must be a strategy instance"),
        ({"explore": pt.Truncation()}, r"Truncation is an exploit strategy: pass it as exploit="),
        ({"exploit": pt.Perturb()}, r"Perturb is an explore strategy: pass it as explore="),
        ({"exploit": pt.Every(2)}, r"Every is a ready strategy: pass it as ready="),
        ({"stop": pt.Every(2)}, r"Every is a ready strategy"),
    ],
)
def test_a_strategy_in_the_wrong_seat_or_a_class_is_refused_before_anything_is_stored(
    quick_run, options, said
):
    """Each was accepted, and failed once training started with a TypeError or
    AttributeError from poptune's insides, the population left half-trained."""
    with pytest.raises(pt.InvalidParameterError, match=said):
        quick_run(name="seat", **options)
    assert pt.open_storage(quick_run.storage).populations() == []


def test_a_chain_takes_explore_strategy_instances_only():
    with pytest.raises(pt.InvalidParameterError, match=r"'steps\[0\]' .*strategy instance"):
        pt.chain(pt.Perturb)
    with pytest.raises(pt.InvalidParameterError, match=r"Tournament is an exploit strategy"):
        pt.chain(pt.Perturb(), pt.Tournament())
