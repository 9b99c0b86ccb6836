"""The examples run end to end in a reduced configuration, with sane results."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

import poptune as pt

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))  # as when an example runs as a script: it sees its neighbours


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_toy_reproduces_the_papers_ordering(capsys, tmp_path: Path):
    storage = f"sqlite:///{tmp_path / 'toy.db'}"
    table = load_example("toy").main(["--seeds", "3", "--intervals", "10", "--storage", storage])
    assert table["PBT"]["best Q"] > 1.1
    assert table["PBT"]["best Q"] > table["explore only"]["best Q"]
    assert table["grid"]["best Q"] < 0.4  # each grid member improves only one coordinate
    # choosing oneself keeps one's weights and explores: it must leave the grid behind
    assert table["explore only"]["best Q"] > table["grid"]["best Q"] + 0.3
    out = capsys.readouterr().out
    assert "PBT" in out and f"poptune status toy-PBT-p2-i10-s0 --storage '{storage}'" in out
    assert len(pt.load(storage, "toy-PBT-p2-i10-s0").intervals()) == 2 * 10  # kept, readable


def test_digits_learns_and_prints_a_schedule(tmp_path: Path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    digits = load_example("digits")
    storage = f"sqlite:///{tmp_path / 'digits.db'}"
    options = ["--population", "4", "--intervals", "6", "--workers", "2", "--sync"]
    result = digits.main([*options, "--no-progress", "--storage", storage])
    # sync + a fixed seed: deterministic whatever the worker count (0.938 when written)
    assert result.best.score > 0.85  # an untrained MLP scores about 0.1
    assert len(result.intervals()) == 24
    out = capsys.readouterr().out
    assert "best member" in out and "schedule of the winning lineage" in out
    state = result.best.state()
    assert set(state) == {"model", "optimizer"}


def test_examples_explore_with_pb2_on_request(tmp_path: Path):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    digits = load_example("digits")
    storage = f"sqlite:///{tmp_path / 'digits.db'}"
    options = ["--population", "4", "--intervals", "4", "--workers", "1", "--sync"]
    result = digits.main([*options, "--explore", "pb2", "--no-progress", "--storage", storage])
    assert result.record.config["explore"] == {"type": "PB2", "window": 10, "max_points": 200}
    assert len(result.exploits()) == 3  # the worst member copies the best, each generation


def test_digits_vectorized_trains_blocks_and_its_best_member_is_a_plain_module(
    tmp_path: Path, capsys
):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    vectorized = load_example("digits_vectorized")
    storage = f"sqlite:///{tmp_path / 'vectorized.db'}"
    options = ["--population", "8", "--block", "4", "--intervals", "3", "--sync"]
    result = vectorized.main([*options, "--no-progress", "--storage", storage])
    assert result.record.config["block"] == 4
    assert len(result.intervals()) == 8 * 3  # every member recorded on its own
    assert len(result.exploits()) > 0
    assert result.best.score > 0.5  # an untrained MLP scores about 0.1
    out = capsys.readouterr().out
    assert "as a plain nn.Module" in out and "schedule of the winning lineage" in out
    assert f"poptune status digits-vectorized --storage '{storage}'" in out
    # The best stacked member is an ordinary module (and the plain example's trainable) again,
    # scoring what it scored in the stack, to a float rounding on a near tie.
    model = vectorized.best_model(result)
    assert isinstance(model, vectorized.nn.Sequential)
    _, _, _, y_val = vectorized.dataset()
    assert abs(vectorized.accuracy(model) - result.best.score) <= 1.5 / len(y_val)
    plain = result.best.load(load_example("digits").Digits)
    assert all(
        vectorized.torch.equal(a, b)
        for a, b in zip(plain.model.state_dict().values(), model.state_dict().values(), strict=True)
    )
    assert plain.optimizer.param_groups[0]["lr"] == result.best.hparams["lr"]
    with pytest.raises(TypeError, match=r"load best.state\(\) into your model"):
        result.best.load()  # a training function has no instance to build: says what to do


@pytest.mark.parametrize("example", ["digits", "digits_loop", "lightning_digits"])
def test_digits_in_sync_is_the_same_for_one_and_two_workers(tmp_path: Path, example: str):
    """Members kept in memory or rebuilt elsewhere: every interval draws from its own seed."""
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    if example == "lightning_digits":
        pytest.importorskip("lightning")
    module = load_example(example)
    scores = []
    for workers in ("1", "2"):
        options = ["--population", "3", "--intervals", "3", "--workers", workers, "--sync"]
        storage = f"sqlite:///{tmp_path / f'{workers}.db'}"
        result = module.main([*options, "--no-progress", "--storage", storage])
        scores.append([(i.member, i.step, i.score, i.origin) for i in result.intervals()])
    assert scores[0] == scores[1]
    assert max(score for _, _, score, _ in scores[0]) > 0.5  # untrained: about 0.1


def test_cartpole_learns_beyond_the_untrained_policy(tmp_path: Path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("gymnasium")
    cartpole = load_example("cartpole")
    untrained = cartpole.CartPole(
        {"lr": 1e-4, "entropy_cost": 0.01, "unroll_length": 16, "discount": 0.99}, seed=0
    )
    cartpole.CartPole.steps = 1500
    untrained.train({"lr": 0.0, "entropy_cost": 0.0, "unroll_length": 16, "discount": 0.99})
    baseline = untrained.evaluate()["return"]  # a policy that never changes: about 20
    storage = f"sqlite:///{tmp_path / 'cartpole.db'}"
    options = ["--population", "3", "--intervals", "3", "--steps", "1500", "--workers", "1"]
    result = cartpole.main([*options, "--sync", "--no-progress", "--storage", storage])
    # sync + a fixed seed: deterministic (98.8 when written, against a baseline near 20)
    assert result.best.score > 2 * baseline
    assert set(result.best.hparams) == {"lr", "entropy_cost", "unroll_length", "discount", "steps"}
    assert result.best.hparams["steps"] == 1500  # --steps, recorded: a resume trains as many
    assert isinstance(result.best.hparams["unroll_length"], int)
    assert "mean return" in capsys.readouterr().out


def test_gan_improves_its_non_differentiable_quality(tmp_path: Path, capsys):
    pytest.importorskip("torch")
    gan = load_example("gan")
    untrained = gan.Ring({"generator_lr": 1e-3, "discriminator_lr": 1e-3}, seed=0)
    baseline = untrained.evaluate()["quality"]  # noise near the origin covers no mode
    storage = f"sqlite:///{tmp_path / 'gan.db'}"
    options = ["--population", "3", "--intervals", "5", "--updates", "600", "--workers", "1"]
    result = gan.main([*options, "--sync", "--no-progress", "--storage", storage])
    # sync + a fixed seed: deterministic (0.549 with all 8 modes when written; untrained: 0)
    assert result.best.score > baseline + 0.2
    assert result.best.metrics["modes"] >= 4
    assert "modes" in capsys.readouterr().out
    _, covered, fraction = gan.quality(gan.real_batch(2000, gan.torch.Generator()))
    assert covered == 8 and fraction > 0.95  # the metric rewards the real distribution


def test_translation_learns_and_is_scored_by_bleu(tmp_path: Path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("sacrebleu")
    translate = load_example("translate")
    hparams = {"lr": 1e-3, "attention_dropout": 0.1, "layer_dropout": 0.1, "relu_dropout": 0.1}
    baseline = translate.Translator(hparams, seed=0).evaluate()["bleu"]  # untrained: about 0
    storage = f"sqlite:///{tmp_path / 'translate.db'}"
    options = ["--population", "2", "--intervals", "3", "--workers", "1", "--sync"]
    result = translate.main([*options, "--no-progress", "--storage", storage])
    assert result.best.score > baseline + 20  # BLEU points; sync + fixed seed: deterministic
    assert 0.0 <= result.best.metrics["exact"] <= 1.0
    assert "BLEU" in capsys.readouterr().out
    model = result.best.load()
    source = [[1, 2, 3, 4]]
    assert len(model.translate(source)[0]) <= 14


def _script(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_bad_arguments_are_one_clear_line(tmp_path: Path):
    storage = f"sqlite:///{tmp_path / 'p.db'}"
    bad = _script("toy", "--population", "1", "--seeds", "1", "--storage", storage)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert (
        bad.stderr.startswith("error: The 'population' parameter") and bad.stderr.count("\n") == 1
    )
    pytest.importorskip("torch")
    pytest.importorskip("gymnasium")
    options = ["--population", "2", "--workers", "1", "--no-progress", "--storage", storage]
    first = _script("cartpole", "--intervals", "1", "--steps", "20", "--name", "my run", *options)
    assert first.returncode == 0, first.stderr
    assert f"poptune status 'my run' --storage '{storage}'" in first.stdout  # a hint that works
    clash = _script("cartpole", "--intervals", "2", "--steps", "20", "--name", "my run", *options)
    assert clash.returncode == 1 and "Traceback" not in clash.stderr
    assert "different configuration" in clash.stderr and "pass --name" in clash.stderr
    pytest.importorskip("sklearn")
    block = _script("digits_vectorized", "--block", "0", *options)
    assert block.returncode == 1 and "Traceback" not in block.stderr
    assert block.stderr == "error: The 'block' parameter must be an int >= 1. Got 0 instead.\n"


def test_sb3_ppo_trains_a_population_on_any_classic_control_env(tmp_path: Path, capsys):
    pytest.importorskip("stable_baselines3")
    sb3_ppo = load_example("sb3_ppo")
    storage = f"sqlite:///{tmp_path / 'sb3.db'}"
    options = ["--population", "2", "--intervals", "2", "--workers", "1", "--n-envs", "2"]
    options += ["--n-steps", "64", "--interval-timesteps", "256", "--eval-episodes", "1"]
    options += ["--storage", storage]
    result = sb3_ppo.main([*options, "--sync", "--no-progress", "--env", "Acrobot-v1"])
    assert result.name == "sb3-ppo-acrobot-v1"
    assert [i.metrics["timesteps"] for i in result.intervals()] == [256, 512] * 2
    assert -500.0 <= result.best.score <= 0.0  # Acrobot's returns: -1 per step, 500 at most
    assert set(sb3_ppo.SPACE) <= set(result.best.hparams)
    assert "mean return" in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"'Blackjack-v1' is not a classic-control environment"):
        sb3_ppo.main(["--env", "Blackjack-v1", "--storage", storage])
