"""Critic-free advantages for single-turn responses (MAYE's setting): one picture + question per
prompt, `group_size` sampled responses per prompt, one scalar verifiable reward per response.

Every estimator has the same signature, so that a config string picks one (`get_estimator`):

    fn(rewards [B], token_mask [B, L], group_size, *, kl=None, kl_coef=0.0, eps=1e-6) -> [B, L]

- Rows are grouped: rows [g * group_size, (g + 1) * group_size) are samples of prompt g, so
  B = prompts * group_size. `group_size` is static (a Python int: pass it with
  `functools.partial` or `static_argnames` under jit).
- `token_mask` marks the response tokens (padding False). The result is a per-token advantage,
  0 on padding; masked entries of `kl` never reach it, even if they hold NaN or inf.
- `kl` [B, L] is a per-token KL estimate to the reference (e.g. `losses.KL_ESTIMATORS`), folded
  into the reward with weight `kl_coef` (a penalty in the reward, not the KL *loss* of
  `losses.ppo_loss`; use one or the other). Without `kl`, `kl_coef` must be 0.
- The group and batch statistics reduce over the whole batch axis. Under jit with a sharded batch
  they stay global: XLA inserts the cross-device collectives, so no manual psum is needed (and
  MAYE's per-GPU whitening is not reproduced).

All are pure jax.numpy, so they jit and are checked against NumPy loops on the CPU.
"""

from __future__ import annotations

import operator

import jax.numpy as jnp

from rlvlm_jax.rl.losses import masked_mean


def check_groups(batch: int, group_size: int) -> None:
    """Refuse a batch that cannot be cut into groups of `group_size` samples of one prompt."""
    given = group_size
    try:
        group_size = operator.index(group_size)
    except TypeError:
        group_size = None  # a float, or a traced value under jit: not a static size
    if group_size is None or group_size < 1:
        raise ValueError(
            f"group_size must be a positive static int (responses per prompt), got {given!r}; "
            "set rl.group_size"
        )
    if batch < 1 or batch % group_size:
        raise ValueError(
            f"a batch of {batch} responses cannot be cut into groups of group_size={group_size} "
            "(it must be rl.prompts_per_batch * rl.group_size); change rl.prompts_per_batch or "
            "rl.group_size"
        )


def _f32(x):
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _inputs(rewards, token_mask, group_size, kl, kl_coef, *, min_group=1):
    """Checked float rewards [B], bool mask [B, L] and the zero-padded KL penalty [B, L] or None."""
    rewards = _f32(rewards)
    mask = jnp.asarray(token_mask).astype(bool)
    if rewards.ndim != 1 or mask.ndim != 2 or mask.shape[0] != rewards.shape[0]:
        raise ValueError(
            f"need rewards [B] and token_mask [B, L]; got rewards {rewards.shape}, "
            f"token_mask {mask.shape}"
        )
    check_groups(rewards.shape[0], group_size)
    if group_size < min_group:
        raise ValueError(
            f"this estimator compares samples of one prompt and needs rl.group_size >= "
            f"{min_group}, got {group_size}; raise rl.group_size or use 'reinforce_pp'"
        )
    if kl is None:
        if not (isinstance(kl_coef, int | float) and kl_coef == 0):
            raise ValueError(f"kl_coef={kl_coef!r} given but kl (per-token KL [B, L]) is None")
        return rewards, mask, None
    kl = _f32(kl)
    if kl.shape != mask.shape:
        raise ValueError(f"kl shape {kl.shape} != token_mask shape {mask.shape}")
    return rewards, mask, jnp.where(mask, kl_coef * kl, 0.0)


def _sequence_rewards(rewards, penalty):
    """Scalar reward minus the response's summed KL penalty (the RLOO paper's KL-in-reward)."""
    return rewards if penalty is None else rewards - jnp.sum(penalty, axis=-1)


def _broadcast(adv, mask):
    return jnp.where(mask, adv[:, None], 0.0)


def grpo(rewards, token_mask, group_size, *, kl=None, kl_coef=0.0, eps=1e-6, ddof=1):
    """(r - group mean) / (group std + eps), the same for every token of a response.

    The std is the *sample* std (ddof=1), as TRL's GRPOTrainer computes it (torch's default
    unbiased `.std`), which most GRPO reproductions follow; ddof=0 gives the population std.
    (TRL's eps is 1e-4; ours is the shared default, and only matters when a group barely varies.)
    DeepSeekMath puts the KL in the loss, so kl_coef is normally 0 here. A group whose rewards
    are all equal gets advantage 0. Needs group_size >= 2.
    """
    rewards, mask, penalty = _inputs(rewards, token_mask, group_size, kl, kl_coef, min_group=2)
    g = _sequence_rewards(rewards, penalty).reshape(-1, group_size)
    mean = jnp.mean(g, axis=1, keepdims=True)
    std = jnp.std(g, axis=1, ddof=ddof, keepdims=True)
    return _broadcast(((g - mean) / (std + eps)).reshape(-1), mask)


def rloo(rewards, token_mask, group_size, *, kl=None, kl_coef=0.0, eps=1e-6):
    """r_i - mean of the other group_size - 1 rewards (leave-one-out baseline), per token.

    The baseline does not depend on r_i, so the gradient stays unbiased; no std scaling. `eps` is
    unused (kept for the shared signature). Needs group_size >= 2.
    """
    del eps
    rewards, mask, penalty = _inputs(rewards, token_mask, group_size, kl, kl_coef, min_group=2)
    g = _sequence_rewards(rewards, penalty).reshape(-1, group_size)
    others = (jnp.sum(g, axis=1, keepdims=True) - g) / (group_size - 1)
    return _broadcast((g - others).reshape(-1), mask)


def reinforce_pp(
    rewards, token_mask, group_size, *, kl=None, kl_coef=0.0, eps=1e-6, shift_mean=False
):
    """Reinforce++ as MAYE ran it: token rewards, return-to-go (gamma 1), global whitening.

    Token reward: -kl_coef * kl_t at each valid token, plus the scalar reward at the last valid
    token (the EOS token; a response with no valid token drops its reward). The return G_t sums
    the token rewards from t to the end. G is whitened over all valid tokens of the whole batch,
    (G - mean) / (std + eps) with the population std, not per group: with one response per prompt
    (MAYE) there is no group to normalise within. Any group_size >= 1.

    MAYE put the KL in the loss (kl_coef 0 here reproduces that); kl_coef > 0 is the original
    Reinforce++ token-level penalty. `shift_mean=True` reproduces MAYE's quirk: their whitening
    added the mean back, (G - mean) / std + mean, so the advantages are not zero-mean. (Note the
    sense: TRL's `masked_whiten(shift_mean=False)` is what adds it back; here True means "add the
    mean back".)
    """
    rewards, mask, penalty = _inputs(rewards, token_mask, group_size, kl, kl_coef)
    length = mask.shape[1]
    # Last valid index per row (the mask need not be a prefix); rows without tokens have none.
    last = length - 1 - jnp.argmax(mask[:, ::-1], axis=1)
    eos = (jnp.arange(length)[None, :] == last[:, None]) & mask
    token_rewards = jnp.where(eos, rewards[:, None], 0.0)
    if penalty is not None:
        token_rewards = token_rewards - penalty
    returns = jnp.where(mask, jnp.cumsum(token_rewards[:, ::-1], axis=1)[:, ::-1], 0.0)
    mean = masked_mean(returns, mask)
    std = jnp.sqrt(masked_mean(jnp.square(returns - mean), mask))
    whitened = (returns - mean) / (std + eps)
    if shift_mean:
        whitened = whitened + mean
    return jnp.where(mask, whitened, 0.0)


ADVANTAGE_ESTIMATORS = {"grpo": grpo, "rloo": rloo, "reinforce_pp": reinforce_pp}


def get_estimator(name: str):
    """The estimator a config names (rl.algorithm-style string)."""
    try:
        return ADVANTAGE_ESTIMATORS[name]
    except KeyError:
        raise KeyError(
            f"unknown advantage estimator {name!r}; known: {sorted(ADVANTAGE_ESTIMATORS)}"
        ) from None
