"""PPO losses, estimators and minibatching against NumPy loops; clipping checked with jax.grad."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlvlm_jax.models import scoring
from rlvlm_jax.rl import losses as L
from rlvlm_jax.rl import minibatch as M

RNG = np.random.default_rng(0)


def padded_tokens(n=6, length=9, seed=0):
    """Random token log-probs with CoT, action and padding spans; padding holds -inf."""
    rng = np.random.default_rng(seed)
    lp = -rng.exponential(size=(n, length))
    cot = np.zeros((n, length), bool)
    act = np.zeros((n, length), bool)
    for i in range(n):
        n_cot = rng.integers(0, length - 3)
        n_act = rng.integers(1, 3)
        cot[i, :n_cot] = True
        act[i, n_cot : n_cot + n_act] = True
        lp[i, n_cot + n_act :] = -np.inf
    return lp, cot, act


# --------------------------------------------------------------------------------------------
# action log-prob


def test_action_log_prob_known_sequence():
    lp = jnp.array([-1.0, -2.0, -3.0, -4.0, -5.0, 0.0])
    cot = jnp.array([1, 1, 1, 0, 0, 0])
    act = jnp.array([0, 0, 0, 1, 1, 0])
    for lam in (0.0, 0.2, 0.5, 1.0):
        assert float(L.action_log_prob(lp, cot, act, lam)) == pytest.approx(lam * -6.0 - 9.0)
    for lam in (0.0, 0.5):  # action_only: the CoT mask and lambda play no part
        assert float(L.action_log_prob(lp, cot, act, lam, action_only=True)) == -9.0
        assert float(L.action_log_prob(lp, act, act, lam, action_only=True)) == -9.0
    # Linear in lambda: d/dlam is the CoT sum.
    assert float(jax.grad(lambda lam: L.action_log_prob(lp, cot, act, lam))(0.5)) == -6.0


def test_action_log_prob_matches_loop_with_padding():
    lp, cot, act = padded_tokens()
    got = np.asarray(L.action_log_prob(lp, cot, act, 0.5))
    ref = np.zeros(len(lp))
    for i in range(len(lp)):
        for j in range(lp.shape[1]):
            if cot[i, j]:
                ref[i] += 0.5 * lp[i, j]
            elif act[i, j]:
                ref[i] += lp[i, j]
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    np.testing.assert_allclose(
        L.action_log_prob(lp, cot, act, 0.0), L.action_log_prob(lp, cot, act, 0.5, True),
        rtol=1e-6,
    )
    # Gradient w.r.t. token log-probs: lam on CoT, 1 on action, 0 (not NaN) on padding.
    g = jax.jit(jax.grad(lambda x: L.action_log_prob(x, cot, act, 0.5).sum()))(lp)
    np.testing.assert_array_equal(g, np.where(cot, 0.5, np.where(act, 1.0, 0.0)))


# --------------------------------------------------------------------------------------------
# advantages


@pytest.mark.parametrize("ddof", [0, 1])
def test_normalize_advantages_masked(ddof):
    a = RNG.normal(3.0, 2.0, size=40)
    mask = RNG.random(40) < 0.7
    a_pad = np.where(mask, a, np.nan)
    got = np.asarray(L.normalize_advantages(a_pad, mask, eps=1e-5, ddof=ddof))
    valid = a[mask]
    ref = (valid - valid.mean()) / (valid.std(ddof=ddof) + 1e-5)
    np.testing.assert_allclose(got[mask], ref, rtol=1e-5, atol=1e-6)
    assert np.all(got[~mask] == 0.0)
    full = np.asarray(L.normalize_advantages(a))
    np.testing.assert_allclose(full, (a - a.mean()) / (a.std() + 1e-8), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# policy and value losses


def ppo_loop(new, old, adv, mask, eps):
    tot, n, clipped = 0.0, 0, 0
    for x, y, a, m in zip(new, old, adv, mask, strict=True):
        if not m:
            continue
        r = math.exp(x - y)
        rc = min(max(r, 1 - eps), 1 + eps)
        tot += -min(r * a, rc * a)
        clipped += abs(r - 1) > eps
        n += 1
    return tot / n, clipped / n


def value_loop(v, v_old, ret, mask, eps):
    tot, n = 0.0, 0
    for x, o, r, m in zip(v, v_old, ret, mask, strict=True):
        if m:
            xc = o + min(max(x - o, -eps), eps)
            tot += 0.5 * max((x - r) ** 2, (xc - r) ** 2)
            n += 1
    return tot / n


def test_policy_and_value_losses_match_loops():
    n, eps = 64, 0.1
    old = -RNG.exponential(3.0, size=n)
    new = old + RNG.normal(0, 0.15, size=n)
    adv = RNG.normal(size=n)
    mask = RNG.random(n) < 0.8
    new_pad = np.where(mask, new, np.inf)  # padding must not leak, even as inf or NaN
    old_pad, adv_pad = np.where(mask, old, -np.inf), np.where(mask, adv, np.nan)
    v_old = RNG.normal(size=n)
    v = v_old + RNG.normal(0, 0.2, size=n)
    ret = RNG.normal(size=n)
    loss, m = jax.jit(
        lambda *a: L.ppo_loss(
            *a[:3],
            values=a[3],
            old_values=a[4],
            returns=a[5],
            mask=a[6],
            clip_eps=eps,
            value_clip_eps=eps,
            vf_coef=0.5,
        )
    )(new_pad, old, adv, v, v_old, ret, mask)
    pg, cf = ppo_loop(new, old, adv, mask, eps)
    vl = value_loop(v, v_old, ret, mask, eps)
    assert 0 < cf < 1
    np.testing.assert_allclose(m["policy_loss"], pg, rtol=1e-5)
    np.testing.assert_allclose(m["clip_frac"], cf, rtol=1e-6)
    np.testing.assert_allclose(m["value_loss"], vl, rtol=1e-5)
    np.testing.assert_allclose(loss, pg + 0.5 * vl, rtol=1e-5)
    lr = (new - old)[mask]
    np.testing.assert_allclose(m["approx_kl"], np.mean(np.expm1(lr) - lr), rtol=1e-4)
    np.testing.assert_allclose(m["approx_kl_k1"], np.mean(-lr), rtol=1e-4)
    np.testing.assert_allclose(m["ratio_mean"], np.mean(np.exp(lr)), rtol=1e-5)
    np.testing.assert_allclose(m["ratio_max"], np.exp(lr).max(), rtol=1e-5)
    v_cf = np.mean(np.abs(v - v_old)[mask] > eps)
    np.testing.assert_allclose(m["value_clip_frac"], v_cf, rtol=1e-6)
    ret_pad = np.where(mask, ret, np.nan)

    def padded_loss(x, v):
        kw = dict(values=v, old_values=v_old, returns=ret_pad, mask=mask)
        return L.ppo_loss(x, old_pad, adv_pad, **kw)[0]

    loss_pad, g = jax.jit(jax.value_and_grad(padded_loss, argnums=(0, 1)))(new_pad, v)
    np.testing.assert_allclose(loss_pad, loss, rtol=1e-6)
    for gi in g:
        assert np.all(np.isfinite(gi)) and np.all(np.asarray(gi)[~mask] == 0)


@jax.jit
def policy_grad(log_ratio, adv):
    f = lambda x: L.ppo_loss(x[None], jnp.zeros(1), adv[None], clip_eps=0.1)[0]
    return jax.grad(f)(log_ratio)


@pytest.mark.parametrize(
    "ratio,adv,zero",
    [
        (1.15, 1.0, True),  # above 1 + eps, A > 0: no push further up
        (1.05, 1.0, False),  # inside: gradient -A r
        (0.85, -1.0, True),  # below 1 - eps, A < 0: no push further down
        (0.95, -1.0, False),
        (0.85, 1.0, False),  # outside but the objective improves by moving back: unclipped
        (1.15, -1.0, False),
        (1.0 + 0.1 + 1e-4, 1.0, True),  # just past the boundary
        (1.0 + 0.1 - 1e-4, 1.0, False),  # just inside it
    ],
)
def test_clipping_gradients(ratio, adv, zero):
    g = float(policy_grad(jnp.float32(math.log(ratio)), jnp.float32(adv)))
    if zero:
        assert g == 0.0
    else:
        assert g == pytest.approx(-adv * ratio, rel=1e-5)


def test_value_clipping_gradients():
    f = lambda v, ret: L.clipped_value_loss(v, 0.0, ret, 0.1)
    # v = 0.5 clipped to 0.1. R = -1: unclipped error larger, gradient (v - R).
    assert float(jax.grad(f)(0.5, -1.0)) == pytest.approx(1.5)
    # R = 1: clipped error larger and constant in v: no gradient.
    assert float(jax.grad(f)(0.5, 1.0)) == 0.0
    assert float(L.mse_value_loss(0.5, 0.0, 1.0, 0.1)) == pytest.approx(0.125)


def test_pg_loss_and_registries():
    assert set(L.POLICY_LOSSES) >= {"ppo_clip", "pg"}
    assert set(L.VALUE_LOSSES) >= {"clipped", "mse"}
    assert set(L.KL_ESTIMATORS) >= {"k1", "k2", "k3"}
    new, old, adv = jnp.array([0.5]), jnp.array([0.0]), jnp.array([2.0])
    loss, _ = L.ppo_loss(new, old, adv, policy_loss="pg")
    assert float(loss) == pytest.approx(-2.0 * math.exp(0.5), rel=1e-6)
    with pytest.raises(KeyError, match="known"):
        L.ppo_loss(new, old, adv, policy_loss="nope")
    with pytest.raises(ValueError, match="coefficient"):
        L.ppo_loss(new, old, adv, kl_coef=0.1)
    with pytest.raises(ValueError, match="coefficient"):
        L.ppo_loss(new, old, adv, ent_coef=0.01)
    with pytest.raises(ValueError, match="coefficient"):  # entropies without a token mask
        L.ppo_loss(new, old, adv, ent_coef=0.01, entropy=jnp.ones((1, 3)))


# --------------------------------------------------------------------------------------------
# token-level terms


def test_token_entropy_and_its_reductions_match_loops():
    """The scorer's per-token entropy formula, and ppo_loss's reductions of it over tokens."""
    n, length, vocab = 4, 7, 11
    logits = RNG.normal(0, 2, size=(n, length, vocab))
    mask = RNG.random((n, length)) < 0.6
    mask[0] = False  # a sequence with no valid token
    ref = np.zeros((n, length))
    for i in range(n):
        for j in range(length):
            p = np.exp(logits[i, j] - logits[i, j].max())
            p /= p.sum()
            ref[i, j] = -np.sum(p * np.log(p))
    per_token = jax.jit(lambda x: scoring.entropy_of(jax.nn.log_softmax(x, axis=-1)))(logits)
    np.testing.assert_allclose(per_token, ref, rtol=1e-5)
    uniform = scoring.entropy_of(jax.nn.log_softmax(jnp.zeros((2, vocab)), axis=-1))
    np.testing.assert_allclose(uniform, [math.log(vocab)] * 2, rtol=1e-6)

    rows = [[ref[i, j] for j in range(length) if mask[i, j]] for i in range(n)]
    want = {
        "token_mean": np.mean([e for r in rows for e in r]),
        "seq_mean_token_mean": np.mean([np.mean(r) for r in rows if r]),
        "seq_mean_token_sum": np.mean([np.sum(r) for r in rows if r]),
    }
    assert set(want) == set(L.TOKEN_REDUCTIONS)
    ent_pad = np.where(mask, ref, np.nan)  # padding entries never reach the result or gradient
    zeros = np.zeros(n)

    def entropy_metric(e, reduction):
        return L.ppo_loss(zeros, zeros, zeros, ent_coef=0.01, entropy=e, token_mask=mask,
                          token_reduction=reduction)[1]["entropy"]

    f = jax.jit(entropy_metric, static_argnums=1)
    for name, value in want.items():
        np.testing.assert_allclose(f(ent_pad, name), value, rtol=1e-5, err_msg=name)
    g = jax.jit(jax.grad(lambda e: L.ppo_loss(zeros, zeros, zeros, ent_coef=0.01, entropy=e,
                                              token_mask=mask)[0]))(ent_pad)
    assert np.all(np.isfinite(g)) and np.all(np.asarray(g)[~mask] == 0)
    np.testing.assert_allclose(np.asarray(g)[mask], -0.01 / mask.sum(), rtol=1e-6)
    with pytest.raises(KeyError, match="known"):
        entropy_metric(ent_pad, "nope")


def test_kl_estimators_match_loop():
    lp, _, act = padded_tokens(seed=1)
    mask = np.isfinite(lp)
    ref = np.where(mask, lp + RNG.normal(0, 0.3, size=lp.shape), -np.inf)
    refs = {
        "k1": lambda a, b: a - b,
        "k2": lambda a, b: 0.5 * (a - b) ** 2,
        "k3": lambda a, b: math.exp(b - a) - (b - a) - 1,
    }
    kl = jax.jit(L.kl_to_reference, static_argnums=(3, 4))
    for name, f in refs.items():
        vals = [
            f(lp[i, j], ref[i, j]) for i in range(len(lp)) for j in range(lp.shape[1]) if mask[i, j]
        ]
        got = kl(lp, ref, mask, name, "token_mean")
        np.testing.assert_allclose(got, np.mean(vals), rtol=1e-5, atol=1e-7)
    sums = [
        sum(refs["k3"](lp[i, j], ref[i, j]) for j in range(lp.shape[1]) if mask[i, j])
        for i in range(len(lp))
    ]
    np.testing.assert_allclose(
        kl(lp, ref, mask, "k3", "seq_mean_token_sum"), np.mean(sums), rtol=1e-5
    )
    # k3 is non-negative and zero at equality; its gradient through padding is finite.
    assert np.all(np.asarray(L.kl_k3(jnp.asarray(lp[mask]), jnp.asarray(ref[mask]))) >= 0)
    assert float(kl(lp, lp, mask, "k3", "token_mean")) == 0.0
    g = jax.jit(jax.grad(lambda x: L.kl_to_reference(x, ref, mask)))(lp)
    assert np.all(np.isfinite(g)) and np.all(np.asarray(g)[~mask] == 0)


def test_total_loss_all_terms_jitted():
    n, length = 8, 6
    old = -RNG.exponential(2.0, size=n)
    new = old + RNG.normal(0, 0.1, size=n)
    adv = RNG.normal(size=n)
    v_old, ret = RNG.normal(size=n), RNG.normal(size=n)
    v = v_old + RNG.normal(0, 0.1, size=n)
    mask = np.ones(n, bool)
    mask[-2:] = False
    tok_lp = -RNG.exponential(size=(n, length))
    ref_lp = tok_lp + RNG.normal(0, 0.2, size=(n, length))
    tmask = RNG.random((n, length)) < 0.7
    both = tmask & mask[:, None]  # padding samples drop out of the token terms too
    ent_tok = np.where(both, RNG.exponential(size=(n, length)), np.nan)  # NaN must not leak
    coefs = dict(vf_coef=0.5, ent_coef=0.01, kl_coef=0.05)

    @jax.jit
    def f(new, old, adv, v, v_old, ret, mask, tok_lp, ref_lp, tmask, ent_tok):
        return L.ppo_loss(
            new,
            old,
            adv,
            values=v,
            old_values=v_old,
            returns=ret,
            mask=mask,
            entropy=ent_tok,
            token_logp=tok_lp,
            ref_token_logp=ref_lp,
            token_mask=tmask,
            **coefs,
        )

    loss, m = f(new, old, adv, v, v_old, ret, mask, tok_lp, ref_lp, tmask, ent_tok)
    kl = np.mean((np.exp(ref_lp - tok_lp) - (ref_lp - tok_lp) - 1)[both])
    ent = np.mean(ent_tok[both])
    pg, _ = ppo_loop(new, old, adv, mask, 0.1)
    vl = value_loop(v, v_old, ret, mask, 0.1)
    np.testing.assert_allclose(m["kl_ref"], kl, rtol=1e-5)
    np.testing.assert_allclose(m["entropy"], ent, rtol=1e-5)
    np.testing.assert_allclose(loss, pg + 0.5 * vl + 0.05 * kl - 0.01 * ent, rtol=1e-5)
    assert set(m) == {
        "loss",
        "policy_loss",
        "value_loss",
        "value_mean",
        "value_clip_frac",
        "clip_frac",
        "approx_kl",
        "approx_kl_k1",
        "ratio_mean",
        "ratio_max",
        "ratio_min",
        "advantage_mean",
        "entropy",
        "kl_ref",
    }
    assert all(jnp.shape(x) == () for x in m.values())


def test_total_adds_its_terms_in_a_fixed_order():
    """((policy + vf * value) + kl * KL) - ent * entropy, in float32: checkpoints depend on the
    exact bits. At 2**24 (float32 spacing 2) adding 1 first rounds away, subtracting 1 first
    does not, so the two orders of the last terms give different totals."""
    big = np.float32(2.0**24)

    @jax.jit
    def f(adv, v, tok, ref, ent):
        zero = jnp.zeros(1)
        return L.ppo_loss(zero, zero, adv, values=v, old_values=v, returns=v, vf_coef=0.5,
                          kl_coef=1.0, ent_coef=1.0, entropy=ent, token_logp=tok,
                          ref_token_logp=ref, token_mask=jnp.ones((1, 1), bool),
                          kl_estimator="k1")

    loss, m = f(jnp.array([-big]), jnp.ones(1), jnp.zeros((1, 1)), -jnp.ones((1, 1)),
                jnp.ones((1, 1)))
    assert (float(m["policy_loss"]), float(m["kl_ref"]), float(m["entropy"])) == (big, 1.0, 1.0)
    assert float(loss) == float((big + np.float32(1.0)) - np.float32(1.0)) == big - 1


# --------------------------------------------------------------------------------------------
# minibatching and gradient accumulation


def test_shuffle_indices():
    idx = np.asarray(M.shuffle_indices(jax.random.key(0), 24, 3, 4))
    assert idx.shape == (3, 4, 6) and idx.dtype == np.int32
    for e in range(3):
        assert sorted(idx[e].ravel()) == list(range(24))
    assert not np.array_equal(idx[0], idx[1])
    np.testing.assert_array_equal(idx, M.shuffle_indices(jax.random.key(0), 24, 3, 4))
    with pytest.raises(ValueError, match="does not split"):
        M.shuffle_indices(jax.random.key(0), 25, 3, 4)
    buf = {"x": jnp.arange(24) * 10, "y": jnp.arange(48).reshape(24, 2)}
    mb = M.gather(buf, idx[1, 2])
    np.testing.assert_array_equal(mb["x"], idx[1, 2] * 10)
    np.testing.assert_array_equal(mb["y"][:, 1], idx[1, 2] * 2 + 1)


def _linear_problem(n=32, d=5):
    rng = np.random.default_rng(7)
    params = {"w": jnp.asarray(rng.normal(size=(d,)), jnp.float32), "b": jnp.float32(0.3)}
    batch = {
        "x": jnp.asarray(rng.normal(size=(n, d)), jnp.float32),
        "y": jnp.asarray(rng.normal(size=(n,)), jnp.float32),
        "m": jnp.asarray(rng.random(n) < 0.7),
    }
    return params, batch


def _mean_loss(params, b):
    err = b["x"] @ params["w"] + params["b"] - b["y"]
    return jnp.mean(err**2), {"n": jnp.float32(b["x"].shape[0])}


@pytest.mark.parametrize("num_micro", [1, 4, 8])
def test_accumulation_equals_big_batch(num_micro):
    params, batch = _linear_problem()
    big = jax.jit(jax.grad(_mean_loss, has_aux=True))(params, batch)[0]
    grads, losses, aux = jax.jit(M.accumulate_gradients, static_argnums=(0, 3))(
        _mean_loss, params, batch, num_micro
    )
    assert losses.shape == (num_micro,) and aux["n"].shape == (num_micro,)
    for k in params:
        np.testing.assert_allclose(grads[k], big[k], rtol=1e-5, atol=1e-6)
    # One optax step on the accumulated gradients equals the big-batch step.
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2))
    step = jax.jit(M.accumulated_update, static_argnums=(0, 1, 5))
    p1, _, _, _, _ = step(_mean_loss, tx, params, tx.init(params), batch, num_micro)
    big_step = jax.jit(lambda g, p: optax.apply_updates(p, tx.update(g, tx.init(p), p)[0]))
    p2 = big_step(big, params)
    for k in params:
        np.testing.assert_allclose(p1[k], p2[k], rtol=1e-5, atol=1e-6)


def test_accumulation_masked_sum_mode():
    """With masks, sum mode plus a global normaliser weighs samples exactly."""
    params, batch = _linear_problem()
    total = jnp.sum(batch["m"])

    def masked_loss(params, b, denom):
        err = b["x"] @ params["w"] + params["b"] - b["y"]
        return jnp.sum(jnp.where(b["m"], err**2, 0.0)) / denom, {}

    big = jax.grad(lambda p: masked_loss(p, batch, total)[0])(params)
    grads, _, _ = M.accumulate_gradients(
        lambda p, b: masked_loss(p, b, total), params, batch, 4, reduce="sum"
    )
    for k in params:
        np.testing.assert_allclose(grads[k], big[k], rtol=1e-5, atol=1e-6)


def test_accumulation_keeps_param_dtype():
    params, batch = _linear_problem()
    params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
    loss = lambda p, b: _mean_loss(jax.tree.map(lambda x: x.astype(jnp.float32), p), b)
    grads, _, _ = M.accumulate_gradients(loss, params, batch, 4)
    assert all(g.dtype == jnp.bfloat16 for g in jax.tree.leaves(grads))
    with pytest.raises(ValueError, match="micro-batches"):
        M.accumulate_gradients(loss, params, batch, 5)
