"""The PPO update of one rollout, as one compiled function.

trajectory [T, B] -> GAE (bootstrap on truncation from the recorded final values, never on
termination) -> advantages normalised over the whole buffer -> optionally the frozen reference's
token log-probs -> epochs x minibatches (`lax.scan`), each minibatch's gradient accumulated over
micro-batches -> clipped AdamW step. New log-probs are recomputed teacher-forced in float32 at the
sampling temperature under each step's own prompt, and the action log-prob is lambda * CoT +
action tokens (or action tokens only), exactly as the rollout computed the old one.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from rlvlm_jax.models.scoring import token_logprobs
from rlvlm_jax.rl import losses
from rlvlm_jax.rl.gae import gae
from rlvlm_jax.rl.lora import base_params
from rlvlm_jax.rl.minibatch import accumulate_gradients, gather, shuffle_indices
from rlvlm_jax.rl.optimizer import stop_frozen, trainable_part, tree_finite
from rlvlm_jax.rl.rollout import Trajectory
from rlvlm_jax.text.parse_device import token_masks


class Samples(NamedTuple):
    """The flat buffer [N, ...] the minibatches are drawn from."""

    frames: jax.Array
    prompt_ids: jax.Array
    prompt_mask: jax.Array
    tokens: jax.Array
    token_mask: jax.Array  # bool [N, R] generated tokens (EOS included)
    cot_mask: jax.Array
    action_mask: jax.Array
    old_logp: jax.Array  # [N]
    old_value: jax.Array  # [N]
    advantage: jax.Array  # [N] normalised
    ret: jax.Array  # [N] value targets
    ref_token_logp: jax.Array  # [N, R] (zeros without a reference)


def _chunked(fn, tree, size: int):
    """`fn` over the leading axis in chunks of `size` with `lax.map` (bounded activations)."""
    n = jax.tree.leaves(tree)[0].shape[0]
    size = max(1, min(size, n))
    if n % size:
        size = 1 if n < 2 else max(d for d in range(1, size + 1) if n % d == 0)
    split = jax.tree.map(lambda x: x.reshape(n // size, size, *x.shape[1:]), tree)
    out = jax.lax.map(fn, split)
    return jax.tree.map(lambda x: x.reshape(n, *x.shape[2:]), out)


def make_ppo_update(policy, tx: optax.GradientTransformation, ppo,
                    compiler_options: dict | None = None):
    """Jitted `update(params, opt_state, traj, last_value, key, ref_params) -> (params,
    opt_state, metrics)`; create once. `ppo` is the config section (read at build time).

    `ref_params` is only read when `ppo.kl_coef > 0`; None then means params without their
    LoRA adapters (the frozen base is the reference, no copy needed). params and
    opt_state are donated. metrics["finite"] is False when a loss or gradient was not finite;
    the caller must then discard the returned params.
    """
    lam = float(ppo.thought_lambda)
    action_only = bool(ppo.action_only)
    freeze = bool(ppo.freeze_vision)
    use_kl = float(ppo.kl_coef) > 0
    temperature = float(ppo.temperature)
    if temperature <= 0:
        raise ValueError("PPO needs a positive sampling temperature (log-probs are taken at it)")

    def loss_fn(params, s: Samples):
        p = stop_frozen(params, freeze)
        sc = token_logprobs(policy.model(p), s.prompt_ids, s.prompt_mask,
                            policy.preprocess(s.frames), s.tokens, s.token_mask, temperature,
                            entropy=True)
        new_logp = losses.action_log_prob(sc.logprobs, s.cot_mask, s.action_mask, lam,
                                          action_only)
        return losses.ppo_loss(
            new_logp,
            s.old_logp,
            s.advantage,
            values=policy.value(p, sc.last_prompt_hidden),
            old_values=s.old_value,
            returns=s.ret,
            clip_eps=ppo.clip_eps,
            value_clip_eps=ppo.value_clip_eps,
            vf_coef=ppo.vf_coef,
            ent_coef=ppo.ent_coef,
            kl_coef=ppo.kl_coef,
            entropy=sc.entropy,
            token_logp=sc.logprobs if use_kl else None,
            ref_token_logp=s.ref_token_logp if use_kl else None,
            token_mask=s.token_mask,
            kl_estimator=ppo.kl_estimator,
            policy_loss=ppo.policy_loss,
            value_loss=ppo.value_loss,
            token_reduction=ppo.token_reduction,
        )

    def update(params, opt_state, traj: Trajectory, last_value, key, ref_params):
        adv, ret = gae(
            traj.reward,
            traj.value,
            traj.terminated,
            traj.truncated,
            last_value,
            traj.final_value,
            gamma=ppo.gamma,
            gae_lambda=ppo.gae_lambda,
            truncation_as_termination=ppo.truncation_as_termination,
        )
        flat = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), traj)
        n = flat.reward.shape[0]
        masks = token_masks(flat.action_mask, flat.lengths)
        samples = Samples(
            frames=flat.frames,
            prompt_ids=flat.prompt_ids,
            prompt_mask=flat.prompt_mask,
            tokens=flat.tokens,
            token_mask=masks.token,
            cot_mask=masks.cot,
            action_mask=masks.action,
            old_logp=flat.logp,
            old_value=flat.value,
            advantage=losses.normalize_advantages(adv.reshape(-1)),
            ret=ret.reshape(-1),
            ref_token_logp=jnp.zeros(flat.tokens.shape, jnp.float32),
        )
        if use_kl:
            ref = policy.model(base_params(params) if ref_params is None else ref_params)

            def ref_scores(s):
                return token_logprobs(ref, s.prompt_ids, s.prompt_mask,
                                      policy.preprocess(s.frames), s.tokens, s.token_mask,
                                      temperature).logprobs

            chunk = n // (ppo.minibatches * ppo.micro_batches)
            ref_lp = _chunked(ref_scores, samples._replace(ref_token_logp=None), chunk)
            samples = samples._replace(ref_token_logp=jax.lax.stop_gradient(ref_lp))

        order = shuffle_indices(key, n, ppo.epochs, ppo.minibatches)
        order = order.reshape(-1, order.shape[-1])

        def minibatch(carry, idx):
            params, opt_state, finite = carry
            mb = gather(samples, idx)
            grads, _, aux = accumulate_gradients(loss_fn, params, mb, ppo.micro_batches)
            trained = trainable_part(grads, freeze)
            ok = tree_finite(trained) & jnp.all(jnp.isfinite(aux["loss"]))
            updates, new_opt = tx.update(grads, opt_state, params)
            new_params = optax.apply_updates(params, updates)
            # A non-finite step is not applied; the caller sees finite=False and stops.
            params = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new_params, params)
            opt_state = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new_opt, opt_state)
            m = jax.tree.map(jnp.mean, aux)
            m["grad_norm"] = optax.tree.norm(trained)
            return (params, opt_state, finite & ok), m

        (params, opt_state, finite), per_mb = jax.lax.scan(
            minibatch, (params, opt_state, jnp.bool_(True)), order
        )
        metrics = jax.tree.map(jnp.mean, per_mb)
        metrics["approx_kl_last"] = per_mb["approx_kl"][-1]
        metrics["finite"] = finite
        metrics["advantage_raw_mean"] = jnp.mean(adv)
        metrics["return_target_mean"] = jnp.mean(ret)
        var_ret = jnp.var(ret)
        metrics["explained_variance"] = 1.0 - jnp.var(ret - traj.value) / jnp.maximum(
            var_ret, 1e-8
        )
        return params, opt_state, metrics

    return jax.jit(update, donate_argnums=(0, 1), compiler_options=compiler_options)


def rollout_metrics(traj: Trajectory, max_new_tokens: int) -> dict[str, jax.Array]:
    """Scalars of one rollout (jittable): episodes finished in it, success among them, returns,
    invalid answers, response lengths and the share cut at the token limit."""
    done = traj.terminated | traj.truncated
    n_done = jnp.sum(done)
    denom = jnp.maximum(n_done, 1)
    return {
        "episodes": n_done,
        "success_rate": jnp.sum(done & (traj.episode_return > 0)) / denom,
        "episode_return": jnp.sum(traj.episode_return) / denom,
        "episode_length": jnp.sum(traj.episode_length) / denom,
        "invalid_action_rate": 1.0 - jnp.mean(traj.parsed.astype(jnp.float32)),
        "response_length": jnp.mean(traj.lengths.astype(jnp.float32)),
        "length_clip_ratio": jnp.mean((traj.lengths >= max_new_tokens).astype(jnp.float32)),
        "reward_mean": jnp.mean(traj.reward),
        "value_mean": jnp.mean(traj.value),
        "truncations": jnp.sum(traj.truncated),
        "old_logp_mean": jnp.mean(traj.logp),
    }
