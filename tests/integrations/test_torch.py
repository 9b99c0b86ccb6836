"""PyTorch helpers: exact state round trips through a checkpoint, hparams applied in place."""

from __future__ import annotations

import numpy as np
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
    elif optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return model, opt


def step(model, opt, x, y):
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def batch(n: int = 16):
    generator = torch.Generator().manual_seed(123)
    return torch.randn(n, 4, generator=generator), torch.randint(0, 2, (n,), generator=generator)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_checkpoint_round_trip_continues_bit_identically(optimizer):
    seed_everything(0)
    x, y = batch()
    model, opt = build(optimizer)
    for _ in range(3):
        step(model, opt, x, y)
    state = load(dumps(save_state(model, opt, epoch=3, note=("a", 1))))
    assert list(state["optimizer"]["state"]) == [0, 1, 2, 3]  # int keys kept
    seed_everything(1)  # a different initialisation, overwritten by the checkpoint
    copy, copy_opt = build(optimizer)
    assert not torch.equal(copy[0].weight, model[0].weight)
    extra = load_state(state, copy, copy_opt)
    assert extra == {"epoch": 3, "note": ("a", 1)}
    step(model, opt, x, y)
    step(copy, copy_opt, x, y)
    for a, b in zip(model.parameters(), copy.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(opt.state.values(), copy_opt.state.values(), strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_save_state_does_not_alias_live_parameters_or_buffers():
    x, y = batch()
    model, opt = build()
    step(model, opt, x, y)
    state = save_state(model, opt)
    weight = state["model"]["0.weight"].clone()
    buffer = state["optimizer"]["state"][0]["momentum_buffer"].clone()
    step(model, opt, x, y)
    assert torch.equal(state["model"]["0.weight"], weight)
    assert torch.equal(state["optimizer"]["state"][0]["momentum_buffer"], buffer)
    assert not state["model"]["0.weight"].requires_grad


def test_load_state_names_missing_entries():
    model, opt = build()
    with pytest.raises(KeyError, match=r"no 'optimizer' entry; it has keys \['model'\]"):
        load_state(save_state(model), model, opt)


def test_load_state_without_an_optimizer_returns_the_extras():
    model, opt = build()
    state = load(dumps(save_state(model, opt, returns=[1.0, 2.0])))
    other, _ = build()
    assert load_state(state, other) == {"returns": [1.0, 2.0]}
    assert torch.equal(other[2].bias, model[2].bias)


def test_seed_everything_makes_initialisation_and_draws_reproducible():
    numpy_state = np.random.get_state()[1].copy()
    first = seed_everything(7)
    model_a, _ = build()
    draws_a = torch.randperm(10, generator=first)
    second = seed_everything(7)
    model_b, _ = build()
    draws_b = torch.randperm(10, generator=second)
    assert isinstance(first, torch.Generator)
    assert torch.equal(model_a[0].weight, model_b[0].weight)
    assert torch.equal(draws_a, draws_b)
    assert (np.random.get_state()[1] == numpy_state).all()  # numpy's global is left alone


def test_apply_hparams_sets_every_param_group_and_switches_momentum_on():
    x, y = batch(8)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(
        [{"params": [model.weight]}, {"params": [model.bias], "lr": 0.5}], lr=0.1, momentum=0.0
    )
    step(model, opt, x, y)
    hparams = {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3, "units": 8}
    applied = apply_hparams(opt, hparams)
    assert applied == {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3}  # units ignored
    for group in opt.param_groups:
        assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.05, 0.9, 1e-3)

    # From here on it trains exactly like an SGD built with momentum from the start.
    reference = torch.nn.Linear(4, 2)
    reference.load_state_dict(model.state_dict())
    reference_opt = torch.optim.SGD(
        reference.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3
    )
    for _ in range(3):
        step(model, opt, x, y)
        step(reference, reference_opt, x, y)
    assert "momentum_buffer" in opt.state[model.weight]
    assert torch.equal(model.weight, reference.weight) and torch.equal(model.bias, reference.bias)


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_apply_hparams_keeps_adam_moments(optimizer):
    x, y = batch(8)
    model, opt = build(optimizer)
    step(model, opt, x, y)
    before = {k: v.clone() for k, v in opt.state[model[0].weight].items()}
    applied = apply_hparams(
        opt,
        {"learning_rate": 3e-3, "betas": [0.8, 0.99], "eps": 1e-6},
        mapping={"learning_rate": "lr"},
    )
    assert applied == {"lr": 3e-3, "betas": (0.8, 0.99), "eps": 1e-6}
    after = opt.state[model[0].weight]
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert opt.param_groups[0]["betas"] == (0.8, 0.99)
    step(model, opt, x, y)  # and training goes on with them


def test_apply_hparams_names_restrict_and_must_be_settings():
    _, opt = build()
    assert apply_hparams(opt, {"lr": 0.2, "momentum": 0.5}, names=["lr"]) == {"lr": 0.2}
    assert opt.param_groups[0]["momentum"] == 0.9
    assert apply_hparams(opt, {"momentum": 0.5}, names="momentum") == {"momentum": 0.5}
    with pytest.raises(ValueError, match=r"\['units'\] are not settings of SGD; its settings"):
        apply_hparams(opt, {"units": 3}, names=["units"])
    with pytest.raises(ValueError, match=r"hparams lack \['lr'\]"):
        apply_hparams(opt, {"momentum": 0.5}, names=["lr"])


@pytest.mark.parametrize(
    ("hparams", "mapping", "message"),
    [
        (
            {"rate": 0.1},
            {"rate": "learning_rate"},
            r"'mapping' parameter of apply_hparams .* Got \{'rate': 'learning_rate'\} instead",
        ),
        ({"lr": 0.1, "rate": 0.2}, {"rate": "lr"}, r"both hparams 'lr' and 'rate' set 'lr'"),
        ({"lr": -0.1}, None, r"'lr' must be >= 0 .* got -0.1 from hparams\['lr'\]"),
        ({"lr": float("nan")}, None, r"'lr' must be >= 0"),
        ({"weight_decay": -1}, None, r"'weight_decay' must be >= 0"),
    ],
)
def test_apply_hparams_refuses_what_pytorch_would(hparams, mapping, message):
    _, opt = build()
    with pytest.raises(ValueError, match=message):
        apply_hparams(opt, hparams, mapping=mapping)
    assert opt.param_groups[0]["lr"] == 0.1  # nothing half-applied


def test_apply_hparams_refuses_bad_betas():
    _, opt = build("adam")
    with pytest.raises(ValueError, match=r"'betas' must be two numbers in \[0, 1\)"):
        apply_hparams(opt, {"betas": [0.9, 1.0]})


def test_apply_hparams_fills_a_tensor_learning_rate_in_place():
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.Adam(model.parameters(), lr=torch.tensor(0.01))
    lr = opt.param_groups[0]["lr"]
    apply_hparams(opt, {"lr": 0.5})
    assert opt.param_groups[0]["lr"] is lr and float(lr) == 0.5
