"""Devices for local workers: parsing, the environment of each worker, and real worker processes
(pt.run, resume, ``poptune worker --device``) that each see their own device.

There is no GPU here: the tests check the environment every worker process sees, which is all
poptune controls (CUDA then shows each process the one GPU named in CUDA_VISIBLE_DEVICES).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
from click.testing import CliRunner

import poptune as pt
from poptune.cli import main
from poptune.devices import (
    cuda_initialised,
    device_environment,
    idle_devices,
    parse_device,
    parse_devices,
)
from poptune.testing import CreateOnlyRunner, RecordsEnvironment, quadratic_space

CUDA = "CUDA_VISIBLE_DEVICES"
DEVICE = "POPTUNE_DEVICE"


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'poptune.db'}"


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process as on a machine where every GPU is visible and no device was assigned."""
    monkeypatch.delenv(CUDA, raising=False)
    monkeypatch.delenv(DEVICE, raising=False)


def space(tmp_path: Path, workers: int) -> dict:
    """The toy space plus the fixed values that make every worker process train once."""
    return {**quadratic_space(), "rendezvous": str(tmp_path / "arrived"), "workers": workers}


def seen_by_process(result: pt.Result) -> dict[int, tuple[str | None, str | None]]:
    """process id -> (CUDA_VISIBLE_DEVICES, POPTUNE_DEVICE) it reported, one pair per process."""
    seen: dict[int, set[tuple[str | None, str | None]]] = {}
    for interval in result.intervals():
        metrics = interval.metrics
        pair = (metrics[CUDA], metrics[DEVICE])
        seen.setdefault(int(metrics["pid"]), set()).add(pair)
    assert all(len(pairs) == 1 for pairs in seen.values()), seen
    return {pid: next(iter(pairs)) for pid, pairs in seen.items()}


# --- parsing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "devices",
    [["cuda:0"], ("cuda:0", "cuda:1"), ["cpu"], ["cuda:12", "cpu", "cuda:0"], ["cuda:0"] * 2],
)
def test_parse_devices_accepts_cuda_n_and_cpu(devices):
    assert parse_devices(devices) == tuple(devices)


@pytest.mark.parametrize(
    ("devices", "expected"),
    [
        ([], "non-empty list"),
        ((), "non-empty list"),
        (None, "non-empty list"),
        ("cuda:0", "Pass a list: ['cuda:0']"),
        ({"cuda:0"}, "non-empty list"),
        ([0], "Got 0 instead"),
        ([1], "Write 'cuda:1'"),
        (["cuda"], "Write 'cuda:0'"),
        (["gpu0"], "'devices[0]' parameter must be 'cuda:N' (N >= 0) or 'cpu'"),
        (["cuda:0", "cuda:-1"], "'devices[1]' parameter"),
        (["cuda:x"], "Got 'cuda:x' instead"),
        (["cuda:01"], "Got 'cuda:01' instead"),
        (["cuda:1.0"], "Got 'cuda:1.0' instead"),
        (["CUDA:0"], "Got 'CUDA:0' instead"),
        ([" cuda:0"], "Got ' cuda:0' instead"),
        (["cuda:٣"], "Got 'cuda:٣' instead"),  # an Arabic-Indic digit is not an ASCII N
        ([True], "Got True instead"),
        (["cpu", None], "Got None instead"),
    ],
)
def test_parse_devices_refuses_anything_else_clearly(devices, expected):
    with pytest.raises(ValueError, match=r"'devices(\[\d+\])?' parameter") as error:
        parse_devices(devices)
    assert expected in str(error.value)


def test_parse_device_names_the_cli_option():
    assert parse_device("cpu") == "cpu"
    with pytest.raises(ValueError, match=r"The '--device' parameter must be .*Got 'gpu1' instead"):
        parse_device("gpu1")


# --- the environment of each worker --------------------------------------------------------------


def test_workers_share_devices_round_robin():
    devices = ["cuda:0", "cuda:1"]
    seen = [device_environment(devices, i)[CUDA] for i in range(5)]
    assert seen == ["0", "1", "0", "1", "0"]
    assert {device_environment(devices, i)[DEVICE] for i in range(5)} == {"cuda:0"}


def test_cpu_hides_every_gpu():
    assert device_environment(["cuda:3", "cpu"], 1) == {CUDA: "", DEVICE: "cpu"}
    assert device_environment(["cpu"], 0, visible="") == {CUDA: "", DEVICE: "cpu"}


def test_cuda_n_indexes_the_gpus_this_process_already_sees():
    # e.g. a SLURM job given GPUs 4 and 6: cuda:1 is its second GPU, GPU 6
    assert device_environment(["cuda:0", "cuda:1"], 1, visible="4,6") == {
        CUDA: "6",
        DEVICE: "cuda:0",
    }
    assert device_environment(["cuda:1"], 0, visible="GPU-aa, GPU-bb")[CUDA] == "GPU-bb"
    with pytest.raises(ValueError, match=r"'cuda:2' is not visible.*lists 2 GPU\(s\)"):
        device_environment(["cuda:2"], 0, visible="4,6")
    with pytest.raises(ValueError, match="hides every GPU"):
        device_environment(["cuda:0"], 0, visible="")


def test_device_environment_validates_its_input():
    with pytest.raises(ValueError, match=r"'devices\[0\]' parameter"):
        device_environment(["gpu"], 0)
    with pytest.raises(ValueError, match="worker_index"):
        device_environment(["cuda:0"], -1)


def test_idle_devices():
    assert idle_devices(["cuda:0", "cuda:1", "cuda:2"], 2) == ["cuda:2"]
    assert idle_devices(["cuda:0", "cuda:1"], 3) == []
    assert idle_devices(["cuda:0", "cuda:0", "cuda:1"], 2) == ["cuda:1"]


# --- pt.run and the runners ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("devices", "runner", "message"),
    [
        (["gpu0"], None, r"'devices\[0\]' parameter"),
        ([], None, "non-empty list"),
        (["cuda:0"], pt.RayRunner(workers=2), "None with a RayRunner"),
        (["cuda:0"], pt.InProcessRunner(), "Give the devices to the runner"),
        (["cuda:0"], CreateOnlyRunner(), "Give the devices to the runner"),
    ],
)
def test_run_refuses_bad_devices_before_it_stores_anything(
    tmp_path: Path, devices, runner, message, quick_run
):
    with pytest.raises(ValueError, match=message):
        quick_run(RecordsEnvironment, population=2, intervals=1, devices=devices, runner=runner)
    assert not (tmp_path / "poptune.db").exists()


def test_run_refuses_a_device_this_process_cannot_see(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quick_run
):
    monkeypatch.setenv(CUDA, "3")
    with pytest.raises(ValueError, match="'cuda:1' is not visible"):
        quick_run(RecordsEnvironment, population=2, devices=["cuda:0", "cuda:1"], workers=2)
    assert not (tmp_path / "poptune.db").exists()


@pytest.mark.parametrize(
    ("workers", "devices", "visible", "expected"),
    [
        (2, ["cuda:0", "cuda:1"], None, [("0", "cuda:0"), ("1", "cuda:0")]),
        (3, ["cuda:0", "cuda:1"], None, [("0", "cuda:0"), ("0", "cuda:0"), ("1", "cuda:0")]),
        (2, ["cuda:1", "cpu"], "5,7", [("", "cpu"), ("7", "cuda:0")]),
        (1, ["cuda:1"], None, [("1", "cuda:0")]),
    ],
    ids=["two-on-two", "three-on-two", "inherited-visible-and-cpu", "one-worker"],
)
def test_each_worker_process_sees_its_own_device(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    clean_environment: None,
    workers: int,
    devices: list[str],
    visible: str | None,
    expected: list[tuple[str, str]],
    quick_run,
):
    if visible is not None:
        monkeypatch.setenv(CUDA, visible)
    before = dict(os.environ)
    result = quick_run(
        RecordsEnvironment, space=space(tmp_path, workers), population=4, intervals=3,
        workers=workers, devices=devices,
    )  # fmt: skip
    assert dict(os.environ) == before  # the caller's environment is left as it was
    assert result.status == "finished" and len(result.intervals()) == 4 * 3
    seen = seen_by_process(result)
    assert os.getpid() not in seen  # even one worker runs in a process of its own
    assert sorted(seen.values()) == expected


def test_resume_gives_its_workers_devices(
    tmp_path: Path, url: str, clean_environment: None, quick_run
):
    quick_run.created(RecordsEnvironment, space=space(tmp_path, 2), name="later")
    before = dict(os.environ)
    result = pt.load(url, "later").resume(workers=2, devices=["cpu", "cuda:4"], progress=False)
    assert dict(os.environ) == before
    assert sorted(seen_by_process(result).values()) == [("", "cpu"), ("4", "cuda:0")]


def test_spawned_workers_see_their_devices_too(tmp_path: Path, clean_environment: None, quick_run):
    runner = pt.LocalProcessRunner(2, start_method="spawn", devices=["cuda:2", "cuda:3"])
    before = dict(os.environ)
    result = quick_run(RecordsEnvironment, space=space(tmp_path, 2), population=2, runner=runner)
    assert dict(os.environ) == before
    assert sorted(seen_by_process(result).values()) == [("2", "cuda:0"), ("3", "cuda:0")]


def test_local_process_runner_warns_about_idle_devices(caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.WARNING, logger="poptune"):
        runner = pt.LocalProcessRunner(1, devices=["cuda:0", "cuda:1", "cuda:2"])
    assert runner.devices == ("cuda:0", "cuda:1", "cuda:2")
    assert "cuda:1, cuda:2 stay idle" in caplog.text and "workers=3" in caplog.text


def test_cuda_initialised_never_imports_torch(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert cuda_initialised() is False
    assert "torch" not in sys.modules


def test_no_fork_after_cuda_is_initialised_here(monkeypatch: pytest.MonkeyPatch):
    # A stand-in for torch after `torch.zeros(1, device="cuda")` in this process (no GPU here).
    initialised = types.SimpleNamespace(cuda=types.SimpleNamespace(is_initialized=lambda: True))
    monkeypatch.setitem(sys.modules, "torch", initialised)
    assert cuda_initialised() is True
    runner = pt.LocalProcessRunner(2, start_method="fork", devices=["cuda:0", "cuda:1"])
    with pytest.raises(RuntimeError, match="CUDA is already initialised in this process"):
        runner.run(target=None, storage=None, checkpoints=None)  # type: ignore[arg-type]


# --- the command line ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("device", "visible", "expected"),
    [
        ("cuda:1", None, ("1", "cuda:0")),
        ("cpu", "2,3", ("", "cpu")),
        ("cuda:1", "2,3", ("3", "cuda:0")),
    ],
)
def test_cli_worker_sees_its_device(
    tmp_path: Path, url: str, device: str, visible: str | None, expected: tuple[str, str], quick_run
):
    quick_run.created(RecordsEnvironment, space=space(tmp_path, 1), name="cli", population=2)
    env = {k: v for k, v in os.environ.items() if k not in (CUDA, DEVICE)}
    if visible is not None:
        env[CUDA] = visible
    command = [sys.executable, "-m", "poptune.cli", "worker", "cli", "--storage", url]
    process = subprocess.run(
        [*command, "--device", device], env=env, capture_output=True, text=True, timeout=120
    )
    assert process.returncode == 0, process.stderr
    result = pt.load(url, "cli")
    assert list(seen_by_process(result).values()) == [expected]
    # set before the trainable's module was imported
    assert {i.metrics["CUDA_VISIBLE_DEVICES at import"] for i in result.intervals()} == {
        expected[0]
    }


@pytest.mark.parametrize("device", ["gpu0", "cuda", "cuda:-1", "cuda:x", ""])
def test_cli_refuses_a_bad_device(tmp_path: Path, url: str, device: str, quick_run):
    quick_run.created(RecordsEnvironment, space=space(tmp_path, 1), name="cli", population=2)
    for command in ("worker", "resume"):
        before = dict(os.environ)
        out = CliRunner().invoke(main, [command, "cli", "--storage", url, "--device", device])
        assert out.exit_code == 1, out.output
        assert "The '--device' parameter must be 'cuda:N' (N >= 0) or 'cpu'" in out.output
        assert f"Got {device!r} instead" in out.output
        assert dict(os.environ) == before
    assert pt.load(url, "cli").intervals() == []  # nothing trained


def test_cli_resume_gives_its_workers_devices(
    tmp_path: Path, url: str, clean_environment: None, quick_run
):
    quick_run.created(RecordsEnvironment, space=space(tmp_path, 2), name="cli", population=2)
    before = dict(os.environ)
    args = ["resume", "cli", "--storage", url, "--workers", "2", "--no-progress"]
    out = CliRunner().invoke(main, [*args, "--device", "cuda:1", "--device", "cuda:0"])
    assert out.exit_code == 0, out.output
    assert dict(os.environ) == before
    assert sorted(seen_by_process(pt.load(url, "cli")).values()) == [
        ("0", "cuda:0"),
        ("1", "cuda:0"),
    ]
