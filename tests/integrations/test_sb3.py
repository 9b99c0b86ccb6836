"""Stable-Baselines3: an exploit moves the donor's tensors into the learning agent, and the
explored hyperparameters are the ones its next update uses.

Every algorithm learns for real (tiny budgets, classic-control environments), in-process
(workers=1), as a subclass that records what each ``train()`` call starts from and uses.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("stable_baselines3")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
from stable_baselines3 import A2C, DQN, PPO, SAC, TD3  # noqa: E402
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402
from stable_baselines3.common.evaluation import evaluate_policy  # noqa: E402
from stable_baselines3.common.monitor import Monitor  # noqa: E402
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize  # noqa: E402

import poptune as pt  # noqa: E402
from poptune import serialization  # noqa: E402
from poptune.integrations import sb3 as pt_sb3  # noqa: E402
from poptune.loop import LoopError  # noqa: E402
from tests._helpers import QuickRun  # noqa: E402

torch.set_num_threads(1)

# What each train() call saw, by (algorithm, member): a list of records in call order.
SEEN: dict[tuple[str, int], list[dict[str, Any]]] = {}
OPTIONS: dict[str, Any] = {}  # what the next run's members do differently
BUILT: dict[int, int] = {}  # member -> agents built for it


def _snapshot(model: Any) -> dict[str, Any]:
    return serialization.copy(pt_sb3.save(model))


def _settings(model: Any) -> dict[str, Any]:
    """The values train() is about to use, read where SB3 reads them."""
    seen: dict[str, Any] = {"gamma": model.gamma}
    if isinstance(model, PPO):
        seen["clip_range"] = model.clip_range(model._current_progress_remaining)
        seen["n_epochs"] = model.n_epochs
    if isinstance(model, PPO | A2C):
        seen["ent_coef"] = model.ent_coef
        seen["buffer_gamma"] = model.rollout_buffer.gamma
    if isinstance(model, SAC):
        seen["ent_coef"] = float(torch.exp(model.log_ent_coef.detach()))
    if isinstance(model, TD3 | SAC | DQN):
        seen["tau"] = model.tau
    return seen


def _probe(base: type) -> type:
    class Probe(base):  # type: ignore[misc, valid-type]
        member = -1
        fresh = True  # no update yet since this agent was built

        def train(self, *args: Any, **kwargs: Any) -> None:
            record = {"t": self.num_timesteps, "before": _snapshot(self), **_settings(self)}
            record["fresh"], self.fresh = self.fresh, False
            super().train(*args, **kwargs)
            optimizers = [self.policy.optimizer] if hasattr(self.policy, "optimizer") else []
            optimizers += [
                getattr(self, n).optimizer for n in ("actor", "critic") if hasattr(self, n)
            ]
            record["lr"] = {group["lr"] for o in optimizers for group in o.param_groups}
            record["after"] = _snapshot(self)
            SEEN.setdefault((base.__name__, self.member), []).append(record)

    Probe.__name__ = base.__name__
    return Probe


def _pendulum() -> gym.Env:
    return gym.make("Pendulum-v1", max_episode_steps=40)


# algorithm -> (build(hparams, seed), interval_timesteps, space, learn options)
ALGORITHMS: dict[str, Any] = {
    "PPO": (
        lambda h, seed: _probe(PPO)(
            "MlpPolicy", "CartPole-v1", n_steps=32, batch_size=32, n_epochs=h["n_epochs"],
            learning_rate=h["learning_rate"], ent_coef=h["ent_coef"],
            clip_range=h["clip_range"], seed=seed, device="cpu",
        ),
        64,
        {"learning_rate": pt.LogUniform(1e-4, 1e-2), "ent_coef": pt.Uniform(0.0, 0.05),
         "clip_range": pt.Uniform(0.1, 0.3), "n_epochs": pt.Choice([1, 2, 3])},
        {},
    ),
    "A2C": (
        lambda h, seed: _probe(A2C)(
            "MlpPolicy", "CartPole-v1", n_steps=8, learning_rate=h["learning_rate"],
            gamma=h["gamma"], seed=seed, device="cpu",
        ),
        64,
        {"learning_rate": pt.LogUniform(1e-4, 1e-2), "gamma": pt.Uniform(0.9, 0.999)},
        {},
    ),
    "DQN": (
        lambda h, seed: _probe(DQN)(
            "MlpPolicy", "CartPole-v1", learning_starts=10, batch_size=16, buffer_size=1000,
            train_freq=h["train_freq"], target_update_interval=10_000,
            learning_rate=h["learning_rate"], tau=h["tau"], seed=seed, device="cpu",
            policy_kwargs={"net_arch": [16]},
        ),
        50,
        {"learning_rate": pt.LogUniform(1e-4, 1e-2), "train_freq": pt.Choice([1, 3, 7]),
         "tau": pt.Uniform(0.5, 1.0)},
        {"total_timesteps": 150},
    ),
    "SAC": (
        lambda h, seed: _probe(SAC)(
            "MlpPolicy", _pendulum(), learning_starts=10, batch_size=16, buffer_size=1000,
            learning_rate=h["learning_rate"], ent_coef="auto", seed=seed, device="cpu",
            policy_kwargs={"net_arch": [16]},
        ),
        40,
        {"learning_rate": pt.LogUniform(1e-4, 1e-2), "ent_coef": pt.LogUniform(0.01, 1.0)},
        {},
    ),
    "TD3": (
        lambda h, seed: _probe(TD3)(
            "MlpPolicy", _pendulum(), learning_starts=10, batch_size=16, buffer_size=1000,
            learning_rate=h["learning_rate"], tau=h["tau"], train_freq=h["train_freq"],
            seed=seed, device="cpu", policy_kwargs={"net_arch": [16]},
        ),
        40,
        {"learning_rate": pt.LogUniform(1e-4, 1e-2), "tau": pt.Uniform(0.001, 0.05),
         "train_freq": pt.IntUniform(1, 6)},
        {},
    ),
}  # fmt: skip


def member(ctx: Any) -> None:
    """A member: one agent, one model.learn until poptune ends it."""
    name = OPTIONS["algorithm"]
    build, interval, _, options = ALGORITHMS[name]
    model = OPTIONS.get("build", build)(ctx.hparams, ctx.seed)
    model.member = ctx.member
    BUILT[ctx.member] = BUILT.get(ctx.member, 0) + 1
    eval_env = _pendulum() if name in ("SAC", "TD3") else gym.make("CartPole-v1")
    learn = {"eval_env": eval_env, "eval_episodes": 1, **options, **OPTIONS.get("learn", {})}
    pt_sb3.learn(ctx, model, OPTIONS.get("interval", interval), **learn)


@pytest.fixture(autouse=True)
def _temporary_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The temporary directory inside the test's folder: SB3 makes an empty SB3-<date> folder
    there at every learn() of its own (the tests call some directly)."""
    temporary = tmp_path / "tempdir"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))


@pytest.fixture(autouse=True)
def _fresh() -> None:
    SEEN.clear()
    OPTIONS.clear()
    BUILT.clear()


def run(quick_run: QuickRun, algorithm: str, **options: Any) -> pt.Result:
    """Agents of ``algorithm`` in generations (3 members, 3 intervals): the worse copies the
    better."""
    OPTIONS["algorithm"] = algorithm
    settings: dict[str, Any] = dict(
        space=ALGORITHMS[algorithm][2],
        metric="mean_reward",
        intervals=3,
        sync=True,
        exploit=pt.Truncation(0.5),
        explore=pt.Perturb((0.8, 1.2)),
        name=algorithm.lower(),
    )
    return quick_run(member, **{**settings, **options})


def _equal(a: Any, b: Any) -> bool:
    """Tensors, arrays and containers equal exactly."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_an_exploit_moves_the_donor_tensors_and_the_next_update_uses_the_explored_values(
    algorithm: str, quick_run
):
    result = run(quick_run, algorithm)
    assert result.status == "finished"
    interval = ALGORITHMS[algorithm][1]
    recorded = {(i.member, i.step): i for i in result.intervals()}
    assert len(recorded) == 9
    for (_, step), record in recorded.items():  # every interval ends exactly on its boundary
        assert record.metrics["timesteps"] == step * interval
        assert set(record.metrics) == {"mean_reward", "std_reward", "timesteps"}
    checked = 0
    for event in result.exploits():
        after = (event.member, event.donor_step + 1)
        if after not in recorded:
            continue  # copied at the budget: nothing more was trained
        end = event.donor_step * interval
        donor_last = [r for r in SEEN[(algorithm, event.donor)] if r["t"] <= end][-1]
        own_last = [r for r in SEEN[(algorithm, event.member)] if r["t"] <= event.step * interval]
        first = next(r for r in SEEN[(algorithm, event.member)] if r["t"] > end)
        assert donor_last["t"] == end  # the donor's last update of the interval it reported
        # the recipient's first update starts from the donor's tensors, optimizers included...
        assert _equal(first["before"]["parameters"], donor_last["after"]["parameters"])
        if algorithm != "SAC":  # SAC's learned coefficient is set to the explored ent_coef
            assert _equal(first["before"]["variables"], donor_last["after"]["variables"])
        assert first["before"]["n_updates"] == donor_last["after"]["n_updates"]
        assert not _equal(own_last[-1]["after"]["parameters"], donor_last["after"]["parameters"])
        # ...and uses the explored hyperparameters, not the donor's
        hparams = recorded[after].hparams
        donor = recorded[(event.donor, event.donor_step)].hparams
        assert dict(hparams) == dict(event.hparams_after)
        assert first["lr"] == {hparams["learning_rate"]} != {donor["learning_rate"]}
        for name in ("clip_range", "gamma", "tau", "n_epochs"):
            if name in hparams:
                assert first[name] == pytest.approx(hparams[name], rel=1e-12), name
        if "gamma" in hparams and algorithm == "A2C":
            assert first["buffer_gamma"] == hparams["gamma"]  # GAE reads the buffer's copy
        if algorithm == "PPO":
            assert first["ent_coef"] == hparams["ent_coef"]
        if algorithm == "SAC":  # the learned coefficient restarts from the explored value
            assert first["ent_coef"] == pytest.approx(hparams["ent_coef"], rel=1e-6)
        checked += 1
    assert checked >= 1


def test_off_policy_rollouts_are_cut_at_the_interval_whatever_train_freq(quick_run):
    """train_freq=7 does not divide 50 steps: the last rollout of each interval is shortened,
    so every interval still ends (and reports) at exactly step x 50 timesteps."""
    OPTIONS["build"] = lambda h, seed: ALGORITHMS["DQN"][0]({**h, "train_freq": 7}, seed)
    space = {"learning_rate": pt.LogUniform(1e-4, 1e-2), "tau": pt.Uniform(0.5, 1.0)}
    result = run(quick_run, "DQN", space=space, population=2, exploit=None)
    assert [i.metrics["timesteps"] for i in result.intervals()] == [50, 100, 150] * 2
    trains = [r["t"] for r in SEEN[("DQN", 0)]]
    assert {50, 100, 150} <= set(trains)  # an update right at each boundary
    assert 57 in trains and 56 not in trains  # after 50, full rollouts of 7 again


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"build": lambda h, seed: torch.nn.Linear(2, 2)},
            r"'model' parameter of learn must be a Stable-Baselines3 algorithm .* It is a "
            r"torch\.nn\.modules\.linear\.Linear",
        ),
        (
            {"interval": 100},
            r"interval_timesteps=100 does not fall on a rollout boundary of PPO \(a rollout is "
            r"n_steps x n_envs = 32 x 1 = 32 steps\)\. Use a multiple of 32: the nearest are 96 "
            r"and 128",
        ),
        (
            {"space": {"learning_rate": pt.LogUniform(1e-4, 1e-2), "n_steps": pt.Choice([32])}},
            r"cannot change \['n_steps'\] while PPO learns; it can tune \['learning_rate', "
            r"'gamma', 'ent_coef', 'vf_coef', 'max_grad_norm', 'gae_lambda', 'clip_range', "
            r"'n_epochs', 'batch_size', 'target_kl'\]",
        ),
        (
            {"metric": "reward"},
            r"no metric 'reward'; it returned the keys \['mean_reward', 'std_reward', "
            r"'timesteps'\]",
        ),
        (
            {"algorithm": "DQN", "learn": {"total_timesteps": None}},
            r"DQN anneals its exploration rate over the budget, so pass total_timesteps",
        ),
        (
            {"learn": {"eval_env": 42}},
            r"'eval_env' parameter of learn must be an environment id \(str\), a function that "
            r"builds a gymnasium\.Env, a gymnasium\.Env or an SB3 VecEnv\. Got 42 instead\. It "
            r"is a builtins\.int\. Pass e\.g\. eval_env='CartPole-v1'",
        ),
        (
            {"learn": {"eval_env": "NoSuchEnv-v0"}},
            r"'eval_env' parameter of learn must be a registered Gymnasium environment id\. Got "
            r"'NoSuchEnv-v0' instead\. .*NoSuchEnv",
        ),
        (
            {"learn": {"eval_env": lambda: "CartPole-v1"}},
            r"'eval_env' parameter of learn must be a function that returns a gymnasium\.Env\. "
            r"Got <function .*> instead\. It returned a builtins\.str\.",
        ),
        (
            {"build": lambda h, seed: PPO(
                "MlpPolicy", VecNormalize(make_vec_env("CartPole-v1", n_envs=1, seed=seed)),
                n_steps=32, batch_size=32, seed=seed, device="cpu"),
             "learn": {"eval_env": make_vec_env("CartPole-v1", n_envs=2)}},
            r"normalizes observations \(VecNormalize\), but the eval_env VecEnv does not; pass "
            r"the environment's id",
        ),
    ],
    ids=["not-an-algorithm", "off-rollout-boundary", "not-tunable", "metric-not-reported",
         "dqn-without-budget", "eval-env-not-an-env", "eval-env-unknown-id",
         "eval-env-function-builds-no-env", "eval-env-vec-env-not-normalized"],
)  # fmt: skip
def test_bad_input_is_refused_with_a_clear_message(
    tmp_path: Path, options: dict[str, Any], message: str, quick_run
):
    algorithm = options.pop("algorithm", "PPO")
    space = options.pop("space", None)
    metric = options.pop("metric", "mean_reward")
    OPTIONS.update(options)
    if space is not None:
        OPTIONS["build"] = lambda h, seed: ALGORITHMS["PPO"][0](
            {"n_epochs": 1, "ent_coef": 0.0, "clip_range": 0.2, **h}, seed
        )
    extra = {"space": space} if space is not None else {}
    with pytest.raises(pt.PopulationError) as raised:
        run(quick_run, algorithm, population=2, intervals=2, exploit=None, max_failures=0,
            metric=metric, **extra)  # fmt: skip
    failures = pt.load(f"sqlite:///{tmp_path / 'poptune.db'}", algorithm.lower()).failures()
    # a member's error is recorded as its failure; a wrong metric stops the population at once
    messages = [failure.traceback for failure in failures] or [str(raised.value)]
    for text in messages:
        assert re.search(message, text), text
    if metric == "mean_reward":
        assert not SEEN  # refused before any update


def _agent(env: Any = "CartPole-v1", steps: int = 64) -> PPO:
    """A PPO agent that has learned a little (so its episodes differ by seed)."""
    model = PPO("MlpPolicy", env, n_steps=32, batch_size=32, seed=0, device="cpu")
    model.learn(steps)
    return model


def _sb3_returns(model: Any, venv: Any, episodes: int, seed: int) -> list[float]:
    """SB3's own evaluation, for reference: deterministic, on a seeded VecEnv."""
    venv.seed(seed)
    returns, _ = evaluate_policy(model, venv, n_eval_episodes=episodes, return_episode_rewards=True)
    return [float(r) for r in returns]


def _one(env: Any) -> DummyVecEnv:
    return DummyVecEnv([lambda: Monitor(env)])


def test_an_evaluation_on_copies_plays_the_episodes_seeded_single_environments_would():
    model = _agent()
    one_by_one = [
        _sb3_returns(model, _one(gym.make("CartPole-v1")), 1, 10 + i)[0] for i in range(4)
    ]
    assert len(set(one_by_one)) > 1  # the seeds give different episodes
    by_id = pt_sb3.evaluate(model, "CartPole-v1", 4, seed=10)
    by_function = pt_sb3.evaluate(model, lambda: gym.make("CartPole-v1"), 4, seed=10)
    assert sorted(by_id) == sorted(by_function) == sorted(one_by_one)
    # more episodes than copies: EVAL_ENVS copies, each with its share, all counted
    many = pt_sb3.evaluate(model, "CartPole-v1", pt_sb3.EVAL_ENVS + 4, seed=10)
    assert len(many) == pt_sb3.EVAL_ENVS + 4
    assert set(one_by_one) <= set(many)
    # one gym.Env (as before): the episodes one after the other, as SB3 plays them
    single = pt_sb3.evaluate(model, gym.make("CartPole-v1"), 4, seed=10)
    assert single == _sb3_returns(model, _one(gym.make("CartPole-v1")), 4, 10)
    assert single[0] == one_by_one[0]
    # the policy is back to its own set_training_mode, in eval mode as SB3's predict leaves it
    assert "set_training_mode" not in model.policy.__dict__ and not model.policy.training


def test_an_evaluation_built_from_an_id_is_normalized_like_the_training_environment():
    model = _agent(VecNormalize(make_vec_env("CartPole-v1", n_envs=2, seed=0)), steps=128)
    training = model.get_vec_normalize_env()
    assert training is not None
    count, mean = training.obs_rms.count, training.obs_rms.mean.copy()
    reference = VecNormalize(make_vec_env("CartPole-v1", n_envs=3), norm_reward=False)
    reference.training = False
    reference.obs_rms = training.obs_rms.copy()
    expected = _sb3_returns(model, reference, 3, 7)
    assert pt_sb3.evaluate(model, "CartPole-v1", 3, seed=7) == expected
    assert training.obs_rms.count == count and (training.obs_rms.mean == mean).all()
    with pytest.raises(ValueError, match=r"but the eval_env VecEnv does not"):
        pt_sb3.evaluate(model, make_vec_env("CartPole-v1", n_envs=3), 3)


def _reference(model: Any, make: Any, episodes: int, seed: int, deterministic: bool) -> list[float]:
    """SB3's evaluate_policy on the copies evaluate() makes (Monitor-wrapped, copy i seeded
    with seed + i), normalized with the model's statistics when it trains on a VecNormalize."""
    venv: Any = DummyVecEnv(
        [lambda: Monitor(make()) for _ in range(min(episodes, pt_sb3.EVAL_ENVS))]
    )
    training = model.get_vec_normalize_env()
    if training is not None:
        venv = VecNormalize(venv, training=False, norm_reward=False, clip_obs=training.clip_obs)
        venv.obs_rms = training.obs_rms.copy()
    venv.seed(seed)
    returns, _ = evaluate_policy(
        model, venv, n_eval_episodes=episodes, deterministic=deterministic,
        return_episode_rewards=True,
    )  # fmt: skip
    return [float(r) for r in returns]


def _cartpole() -> gym.Env:
    return gym.make("CartPole-v1")


def _normalized_ppo() -> PPO:
    env = VecNormalize(make_vec_env("CartPole-v1", n_envs=2, seed=0))
    return _agent(env, steps=128)


def _sac() -> SAC:
    model = SAC("MlpPolicy", _pendulum(), learning_starts=10, batch_size=16, buffer_size=1000,
                seed=0, device="cpu", policy_kwargs={"net_arch": [16]})  # fmt: skip
    model.learn(60)
    return model


def _dqn() -> DQN:
    model = DQN("MlpPolicy", "CartPole-v1", learning_starts=10, batch_size=16, buffer_size=1000,
                seed=0, device="cpu", policy_kwargs={"net_arch": [16]})  # fmt: skip
    model.learn(60)
    return model


# name -> (the agent, a function building its evaluation environment)
EVALUATED: dict[str, Any] = {
    "ppo-discrete": (_agent, _cartpole),
    "ppo-continuous": (lambda: _agent(_pendulum()), _pendulum),  # Gaussian actions, clipped
    "sac": (_sac, _pendulum),  # squashed actions, unscaled to the action space
    "ppo-vec-normalize": (_normalized_ppo, _cartpole),
    "dqn": (_dqn, _cartpole),
}


def _seed_draws(model: Any) -> None:
    """Seed what stochastic actions draw from: torch, and numpy and the action space (DQN)."""
    torch.manual_seed(1)
    np.random.seed(1)
    model.action_space.seed(1)


@pytest.mark.parametrize("deterministic", [True, False], ids=["deterministic", "stochastic"])
@pytest.mark.parametrize("name", list(EVALUATED))
def test_an_evaluation_plays_exactly_the_episodes_of_sb3s_evaluate_policy(
    name: str, deterministic: bool
):
    """poptune steps the environments itself (one forward for all copies per step, no VecEnv,
    no predict): every return, in order, is evaluate_policy's on the same seeds, with as many
    episodes as copies and with more (an uneven share per copy)."""
    model = EVALUATED[name][0]()
    make = EVALUATED[name][1]
    # DQN's own predict draws exploring actions when not deterministic: SB3 plays those
    assert pt_sb3._plays_directly(model, make(), deterministic) == (name != "dqn" or deterministic)
    for episodes, seed in ((3, 5), (pt_sb3.EVAL_ENVS + 3, 11)):
        _seed_draws(model)  # stochastic actions: the same draws
        expected = _reference(model, make, episodes, seed, deterministic)
        _seed_draws(model)
        returns = pt_sb3.evaluate(model, make, episodes, seed=seed, deterministic=deterministic)
        assert returns == expected
        assert len(set(returns)) > 1  # the episodes differ: the actions and seeds matter


def test_a_near_tie_between_logits_gets_sb3s_action_not_the_largest_logit():
    """PPO's deterministic discrete action is SB3's argmax of the softmax: where two logits are
    a rounding apart their probabilities tie and SB3 takes the first, though the second logit
    is the larger."""
    policy = _agent().policy
    low = np.float32(0.1)
    high = np.nextafter(low, np.float32(1.0))
    observations = np.zeros((3, 4), dtype=np.float32)
    with torch.no_grad():
        policy.action_net.weight.zero_()
        policy.action_net.bias.copy_(torch.tensor([low, high]))
    assert policy.predict(observations, deterministic=True)[0].tolist() == [0, 0, 0]
    assert pt_sb3._actor(policy, True)(observations).tolist() == [0, 0, 0]
    with torch.no_grad():  # a clear lead
        policy.action_net.bias.copy_(torch.tensor([0.1, 0.2]))
    assert policy.predict(observations, deterministic=True)[0].tolist() == [1, 1, 1]
    assert pt_sb3._actor(policy, True)(observations).tolist() == [1, 1, 1]


def test_a_hook_on_a_layer_runs_as_it_does_in_predict():
    """poptune calls the actor's layers' forward directly only where no hook would run."""
    policy = _agent().policy
    observations = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    plain = pt_sb3._actor(policy, True)(observations)
    assert plain.tolist() == policy.predict(observations, deterministic=True)[0].tolist()
    handle = policy.action_net.register_forward_hook(lambda module, args, out: -out)
    try:
        flipped = policy.predict(observations, deterministic=True)[0]
        assert flipped.tolist() == (1 - plain).tolist()  # the hook changes every action
        assert pt_sb3._actor(policy, True)(observations).tolist() == flipped.tolist()
    finally:
        handle.remove()


def test_learn_takes_an_id_with_a_normalized_training_environment(quick_run):
    OPTIONS["build"] = lambda h, seed: _probe(PPO)(
        "MlpPolicy", VecNormalize(make_vec_env("CartPole-v1", n_envs=2, seed=seed)),
        n_steps=16, batch_size=32, learning_rate=h["learning_rate"], seed=seed, device="cpu",
    )  # fmt: skip
    OPTIONS["learn"] = {"eval_env": "CartPole-v1", "eval_episodes": 3}
    space = {"learning_rate": pt.LogUniform(1e-4, 1e-2)}
    result = run(quick_run, "PPO", space=space, population=2, intervals=2)
    assert result.status == "finished"
    assert all(i.metrics["mean_reward"] > 0 for i in result.intervals())


def test_names_that_only_build_the_agent_are_accepted_as_static(quick_run):
    space = {"learning_rate": pt.LogUniform(1e-4, 1e-2), "n_steps": 32}
    OPTIONS["build"] = lambda h, seed: PPO(
        "MlpPolicy", "CartPole-v1", n_steps=h["n_steps"], batch_size=32, n_epochs=1,
        learning_rate=h["learning_rate"], seed=seed, device="cpu",
    )  # fmt: skip
    OPTIONS["learn"] = {"static": ["n_steps"]}
    result = run(quick_run, "PPO", space=space, population=2, intervals=2)
    assert result.status == "finished"


def test_save_and_load_copy_the_agent_exactly_with_vec_normalize():
    def build(seed: int) -> PPO:
        env = VecNormalize(make_vec_env("CartPole-v1", n_envs=2, seed=seed))
        return PPO("MlpPolicy", env, n_steps=16, batch_size=32, seed=seed, device="cpu")

    donor, recipient = build(0), build(1)
    donor.learn(64)
    state = serialization.load(serialization.dumps(pt_sb3.save(donor)))  # a real checkpoint
    pt_sb3.load(recipient, state)
    assert _equal(recipient.get_parameters(), serialization.copy(donor.get_parameters()))
    assert recipient.num_timesteps == donor.num_timesteps == 64
    donor_rms, own_rms = donor.get_vec_normalize_env(), recipient.get_vec_normalize_env()
    assert donor_rms is not None and own_rms is not None
    assert (own_rms.obs_rms.mean == donor_rms.obs_rms.mean).all()
    assert (own_rms.obs_rms.var == donor_rms.obs_rms.var).all()
    assert own_rms.ret_rms.count == donor_rms.ret_rms.count
    # the optimizer still drives the recipient's own parameters (loaded in place)
    params = {id(p) for p in recipient.policy.parameters()}
    assert {id(p) for g in recipient.policy.optimizer.param_groups for p in g["params"]} == params
    with pytest.raises(LoopError, match=r"saved by poptune's SB3 integration for 'PPO', not"):
        pt_sb3.load(A2C("MlpPolicy", "CartPole-v1", device="cpu"), state)


def test_live_hyperparameters_reach_where_sb3_reads_them():
    ppo = PPO("MlpPolicy", "CartPole-v1", n_steps=16, batch_size=16, device="cpu")
    pt_sb3.apply(ppo, {"learning_rate": 0.003, "clip_range": 0.3, "gae_lambda": 0.8,
                       "gamma": 0.9, "batch_size": 8})  # fmt: skip
    assert ppo.lr_schedule(0.5) == 0.003 and ppo.clip_range(0.5) == 0.3
    assert ppo.rollout_buffer.gae_lambda == 0.8 and ppo.rollout_buffer.gamma == 0.9
    assert ppo.batch_size == 8
    dqn = DQN("MlpPolicy", "CartPole-v1", device="cpu")
    pt_sb3.apply(dqn, {"exploration_final_eps": 0.2, "exploration_fraction": 0.5})
    assert dqn.exploration_schedule(0.0) == 0.2 and dqn.exploration_schedule(0.75) == 0.6
    sac = SAC("MlpPolicy", "Pendulum-v1", ent_coef=0.1, device="cpu")
    pt_sb3.apply(sac, {"ent_coef": 0.3})
    assert float(sac.ent_coef_tensor) == pytest.approx(0.3)
    with pytest.raises(ValueError, match=r"'train_freq' must be an int >= 1; got 2\.5"):
        pt_sb3.apply(sac, {"train_freq": 2.5})
    with pytest.raises(ValueError, match=r"'gamma' must be in \[0, 1\]; got 1\.5"):
        pt_sb3.apply(sac, {"gamma": 1.5})
    assert "clip_range_vf" not in pt_sb3.tunable(ppo)
    assert "clip_range_vf" in pt_sb3.tunable(PPO("MlpPolicy", "CartPole-v1", clip_range_vf=0.2))


def test_poptune_does_not_import_sb3_and_a_missing_install_says_what_to_do():
    code = (
        "import sys, poptune, poptune.integrations\n"
        "assert 'stable_baselines3' not in sys.modules, 'poptune imported stable_baselines3'\n"
        "sys.modules['stable_baselines3'] = None  # as if it were not installed\n"
        "try:\n"
        "    import poptune.integrations.sb3\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'poptune[sb3]'" in out.stdout


@pytest.mark.parametrize("algorithm", ["PPO", "DQN"])
def test_a_member_rebuilt_from_its_checkpoint_continues_at_its_step(algorithm: str, quick_run):
    """resident=1: a worker keeps one member in memory, so members are rebuilt from their
    checkpoints between intervals; an off-policy one, with an empty replay buffer, collects
    again before it updates."""
    result = run(quick_run, algorithm, population=2, resident=1)
    assert result.status == "finished"
    assert sum(BUILT.values()) >= 4  # rebuilt, not kept
    interval = ALGORITHMS[algorithm][1]
    assert sorted((i.member, i.metrics["timesteps"]) for i in result.intervals()) == [
        (m, s * interval) for m in (0, 1) for s in (1, 2, 3)
    ]
    for member in (0, 1):
        updates = [r["t"] for r in SEEN[(algorithm, member)]]
        assert updates == sorted(updates) and updates[-1] == 3 * interval
    rebuilt = [r["t"] for r in SEEN[(algorithm, 0)] + SEEN[(algorithm, 1)] if r["fresh"]]
    rebuilt = [t for t in rebuilt if t > interval]  # first updates of agents built mid-run
    assert rebuilt
    if algorithm == "DQN":  # an empty buffer refills batch_size (16) steps before updating
        assert all(t > (t - 1) // interval * interval + 16 for t in rebuilt), rebuilt


def _verbose_ppo(h: dict[str, Any], seed: int) -> Any:
    model = ALGORITHMS["PPO"][0](h, seed)
    model.verbose = 1
    return model


def test_learning_leaves_no_log_folder_and_prints_what_sb3_prints(
    quick_run, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    """SB3 makes an empty SB3-<date> folder in the temporary directory at every learn() without
    a log folder of the user's: one per member trained. poptune's learn makes none, and the
    agent still prints its progress table as verbose=1 asks."""
    temporary = Path(tempfile.gettempdir())  # the test's own (_temporary_directory)
    monkeypatch.delenv("SB3_LOGDIR", raising=False)
    OPTIONS["build"] = _verbose_ppo
    result = run(quick_run, "PPO", population=2, intervals=2)
    assert result.status == "finished"
    assert list(temporary.glob("SB3-*")) == []
    assert "total_timesteps" in capsys.readouterr().out
    model = _verbose_ppo(dict(result.members[0].hparams), 0)
    model.learn(64)  # the user's own learn() afterwards configures as SB3 does
    assert len(list(temporary.glob("SB3-*"))) == 1


def test_the_documented_snippets_interval_falls_on_a_rollout_of_a_default_ppo():
    """docs/sb3.md, getting-started and the module's docstring train PPO("MlpPolicy",
    "CartPole-v1") with its defaults: 10,000 steps was refused there (a rollout is 2,048)."""
    root = Path(__file__).resolve().parents[2]
    model = PPO("MlpPolicy", "CartPole-v1", device="cpu")
    hparams = {"learning_rate": 1e-3, "ent_coef": 0.01}
    for path in ("docs/sb3.md", "docs/getting-started.md", "src/poptune/integrations/sb3.py"):
        found = re.findall(r"interval_timesteps=([\d_]+)", (root / path).read_text())
        assert found, path
        for value in found:
            pt_sb3.check(model, int(value.replace("_", "")), hparams)  # raises if refused
