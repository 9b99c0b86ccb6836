"""The typed population configuration, strategies recorded with their parameters, and reads
that never import the user's training code."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import poptune as pt
from poptune.cli import main
from poptune.config import PopulationConfig
from poptune.strategies import describe, rebuild
from poptune.testing import quadratic_space


def _config(**changes):
    values = dict(
        trainable="m:T",
        space=quadratic_space(),
        metric="q",
        mode="max",
        population=4,
        intervals=3,
        exploit=describe(pt.Truncation()),
        explore=describe(pt.Perturb()),
        ready=describe(pt.Every()),
        seed=1,
    )
    values.update(changes)
    return PopulationConfig(**values)


# --- one typed configuration ---------------------------------------------------------------


def test_config_round_trips_through_its_stored_form():
    config = _config(initial=[{"h0": 0.5, "h1": 0.5}], schedule=[{"h0": 1.0, "h1": 0.0}])
    again = PopulationConfig.from_dict(config.to_dict())
    assert again == config
    assert again.mode is pt.Mode.MAX and isinstance(again.space, pt.Space)


def test_a_population_recorded_before_a_rename_is_the_same_algorithm(tmp_path, quick_run):
    """A population stored with ``Every(intervals=2)``/``Plateau(intervals=3)`` (the names before
    issue 22) is the same algorithm as today's ``Every(period=2)``/``Plateau(patience=3)``:
    running it again under its name continues it instead of refusing "a different
    configuration"."""
    old = _config(
        ready={"type": "Every", "intervals": 2, "burn_in": 0},
        stop=[{"type": "Plateau", "intervals": 3, "min_delta": 0.0, "metric": None}],
    )
    new = _config(ready=describe(pt.Every(period=2)), stop=[describe(pt.Plateau(patience=3))])
    assert old.differences(new) == [] and old == new
    assert old.to_dict()["ready"] == {"type": "Every", "period": 2, "burn_in": 0}
    chained = {"type": "Chain", "steps": [{"type": "Every", "intervals": 2, "burn_in": 0}]}
    assert PopulationConfig.from_dict({**new.to_dict(), "ready": chained}).ready == {
        "type": "Chain",
        "steps": [{"type": "Every", "period": 2, "burn_in": 0}],
    }


def test_numpy_scalars_are_normalised_at_the_boundary():
    config = _config(
        population=np.int64(4), intervals=np.int32(3), seed=np.uint32(7), sync=np.bool_(True)
    )
    assert (config.population, config.intervals, config.seed, config.sync) == (4, 3, 7, True)
    assert type(config.population) is int and type(config.sync) is bool
    assert PopulationConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"population": 0}, r"The 'population' parameter must be an int >= 1\. Got 0 instead\."),
        ({"population": True}, r"'population' parameter must be an int >= 1\. Got True"),
        ({"intervals": 2.5}, r"'intervals' parameter must be an int >= 1\. Got 2.5"),
        ({"mode": "best"}, r"'mode' parameter must be 'max' or 'min'\. Got 'best'"),
        ({"metric": ""}, r"'metric' parameter must be a non-empty string"),
        ({"lease_seconds": 0}, r"'lease_seconds' parameter must be a number in the range \(0"),
        ({"initial": [1]}, r"'initial\[0\]' parameter must be a dict of hparams"),
    ],
)
def test_invalid_fields_are_refused_with_one_message_template(change, message):
    with pytest.raises(pt.InvalidParameterError, match=message):
        _config(**change)


@pytest.mark.parametrize(
    ("every", "stored"),
    [
        (None, {}),
        (3, {"checkpoint_every": 3}),
        (timedelta(minutes=10), {"checkpoint_seconds": 600.0}),
        (timedelta(milliseconds=1500), {"checkpoint_seconds": 1.5}),
    ],
)
def test_checkpoint_every_round_trips_in_its_stored_form(every, stored):
    config = _config(checkpoint_every=every)
    data = config.to_dict()
    assert {k: v for k, v in data.items() if k.startswith("checkpoint_")} == stored
    json.dumps(data)  # what the storage keeps
    assert PopulationConfig.from_dict(json.loads(json.dumps(data))) == config


def test_checkpoint_every_recorded_by_older_releases_still_loads():
    before = {k: v for k, v in _config().to_dict().items() if not k.startswith("checkpoint_")}
    assert PopulationConfig.from_dict(before).checkpoint_every is None  # before issue 26
    assert PopulationConfig.from_dict({**before, "checkpoint_every": 2}).checkpoint_every == 2
    # a duration is kept under a key of its own, which an older release keeps without reading
    # it (and checkpoints after every interval): it never sees a value it cannot read
    assert "checkpoint_every" not in _config(checkpoint_every=timedelta(seconds=5)).to_dict()
    both = {**before, "checkpoint_seconds": 60.0, "checkpoint_every": 4}  # set by one later
    assert PopulationConfig.from_dict(both).checkpoint_every == 4
    replaced = {**before, "checkpoint_seconds": None, "checkpoint_every": None}  # by resume
    config = PopulationConfig.from_dict(replaced)
    assert config.checkpoint_every is None and config.extra == {}


@pytest.mark.parametrize("seconds", [0, -5.0, "600", float("nan")])
def test_a_stored_duration_that_is_not_positive_is_refused(seconds):
    data = {**_config().to_dict(), "checkpoint_seconds": seconds}
    with pytest.raises(ValueError, match=r"'checkpoint_seconds' parameter must be a number > 0"):
        PopulationConfig.from_dict(data)


def test_unknown_stored_keys_are_kept():
    data = {**_config().to_dict(), "from_the_future": {"x": 1}}
    config = PopulationConfig.from_dict(data)
    assert config.extra == {"from_the_future": {"x": 1}}
    assert config.to_dict()["from_the_future"] == {"x": 1}


def test_a_run_with_numpy_arguments_trains_and_stores_plain_values(tmp_path, quick_run):
    """Values from a numpy grid: population=np.int64(4) used to fail to serialise, and
    workers=np.int64(2) passed one check and failed the next."""
    url = f"sqlite:///{tmp_path}/p.db"
    result = quick_run(
        population=np.int64(4),
        intervals=np.int64(3),
        workers=np.int64(2),
        seed=np.int64(5),
        lease_seconds=np.float32(20.0),
        max_failures=np.int8(1),
        initial=[{"h0": np.float64(0.5), "h1": np.float32(0.25)}],
        storage=url,
        name="grid",
    )
    assert result.status == "finished"
    assert (result.config.population, result.config.intervals) == (4, 3)
    assert pt.load(url, "grid").config == result.config


# --- strategies keep their parameters ------------------------------------------------------

STRATEGIES = '''
from dataclasses import dataclass


class Fixed:
    """Explore that sets h0 to ``value``: which value was used shows in every exploit."""

    def __init__(self, value=0.5):
        self.value = value

    def __call__(self, hparams, space, rng):
        return {**hparams, "h0": self.value}

    def to_config(self):
        return {"value": self.value}


@dataclass(frozen=True)
class FixedData:
    value: float = 0.5

    def __call__(self, hparams, space, rng):
        return {**hparams, "h0": self.value}


class Opaque:
    def __init__(self, value=0.5):
        self.value = value

    def __call__(self, hparams, space, rng):
        return {**hparams, "h0": self.value}


class Liar:
    def __init__(self, value=0.5):
        self.value = value

    def __call__(self, hparams, space, rng):
        return dict(hparams)

    def to_config(self):
        return {}


class Stateless:
    def __call__(self, hparams, space, rng):
        return dict(hparams)
'''


@pytest.fixture
def user_strategies(tmp_path, monkeypatch):
    folder = tmp_path / "user"
    folder.mkdir()
    (folder / "my_strategies.py").write_text(STRATEGIES)
    monkeypatch.syspath_prepend(str(folder))
    import my_strategies

    yield my_strategies
    sys.modules.pop("my_strategies", None)


@pytest.mark.parametrize("kind", ["Fixed", "FixedData"])
def test_user_strategies_are_rebuilt_with_their_parameters(
    user_strategies, tmp_path, kind, quick_run
):
    """A user explore with value=0.123 used to be rebuilt as its class's default (0.5) after
    resume; every exploit of the resumed run must use 0.123."""
    explore = getattr(user_strategies, kind)(value=0.123)
    description = describe(explore, "explore")
    assert description["params"] == {"value": 0.123}
    assert rebuild(description, "explore").value == 0.123

    url = f"sqlite:///{tmp_path}/p.db"
    options = dict(population=4, storage=url, name="custom", seed=3)
    quick_run(intervals=3, explore=explore, **options)
    resumed = pt.load(url, "custom").resume(intervals=8, progress=False)
    exploits = resumed.exploits()
    later = [e for e in exploits if e.step > 3]
    assert later, "the resumed run must exploit"
    assert all(e.hparams_after["h0"] == 0.123 for e in exploits)


def test_a_strategy_whose_parameters_cannot_be_recorded_is_refused(
    user_strategies, tmp_path, quick_run
):
    with pytest.raises(pt.NotRecordable, match=r"holds \['value'\].*to_config\(\)"):
        quick_run(
            population=2,
            intervals=1,
            storage=f"sqlite:///{tmp_path}/p.db",
            explore=user_strategies.Opaque(0.1),
        )
    with pytest.raises(pt.NotRecordable, match="records other parameters"):
        describe(user_strategies.Liar(0.1))  # to_config() that does not rebuild it
    assert describe(user_strategies.Stateless())["params"] == {}


def test_builtin_strategies_and_chains_round_trip():
    for strategy in (
        pt.Perturb((0.5, 2.0), resample_probability=0.25),
        pt.Resample(0.3),
        pt.chain(pt.Perturb((0.8, 1.2)), pt.Resample(probability=0.25)),
        pt.Truncation(0.25),
        pt.Tournament(),
        pt.Every(3),
    ):
        assert rebuild(describe(strategy), "x") == strategy


def test_chain_applies_its_steps_in_order():
    space = pt.Space({"x": pt.Uniform(0.0, 100.0)})
    twice = pt.chain(pt.Perturb((2.0,)), pt.Perturb((2.0,)))
    assert twice({"x": 10.0}, space, np.random.default_rng(0)) == {"x": 40.0}
    then_resample = pt.chain(pt.Perturb((2.0,)), pt.Resample(1.0))
    rng = np.random.default_rng(1)
    assert then_resample({"x": 10.0}, space, rng) != {"x": 20.0}
    with pytest.raises(ValueError, match="'steps' parameter of Chain"):
        pt.chain()


# --- reads never import user code ----------------------------------------------------------

SCRIPT = """
import os, sys
sys.path.insert(0, {src!r})
with open({marker!r}, "a") as marker:
    marker.write("imported\\n")
import poptune as pt
from poptune.testing import Quadratic, quadratic_space


class Trained(Quadratic):
    pass


# no `if __name__ == "__main__":` guard, as in many scripts: importing this file trains again
pt.run(Trained, space=quadratic_space(), metric="q", population=3, intervals=2,
       storage={url!r}, name="unguarded", seed=0, progress=False)
"""


def test_reading_a_population_never_imports_its_script(tmp_path):
    marker = tmp_path / "imports.txt"
    url = f"sqlite:///{tmp_path}/p.db"
    script = tmp_path / "unguarded.py"
    src = str(Path(pt.__file__).resolve().parents[1])
    script.write_text(textwrap.dedent(SCRIPT.format(src=src, marker=str(marker), url=url)))
    subprocess.run([sys.executable, str(script)], check=True, cwd=tmp_path)
    assert marker.read_text().count("imported") == 1

    runner = CliRunner()
    for args in (
        ["list"],
        ["status", "unguarded"],
        ["best", "unguarded"],
        ["schedule", "unguarded"],
        ["report", "unguarded", "-o", str(tmp_path / "r.html")],
        ["export", "unguarded", "--tensorboard", str(tmp_path / "tb")],
    ):
        out = runner.invoke(main, [*args, "--storage", url], catch_exceptions=False)
        assert out.exit_code == 0, out.output
    result = pt.load(url, "unguarded")
    assert result.config.trainable.endswith("unguarded.py:Trained")
    assert result.best.score is not None and result.schedule() and result.best.state()
    assert marker.read_text().count("imported") == 1  # nothing above imported the script


def test_a_chain_passes_the_population_data_to_pb2(tmp_path, quick_run):
    explore = pt.chain(pt.PB2(window=4), pt.Resample(probability=0.1))
    assert explore.window == 4
    result = quick_run(
        population=4,
        intervals=6,
        explore=explore,
        storage=f"sqlite:///{tmp_path}/p.db",
        sync=True,
        seed=0,
    )
    assert result.status == "finished" and result.exploits()
    assert rebuild(describe(explore), "explore").window == 4
    with pytest.raises(ValueError, match="PB2"):
        quick_run(
            space={"h0": 0.5, "h1": 0.5},
            explore=pt.chain(pt.PB2()),
            storage=f"sqlite:///{tmp_path}/q.db",
        )
