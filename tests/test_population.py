"""End to end: PBT on the paper's toy problem, sync determinism, results, bad input."""

from __future__ import annotations

import statistics
import warnings
from pathlib import Path

import numpy as np
import pytest

import poptune as pt
from poptune.records import MemberStatus
from poptune.strategies import describe
from poptune.testing import Failing, Quadratic, check_steps, quadratic_space

# The toy problem at the size most of these tests read: 4 members, 10 intervals each.
TOY = {"population": 4, "intervals": 10}


def test_run_records_every_interval_and_exploit(storage_url, quick_run):
    result = quick_run(storage=storage_url, name="toy", exploit=pt.Truncation(0.25), **TOY)
    intervals = result.intervals()
    check_steps(result)  # steps are the training behind the weights; none past the budget
    assert sorted({(i.member, i.step) for i in intervals}) == [
        (m, s) for m in range(4) for s in range(1, 11)
    ]  # members compare and copy at equal steps, so each trains every step once
    assert all(m.step == 10 and m.status is MemberStatus.DONE for m in result.members)
    assert result.status == "finished"
    exploits = result.exploits()
    assert exploits, "a bottom member of 4 must exploit at some ready step"
    by_key = {(i.member, i.step): i for i in intervals}
    for event in exploits:
        donor = by_key[(event.donor, event.donor_step)]
        # explore started from exactly the hparams recorded with the donor's checkpoint
        for name in ("h0", "h1"):
            ratio = event.hparams_after[name] / donor.hparams[name]
            assert (
                ratio == pytest.approx(0.8)
                or ratio == pytest.approx(1.2)
                or (event.hparams_after[name] in (0.0, 1.0))
            )
        assert event.donor_step == event.step  # compared and copied at equal training
        after = by_key[(event.member, event.donor_step + 1)]  # the step came with the weights
        assert after.origin == (event.donor, event.donor_step)
        assert after.hparams == event.hparams_after


def test_best_schedule_and_lineage(storage_url, quick_run):
    result = quick_run(storage=storage_url, name="toy", **TOY)
    best = result.best
    assert best.score == max(m.score for m in result.members)
    assert best.step == 10
    schedule = result.schedule()
    assert [e.step for e in schedule] == list(range(1, 11))  # as long as the best weights' training
    assert [e.member_step for e in schedule] == list(range(1, 11))
    assert schedule[-1].member == best.member and schedule[-1].score == best.score
    assert schedule[0].member_step == 1  # followed copies back to the first interval
    # replaying the schedule from scratch reproduces the best member's weights exactly
    model = Quadratic(schedule[0].hparams, 0)
    for entry in schedule:
        model.train(entry.hparams)
    assert model.evaluate()["q"] == pytest.approx(best.score, abs=1e-12)
    restored = best.load()
    assert restored.evaluate()["q"] == best.score
    lineage = result.lineage()
    assert len(lineage.nodes) == len(result.intervals())
    copied = [e for e in lineage.edges if e.kind is pt.EdgeKind.COPIED]
    assert len(copied) == len(result.exploits())


def _pbt_and_random_search(quick_run, tmp_path: Path, seeds: int, measure, **options):
    """``measure(result)`` of PBT and of random search (no exploit) with the same budget, 8
    members each, for every seed in ``range(seeds)``: the two lists."""
    pbt, random_search = [], []
    for seed in range(seeds):
        url = f"sqlite:///{tmp_path / f'toy-{seed}.db'}"
        for exploit, sink in ((pt.Truncation(0.25), pbt), (None, random_search)):
            result = quick_run(
                storage=url, name=f"toy-{exploit is None}", seed=seed, population=8,
                exploit=exploit, **options,
            )  # fmt: skip
            sink.append(measure(result))
    return pbt, random_search


def test_pbt_beats_random_search_on_the_toy_problem(tmp_path: Path, quick_run):
    """Population-wide mean Q after the same budget, median over 7 seeds."""

    def mean_q(result: pt.Result) -> float:
        return statistics.fmean(m.score for m in result.members)

    pbt, random_search = _pbt_and_random_search(
        quick_run, tmp_path, 7, mean_q, intervals=15, sync=True
    )
    assert statistics.median(pbt) > statistics.median(random_search) + 0.05
    assert sum(p > r for p, r in zip(pbt, random_search, strict=True)) >= 6


def _gradient_steps_to(result: pt.Result, target: float) -> float:
    """Gradient steps behind the first weights that reached ``target`` (inf if none did)."""
    steps = [i.step for i in result.intervals() if i.score is not None and i.score >= target]
    return min(steps) * Quadratic.steps if steps else float("inf")


def test_async_pbt_reaches_the_target_with_less_training_than_random_search(
    tmp_path: Path, quick_run
):
    """Counting the steps behind the weights (which travel with them), asynchronous PBT reaches
    Q >= 1.19 sooner than random search: median over 12 seeds. Measured over 10 disjoint sets
    of 12 seeds (0-119): PBT's median was lower in all 10 (28-32 vs 32-38 gradient steps), and
    PBT was never slower on a single seed."""

    def steps_to_target(result: pt.Result) -> float:
        check_steps(result)
        return _gradient_steps_to(result, 1.19)

    pbt, random_search = _pbt_and_random_search(
        quick_run, tmp_path, 12, steps_to_target, intervals=20
    )
    assert statistics.median(pbt) < statistics.median(random_search)
    assert sum(p <= r for p, r in zip(pbt, random_search, strict=True)) >= 10


def test_random_search_baseline_never_exploits(storage_url, quick_run):
    result = quick_run(storage=storage_url, name="rs", exploit=None, **TOY)
    assert result.exploits() == []
    assert all(i.origin in (None, (i.member, i.step - 1)) for i in result.intervals())


def _final_state(result: pt.Result):
    return (
        [(i.member, i.step, dict(i.hparams), i.score, i.origin) for i in result.intervals()],
        # recording order depends on which worker got there first; the content must not
        sorted(
            (e.member, e.step, e.donor, e.donor_step, tuple(e.hparams_after.items()))
            for e in result.exploits()
        ),
    )


def test_sync_mode_is_identical_for_one_and_two_workers(tmp_path: Path, writes, quick_run):
    results = []
    for workers in (1, 2):
        url = f"sqlite:///{tmp_path / f'sync-{workers}.db'}"
        result = quick_run(
            storage=url, name="sync", population=6, intervals=8, workers=workers, seed=123,
            sync=True, exploit=pt.Truncation(0.34),
            explore=pt.Perturb((0.8, 1.2), resample_probability=0.2),
        )  # fmt: skip
        results.append(_final_state(result))
    assert results[0][1], "the run must exploit for the comparison to mean anything"
    assert results[0] == results[1]


def test_same_name_same_config_continues_different_config_refused(storage_url, quick_run):
    first = quick_run(storage=storage_url, name="toy", **TOY)
    again = quick_run(storage=storage_url, name="toy", **TOY)
    assert len(again.intervals()) == len(first.intervals())
    with pytest.raises(ValueError, match=r"already exists.*intervals: stored 10, given 12"):
        quick_run(storage=storage_url, name="toy", population=4, intervals=12)


def test_load_returns_the_same_result(storage_url, quick_run):
    result = quick_run(storage=storage_url, name="toy", **TOY)
    loaded = pt.load(storage_url, "toy")
    assert loaded.best == result.best
    assert loaded.schedule() == result.schedule()
    with pytest.raises(pt.PopulationNotFound, match="'nope'"):
        pt.load(storage_url, "nope")


def test_to_pandas(storage_url, quick_run):
    frame = quick_run(storage=storage_url, name="toy", **TOY).to_pandas()
    assert len(frame) == 40
    assert {"member", "step", "score", "hparams.h0", "metrics.q", "metrics.surrogate"} <= set(
        frame.columns
    )


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"mode": "maximum"}, ValueError, "'mode' parameter must be 'max' or 'min'"),
        ({"population": 1}, ValueError, "'population' parameter must be an int >= 2. Got 1"),
        ({"runner": "ray"}, ValueError, "'runner' parameter must be a runner instance"),
        ({"runner": pt.InProcessRunner}, ValueError, "'runner' parameter must be a runner inst"),
        ({"intervals": 0}, ValueError, "'intervals'"),
        ({"workers": 0}, ValueError, "'workers'"),
        ({"metric": ""}, ValueError, "'metric'"),
        ({"space": [1, 2]}, TypeError, "'space' parameter must be a dict"),
        ({"exploit": 3}, TypeError, "'exploit' parameter"),
        ({"initial": [{"h0": 2.0, "h1": 0.5}]}, ValueError, r"initial\[0\]"),
        ({"storage": "sqlite://"}, pt.StorageError, "in-memory"),
        # names are stored and printed: no escape codes, lone surrogates or bidi overrides
        ({"name": "evil\x1b[2J"}, ValueError, r"'name' parameter must be a name without"),
        ({"name": "a\udc80b"}, ValueError, r"control characters, lone surrogates.*'a\\udc80b'"),
        ({"name": "abc\u202edcba"}, ValueError, "bidirectional overrides"),
        ({"metric": "q\n"}, ValueError, r"'metric' parameter must be a name without"),
        (
            {"space": {"h0\x1b": pt.Uniform(0, 1), "h1": 0.5}},
            ValueError,
            r"'space' parameter must be hyperparameter names without",
        ),
        # an initial value beyond the float range is outside the space, not an OverflowError
        (
            {"initial": [{"h0": 10**400, "h1": 0.5}]},
            ValueError,
            r"initial\[0\].*'hparams\['h0'\]'.* Got 1000",
        ),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(storage_url, options, error, match, quick_run):
    with pytest.raises(error, match=match):
        quick_run(**{"storage": storage_url, "name": "bad", **TOY, **options})


def test_a_storage_or_name_of_the_wrong_type_is_named(tmp_path, quick_run):
    """An AttributeError from the insides ('PosixPath' object has no attribute 'population')."""
    with pytest.raises(pt.StorageError, match="must be a URL string or a Storage, not PosixPath"):
        quick_run(storage=tmp_path / "p.db")
    with pytest.raises(pt.StorageError, match="not int"):
        pt.load(5, "p")
    with pytest.raises(ValueError, match="'name' parameter of load must be a non-empty string"):
        pt.load(quick_run.storage, None)


def test_trainable_must_be_a_class(storage_url, quick_run):
    with pytest.raises(TypeError, match="must be a class"):
        quick_run(Quadratic({"h0": 0, "h1": 0}, 0), space={}, storage=storage_url)

    class Incomplete:
        def train(self, hparams):
            pass

    with pytest.raises(TypeError, match="lacks evaluate, state_dict, load_state_dict"):
        quick_run(Incomplete, space={}, storage=storage_url)


@pytest.mark.parametrize("workers", [1, 2])
def test_unknown_metric_names_the_returned_keys(storage_url, workers, quick_run):
    with pytest.raises(pt.PopulationError, match=r"no metric 'accuracy'.*\['q', 'surrogate'\]"):
        quick_run(storage=storage_url, name="m", metric="accuracy", workers=workers, **TOY)
    assert pt.load(storage_url, "m").status == "error"


def test_a_name_refused_shows_at_most_a_line(storage_url, quick_run):
    with pytest.raises(ValueError) as error:
        quick_run(storage=storage_url, name="\x1b" * 10_000, **TOY)
    assert len(str(error.value)) < 400


class Huge(Quadratic):
    """Scores beyond the float range: an int of 400 digits."""

    def evaluate(self):
        return {**super().evaluate(), "q": 10**400}


class Opaque(Quadratic):
    """An extra metric that is an object, which no reader could use."""

    def evaluate(self):
        return {**super().evaluate(), "opaque": object()}


def test_a_score_beyond_the_float_range_is_recorded_as_infinite(storage_url, quick_run):
    result = quick_run(Huge, storage=storage_url, name="huge", population=2)
    assert result.status == "finished"  # it was an OverflowError that left it 'running'
    assert {m.score for m in result.members} == {float("inf")}  # ranked like inf: worst


def test_a_metric_that_is_no_number_stops_the_population_clearly(storage_url, quick_run):
    with pytest.raises(pt.PopulationError, match=r"'opaque'=<object object.*Return a number"):
        quick_run(Opaque, storage=storage_url, name="opaque", population=2)
    assert pt.load(storage_url, "opaque").status == "error"


def test_failures_are_retried_recorded_with_traceback_and_others_go_on(
    storage_url, monkeypatch, quick_run
):
    monkeypatch.setattr(Failing, "fail_above", 0.6)
    start = [{"h0": 0.9, "h1": 0.5}] + [{"h0": 0.1 * i, "h1": 0.5} for i in (1, 2, 3)]
    result = quick_run(
        Failing, storage=storage_url, name="f", population=4, intervals=5, seed=1,
        initial=start, exploit=None,
    )  # fmt: skip
    failures = result.failures()
    # one attempt and max_failures=2 retries; no member had a checkpoint to re-seed it from yet
    assert [(f.member, f.step) for f in failures] == [(0, 1)] * 3
    assert "RuntimeError: boom" in failures[0].traceback
    assert failures[0].traceback.startswith("Traceback")
    assert failures[0].error == "RuntimeError: boom: training diverged with h0=0.900"
    statuses = {m.id: (m.status, m.step) for m in result.members}
    assert statuses == {
        0: (MemberStatus.FAILED, 0),
        1: (MemberStatus.DONE, 5),
        2: (MemberStatus.DONE, 5),
        3: (MemberStatus.DONE, 5),
    }
    assert result.best.member != 0
    assert result.status == "finished"


@pytest.mark.parametrize("workers", [1, 2])
def test_a_member_that_keeps_failing_is_reseeded_from_a_healthy_one(
    storage_url, monkeypatch, workers, quick_run
):
    monkeypatch.setattr(Failing, "fail_above", 0.6)
    start = [{"h0": 0.2, "h1": 0.5}, {"h0": 0.3, "h1": 0.5}, {"h0": 0.9, "h1": 0.5}]
    result = quick_run(
        Failing, storage=storage_url, name="reseed", intervals=5, initial=start, sync=True,
        workers=workers, max_failures=1, exploit=None,
    )  # fmt: skip
    assert [(f.member, f.step) for f in result.failures()] == [(2, 1), (2, 1)]
    reseeds = [e for e in result.exploits() if e.member == 2 and e.step == 0]
    assert len(reseeds) == 1 and reseeds[0].donor in (0, 1) and reseeds[0].donor_step == 1
    # a recovery, not an exploit: recorded as such and not counted among the exploits
    assert reseeds[0].reason is pt.CopyReason.RESEED and not reseeds[0].is_exploit
    assert (result.summary().exploits, result.summary().recoveries) == (0, 1)
    assert [(m.status, m.step) for m in result.members] == [(MemberStatus.DONE, 5)] * 3
    first = next(i for i in result.intervals() if i.member == 2)
    assert (first.step, first.origin) == (2, (reseeds[0].donor, 1))  # from the donor's weights


def test_every_member_failing_stops_the_run_with_the_traceback(storage_url, quick_run):
    with pytest.raises(
        pt.PopulationError, match=r"9 attempts in a row failed(.|\n)*RuntimeError: boom"
    ):
        quick_run(Failing, storage=storage_url, name="all", intervals=50)
    result = pt.load(storage_url, "all")
    assert len(result.failures()) == 9  # 3 members x (1 attempt + 2 retries), not 150
    assert result.intervals() == []


def test_resume_retries_failed_members_to_the_full_budget(storage_url, monkeypatch, quick_run):
    monkeypatch.setattr(Failing, "fail_above", 0.5)
    start = [{"h0": 0.9, "h1": 0.3}, {"h0": 0.2, "h1": 0.3}]
    result = quick_run(
        Failing, storage=storage_url, name="r", population=2, intervals=4, exploit=None,
        initial=start,
    )  # fmt: skip
    assert result.members[0].status is MemberStatus.FAILED
    monkeypatch.setattr(Failing, "fail_above", 2.0)  # "fix the bug"
    resumed = pt.load(storage_url, "r").resume()
    assert [m.step for m in resumed.members] == [4, 4]
    assert resumed.status == "finished"


def test_a_resume_that_cannot_start_changes_nothing_stored(storage_url, quick_run):
    class Interactive(Quadratic):  # defined here: no reference to import it by later
        pass

    quick_run(Interactive, storage=storage_url, name="local", population=2)
    stored = pt.load(storage_url, "local")
    config, members = stored.record.config, stored.members
    with pytest.raises(ValueError, match="cannot be imported by reference"):
        stored.resume(intervals=5, stop=pt.Target(0.0))
    after = pt.load(storage_url, "local")
    assert after.record.config == config  # its started_at, budget and stop criteria
    assert after.members == members and after.status == "finished"


def test_checkpoints_stay_bounded(storage_url, tmp_path: Path, quick_run):
    result = quick_run(storage=storage_url, name="gc", population=4, intervals=12)
    files = list((tmp_path / "checkpoints").rglob("*.ckpt"))
    # at most: each member's latest, the best ever, and restore points
    assert len(files) == len(result.storage.checkpoints(result.record.id))
    assert len(files) <= 4 + 1 + 4
    assert result.best.checkpoint is not None
    assert np.isfinite(result.best.state()["theta"]).all()


# --- explore=None: deprecated (None should one day mean "no explore", as for exploit) --------


def test_explore_none_warns_and_still_means_the_default_perturb(quick_run):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # leaving it out warns nothing
        default = quick_run(name="default")
    message = r"explore=None means the default pt\.Perturb\(\); leave it out instead"
    with pytest.warns(DeprecationWarning, match=message) as caught:
        given = pt.run(
            Quadratic,
            quadratic_space(),
            "q",
            population=3,
            intervals=2,
            storage=quick_run.storage,
            name="none",
            progress=False,
            explore=None,
        )
    assert caught[0].filename == __file__  # it points at the caller's line
    assert given.status == "finished"
    assert given.config.explore == default.config.explore == describe(pt.Perturb())


def test_resume_explore_none_warns_and_still_keeps_the_recorded_explore(quick_run):
    quick_run(name="r", explore=pt.Resample())
    stored = pt.load(quick_run.storage, "r")
    with pytest.warns(DeprecationWarning, match="explore=None keeps the population's recorded"):
        resumed = pt.resume(stored, explore=None, intervals=3, progress=False)
    assert resumed.status == "finished" and [m.step for m in resumed.members] == [3, 3, 3]
    assert resumed.config.explore == describe(pt.Resample())
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        assert pt.resume(stored, intervals=4, progress=False).status == "finished"


class _ForgetsReturn(Quadratic):
    def state_dict(self):
        {"theta": self.theta.copy()}  # the return forgotten


class _NumpyBool(Quadratic):
    def evaluate(self):
        return {"q": np.bool_(True)}


def test_mistakes_in_a_trainable_are_named_not_stored_as_something_else(quick_run):
    """A state_dict() returning None was checkpointed (failing later, in another member's
    load_state_dict); an np.bool_ metric was stored as the score 1.0 (a bool is refused)."""
    with pytest.raises(pt.PopulationError, match=r"state_dict\(\) returned None"):
        quick_run(_ForgetsReturn, name="none", max_failures=0)
    with pytest.raises(pt.PopulationError, match=r"'q'=np.True_, which is not a number"):
        quick_run(_NumpyBool, name="npbool", max_failures=0)


def test_resume_delete_and_schedule_name_a_wrong_argument(quick_run):
    result = quick_run(name="p")
    with pytest.raises(ValueError, match=r"pt.load\(storage, name\).resume\(\)"):
        pt.resume("p")
    with pytest.raises(ValueError, match="'name' parameter of delete must be a non-empty str"):
        pt.delete(quick_run.storage, result)
    with pytest.raises(ValueError, match="'member' parameter of schedule must be an int"):
        result.schedule(True)


@pytest.mark.parametrize("given", ["", 5])
def test_a_checkpoints_value_that_names_no_place_is_refused(quick_run, given):
    """ "" wrote the checkpoints into the current folder; 5 was an AttributeError."""
    with pytest.raises(ValueError, match="'checkpoints' parameter must be a folder"):
        quick_run(name="ck", checkpoints=given)
