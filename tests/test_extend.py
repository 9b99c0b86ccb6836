"""A population (finished or not) is given a larger budget: its members train on."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

import poptune as pt
from poptune.cli import main
from poptune.testing import check_steps

# Population "more": 4 members, a budget of 3 intervals to grow.
MORE = {"name": "more", "population": 4, "intervals": 3}


@pytest.mark.parametrize("sync", [False, True])
def test_a_finished_population_trains_on_to_a_larger_budget(
    storage_url: str, sync: bool, quick_run
):
    first = quick_run(storage=storage_url, sync=sync, **MORE)
    before = {(i.member, i.step) for i in first.intervals()}
    assert first.status == "finished" and len(before) == 4 * 3
    longer = first.resume(intervals=6, progress=False)
    assert longer.status == "finished" and longer.config.intervals == 6
    assert [m.step for m in longer.members] == [6] * 4
    intervals = longer.intervals()
    assert len(intervals) == 4 * 6 and before <= {(i.member, i.step) for i in intervals}
    assert len(longer.schedule()) == 6
    check_steps(longer)  # every interval continues from the recorded weights, none twice
    again = pt.load(storage_url, "more").resume(progress=False)  # the new budget is stored
    assert len(again.intervals()) == 4 * 6


def test_a_budget_only_grows(quick_run):
    url = quick_run.storage
    result = quick_run(**MORE)
    with pytest.raises(ValueError, match=r"at least the population's budget \(3\).*Got 2"):
        result.resume(intervals=2, progress=False)
    assert pt.load(url, "more").config.intervals == 3
    out = CliRunner().invoke(
        main, ["resume", "more", "--storage", url, "--intervals", "4", "--no-progress"]
    )
    assert out.exit_code == 0, out.output
    assert [m.step for m in pt.load(url, "more").members] == [4] * 4


@pytest.mark.parametrize(
    "bad", [{"trackers": "runs/tb"}, {"checkpoints": "nosuch://x"}], ids=["trackers", "checkpoints"]
)
def test_a_bad_parameter_leaves_the_stored_population_as_it_was(bad, quick_run):
    """Every argument is checked before anything stored changes: a refused resume neither
    grows the budget, nor rewrites the configuration, nor reopens the members."""
    url = quick_run.storage
    result = quick_run(**MORE)
    before = pt.load(url, "more")
    with pytest.raises(pt.InvalidParameterError):
        result.resume(intervals=6, stop=pt.Target(1e9), progress=False, **bad)
    after = pt.load(url, "more")
    assert after.config == before.config and after.config.intervals == 3
    assert after.status == before.status == "finished"
    assert [(m.status, m.step) for m in after.members] == [
        (m.status, m.step) for m in before.members
    ]
