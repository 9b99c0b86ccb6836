"""Lightning: an exploit moves the donor's weights and optimizer state into the running trainer.

Everything runs against the real Lightning library, in-process (workers=1), so the probe module
can record the tensors it actually trained with.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lightning")

import lightning.pytorch as pl  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import poptune as pt  # noqa: E402
from poptune.integrations.lightning import PBTCallback, fit  # noqa: E402
from tests._helpers import QuickRun  # noqa: E402

torch.set_num_threads(1)

# What the probe saw, by (member, step): "first" = the interval's first optimizer step (tensors
# before and after it, gradients, momentum buffers, settings), "end" = weights and buffers
# when the interval was reported.
SEEN: dict[tuple[int, int], dict[str, Any]] = {}
BUILT: dict[int, int] = {}  # member -> how many modules it built (1: fit never restarted)
OPTIONS: dict[str, Any] = {}  # what the next run's members pass to fit(), or build


def loaders() -> tuple[DataLoader, DataLoader]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(288, 6, generator=generator)
    y = (x @ torch.randn(6, 3, generator=generator)).argmax(dim=1)
    train = DataLoader(TensorDataset(x[:192], y[:192]), batch_size=32, shuffle=True)
    return train, DataLoader(TensorDataset(x[192:], y[192:]), batch_size=96)


class Probe(pl.LightningModule):
    """A linear classifier with SGD (momentum) that records what it trains with."""

    def __init__(self, lr: float, momentum: float, hidden: int = 3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Linear(6, hidden)
        self.first = False

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self.net(x)
        self.log("val_acc", (logits.argmax(dim=1) == y).float().mean())
        self.log("val_loss", torch.nn.functional.cross_entropy(logits, y))

    def configure_optimizers(self) -> Any:
        h = self.hparams
        optimizer = torch.optim.SGD(self.parameters(), lr=h.lr, momentum=h.momentum)
        if OPTIONS.get("scheduler"):
            return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)]
        return optimizer

    def _where(self) -> tuple[int, int]:
        callback = next(c for c in self.trainer.callbacks if isinstance(c, PBTCallback))
        assert callback.interval is not None
        return callback.ctx.member, callback.interval.step

    def on_train_epoch_start(self) -> None:
        self.first = True

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if not self.first:
            return
        group = optimizer.param_groups[0]
        SEEN.setdefault(self._where(), {})["first"] = {
            "before": _params(self),
            "grads": {n: p.grad.detach().clone() for n, p in self.named_parameters()},
            "buffers": _buffers(self, optimizer),
            "lr": group["lr"],
            "momentum": group["momentum"],
        }

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.first:
            self.first = False
            SEEN[self._where()]["first"]["after"] = _params(self)

    def on_validation_epoch_end(self) -> None:  # before the callback reports (on_validation_end)
        optimizer = self.trainer.optimizers[0]
        seen = SEEN.setdefault(self._where(), {})
        seen["validations"] = seen.get("validations", 0) + 1
        seen["end"] = {
            "params": _params(self),
            "buffers": _buffers(self, optimizer),
        }


class Smoothed(Probe):
    """A probe whose loss reads a hyperparameter from a plain attribute, and whose learning
    rate is called ``learning_rate``."""

    def __init__(self, learning_rate: float, momentum: float, hidden: int, smoothing: float):
        super().__init__(lr=learning_rate, momentum=momentum, hidden=hidden)
        self.smoothing = smoothing

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        SEEN.setdefault(self._where(), {}).setdefault("smoothing", set()).add(self.smoothing)
        x, y = batch
        logits = self.net(x)
        return torch.nn.functional.cross_entropy(logits, y, label_smoothing=self.smoothing)


def _params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def _buffers(module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    state = optimizer.state
    return {
        n: state[p]["momentum_buffer"].clone() if "momentum_buffer" in state[p] else None
        for n, p in module.named_parameters()
    }


def probe(ctx: Any) -> None:
    """A member: one Probe, one trainer.fit() until poptune ends it."""
    torch.manual_seed(ctx.seed)
    BUILT[ctx.member] = BUILT.get(ctx.member, 0) + 1
    train, val = loaders()
    module = OPTIONS.get("module", Probe)(**ctx.hparams)
    options = {"static": ["hidden"], **OPTIONS.get("fit", {})}
    metric = options.pop("metric", "val_acc")
    fit(ctx, module, metric, train_dataloaders=train, val_dataloaders=val, **options)


@pytest.fixture(autouse=True)
def _fresh() -> None:
    SEEN.clear()
    BUILT.clear()
    OPTIONS.clear()


def run(quick_run: QuickRun, **options: Any) -> pt.Result:
    """The probe in generations (3 members, 3 intervals): the worse copies the better."""
    settings: dict[str, Any] = dict(
        space={"lr": pt.LogUniform(1e-3, 1.0), "momentum": pt.Uniform(0.1, 0.9), "hidden": 3},
        metric="val_acc",
        intervals=3,
        sync=True,
        exploit=pt.Truncation(0.5),
        explore=pt.Perturb((0.8, 1.2)),
        name="probe",
    )
    return quick_run(probe, **{**settings, **options})


def test_an_exploit_moves_the_donor_state_and_new_lr_into_the_running_trainer(quick_run):
    result = run(quick_run)
    assert result.status == "finished"
    assert BUILT == {0: 1, 1: 1, 2: 1}  # one module and one trainer.fit() per member
    recorded = {(i.member, i.step): i for i in result.intervals()}
    assert len(recorded) == 9
    assert all(set(i.metrics) >= {"val_acc", "val_loss"} for i in recorded.values())
    checked = 0
    for event in result.exploits():
        after = (event.member, event.donor_step + 1)
        if after not in recorded:
            continue  # copied at the budget: nothing more was trained
        first = SEEN[after]["first"]
        donor_end = SEEN[(event.donor, event.donor_step)]["end"]
        own_end = SEEN[(event.member, event.step)]["end"]
        # the weights and momentum buffers the recipient trained on are the donor's, exactly
        for name, tensor in first["before"].items():
            assert torch.equal(tensor, donor_end["params"][name])
            assert torch.equal(first["buffers"][name], donor_end["buffers"][name])
        assert not all(
            torch.equal(own_end["params"][n], donor_end["params"][n]) for n in own_end["params"]
        )
        # the optimizer holds the explored hparams, not the donor's...
        hparams = recorded[after].hparams
        assert dict(hparams) == dict(event.hparams_after)
        donor_lr = recorded[(event.donor, event.donor_step)].hparams["lr"]
        assert first["lr"] == hparams["lr"] != donor_lr
        assert first["momentum"] == hparams["momentum"]
        # ...and its step used them: SGD's p - lr * (momentum * buffer + grad)
        for lr, should_match in ((hparams["lr"], True), (donor_lr, False)):
            matches = [
                torch.allclose(
                    first["after"][n],
                    tensor - lr * (hparams["momentum"] * first["buffers"][n] + first["grads"][n]),
                    rtol=0.0,
                    atol=1e-7,
                )
                for n, tensor in first["before"].items()
            ]
            assert all(matches) if should_match else not any(matches)
        checked += 1
    assert checked >= 2


def test_every_mapping_and_module_attributes(quick_run):
    OPTIONS.update(module=Smoothed, fit={"every": 2, "mapping": {"learning_rate": "lr"}})
    space = {
        "learning_rate": pt.LogUniform(1e-3, 1.0),
        "momentum": pt.Uniform(0.1, 0.9),
        "hidden": 3,
        "smoothing": pt.Uniform(0.0, 0.3),
    }
    result = run(quick_run, space=space)
    recorded = {(i.member, i.step): i.hparams for i in result.intervals()}
    assert len(recorded) == 9 and result.exploits()
    for where, hparams in recorded.items():
        assert SEEN[where]["validations"] == 2  # two validation epochs per interval
        assert SEEN[where]["smoothing"] == {hparams["smoothing"]}  # every batch used it
        assert SEEN[where]["first"]["lr"] == hparams["learning_rate"]
    # an explored value reached the module: the member trained with a smoothing it never had
    changed = [e for e in result.exploits() if (e.member, e.donor_step + 1) in recorded]
    assert any(e.hparams_after["smoothing"] != e.hparams_before["smoothing"] for e in changed)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"fit": {"metric": "val_accuracy"}},
            r"the metric 'val_accuracy' was not logged by this validation; the trainer logged "
            r"\['val_acc', 'val_loss'\]",
        ),
        (
            {"fit": {"static": []}},
            r"cannot apply the hyperparameters \['hidden'\]: they are neither settings of the "
            r"optimizers \(SGD",
        ),
        (
            {"fit": {"mapping": {"lr": "learning_rate"}}},
            r"The 'mapping' parameter of PBTCallback must be .*\['dampening'.*"
            r"Got \{'lr': 'learning_rate'\} instead",
        ),
        ({"scheduler": True}, r"'lr' sets the learning rate, but .* \['StepLR'\]"),
        ({"fit": {"max_epochs": 1}}, r"trainer.fit\(\) ended while poptune still had intervals"),
    ],
    ids=[
        "metric-not-logged",
        "hparam-not-applicable",
        "mapping-names-no-setting",
        "lr-and-scheduler",
        "fit-ended-early",
    ],
)
def test_bad_input_is_refused_with_a_clear_message(
    tmp_path: Path, options: dict[str, Any], message: str, quick_run
):
    OPTIONS.update(options)
    with pytest.raises(pt.PopulationError):
        run(quick_run, population=2, intervals=2, exploit=None, max_failures=0)
    failures = pt.load(f"sqlite:///{tmp_path / 'poptune.db'}", "probe").failures()
    assert failures
    for failure in failures:
        assert re.search(message, failure.traceback), failure.traceback


def test_a_member_rebuilt_from_its_checkpoint_trains_exactly_like_one_kept_in_memory(
    quick_run,
):
    """resident=1: every member is rebuilt (new trainer, checkpoint loaded) for each interval,
    and draws its data order and everything else from the interval's seed all the same."""
    kept = run(quick_run, name="kept")
    rebuilt = run(quick_run, name="rebuilt", resident=1)
    assert sum(BUILT.values()) >= 3 + 6  # 3 kept; rebuilt: at least 2 of 3 intervals each
    assert [(i.member, i.step, i.score, i.origin) for i in rebuilt.intervals()] == [
        (i.member, i.step, i.score, i.origin) for i in kept.intervals()
    ]


def test_poptune_does_not_import_lightning_and_a_missing_install_says_what_to_do():
    code = (
        "import sys, poptune, poptune.integrations\n"
        "assert 'lightning' not in sys.modules, 'poptune imported lightning'\n"
        "sys.modules['lightning'] = None  # as if it were not installed\n"
        "try:\n"
        "    import poptune.integrations.lightning\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'poptune[lightning]'" in out.stdout
