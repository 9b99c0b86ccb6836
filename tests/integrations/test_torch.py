"""PyTorch helpers: exact state round trips through a checkpoint, hparams applied in place."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from poptune.integrations.torch import (  # noqa: E402
    apply_hparams,
    load_state,
    save_state,
    seed_everything,
)
from poptune.serialization import dumps, load  # noqa: E402

torch.set_num_threads(1)


def build(optimizer: str = "sgd"):
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return model, opt


def step(model, opt, x, y):
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_checkpoint_round_trip_continues_bit_identically(optimizer):
    seed_everything(0)
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    model, opt = build(optimizer)
    for _ in range(3):
        step(model, opt, x, y)
    state = load(dumps(save_state(model, opt, epoch=3)))
    seed_everything(1)  # a different initialisation, overwritten by the checkpoint
    copy, copy_opt = build(optimizer)
    extra = load_state(state, copy, copy_opt)
    assert extra == {"epoch": 3}
    step(model, opt, x, y)
    step(copy, copy_opt, x, y)
    for a, b in zip(model.parameters(), copy.parameters(), strict=True):
        assert torch.equal(a, b)


def test_save_state_does_not_alias_live_parameters():
    model, opt = build()
    state = save_state(model, opt)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    assert not torch.equal(state["model"]["0.weight"], model[0].weight)


def test_load_state_names_missing_entries():
    model, opt = build()
    with pytest.raises(KeyError, match=r"no 'optimizer' entry; it has keys \['model'\]"):
        load_state(save_state(model), model, opt)


def test_apply_hparams_in_place_keeps_momentum_buffers():
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(
        [{"params": [model.weight]}, {"params": [model.bias]}], lr=0.1, momentum=0.0
    )
    step(model, opt, x, y)
    applied = apply_hparams(opt, {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3, "units": 8})
    assert applied == {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3}
    assert all(g["lr"] == 0.05 and g["momentum"] == 0.9 for g in opt.param_groups)
    step(model, opt, x, y)  # momentum switched on after construction works
    assert "momentum_buffer" in opt.state[model.weight]


def test_apply_hparams_adam_moments_survive_and_names_mapping():
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    model, opt = build("adamw")
    step(model, opt, x, y)
    moments = opt.state[next(model.parameters())]["exp_avg"].clone()
    applied = apply_hparams(
        opt, {"learning_rate": 3e-3, "betas": [0.8, 0.99]}, mapping={"learning_rate": "lr"}
    )
    assert applied == {"lr": 3e-3, "betas": (0.8, 0.99)}
    assert torch.equal(opt.state[next(model.parameters())]["exp_avg"], moments)
    with pytest.raises(ValueError, match=r"\['units'\] are not settings of AdamW"):
        apply_hparams(opt, {"units": 3}, names=["units"])
