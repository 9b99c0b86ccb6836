"""One validation style: every public constructor and function refuses a bad parameter with
``InvalidParameterError`` (a ``ValueError`` and a ``TypeError``) and the one message form."""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import poptune as pt
from poptune._validation import renamed
from poptune.checkpoints import FsspecCheckpoints, LocalCheckpoints, population_folder
from poptune.devices import device_environment, parse_device, parse_devices
from poptune.live import LiveMembers
from poptune.space import space_from_dict
from poptune.strategies import Chain
from poptune.strategies.stop import stop_list
from poptune.testing import MemoryStorage, Quadratic, quadratic_space
from poptune.trackers import check_trackers

from ._helpers import QUICK_OPTIONS

#: "The 'x' parameter [of Owner] must be <what>. Got <value> instead.[ <what to do>]"
FORM = re.compile(
    r"The '.+?' parameter( of [\w.]+)? must be .+\. Got .+ instead\.( .+)?", re.DOTALL
)


def run_quick(**bad: Any) -> pt.Population:
    """``pt.run`` with the suite's usual options, in memory, and ``bad`` among them."""
    options = {**QUICK_OPTIONS, "space": quadratic_space(), "storage": MemoryStorage()}
    return pt.run(**{"trainable": Quadratic, **options, **bad})


def two_arguments(ctx: Any, extra: Any) -> None:
    """A training function with one argument too many."""


#: (callable, bad keyword arguments): every public entry point of space, strategies, runners,
#: live, checkpoints and trackers, with one bad parameter each.
BAD: list[tuple[Callable[..., Any], dict[str, Any]]] = [
    (pt.Truncation, {"fraction": 0.7}),
    (pt.TTest, {"window": 1}),
    (pt.Perturb, {"factors": ()}),
    (pt.Resample, {"probability": 2.0}),
    (Chain, {"steps": []}),
    (Chain, {"steps": [0.5]}),
    (pt.PB2, {"max_points": 2}),
    (pt.Every, {"period": 0}),
    (pt.Target, {"score": math.nan}),
    (pt.Plateau, {"patience": 0}),
    (pt.WallClock, {"seconds": 0}),
    (stop_list, {"stop": 0.9}),
    (stop_list, {"stop": pt.Target(1.0, metric="acc"), "metric": "loss"}),
    (pt.Uniform, {"low": 1.0, "high": 0.0}),
    (pt.Uniform, {"low": "0", "high": 1.0}),
    (pt.LogUniform, {"low": 0.0, "high": 1.0}),
    (pt.IntUniform, {"low": 0.5, "high": 3}),
    (pt.IntUniform, {"low": 0, "high": 2**64}),
    (pt.Choice, {"options": []}),
    (pt.Choice, {"options": [1, 1]}),
    (pt.Choice, {"options": [1, 2], "ordered": "yes"}),
    (pt.Space, {"params": [("lr", 0.1)]}),
    (pt.Space, {"params": {"x": math.nan}}),
    (pt.Uniform(0.0, 1.0).perturb, {"value": 0.5, "factor": 0.0, "rng": None}),
    (pt.Choice([1, 2]).perturb, {"value": 3, "factor": 1.2, "rng": None}),
    (pt.Space({"x": pt.Uniform(0.0, 1.0)}).validate, {"hparams": {"x": 2.0}}),
    (pt.Space({"x": pt.Uniform(0.0, 1.0)}).validate, {"hparams": {"y": 0.5}}),
    (space_from_dict, {"description": {"x": {"type": "Gauss"}}}),
    (pt.LocalProcessRunner, {"workers": 0}),
    (pt.RayRunner, {"workers": 0}),
    (pt.RayRunner, {"num_cpus": -1.0}),
    (pt.RayRunner, {"max_restarts": -1}),
    (LiveMembers, {"resident": 0}),
    (LocalCheckpoints, {"root": "unused", "spares": -1}),
    (FsspecCheckpoints, {"url": "s3://KEY:PLANTED-PASSWORD@bucket/prefix"}),
    (population_folder, {"database_id": "not-hex", "population_id": 1}),
    (pt.TensorBoard, {"logdir": ""}),
    (pt.MLflow, {"tracking_uri": ""}),
    (pt.WandB, {"project": ""}),
    (pt.WandB, {"project": "p", "id": "x"}),
    (check_trackers, {"trackers": "runs/tb"}),
    (check_trackers, {"trackers": [object()]}),
    (FsspecCheckpoints, {"url": "nosuch://x"}),
    (parse_device, {"device": "gpu1"}),
    (parse_devices, {"devices": "cuda:0"}),
    (parse_devices, {"devices": ["cuda:0", "cuda:-1"]}),
    (device_environment, {"devices": ["cuda:0"], "worker_index": -1}),
    (run_quick, {"trainable": Quadratic({"h0": 0.5, "h1": 0.5}, 0)}),
    (run_quick, {"trainable": object}),
    (run_quick, {"trainable": two_arguments}),
    (run_quick, {"space": [("x", 0.5)]}),
    (run_quick, {"exploit": "truncation"}),
    (run_quick, {"initial": [1]}),
    (run_quick, {"initial": [{"nope": 0.5}]}),
    (run_quick, {"population": 2, "initial": [{}, {}, {}]}),
    (run_quick, {"devices": ["gpu0"]}),
    (run_quick, {"devices": ["cuda:0"], "runner": pt.RayRunner(workers=2)}),
    (run_quick, {"devices": ["cuda:0"], "runner": pt.InProcessRunner()}),
]


@pytest.mark.parametrize(
    ("make", "kwargs"),
    BAD,
    ids=[f"{getattr(m, '__qualname__', m)}-{'-'.join(k)}" for m, k in BAD],
)
def test_a_bad_parameter_raises_invalid_parameter_error_in_the_one_form(make, kwargs):
    with pytest.raises(pt.InvalidParameterError) as raised:
        make(**kwargs)
    assert isinstance(raised.value, ValueError) and isinstance(raised.value, TypeError)
    assert FORM.fullmatch(str(raised.value)), str(raised.value)
    assert "PLANTED-PASSWORD" not in str(raised.value)


def test_calls_on_a_stored_population_refuse_a_bad_parameter_in_the_one_form(quick_run):
    result = quick_run(name="toy", intervals=2)
    calls: list[Callable[[], Any]] = [
        lambda: result.best_member("best"),
        lambda: result.schedule(member=99),
        lambda: pt.replay(quick_run.storage, "toy", replay_name="toy", progress=False),
    ]
    for call in calls:
        with pytest.raises(pt.InvalidParameterError) as raised:
            call()
        assert FORM.fullmatch(str(raised.value)), str(raised.value)


def test_renamed_keeps_the_old_keyword_working_with_a_warning():
    @renamed("scale", factor="ratio")
    def scale(value: float, ratio: float = 1.0) -> float:
        return value * ratio

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert scale(2.0, ratio=3.0) == 6.0 and scale(2.0, 3.0) == 6.0  # no warning
    with pytest.warns(DeprecationWarning, match="'factor' parameter of scale .* 'ratio'") as seen:
        assert scale(2.0, factor=np.float64(3.0)) == 6.0
    assert seen[0].filename == __file__  # points at the caller's line
    with pytest.raises(pt.InvalidParameterError, match="'factor' parameter of scale"):
        scale(2.0, factor=3.0, ratio=3.0)
