"""Single-turn advantage estimators (GRPO, RLOO, Reinforce++) against NumPy loops."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rlvlm_jax.rl import advantages as A


def batch(prompts, group_size, length=7, seed=0, prefix=True):
    """Rewards [B], ragged token masks [B, L] (one empty, one full row), KL with NaN padding."""
    rng = np.random.default_rng(seed)
    b = prompts * group_size
    rewards = rng.normal(size=b).astype(np.float32) + np.repeat(rng.normal(size=prompts) * 3,
                                                                group_size).astype(np.float32)
    lengths = rng.integers(1, length + 1, size=b)
    lengths[0] = length
    if b > 2:
        lengths[2] = 0
    if prefix:
        mask = np.arange(length)[None, :] < lengths[:, None]
    else:
        mask = rng.random((b, length)) < 0.6
    kl = rng.exponential(size=(b, length)).astype(np.float32)
    kl[~mask] = np.nan
    return rewards, mask, kl


def ref_grpo(rewards, mask, g, eps=1e-6, ddof=1):
    out = np.zeros(mask.shape)
    for start in range(0, len(rewards), g):
        r = rewards[start:start + g].astype(np.float64)
        for i in range(g):
            out[start + i, mask[start + i]] = (r[i] - r.mean()) / (r.std(ddof=ddof) + eps)
    return out


def ref_rloo(rewards, mask, g):
    out = np.zeros(mask.shape)
    for start in range(0, len(rewards), g):
        r = rewards[start:start + g].astype(np.float64)
        for i in range(g):
            others = [r[j] for j in range(g) if j != i]
            out[start + i, mask[start + i]] = r[i] - sum(others) / len(others)
    return out


def ref_returns(rewards, mask, kl=None, kl_coef=0.0):
    """Reinforce++ returns before whitening: a plain loop over each row's valid tokens."""
    ret = np.zeros(mask.shape)
    for i in range(len(rewards)):
        idx = np.flatnonzero(mask[i])
        if idx.size == 0:
            continue
        token_r = {t: (-kl_coef * float(kl[i, t]) if kl is not None else 0.0) for t in idx}
        token_r[idx[-1]] += float(rewards[i])
        running = 0.0
        for t in idx[::-1]:
            running += token_r[t]
            ret[i, t] = running
    return ret


def ref_reinforce_pp(rewards, mask, kl=None, kl_coef=0.0, eps=1e-6, shift_mean=False):
    ret = ref_returns(rewards, mask, kl, kl_coef)
    vals = ret[mask]
    out = np.zeros(mask.shape)
    out[mask] = (vals - vals.mean()) / (vals.std() + eps) + (vals.mean() if shift_mean else 0.0)
    return out


CASES = [(3, 2), (2, 4), (4, 3), (1, 5)]


@pytest.mark.parametrize("prompts,g", CASES)
def test_grpo_matches_numpy(prompts, g):
    rewards, mask, _ = batch(prompts, g, seed=g)
    got = np.asarray(A.grpo(rewards, mask, g))
    np.testing.assert_allclose(got, ref_grpo(rewards, mask, g), rtol=1e-5, atol=1e-5)
    got0 = np.asarray(A.grpo(rewards, mask, g, ddof=0))
    np.testing.assert_allclose(got0, ref_grpo(rewards, mask, g, ddof=0), rtol=1e-5, atol=1e-5)
    assert np.all(got[~mask] == 0)


def test_grpo_uses_the_sample_std_and_zero_for_equal_rewards():
    mask = np.ones((4, 2), bool)
    # One group [1, 0]: mean 0.5, sample std sqrt(0.5); one group of equal rewards.
    got = np.asarray(A.grpo(np.array([1.0, 0.0, 2.0, 2.0]), mask, 2))
    np.testing.assert_allclose(got[:2, 0], [0.5 / np.sqrt(0.5), -0.5 / np.sqrt(0.5)], rtol=1e-5)
    np.testing.assert_array_equal(got[2:], 0.0)


@pytest.mark.parametrize("prompts,g", CASES)
def test_rloo_matches_numpy(prompts, g):
    rewards, mask, _ = batch(prompts, g, seed=10 + g)
    got = np.asarray(A.rloo(rewards, mask, g))
    np.testing.assert_allclose(got, ref_rloo(rewards, mask, g), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["grpo", "rloo"])
def test_group_estimators_fold_the_summed_kl_into_the_reward(name):
    rewards, mask, kl = batch(3, 4, seed=3)
    coef = 0.3
    penalised = rewards - coef * np.where(mask, kl, 0.0).sum(1)
    fn = A.get_estimator(name)
    got = np.asarray(fn(rewards, mask, 4, kl=kl, kl_coef=coef))
    ref = ref_grpo(penalised, mask, 4) if name == "grpo" else ref_rloo(penalised, mask, 4)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("prompts,g", CASES + [(6, 1)])
@pytest.mark.parametrize("prefix", [True, False])
def test_reinforce_pp_matches_numpy(prompts, g, prefix):
    rewards, mask, kl = batch(prompts, g, seed=20 + g, prefix=prefix)
    for kwargs in ({}, {"kl": kl, "kl_coef": 0.2}, {"kl": kl, "kl_coef": 0.2, "shift_mean": True}):
        got = np.asarray(A.reinforce_pp(rewards, mask, g, **kwargs))
        ref = ref_reinforce_pp(rewards, mask, **kwargs)
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
        assert np.all(np.isfinite(got)) and np.all(got[~mask] == 0)


def test_reinforce_pp_whitening_is_global_not_per_group():
    rewards, mask, kl = batch(4, 3, seed=5)
    got = np.asarray(A.reinforce_pp(rewards, mask, 3, kl=kl, kl_coef=0.1))
    vals = got[mask]
    np.testing.assert_allclose(vals.mean(), 0.0, atol=1e-5)
    np.testing.assert_allclose(vals.std(), 1.0, rtol=1e-4)
    # Prompts differ in reward level, so groups are not centred on their own.
    group_means = [got[i:i + 3][mask[i:i + 3]].mean() for i in range(0, 12, 3)]
    assert max(abs(m) for m in group_means) > 0.1
    # And the grouping does not matter.
    np.testing.assert_allclose(A.reinforce_pp(rewards, mask, 1, kl=kl, kl_coef=0.1), got,
                               rtol=1e-6, atol=1e-6)


def test_reinforce_pp_shift_mean_adds_the_return_mean_back():
    rewards, mask, kl = batch(3, 2, seed=6)
    rewards = rewards + 5.0
    plain = np.asarray(A.reinforce_pp(rewards, mask, 2, kl=kl, kl_coef=0.1))
    shifted = np.asarray(A.reinforce_pp(rewards, mask, 2, kl=kl, kl_coef=0.1, shift_mean=True))
    mean = ref_returns(rewards, mask, kl, 0.1)[mask].mean()
    assert mean > 1.0
    np.testing.assert_allclose(shifted[mask], plain[mask] + mean, rtol=1e-5)
    np.testing.assert_allclose(shifted[mask].mean(), mean, rtol=1e-4)
    assert np.all(shifted[~mask] == 0)


def test_reinforce_pp_reward_sits_on_the_last_valid_token():
    # Without KL every token of a response sees its scalar reward (gamma 1, reward at EOS).
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 0, 1, 1, 0]], bool)
    rewards = np.array([1.0, -1.0, 3.0])
    got = np.asarray(A.reinforce_pp(rewards, mask, 1, shift_mean=True))
    per_token = np.where(mask, rewards[:, None], 0.0)[mask]
    white = (per_token - per_token.mean()) / per_token.std() + per_token.mean()
    np.testing.assert_allclose(got[mask], white, rtol=1e-5)


def test_reinforce_pp_kl_term_by_hand():
    # One response of three tokens: token rewards [-b a0, -b a1, -b a2 + r]; returns to go.
    kl = np.array([[0.5, 1.0, 2.0, np.inf]])
    mask = np.array([[1, 1, 1, 0]], bool)
    b, r = 0.1, 1.0
    returns = np.array([r - b * 3.5, r - b * 3.0, r - b * 2.0])
    got = np.asarray(A.reinforce_pp(np.array([r]), mask, 1, kl=kl, kl_coef=b, shift_mean=True))
    np.testing.assert_allclose(
        got[0, :3], (returns - returns.mean()) / returns.std() + returns.mean(), rtol=1e-4)
    assert got[0, 3] == 0.0


@pytest.mark.parametrize("name", sorted(A.ADVANTAGE_ESTIMATORS))
def test_jit_with_static_group_size_and_traced_coef(name):
    rewards, mask, kl = batch(3, 4, seed=7)
    fn = A.get_estimator(name)
    jitted = jax.jit(fn, static_argnames="group_size")
    got = jitted(rewards, mask, group_size=4, kl=kl, kl_coef=jnp.float32(0.2))
    np.testing.assert_allclose(got, fn(rewards, mask, 4, kl=kl, kl_coef=0.2), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", sorted(A.ADVANTAGE_ESTIMATORS))
def test_sharded_batch_gives_the_global_result(name):
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 (simulated) devices")
    devices = np.array(jax.devices()[:8])
    rewards, mask, kl = batch(6, 4, seed=8)  # 3 rows per shard: groups of 4 straddle shards
    mesh = Mesh(devices, ("data",))
    rows, grid = NamedSharding(mesh, PartitionSpec("data")), NamedSharding(mesh, PartitionSpec(
        "data", None))
    args = (jax.device_put(rewards, rows), jax.device_put(mask, grid), jax.device_put(kl, grid))
    fn = jax.jit(functools.partial(A.get_estimator(name), group_size=4, kl_coef=0.1))
    got = fn(args[0], args[1], kl=args[2])
    np.testing.assert_allclose(got, fn(rewards, mask, kl=kl), rtol=1e-5, atol=1e-5)


def test_check_groups():
    A.check_groups(12, 4)
    A.check_groups(5, 1)
    match = r"10 .*group_size=4.*rl\.prompts_per_batch.*rl\.group_size"
    with pytest.raises(ValueError, match=match):
        A.check_groups(10, 4)
    for bad in (0, -2, 1.5):
        with pytest.raises(ValueError, match="rl.group_size"):
            A.check_groups(8, bad)


def test_estimator_input_errors():
    rewards, mask, kl = batch(2, 3)
    with pytest.raises(ValueError, match="rl.prompts_per_batch"):
        A.grpo(rewards, mask, 4)
    for fn in (A.grpo, A.rloo):
        with pytest.raises(ValueError, match="group_size >= 2"):
            fn(rewards, mask, 1)
    with pytest.raises(ValueError, match="kl_coef"):
        A.reinforce_pp(rewards, mask, 3, kl_coef=0.1)
    with pytest.raises(ValueError, match="kl shape"):
        A.reinforce_pp(rewards, mask, 3, kl=kl[:, :-1], kl_coef=0.1)
    with pytest.raises(ValueError, match="token_mask"):
        A.rloo(rewards[:-3], mask, 3)


def test_get_estimator():
    assert A.get_estimator("reinforce_pp") is A.reinforce_pp
    with pytest.raises(KeyError, match=r"'ppo'.*\['grpo', 'reinforce_pp', 'rloo'\]"):
        A.get_estimator("ppo")
