"""GAE against NumPy loops: episode boundaries mid-rollout, truncation vs termination."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlvlm_jax.rl.gae import gae


def gae_loop(r, v, term, trunc, last_v, final_v, gamma, lam, trunc_as_term=False):
    """The textbook backward recursion, one environment at a time."""
    t_len, b_len = r.shape
    adv = np.zeros((t_len, b_len))
    for b in range(b_len):
        next_adv = 0.0
        for t in reversed(range(t_len)):
            ended = bool(term[t, b]) or (trunc_as_term and bool(trunc[t, b]))
            cut = bool(trunc[t, b]) and not ended
            if ended:
                nv = 0.0
            elif cut:
                nv = final_v[t, b]
            elif t == t_len - 1:
                nv = last_v[b]
            else:
                nv = v[t + 1, b]
            if ended or cut:
                next_adv = 0.0
            adv[t, b] = r[t, b] + gamma * nv - v[t, b] + gamma * lam * next_adv
            next_adv = adv[t, b]
    return adv, adv + v


def gae_sums(r, v, term, trunc, last_v, final_v, gamma, lam):
    """The definition: A_t = sum_k (gamma lam)^k delta_{t+k} up to the end of t's episode."""
    t_len, b_len = r.shape
    delta = np.zeros((t_len, b_len))
    for t in range(t_len):
        for b in range(b_len):
            if term[t, b]:
                nv = 0.0
            elif trunc[t, b]:
                nv = final_v[t, b]
            else:
                nv = last_v[b] if t == t_len - 1 else v[t + 1, b]
            delta[t, b] = r[t, b] + gamma * nv - v[t, b]
    adv = np.zeros((t_len, b_len))
    for b in range(b_len):
        for t in range(t_len):
            k = t
            while True:
                adv[t, b] += (gamma * lam) ** (k - t) * delta[k, b]
                if term[k, b] or trunc[k, b] or k == t_len - 1:
                    break
                k += 1
    return adv


def random_rollout(seed, t_len=12, b_len=5, p_term=0.15, p_trunc=0.15):
    rng = np.random.default_rng(seed)
    r = rng.normal(size=(t_len, b_len))
    v = rng.normal(size=(t_len, b_len))
    term = rng.random((t_len, b_len)) < p_term
    trunc = rng.random((t_len, b_len)) < p_trunc
    trunc[3, 0], term[3, 0] = True, False  # at least one of each mid-rollout
    term[5, 1], trunc[5, 1] = True, False
    term[7, 2] = trunc[7, 2] = True  # both: termination wins
    last_v = rng.normal(size=b_len)
    final_v = rng.normal(size=(t_len, b_len))
    return r, v, term, trunc, last_v, final_v


def run(*args, **kw):
    out = gae(*(jnp.asarray(a) for a in args), **kw)
    return np.asarray(out.advantages), np.asarray(out.returns)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("gamma,lam", [(0.9, 0.95), (0.99, 0.0), (0.5, 1.0)])
def test_matches_numpy_loops(seed, gamma, lam):
    r, v, term, trunc, last_v, final_v = random_rollout(seed)
    adv, ret = run(r, v, term, trunc, last_v, final_v, gamma=gamma, gae_lambda=lam)
    ref_adv, ref_ret = gae_loop(r, v, term, trunc, last_v, final_v, gamma, lam)
    np.testing.assert_allclose(adv, ref_adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ret, ref_ret, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        adv, gae_sums(r, v, term, trunc, last_v, final_v, gamma, lam), rtol=1e-5, atol=1e-5
    )


def test_hand_computed():
    # t=0 terminated, t=2 truncated with final value 1.0; last_value 7 must go unused.
    adv, ret = run(
        np.array([[1.0], [0.0], [2.0]]),
        np.array([[0.5], [0.2], [0.3]]),
        np.array([[1], [0], [0]]),
        np.array([[0], [0], [1]]),
        np.array([7.0]),
        np.array([[9.0], [9.0], [1.0]]),
        gamma=0.9,
        gae_lambda=0.95,
    )
    a2 = 2.0 + 0.9 * 1.0 - 0.3
    a1 = 0.0 + 0.9 * 0.3 - 0.2 + 0.9 * 0.95 * a2
    np.testing.assert_allclose(adv[:, 0], [0.5, a1, a2], rtol=1e-6)
    np.testing.assert_allclose(ret[:, 0], [1.0, a1 + 0.2, a2 + 0.3], rtol=1e-6)


def test_truncation_as_termination():
    r, v, term, trunc, last_v, final_v = random_rollout(3)
    adv, _ = run(
        r, v, term, trunc, last_v, gamma=0.9, gae_lambda=0.95, truncation_as_termination=True
    )
    ref, _ = gae_loop(r, v, term, trunc, last_v, final_v, 0.9, 0.95, trunc_as_term=True)
    np.testing.assert_allclose(adv, ref, rtol=1e-5, atol=1e-5)
    same, _ = run(
        r, v, term | trunc, np.zeros_like(trunc), last_v, final_v, gamma=0.9, gae_lambda=0.95
    )
    np.testing.assert_allclose(adv, same, rtol=1e-6, atol=1e-6)
    # final_values are ignored then, and do matter otherwise.
    adv2, _ = run(
        r,
        v,
        term,
        trunc,
        last_v,
        final_v + 5.0,
        gamma=0.9,
        gae_lambda=0.95,
        truncation_as_termination=True,
    )
    np.testing.assert_allclose(adv, adv2)
    cut, _ = run(r, v, term, trunc, last_v, final_v, gamma=0.9, gae_lambda=0.95)
    assert not np.allclose(adv, cut)


def test_truncation_bootstraps_termination_does_not():
    r, v = np.zeros((2, 1)), np.zeros((2, 1))
    kw = dict(gamma=0.9, gae_lambda=0.95)
    final_v, last_v = np.array([[10.0], [0.0]]), np.zeros(1)
    cut, _ = run(r, v, np.zeros((2, 1)), np.array([[1], [0]]), last_v, final_v, **kw)
    ended, _ = run(r, v, np.array([[1], [0]]), np.zeros((2, 1)), last_v, final_v, **kw)
    assert cut[0, 0] == pytest.approx(9.0) and ended[0, 0] == 0.0


def test_next_episode_never_leaks():
    r, v, term, trunc, last_v, final_v = random_rollout(4)
    kw = dict(gamma=0.9, gae_lambda=0.95)
    adv, _ = run(r, v, term, trunc, last_v, final_v, **kw)
    for b, t in [(0, 3), (1, 5), (2, 7)]:  # the planted boundaries
        r2, v2, last2 = r.copy(), v.copy(), last_v.copy()
        r2[t + 1 :, b] += 100.0
        v2[t + 1 :, b] -= 100.0
        last2[b] += 100.0
        adv2, _ = run(r2, v2, term, trunc, last2, final_v, **kw)
        np.testing.assert_allclose(adv2[: t + 1, b], adv[: t + 1, b], rtol=1e-6, atol=1e-6)


def test_monte_carlo_and_td0_limits():
    gamma = 0.9
    r = np.array([[1.0], [2.0], [3.0]])
    v = np.array([[0.1], [0.2], [0.3]])
    term, trunc = np.array([[0], [0], [1]]), np.zeros((3, 1))
    adv, ret = run(r, v, term, trunc, np.zeros(1), np.zeros((3, 1)), gamma=gamma, gae_lambda=1.0)
    mc = [1 + gamma * 2 + gamma**2 * 3, 2 + gamma * 3, 3]
    np.testing.assert_allclose(ret[:, 0], mc, rtol=1e-6)
    adv0, _ = run(r, v, term, trunc, np.zeros(1), np.zeros((3, 1)), gamma=gamma, gae_lambda=0.0)
    np.testing.assert_allclose(
        adv0[:, 0], [1 + gamma * 0.2 - 0.1, 2 + gamma * 0.3 - 0.2, 2.7], rtol=1e-6
    )


def test_jit_with_traced_gamma_and_errors():
    r, v, term, trunc, last_v, final_v = random_rollout(5)
    f = jax.jit(lambda g, lam, *a: gae(*a, gamma=g, gae_lambda=lam))
    out = f(0.9, 0.95, r, v, term, trunc, last_v, final_v)
    ref, _ = gae_loop(r, v, term, trunc, last_v, final_v, 0.9, 0.95)
    np.testing.assert_allclose(out.advantages, ref, rtol=1e-5, atol=1e-5)
    assert out.advantages.dtype == jnp.float32
    with pytest.raises(ValueError, match="final_values"):
        gae(r, v, term, trunc, last_v)
    with pytest.raises(ValueError, match="last_value"):
        gae(r, v, term, trunc, last_v[:2], final_v)
