"""The transformers integration against the real library: a tiny BERT (examples/hf_text.py)
trained by Trainers that PBT steps through their evaluations."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from transformers import TrainerCallback  # noqa: E402

import poptune as pt  # noqa: E402
from poptune.integrations import transformers as pt_hf  # noqa: E402
from tests._helpers import QuickRun  # noqa: E402

torch.set_num_threads(1)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
STEPS = 4  # optimizer steps per interval


def _example() -> Any:
    if str(EXAMPLES) not in sys.path:  # as when the example runs as a script: it sees _cli.py
        sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location("example_hf_text", EXAMPLES / "hf_text.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


hf_text = _example()
SPACE = {
    "learning_rate": pt.LogUniform(1e-4, 3e-2),
    "weight_decay": pt.Uniform(0.0, 0.3),
    "eval_steps": STEPS,
    "batch_size": 16,
}


def _clone(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_clone(v) for v in value)
    return value


class Recorder(TrainerCallback):
    """Observes a running trainer: the weights and optimizer state it evaluated (before
    PBTCallback reports them) and started each interval with (after PBTCallback applied the
    interval), and the learning rate and weight decay every optimizer step used."""

    def __init__(self, trainer: Any, seen: dict[str, dict]) -> None:
        self.trainer = trainer
        self.seen = seen

    def member(self) -> int:
        callbacks = self.trainer.callback_handler.callbacks
        return next(c for c in callbacks if isinstance(c, pt_hf.PBTCallback)).ctx.member

    def snapshot(self) -> dict[str, Any]:
        return {
            "model": _clone(self.trainer.model.state_dict()),
            "optimizer": _clone(self.trainer.optimizer.state_dict()["state"]),
        }

    def on_evaluate(self, args, state, control, **kwargs) -> None:
        self.seen["evaluated"][(self.member(), state.global_step)] = self.snapshot()

    def on_step_begin(self, args, state, control, **kwargs) -> None:
        if state.global_step % STEPS == 0:
            self.seen["started"][(self.member(), state.global_step)] = self.snapshot()

    def on_pre_optimizer_step(self, args, state, control, **kwargs) -> None:
        groups = [(g["lr"], g["weight_decay"]) for g in self.trainer.optimizer.param_groups]
        self.seen["used"][(self.member(), state.global_step + 1)] = groups


def _equal(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two snapshots hold equal model tensors and equal optimizer moments."""
    if a["model"].keys() != b["model"].keys() or a["optimizer"].keys() != b["optimizer"].keys():
        return False
    if not all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]):
        return False
    for index, moments in a["optimizer"].items():
        other = b["optimizer"][index]
        if moments.keys() != other.keys():
            return False
        if not all(torch.equal(moments[k], other[k]) for k in moments):
            return False
    return True


def test_an_exploit_moves_the_donors_weights_optimizer_state_and_new_lr_into_the_trainer(
    tmp_path: Path,
):
    seen: dict[str, dict] = {"evaluated": {}, "started": {}, "used": {}}

    def build(hparams: dict[str, Any], seed: int) -> Any:
        trainer = hf_text.build_trainer(hparams, seed)
        trainer.add_callback(Recorder(trainer, seen))  # before PBTCallback, which run() adds
        return trainer

    result = pt_hf.run(
        build,
        space=SPACE,
        metric="eval_accuracy",
        population=2,
        intervals=3,
        exploit=pt.Truncation(0.5),  # the worse of two copies the better one at every step
        explore=pt.Perturb((0.5, 2.0)),
        storage=f"sqlite:///{tmp_path / 'hf.db'}",
        seed=0,
        sync=True,
        progress=False,
    )
    assert result.status == "finished"
    intervals = result.intervals()
    assert len(intervals) == 6
    copies = 0
    for record in intervals:
        member, step = record.member, record.step
        if record.origin is not None:
            donor, donor_step = record.origin
            start = donor_step * STEPS
            started = seen["started"][(member, start)]
            # the trainer began this interval with exactly the state the donor evaluated...
            assert _equal(started, seen["evaluated"][(donor, start)])
            if donor != member:
                copies += 1
                # ...which is not what this member had trained itself: the state really moved
                assert not _equal(started, seen["evaluated"][(member, start)])
                assert started["optimizer"][0]["exp_avg"].abs().sum() > 0
        # every optimizer step of the interval used the interval's own hparams: the explored
        # learning rate (constant schedule) and weight decay on the decaying group only
        lr, decay = record.hparams["learning_rate"], record.hparams["weight_decay"]
        for global_step in range((step - 1) * STEPS + 1, step * STEPS + 1):
            assert seen["used"][(member, global_step)] == [(lr, decay), (lr, 0.0)]
    assert copies >= 2  # one exploit per step boundary
    for event in result.exploits():
        after = next(r for r in intervals if (r.member, r.step) == (event.member, event.step + 1))
        assert after.hparams["learning_rate"] != event.hparams_before["learning_rate"]


def test_the_lr_schedule_follows_the_explored_learning_rate_from_the_global_step(tmp_path):
    """A linear schedule with warmup: after each interval's hparams are applied, the rate is
    learning_rate x the schedule's factor at the global step, as the Trainer computes it."""
    seen: dict[str, dict] = {"evaluated": {}, "started": {}, "used": {}}
    intervals = 3

    def build(hparams: dict[str, Any], seed: int) -> Any:
        trainer = hf_text.build_trainer(hparams, seed)
        trainer.args.lr_scheduler_type = "linear"
        trainer.args.warmup_steps = 2
        trainer.add_callback(Recorder(trainer, seen))
        return trainer

    result = pt_hf.run(
        build,
        space=SPACE,
        metric="eval_accuracy",
        population=2,
        intervals=intervals,
        exploit=pt.Truncation(0.5),
        storage=f"sqlite:///{tmp_path / 'hf.db'}",
        seed=1,
        sync=True,
        progress=False,
    )
    total = intervals * STEPS
    for record in result.intervals():
        lr = record.hparams["learning_rate"]
        for global_step in range((record.step - 1) * STEPS + 1, record.step * STEPS + 1):
            t = global_step - 1  # the step's scheduler position
            factor = t / 2 if t < 2 else (total - t) / (total - 2)
            used = seen["used"][(record.member, global_step)][0][0]
            assert used == pytest.approx(lr * factor, rel=1e-12)


def test_a_tuned_hparam_the_trainer_cannot_apply_is_refused_before_training(tmp_path):
    built = []

    def build(hparams: dict[str, Any], seed: int) -> Any:
        built.append(seed)
        return hf_text.build_trainer(hparams, seed)

    space = {**SPACE, "hidden_dropout_prob": pt.Uniform(0.0, 0.3)}
    with pytest.raises(ValueError, match=r"cannot change \['hidden_dropout_prob'\]"):
        pt_hf.run(
            build, space, "eval_accuracy", storage=f"sqlite:///{tmp_path / 'a.db'}", population=2
        )
    assert built == []


def _fails(quick_run: QuickRun, function: Any, space: dict[str, Any], metric: str) -> str:
    """Run a population whose members fail at once; return the recorded failure text."""
    with pytest.raises(pt.PopulationError):
        quick_run(function, space=space, metric=metric, population=2, max_failures=0)
    failures = pt.load(quick_run.storage, function.__name__).failures()
    assert failures
    return failures[0].traceback


def test_a_metric_the_trainer_never_logs_is_named_with_the_ones_it_does(quick_run):
    train = pt_hf.trainable(hf_text.build_trainer, "accuracy", intervals=2, static=SPACE)
    text = _fails(quick_run, train, SPACE, "accuracy")
    assert "has no metric 'accuracy'" in text
    assert "'eval_accuracy', 'eval_loss'" in text
    assert "Did you mean metric='eval_accuracy'?" in text


def test_the_callback_refuses_hparams_it_cannot_apply_when_training_begins(quick_run):
    def untunable(ctx: Any) -> None:
        trainer = hf_text.build_trainer(ctx.hparams, ctx.seed)
        trainer.args.max_steps = 2 * STEPS
        trainer.add_callback(pt_hf.PBTCallback(ctx, trainer, "eval_accuracy"))  # no static=
        trainer.train()

    text = _fails(quick_run, untunable, SPACE, "eval_accuracy")
    assert "cannot change ['batch_size', 'eval_steps']" in text


def test_a_save_pretrained_folder_is_checkpointed_as_one_directory_and_loads_back(tmp_path):
    model = hf_text.tiny_bert()
    model.save_pretrained(tmp_path / "saved")  # config.json + model.safetensors
    store = pt.LocalCheckpoints(tmp_path / "checkpoints")
    ref = store.save(
        "population-1",
        member=0,
        step=1,
        state={"model": pt.Directory.from_path(tmp_path / "saved")},
    )
    folder = store.load(ref)["model"].materialize(tmp_path / "restored")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    loaded = type(model).from_pretrained(folder)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name


def test_the_example_runs_from_its_command_line(tmp_path, capsys):
    options = ["--population", "2", "--intervals", "2", "--workers", "1", "--no-progress"]
    result = hf_text.main([*options, "--storage", f"sqlite:///{tmp_path / 'ex.db'}"])
    assert result.status == "finished" and len(result.intervals()) == 4
    out = capsys.readouterr().out
    assert "best member" in out and "learning_rate=" in out and "weight_decay=" in out
