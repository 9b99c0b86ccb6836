"""A Stack of N modules trains as N plain modules with torch.optim would, member by member, and
one member's state moves between slots and plain modules in torch's own formats."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from poptune.errors import InvalidParameterError  # noqa: E402
from poptune.integrations.torch import (  # noqa: E402
    OPTIMIZERS,
    Stack,
    apply_hparams,
    load_state,
    save_state,
    seed_everything,
)
from poptune.serialization import dumps, load  # noqa: E402

torch.set_num_threads(1)

SEEDS = [10, 11, 12]
N = len(SEEDS)
# Three members with different settings each (SGD: plain, heavy-ball, Nesterov with decay).
SETTINGS = {
    "sgd": {
        "lr": [0.1, 0.05, 0.2],
        "momentum": [0.0, 0.9, 0.5],
        "dampening": [0.0, 0.1, 0.0],
        "weight_decay": [0.0, 1e-2, 1e-3],
        "nesterov": [False, False, True],
    },
    "adam": {
        "lr": [1e-2, 3e-3, 1e-3],
        "betas": ([0.9, 0.8, 0.5], [0.999, 0.99, 0.9]),
        "eps": [1e-8, 1e-6, 1e-3],
        "weight_decay": [0.0, 1e-2, 0.1],
    },
}
SETTINGS["adamw"] = SETTINGS["adam"]
TORCH = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
CLOSE = {"rtol": 0.0, "atol": 1e-6}  # a few float32 roundings apart (vmapped matmuls, FMA)


def build():
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def data(steps: int, members: int = N, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(steps, members, 16, 4, generator=generator)
    return x, torch.randint(0, 3, (steps, members, 16), generator=generator)


def stack_step(stack, x, y):
    """One step of every member on its own batch: the members' mean losses, summed."""
    logits = stack(x)
    losses = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), y.flatten(), reduction="none"
    ).view(len(stack), -1)
    stack.zero_grad()
    losses.mean(dim=1).sum().backward()
    stack.step()


def plain_step(model, opt, x, y):
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def plain(optimizer: str, k: int, settings):
    seed_everything(SEEDS[k])
    model = build()
    return model, TORCH[optimizer](model.parameters(), **{n: v[k] for n, v in settings.items()})


def assert_close_states(got, want, close=CLOSE):
    assert list(got["model"]) == list(want["model"])
    for key, value in want["model"].items():
        torch.testing.assert_close(got["model"][key], value, **close)
    assert got["optimizer"]["param_groups"] == want["optimizer"]["param_groups"]
    assert got["optimizer"]["state"].keys() == want["optimizer"]["state"].keys()
    for index, entry in want["optimizer"]["state"].items():
        assert got["optimizer"]["state"][index].keys() == entry.keys()
        for key, value in entry.items():
            torch.testing.assert_close(got["optimizer"]["state"][index][key], value, **close)


def test_members_start_from_their_own_seeds_and_leave_the_callers_generator():
    torch.manual_seed(99)
    before = torch.random.get_rng_state()
    stack = Stack(build, SEEDS, optimizer="sgd")
    assert torch.equal(torch.random.get_rng_state(), before)
    assert len(stack) == N and stack.device == torch.device("cpu")
    for k, seed in enumerate(SEEDS):
        seed_everything(seed)
        model = build()
        state = stack.state(k)["model"]
        assert list(state) == list(model.state_dict())
        assert all(torch.equal(state[key], value) for key, value in model.state_dict().items())
    assert not torch.equal(stack.state(0)["model"]["0.weight"], stack.state(1)["model"]["0.weight"])


def test_forward_is_each_members_own_on_its_own_or_a_shared_input():
    stack = Stack(build, SEEDS, optimizer="adam")
    x, _ = data(1)
    models = [plain("adam", k, {})[0] for k in range(N)]
    outputs = stack(x[0])
    shared = stack(x[0, 0], in_dims=None)
    assert outputs.shape == (N, 16, 3)
    for k, model in enumerate(models):
        torch.testing.assert_close(outputs[k], model(x[0, k]), **CLOSE)
        torch.testing.assert_close(shared[k], model(x[0, 0]), **CLOSE)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_each_member_trains_as_torch_optim_with_its_own_settings(optimizer):
    """Two intervals of three steps, each member's settings changed between them; every
    member against a plain module trained by torch.optim with the same seed, data and
    settings (apply_hparams between the intervals)."""
    settings = SETTINGS[optimizer]
    stack = Stack(build, SEEDS, optimizer=optimizer, **settings)
    plains = [plain(optimizer, k, stack.hparams) for k in range(N)]
    x, y = data(6)
    later = {"lr": [0.02, 0.3, 0.001], "weight_decay": [1e-3, 0.0, 1e-2]}
    for interval in range(2):
        if interval == 1:
            stack.set_hparams(**later)
            for k, (_, opt) in enumerate(plains):
                apply_hparams(opt, {n: v[k] for n, v in later.items()})
        for s in range(3 * interval, 3 * interval + 3):
            stack_step(stack, x[s], y[s])
            for k, (model, opt) in enumerate(plains):
                plain_step(model, opt, x[s, k], y[s, k])
    for k, (model, opt) in enumerate(plains):
        assert_close_states(stack.state(k), save_state(model, opt))


def test_sgd_momentum_switched_on_later_starts_its_buffer_as_torch_does():
    stack = Stack(build, SEEDS, optimizer="sgd", lr=0.1, momentum=[0.0, 0.9, 0.0])
    plains = [plain("sgd", k, stack.hparams) for k in range(N)]
    x, y = data(4)
    for s in range(4):
        if s == 2:  # member 2 gains momentum, member 1 loses it (its buffer is kept)
            stack.set_hparams(momentum=[0.0, 0.0, 0.8])
            for k, (_, opt) in enumerate(plains):
                apply_hparams(opt, {"momentum": [0.0, 0.0, 0.8][k]})
        stack_step(stack, x[s], y[s])
        for k, (model, opt) in enumerate(plains):
            plain_step(model, opt, x[s, k], y[s, k])
    assert stack.state(0)["optimizer"]["state"] == {}  # never had momentum: no buffer, as torch
    for k, (model, opt) in enumerate(plains):
        assert_close_states(stack.state(k), save_state(model, opt))


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_a_slot_loaded_with_a_donor_trains_identically_to_the_donor(optimizer):
    stack = Stack(build, SEEDS, optimizer=optimizer, **SETTINGS[optimizer])
    x, y = data(6)
    for s in range(3):
        stack_step(stack, x[s], y[s])
    extras = stack.load(0, stack.state(2, returns=[1.0]))
    assert extras == {"returns": [1.0]}
    assert stack.hparams["lr"][0] == stack.hparams["lr"][2]  # the donor's settings came along
    for s in range(3, 6):
        x[s, 0], y[s, 0] = x[s, 2], y[s, 2]  # the same batches as the donor
        stack_step(stack, x[s], y[s])
    donor, copy = stack.state(2), stack.state(0)
    assert all(torch.equal(copy["model"][k], v) for k, v in donor["model"].items())
    assert copy["optimizer"]["param_groups"] == donor["optimizer"]["param_groups"]
    for index, entry in donor["optimizer"]["state"].items():
        assert all(torch.equal(copy["optimizer"]["state"][index][k], v) for k, v in entry.items())
    assert not torch.equal(copy["model"]["0.weight"], stack.state(1)["model"]["0.weight"])


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_a_member_continues_in_plain_torch_and_a_plain_one_in_a_slot(optimizer):
    """The best member of a stack loads into an ordinary module and torch.optim optimizer
    (through a checkpoint), and a plain module's save_state loads into a slot: both then
    train on exactly as they would have where they came from."""
    settings = SETTINGS[optimizer]
    stack = Stack(build, SEEDS, optimizer=optimizer, **settings)
    x, y = data(5)
    for s in range(3):
        stack_step(stack, x[s], y[s])
    state = load(dumps(stack.state(1, epoch=3)))  # through poptune's checkpoint format
    model, opt = plain(optimizer, 0, stack.hparams)  # seed 10, member 0's settings: overwritten
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    assert opt.param_groups[0]["lr"] == settings["lr"][1]

    assert load_state(state, build()) == {"epoch": 3}  # the plain helpers read it too
    outsider, outsider_opt = plain(optimizer, 0, stack.hparams)
    plain_step(outsider, outsider_opt, x[0, 0], y[0, 0])
    stack.load(2, save_state(outsider, outsider_opt))

    for s in range(3, 5):
        x[s, 2], y[s, 2] = x[s, 0], y[s, 0]
        stack_step(stack, x[s], y[s])
        plain_step(model, opt, x[s, 1], y[s, 1])
        plain_step(outsider, outsider_opt, x[s, 0], y[s, 0])
    assert_close_states(stack.state(1), save_state(model, opt))
    assert_close_states(stack.state(2), save_state(outsider, outsider_opt))


def test_states_are_detached_copies_not_views_of_the_stack():
    stack = Stack(build, SEEDS, optimizer="adam", lr=0.01)
    x, y = data(2)
    stack_step(stack, x[0], y[0])
    state = stack.state(1)
    weight = state["model"]["0.weight"]
    moment = state["optimizer"]["state"][0]["exp_avg"]
    kept = weight.clone(), moment.clone()
    assert not weight.requires_grad and weight.is_contiguous()
    assert weight.untyped_storage().nbytes() == weight.numel() * weight.element_size()
    stack_step(stack, x[1], y[1])
    assert torch.equal(weight, kept[0]) and torch.equal(moment, kept[1])
    weight.zero_()  # and writing to the copy leaves the stack alone
    assert not torch.equal(stack.state(1)["model"]["0.weight"], weight)


def test_buffers_are_stacked_and_batchnorm_statistics_kept_per_member():
    def with_batchnorm():
        return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6))

    stack = Stack(with_batchnorm, SEEDS, optimizer="sgd", lr=0.1)
    x, _ = data(1)
    stack(x[0]).sum().backward()
    for k in range(N):
        seed_everything(SEEDS[k])
        model = with_batchnorm()
        model(x[0, k]).sum().backward()
        state = stack.state(k)["model"]
        assert list(state) == list(model.state_dict())  # num_batches_tracked included
        for key, value in model.state_dict().items():
            torch.testing.assert_close(state[key], value, **CLOSE)
    stack.eval()
    assert not stack.training
    before = stack.state(0)["model"]["1.running_mean"]
    stack(x[0])
    assert torch.equal(stack.state(0)["model"]["1.running_mean"], before)


class Tied(torch.nn.Module):
    """An encoder and decoder sharing one weight, scaled by a buffer state_dict leaves out."""

    def __init__(self):
        super().__init__()
        self.encode, self.decode = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
        self.decode.weight = self.encode.weight
        self.register_buffer("scale", torch.full((4,), 2.0), persistent=False)

    def forward(self, x):
        return self.decode(torch.tanh(self.encode(x))) * self.scale


def test_tied_weights_train_as_one_and_states_have_state_dicts_keys():
    stack = Stack(Tied, SEEDS, optimizer="adam", lr=0.01)
    x, _ = data(2)
    plains = []
    for k in range(N):
        seed_everything(SEEDS[k])
        model = Tied()
        plains.append((model, torch.optim.Adam(model.parameters(), lr=0.01)))
    for s in range(2):
        stack.zero_grad()
        stack(x[s]).pow(2).mean(dim=(1, 2)).sum().backward()
        stack.step()
        for k, (model, opt) in enumerate(plains):
            opt.zero_grad()
            model(x[s, k]).pow(2).mean().backward()
            opt.step()
    for k, (model, opt) in enumerate(plains):
        state = stack.state(k)
        assert list(state["model"]) == ["encode.weight", "encode.bias", "decode.weight",
                                        "decode.bias"]  # fmt: skip
        assert_close_states(state, save_state(model, opt))
        Tied().load_state_dict(state["model"])


def test_hyperparameters_from_the_members_hparams():
    stack = Stack(build, SEEDS, optimizer="adam")
    hparams = [{"lr": 0.1 * (k + 1), "betas": [0.9, 0.99], "units": 8} for k in range(N)]
    applied = stack.set_hparams(hparams, eps=1e-6)
    assert applied == {"lr": [0.1, 0.2, 0.30000000000000004], "betas": [(0.9, 0.99)] * N,
                       "eps": [1e-6] * N}  # fmt: skip
    assert stack.hparams["weight_decay"] == [0.0] * N  # untouched
    stack.set_hparams(lr=torch.tensor([1.0, 2.0, 3.0]))
    assert stack.hparams["lr"] == [1.0, 2.0, 3.0]


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda s: s.state(3), IndexError, r"member index 3 is out of range for a stack of 3 "
         r"members \(0 to 2\)"),
        (lambda s: s.load(-1, s.state(0)), IndexError, r"member index -1 is out of range"),
        (lambda s: s.state(True), TypeError, r"member index must be an int; got True"),
        (lambda s: s.set_hparams(lr=[0.1, 0.2]), InvalidParameterError,
         r"'lr' parameter of Stack must be a number or 3 numbers .* Got 2 values for a stack"),
        (lambda s: s.set_hparams(lr=-1.0), InvalidParameterError, r"'lr' .* finite number >= 0"),
        (lambda s: s.set_hparams(betas=(0.9, 0.99)), InvalidParameterError,
         r"settings of sgd .* Got \['betas'\] instead"),
        (lambda s: Stack(build, SEEDS, optimizer="adam", betas=(0.9, [0.9, 0.99, 1.0])),
         InvalidParameterError, r"'betas' .* two numbers in \[0, 1\)"),
        (lambda s: s.set_hparams(learning_rate=0.1), InvalidParameterError,
         r"settings of sgd \(lr, momentum, dampening, weight_decay, nesterov\)"),
        (lambda s: s.set_hparams(nesterov=True), InvalidParameterError,
         r"member 0: nesterov=True, momentum=0.0"),
        (lambda s: s.set_hparams([{"lr": 0.1}] * 2), InvalidParameterError,
         r"a sequence of 3 mappings, one per member"),
    ],
)  # fmt: skip
def test_bad_indices_and_settings_are_refused_with_what_to_do(call, error, message):
    stack = Stack(build, SEEDS, optimizer="sgd", lr=0.1)
    with pytest.raises(error, match=message):
        call(stack)
    assert stack.hparams["lr"] == [0.1] * N and stack.hparams["nesterov"] == [False] * N


def test_unsupported_optimizers_and_bad_builds_are_refused():
    with pytest.raises(InvalidParameterError, match=r"'optimizer' .* 'sgd' or 'adam' or 'adamw'"):
        Stack(build, SEEDS, optimizer="rmsprop")
    with pytest.raises(InvalidParameterError, match=r"'lr' .* 3 numbers"):
        Stack(build, SEEDS, optimizer="adam", lr=[0.1] * 4)
    with pytest.raises(InvalidParameterError, match=r"'build' .* returns an nn.Module"):
        Stack(lambda: "model", SEEDS, optimizer="adam")
    with pytest.raises(InvalidParameterError, match=r"'seeds' .* non-empty"):
        Stack(build, [], optimizer="adam")


def _mangled(state, change):
    state = {"model": dict(state["model"]), "optimizer": state["optimizer"]}
    change(state)
    return state


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (lambda s: s["model"].pop("2.bias"), ValueError, r"missing keys \['2.bias'\]"),
        (lambda s: s["model"].update(extra=torch.zeros(1)), ValueError,
         r"unexpected keys \['extra'\]"),
        (lambda s: s["model"].update({"0.weight": torch.zeros(8, 5)}), ValueError,
         r"0.weight: \(8, 5\) vs \(8, 4\)"),
        (lambda s: s["model"].update({"2.bias": [0.0] * 3}), ValueError,
         r"2.bias: \[0.0, 0.0, 0.0\] vs \(3,\)"),
        (lambda s: s.pop("optimizer"), KeyError, r"no 'optimizer' entry"),
        (lambda s: s["optimizer"]["param_groups"][0].update(decoupled_weight_decay=True),
         ValueError, r"an AdamW state and this stack trains with Adam.*optimizer='adamw'"),
        (lambda s: s["optimizer"]["param_groups"].append({}), ValueError,
         r"one param group .* it has 2"),
        (lambda s: s["optimizer"]["state"][0].update(exp_avg=torch.zeros(3)), ValueError,
         r"\['state'\]\[0\]\['exp_avg'\] must be a tensor of shape \(8, 4\)"),
        (lambda s: s["optimizer"]["state"].pop(1), ValueError,
         r"moments for parameters \[0, 2, 3\]"),
        (lambda s: s["optimizer"]["param_groups"][0].update(amsgrad=True), ValueError,
         r"amsgrad=True, which a Stack does not support"),
    ],
)  # fmt: skip
def test_a_state_that_does_not_fit_is_refused_and_changes_nothing(change, error, message):
    stack = Stack(build, SEEDS, optimizer="adam", lr=[0.1, 0.2, 0.3])
    x, y = data(1)
    stack_step(stack, x[0], y[0])
    donor = stack.state(2)
    donor["optimizer"] = load(dumps(donor["optimizer"]))  # a deep copy to mangle
    before = stack.state(0)
    with pytest.raises(error, match=message):
        stack.load(0, _mangled(donor, change))
    assert_close_states(stack.state(0), before, {"rtol": 0.0, "atol": 0.0})


def test_an_sgd_stack_refuses_an_adam_state():
    stack = Stack(build, SEEDS, optimizer="sgd")
    adam = Stack(build, SEEDS, optimizer="adam")
    with pytest.raises(ValueError, match=r"not a SGD state: its param group has no \['momentum'"):
        stack.load(0, adam.state(0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible here)")
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_on_a_gpu_members_train_as_on_the_cpu_and_states_come_back_on_the_cpu(optimizer):
    settings = SETTINGS[optimizer]
    gpu = Stack(build, SEEDS, optimizer=optimizer, device="cuda", **settings)
    cpu = Stack(build, SEEDS, optimizer=optimizer, **settings)
    x, y = data(3)
    for s in range(3):
        stack_step(gpu, x[s].cuda(), y[s].cuda())
        stack_step(cpu, x[s], y[s])
    assert gpu.device.type == "cuda"
    state = gpu.state(1)
    assert state["model"]["0.weight"].device.type == "cpu"
    gpu.load(0, cpu.state(2))
    for k in range(N):
        # GPU kernels round differently (and may use TF32 matmuls): close, not bit-equal.
        assert_close_states(
            gpu.state(k), cpu.state(2 if k == 0 else k), {"rtol": 1e-3, "atol": 1e-4}
        )


def test_a_stack_builds_no_torch_optimizer_and_imports_no_dynamo():
    # Building torch's first optimizer imports torch._dynamo (a second of start-up): a Stack
    # reads the param group torch would write without building one.
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from poptune.integrations.torch import Stack\n"
        "for name in ('sgd', 'adam', 'adamw'):\n"
        "    Stack(lambda: torch.nn.Linear(2, 1), seeds=[0, 1], optimizer=name).state(0)\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "False"


@pytest.mark.parametrize("kind", ["SGD", "Adam", "AdamW"])
def test_the_param_group_read_without_an_optimizer_is_torchs_own(kind):
    from poptune.integrations.vectorized import _torch_group

    group = TORCH[kind.lower()]([torch.zeros(1, requires_grad=True)]).param_groups[0]
    want = {k: v for k, v in group.items() if k != "params"}
    assert _torch_group(kind) == want
    assert list(_torch_group(kind)) == list(want)


def test_a_torch_class_that_hands_no_defaults_over_is_asked_the_plain_way(monkeypatch):
    from poptune.integrations import vectorized

    class Direct(torch.optim.SGD):  # calls Optimizer.__init__ by name, past any class between
        def __init__(self, params, lr=0.5):
            torch.optim.Optimizer.__init__(self, params, {"lr": lr, "odd": 3})

    monkeypatch.setattr(torch.optim, "Direct", Direct, raising=False)
    assert vectorized._torch_group.__wrapped__("Direct") == {"lr": 0.5, "odd": 3}
