"""PPO losses for a policy whose action log-prob is a scalar per environment step.

Conventions:
- Sample-level arrays are [N] (one environment step each): log-probs, advantages, values.
  `mask` [N] marks real samples (padding in a minibatch is False).
- Token-level arrays are [N, L]: per-token log-probs, entropies and masks.
- Every loss is something to *minimise*; the policy term is -E[min(r A, clip(r) A)].
- Masked entries never reach a result, even if they hold NaN or -inf (selected out with `where`).

Losses and estimators live in small name-keyed registries so that configs pick them by name.
"""

from __future__ import annotations

import jax.numpy as jnp


def _f32(x):
    return jnp.asarray(x).astype(jnp.promote_types(jnp.asarray(x).dtype, jnp.float32))


def _as_mask(mask, like):
    if mask is None:
        return jnp.ones(jnp.shape(like), bool)
    return jnp.broadcast_to(jnp.asarray(mask).astype(bool), jnp.shape(like))


def _zero_pad(x, mask):
    return jnp.where(mask, _f32(x), 0.0)


def masked_sum(x, mask):
    return jnp.sum(jnp.where(mask, x, 0.0))


def masked_mean(x, mask=None):
    """Mean over valid entries; 0 when there are none (an all-padding minibatch)."""
    mask = _as_mask(mask, x)
    return masked_sum(x, mask) / jnp.maximum(jnp.sum(mask), 1)


# ---------------------------------------------------------------------------------------------
# The action log-probability (RL4VLM's lambda scaling)


def action_log_prob(token_logprobs, cot_mask, action_mask, lam, action_only: bool = False):
    """lam * sum(CoT token log-probs) + sum(action token log-probs), over the last axis; with
    `action_only` (the no-CoT ablation) the action tokens' log-probs alone.

    The thought tokens are down-weighted because a long chain of thought would otherwise dominate
    the sequence log-prob (and so the PPO ratio). Masks must be disjoint and exclude padding (see
    `text.parse_device.token_masks`). token_logprobs: [..., L]; masks: [..., L] bool or 0/1; lam
    may be traced. Returns [...]. Rollouts (old log-prob) and the PPO loss (new) both call this.
    """
    lp = _f32(token_logprobs)

    def tokens_sum(m):
        return jnp.sum(jnp.where(jnp.asarray(m).astype(bool), lp, 0.0), axis=-1)

    if action_only:
        return tokens_sum(action_mask)
    cot = tokens_sum(cot_mask)
    return lam * cot + tokens_sum(action_mask)


# ---------------------------------------------------------------------------------------------
# Advantages


def normalize_advantages(advantages, mask=None, *, eps=1e-8, ddof=0):
    """(A - mean) / (std + eps) over the valid entries of the *whole* buffer; padding -> 0.

    Call it once per rollout, before minibatching (as RL4VLM did). The original used torch's
    unbiased std (ddof=1) and eps=1e-5; defaults here follow purejaxrl.
    """
    a = _f32(advantages)
    mask = _as_mask(mask, a)
    n = jnp.sum(mask)
    mean = masked_sum(a, mask) / jnp.maximum(n, 1)
    var = masked_sum(jnp.square(a - mean), mask) / jnp.maximum(n - ddof, 1)
    return jnp.where(mask, (a - mean) / (jnp.sqrt(var) + eps), 0.0)


# ---------------------------------------------------------------------------------------------
# Registries. Policy and value losses return per-sample values [N]; KL estimators per element.


def ppo_clip_loss(new_logp, old_logp, advantages, clip_eps):
    """-min(r A, clip(r, 1 - eps, 1 + eps) A) with the sequence-level ratio r = exp(new - old)."""
    ratio = jnp.exp(new_logp - old_logp)
    clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    return -jnp.minimum(ratio * advantages, clipped * advantages)


def pg_loss(new_logp, old_logp, advantages, clip_eps):
    """Unclipped importance-weighted policy gradient -r A (on-policy: REINFORCE's gradient)."""
    del clip_eps
    return -jnp.exp(new_logp - old_logp) * advantages


POLICY_LOSSES = {"ppo_clip": ppo_clip_loss, "pg": pg_loss}


def clipped_value_loss(values, old_values, returns, clip_eps):
    """0.5 * max((v - R)^2, (v_clipped - R)^2), v_clipped = old + clip(v - old, -eps, eps)."""
    v_clipped = old_values + jnp.clip(values - old_values, -clip_eps, clip_eps)
    return 0.5 * jnp.maximum(jnp.square(values - returns), jnp.square(v_clipped - returns))


def mse_value_loss(values, old_values, returns, clip_eps):
    del old_values, clip_eps
    return 0.5 * jnp.square(values - returns)


VALUE_LOSSES = {"clipped": clipped_value_loss, "mse": mse_value_loss}


def kl_k1(logp, ref_logp):
    """log(p / p_ref): unbiased for KL(p || p_ref) on samples from p, but can be negative."""
    return logp - ref_logp


def kl_k2(logp, ref_logp):
    """0.5 * log(p / p_ref)^2: biased, low variance, non-negative."""
    return 0.5 * jnp.square(logp - ref_logp)


def kl_k3(logp, ref_logp):
    """exp(ref - logp) - (ref - logp) - 1 (MAYE's choice): unbiased and non-negative.

    Not clamped: a log-ratio above ~88 overflows float32 to inf, which the NaN guard should catch.
    """
    d = ref_logp - logp
    return jnp.exp(d) - d - 1.0


KL_ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def token_mean(x, mask):
    """Mean over all valid tokens of the batch (long responses weigh more)."""
    return masked_mean(x, mask)


def seq_mean_token_mean(x, mask):
    """Mean over tokens within each sequence, then over sequences with any valid token."""
    per_seq = jnp.sum(jnp.where(mask, x, 0.0), -1) / jnp.maximum(jnp.sum(mask, -1), 1)
    return masked_mean(per_seq, jnp.any(mask, -1))


def seq_mean_token_sum(x, mask):
    """Sum over tokens within each sequence, then mean over sequences with any valid token."""
    return masked_mean(jnp.sum(jnp.where(mask, x, 0.0), -1), jnp.any(mask, -1))


TOKEN_REDUCTIONS = {
    "token_mean": token_mean,
    "seq_mean_token_mean": seq_mean_token_mean,
    "seq_mean_token_sum": seq_mean_token_sum,
}


def _lookup(registry, name, what):
    try:
        return registry[name]
    except KeyError:
        raise KeyError(f"unknown {what} {name!r}; known: {sorted(registry)}") from None


# ---------------------------------------------------------------------------------------------
# Token-level terms


def kl_per_token(token_logp, ref_token_logp, token_mask, estimator="k3"):
    """Per-token KL(policy || frozen reference) estimates, 0 on padding (Reinforce++ puts them
    into the reward; `kl_to_reference` reduces them into a loss)."""
    mask = jnp.asarray(token_mask).astype(bool)
    # Padding may hold -inf: keep it out of exp so that gradients stay finite.
    lp, ref = _zero_pad(token_logp, mask), _zero_pad(ref_token_logp, mask)
    return jnp.where(mask, _lookup(KL_ESTIMATORS, estimator, "KL estimator")(lp, ref), 0.0)


def kl_to_reference(token_logp, ref_token_logp, token_mask, estimator="k3", reduction="token_mean"):
    """Per-token KL(policy || frozen reference) estimate, reduced over valid tokens."""
    mask = jnp.asarray(token_mask).astype(bool)
    per_token = kl_per_token(token_logp, ref_token_logp, mask, estimator)
    return _lookup(TOKEN_REDUCTIONS, reduction, "reduction")(per_token, mask)


# ---------------------------------------------------------------------------------------------
# Diagnostics of the update against the rollout policy


def approx_kl(new_logp, old_logp, mask=None):
    """mean((r - 1) - log r): the non-negative k3-style estimate of KL(old || new)."""
    log_ratio = _f32(new_logp) - _f32(old_logp)
    return masked_mean(jnp.expm1(log_ratio) - log_ratio, mask)


def approx_kl_k1(new_logp, old_logp, mask=None):
    """mean(old - new): the simple estimate (can be negative on a minibatch)."""
    return masked_mean(_f32(old_logp) - _f32(new_logp), mask)


def clip_fraction(new_logp, old_logp, clip_eps, mask=None):
    """Share of samples whose ratio left [1 - eps, 1 + eps]."""
    ratio = jnp.exp(_f32(new_logp) - _f32(old_logp))
    return masked_mean((jnp.abs(ratio - 1.0) > clip_eps).astype(jnp.float32), mask)


# ---------------------------------------------------------------------------------------------
# The total


def ppo_loss(
    new_logp,
    old_logp,
    advantages,
    *,
    values=None,
    old_values=None,
    returns=None,
    mask=None,
    clip_eps=0.1,
    value_clip_eps=0.1,
    vf_coef=0.5,
    ent_coef=0.0,
    kl_coef=0.0,
    entropy=None,
    token_logp=None,
    ref_token_logp=None,
    token_mask=None,
    policy_loss="ppo_clip",
    value_loss="clipped",
    kl_estimator="k3",
    token_reduction="token_mean",
):
    """policy + vf_coef * value + kl_coef * KL(ref) - ent_coef * entropy, and metrics.

    The PPO loss is assembled here and nowhere else, added in exactly that order. new_logp,
    old_logp, advantages, values, old_values, returns, mask: [N] (one ratio per sequence, as
    RL4VLM), or new_logp, old_logp, advantages, mask: [N, L] (token-level ratios, every valid token
    a sample, as MAYE; no value loss then). `advantages` are already
    normalised over the whole buffer (see `normalize_advantages`). Optional terms:
    - value loss when `values` is given (a critic-free setup leaves it out);
    - KL to the reference when `token_logp`, `ref_token_logp` and `token_mask` [N, L] are given;
    - entropy (bonus and metric "entropy") when the per-token entropies `entropy` [N, L] (e.g.
      `scoring.token_logprobs(..., entropy=True).entropy`) and `token_mask` are given.
    Token terms are reduced over valid tokens by `token_reduction` (see TOKEN_REDUCTIONS).
    Coefficients may be traced; a non-zero Python coefficient without its inputs is an error.
    Padding samples (mask False) are dropped from token terms too. Returns (loss, metrics).
    """
    mask = _as_mask(mask, new_logp)
    # Zero the padding first: NaN/inf there would turn masked-out gradients into NaN (0 * NaN).
    new_logp, old_logp, adv = (_zero_pad(x, mask) for x in (new_logp, old_logp, advantages))
    ratio = jnp.exp(new_logp - old_logp)

    pg = masked_mean(
        _lookup(POLICY_LOSSES, policy_loss, "policy loss")(new_logp, old_logp, adv, clip_eps), mask
    )
    metrics = {
        "policy_loss": pg,
        "clip_frac": clip_fraction(new_logp, old_logp, clip_eps, mask),
        "approx_kl": approx_kl(new_logp, old_logp, mask),
        "approx_kl_k1": approx_kl_k1(new_logp, old_logp, mask),
        "ratio_mean": masked_mean(ratio, mask),
        "ratio_max": jnp.max(jnp.where(mask, ratio, -jnp.inf)),
        "ratio_min": jnp.min(jnp.where(mask, ratio, jnp.inf)),
        "advantage_mean": masked_mean(adv, mask),
    }
    total = pg

    def _need(coef, have, what):
        if not have and isinstance(coef, int | float) and coef != 0:
            raise ValueError(f"coefficient {coef} given but {what} missing")

    if values is not None:
        if old_values is None or returns is None:
            raise ValueError("a value loss needs values, old_values and returns")
        v, v_old, ret = (_zero_pad(x, mask) for x in (values, old_values, returns))
        vl = masked_mean(
            _lookup(VALUE_LOSSES, value_loss, "value loss")(v, v_old, ret, value_clip_eps), mask
        )
        total = total + vf_coef * vl
        metrics["value_loss"] = vl
        metrics["value_mean"] = masked_mean(v, mask)
        metrics["value_clip_frac"] = masked_mean(
            (jnp.abs(v - v_old) > value_clip_eps).astype(jnp.float32), mask
        )

    tmask = None
    if token_mask is not None:
        tmask = jnp.asarray(token_mask).astype(bool)
        tmask = tmask & (mask if mask.shape == tmask.shape else mask[..., None])
    reduce = _lookup(TOKEN_REDUCTIONS, token_reduction, "reduction")
    have_ref = token_logp is not None and ref_token_logp is not None and tmask is not None
    _need(kl_coef, have_ref, "token_logp/ref_token_logp/token_mask")
    if have_ref:
        kl = kl_to_reference(token_logp, ref_token_logp, tmask, kl_estimator, token_reduction)
        total = total + kl_coef * kl
        metrics["kl_ref"] = kl
    _need(ent_coef, entropy is not None and tmask is not None, "entropy/token_mask")
    if entropy is not None and tmask is not None:
        ent = reduce(entropy, tmask)
        total = total - ent_coef * ent
        metrics["entropy"] = ent

    metrics["loss"] = total
    return total, metrics
