"""The paper-table baselines: the CNN learns NumberLine, outputs follow the VLM trainer's schema,
bad configs fail before writing, and the reference policies match independent estimates."""

import itertools
import json
import os
import random
import subprocess
import sys

import jax
import numpy as np
import pytest

from rlvlm_jax.baselines import cnn_ppo, policies
from rlvlm_jax.config_files import load

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "experiments", "cnn_ppo.py")
EVAL_EPISODES = 200
REFERENCE_EPISODES = 2000  # JAX estimates of the reference policies: binomial sd <= 0.011


def small_config(task="NumberLine"):
    """Seconds-scale NumberLine run: 16 updates of 1024 steps at lr 2e-3 (over seeds 0..4 it went
    from 0.23-0.30 to 0.965-0.995; the thresholds below leave wide margins)."""
    c = load(f"{CONFIG}:{task}")
    c.image_size = 0  # the task's smallest legible size (55 px): a faster test
    c.ppo.total_env_steps = 16384
    c.ppo.lr = 2e-3
    c.eval.episodes = EVAL_EPISODES
    return c


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("cnn"))
    c = small_config()
    return c, workdir, cnn_ppo.train(c, workdir, log=False)


def _read(workdir, name):
    with open(os.path.join(workdir, name)) as f:
        return json.load(f)


def test_cnn_learns_numberline(cnn_run):
    _, _, results = cnn_run
    init, final = results["init_eval"]["success_rate"], results["ppo_eval"]["success_rate"]
    assert init <= 0.6, init  # a fresh, near-uniform policy cannot read the target
    assert final >= 0.8, (init, final)
    history = [h["success_rate"] for h in results["history"]]
    assert np.mean(history[-3:]) > np.mean(history[:3]) + 0.3, history


def test_cnn_outputs_schema(cnn_run):
    c, workdir, results = cnn_run
    assert _read(workdir, "results.json") == json.loads(json.dumps(results))
    config = _read(workdir, "config.json")
    assert (config["method"], config["task"], config["seed"]) == ("cnn_ppo", "NumberLine", 0)
    assert config["image_size"] == 55  # 0 -> the task's smallest legible size
    assert config["ppo"]["total_env_steps"] == c.ppo.total_env_steps
    assert results["sft_eval"] is None
    per_update = c.ppo.num_envs * c.ppo.num_steps
    for name in ("init_eval", "ppo_eval"):
        ev = results[name]
        assert ev["episodes"] == EVAL_EPISODES and ev["invalid_action_rate"] == 0.0
        assert ev["finished_share"] == 1.0  # every NumberLine first episode ends within 10
        assert 0.0 <= ev["success_rate"] <= 1.0 and np.isfinite(ev["episode_return"])
    history = results["history"]
    assert [h["iteration"] for h in history] == list(range(1, 17))
    assert [h["env_steps"] for h in history] == [per_update * i for i in range(1, 17)]
    for h in history:
        assert {"success_rate", "episode_return", "episode_length"} <= h.keys()
        assert 0.0 <= h["success_rate"] <= 1.0 and 1.0 <= h["episode_length"] <= 10.0
    model = cnn_ppo.ConvActorCritic(55, 2, c.model.channels, c.model.kernels, c.model.strides,
                                    c.model.hidden, rngs=cnn_ppo.nnx.Rngs(0))
    params = cnn_ppo.nnx.state(model, cnn_ppo.nnx.Param)
    assert results["num_params"] == sum(x.size for x in jax.tree.leaves(params))
    assert results["wall_seconds"] > 0


def test_workdir_of_another_config_is_refused(cnn_run):
    c, workdir, results = cnn_run
    other = small_config()
    other.seed = 1
    with pytest.raises(ValueError, match="different config.*seed"):
        cnn_ppo.train(other, workdir, log=False)
    assert _read(workdir, "config.json")["seed"] == 0
    # The same config finds its results and does not train again.
    assert cnn_ppo.train(c, workdir, log=False) == json.loads(json.dumps(results))


@pytest.mark.parametrize("field, value, message", [
    ("task", "Poker", "unknown task 'Poker'"),
    ("ppo.total_env_steps", 0, "ppo.total_env_steps must be >= 1"),
    ("image_size", 54, "image_size=54 is below NumberLine's smallest legible size 55"),
    ("ppo.minibatches", 3, "does not split into ppo.minibatches"),
])
def test_bad_config_fails_before_writing(tmp_path, field, value, message):
    c = small_config()
    *path, last = field.split(".")
    node = c
    for part in path:
        node = node[part]
    node[last] = value
    workdir = str(tmp_path / "run")
    with pytest.raises(ValueError, match=message) as err:
        cnn_ppo.train(c, workdir, log=False)
    assert "\n" not in str(err.value)
    assert not os.path.exists(workdir)


def test_bad_flag_is_one_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "rlvlm_jax.baselines.cnn_ppo", "--config", CONFIG,
         "--workdir", str(tmp_path / "run"), "--config.ppo.nope=1"],
        capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        "error: the config has no field ppo.nope (from --config.ppo.nope)"]
    assert not os.path.exists(tmp_path / "run")


def test_patches_are_valid_convolution_windows():
    x = np.random.default_rng(0).random((2, 11, 11, 3)).astype(np.float32)
    got = np.asarray(cnn_ppo.patches(x, 3, 2))
    assert got.shape == (2, 5, 5, 27)
    for i, j in itertools.product(range(5), range(5)):
        window = x[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3, :]  # [b, ki, kj, c] in slice order
        np.testing.assert_array_equal(got[:, i, j], window.reshape(2, 27))


# ------------------------------------------------------------------------------ reference policies
def numberline_random_success() -> float:
    """Exact: every (start, goal) of the reset law, every sequence of 10 fair coin actions."""
    total = 0.0
    for start, goal in itertools.product(range(6), range(6)):
        if goal == start:
            goal = (goal + 1) % 5  # the original's clash rule
        wins = 0
        for actions in itertools.product((-1, 1), repeat=10):
            pos, ret = start, 0.0
            for a in actions:
                new = min(max(pos + a, 0), 5)
                if new == goal:
                    ret += 1.0
                    break
                ret -= abs(new - goal) >= abs(pos - goal)
                pos = new
            wins += ret > 0
        total += wins / 2**10
    return total / 36


def blackjack_random_success(episodes=100_000, seed=0) -> float:
    """Monte Carlo of gymnasium's Blackjack (infinite deck, dealer stands on 17, no natural
    bonus) under fair coin hit/stand decisions."""
    rng = random.Random(seed)
    deck = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 10, 10, 10]

    def value(hand):
        s = sum(hand)
        return s + 10 if 1 in hand and s + 10 <= 21 else s

    wins = 0
    for _ in range(episodes):
        player, dealer = [rng.choice(deck), rng.choice(deck)], [rng.choice(deck),
                                                                rng.choice(deck)]
        while True:
            if rng.random() < 0.5:  # hit
                player.append(rng.choice(deck))
                if value(player) > 21:
                    break
            else:  # stand
                while value(dealer) < 17:
                    dealer.append(rng.choice(deck))
                d = value(dealer)
                wins += value(player) > (0 if d > 21 else d)
                break
    return wins / episodes


def _tolerance(p, n):
    return 4.5 * np.sqrt(p * (1 - p) / n) + 0.005  # the reference's own error: < 0.005


@pytest.mark.parametrize("task, reference", [
    ("NumberLine", numberline_random_success),
    ("Blackjack", blackjack_random_success),
])
def test_random_policy_matches_independent_estimate(task, reference):
    config = policies.policy_config("random", task, seed=0, episodes=REFERENCE_EPISODES)
    ev = policies.evaluate_policy(config)
    expected = reference()
    assert abs(ev["success_rate"] - expected) < _tolerance(expected, REFERENCE_EPISODES), (
        ev["success_rate"], expected)
    assert ev["finished_share"] == 1.0 and ev["episodes"] == REFERENCE_EPISODES


def test_oracle_solves_numberline_and_run_writes_outputs(tmp_path):
    workdir = str(tmp_path / "oracle")
    results = policies.run(policies.policy_config("oracle", "NumberLine", seed=3), workdir)
    assert results["ppo_eval"]["success_rate"] == 1.0
    assert results["ppo_eval"]["episodes"] == 500 and results["history"] == []
    config = _read(workdir, "config.json")
    assert (config["method"], config["task"], config["seed"], config["episodes"]) == (
        "oracle", "NumberLine", 3, 500)
    assert _read(workdir, "results.json")["ppo_eval"] == results["ppo_eval"]
    with pytest.raises(ValueError, match="different config"):
        policies.run(policies.policy_config("random", "NumberLine", seed=3), workdir)


def test_blackjack_oracle_is_basic_strategy():
    """Basic strategy (infinite deck, dealer stands on soft 17) wins 42.95% of hands."""
    config = policies.policy_config("oracle", "Blackjack", seed=0, episodes=REFERENCE_EPISODES)
    success = policies.evaluate_policy(config)["success_rate"]
    assert abs(success - 0.4295) < _tolerance(0.4295, REFERENCE_EPISODES), success
