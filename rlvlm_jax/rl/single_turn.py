"""MAYE's single-turn RL loop, its four stages in order, each a function created once.

1. data flow: `Prompts` — a static-shape batch of pictures and padded question prompts, drawn
   on the host from `data.Problems` (`prompt_batch`).
2. response collection: `collect` samples `group_size` responses per prompt with the compiled
   sampler (one call, prompts repeated group-wise: rows g*k .. g*k+k-1 share prompt g).
3. trajectory generation: rewards are judged on the host from the decoded texts (`rl.rewards`),
   then `trajectory` scores the responses with the policy (old log-probs) and the frozen
   reference (KL), and computes per-token advantages with the configured estimator
   (`rl.advantages`: Reinforce++, GRPO, RLOO).
4. policy update: `update` runs epochs x minibatches of the token-level clipped objective plus
   MAYE's k-estimator KL loss to the reference, one optax step per minibatch, all compiled.

No critic: a single-turn response gets one scalar reward. Old log-probs are re-scored by the
same function the update uses (the sampler's own log-probs are kept to report how far the two
disagree, which MAYE never checked). Shapes are static: prompts padded to `prompt_length`,
responses to `max_new_tokens`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlvlm_jax.envs.prompts import conversation, image_token
from rlvlm_jax.models import sampling, scoring
from rlvlm_jax.rl import advantages as adv_lib
from rlvlm_jax.rl import losses
from rlvlm_jax.rl.optimizer import stop_frozen, trainable_part
from rlvlm_jax.text.parse_device import completion_mask
from rlvlm_jax.text.tokenizer import encode_prompts


class Prompts(NamedTuple):
    """Stage 1: one batch of prompts (device arrays)."""

    frames: jax.Array  # uint8 [P, S, S, 3]
    prompt_ids: jax.Array  # int32 [P, Lp], left-padded
    prompt_mask: jax.Array  # int32 [P, Lp]


class Responses(NamedTuple):
    """Stage 2: `group_size` sampled responses per prompt, prompts repeated to match."""

    frames: jax.Array  # [B, S, S, 3], B = P * group_size
    prompt_ids: jax.Array  # [B, Lp]
    prompt_mask: jax.Array  # [B, Lp]
    tokens: jax.Array  # int32 [B, L], padded after `lengths`
    lengths: jax.Array  # int32 [B], EOS included when sampled
    sampler_logp: jax.Array  # float32 [B, L], the sampler's own log-probs
    finished: jax.Array  # bool [B], ended by EOS (not cut at max_new_tokens)


class Trajectory(NamedTuple):
    """Stage 3: what the update needs, response-aligned, with a validity mask."""

    frames: jax.Array
    prompt_ids: jax.Array
    prompt_mask: jax.Array
    tokens: jax.Array
    token_mask: jax.Array  # bool [B, L]
    old_logp: jax.Array  # float32 [B, L], the policy that sampled (re-scored)
    ref_logp: jax.Array  # float32 [B, L], the frozen reference (zeros without a KL term)
    rewards: jax.Array  # float32 [B]
    advantages: jax.Array  # float32 [B, L]


def prompt_texts(questions, template: str, chat: str = "llava") -> list[str]:
    """User turns with the picture first: "llava_v1" (the system text: LLaVA's, as RL4VLM, or
    Qwen's template's) or "short" (no system text, for tiny CPU models), in the model's
    conversation style `chat` (`envs.prompts.conversation`)."""
    if template not in ("llava_v1", "short"):
        raise ValueError(f"unknown prompt template {template!r}; known: llava_v1, short")
    return [conversation(q, chat, system=template == "llava_v1") for q in questions]


def encode_problems(problems, tokenizer, template: str, num_image_tokens: int,
                    length: int, chat: str = "llava") -> Prompts:
    """Host arrays of every problem's prompt (encoded once; batches index into them)."""
    ids, mask = encode_prompts(tokenizer, prompt_texts(problems.questions, template, chat),
                               num_image_tokens, length, image_token(chat))
    return Prompts(np.asarray(problems.images), ids, mask)


def repeat_groups(tree, group_size: int):
    """Each row repeated `group_size` times in place: [a, b] -> [a, a, b, b]."""
    return jax.tree.map(lambda x: jnp.repeat(x, group_size, axis=0), tree)


class SingleTurn:
    """The compiled stages for one policy, optimizer and `rl` config section; build once.

    Everything jitted takes params (and optimizer state) as arguments.
    """

    def __init__(self, policy, tx: optax.GradientTransformation, rl, max_new_tokens: int,
                 pad_id: int, compiler_options: dict | None = None):
        self.policy, self.tx, self.rl = policy, tx, rl
        self.group_size = int(rl.group_size)
        self.estimator = adv_lib.get_estimator(rl.algorithm)
        self.sampling = sampling.SamplingConfig(
            max_new_tokens=max_new_tokens, pad_id=pad_id, eos_ids=(policy.cfg.eos_token_id,))
        jit = dict(compiler_options=compiler_options)
        self.collect = jax.jit(self._collect, static_argnames=("group_size",), **jit)
        self.trajectory = jax.jit(self._trajectory, **jit)
        self.update = jax.jit(self._update, donate_argnums=(0, 1), **jit)

    # ------------------------------------------------------------------ 2. response collection
    def _collect(self, params, prompts: Prompts, key, temperature, group_size: int) -> Responses:
        rows = repeat_groups(prompts, group_size)
        knobs = sampling.make_knobs(temperature, eos_ids=self.sampling.eos_ids)
        out, _ = sampling.generate(self.policy.model(params), rows.prompt_ids, rows.prompt_mask,
                                   self.policy.preprocess(rows.frames), key, knobs,
                                   cfg=self.sampling)
        eos = out.tokens[jnp.arange(out.tokens.shape[0]), jnp.maximum(out.lengths - 1, 0)]
        finished = (out.lengths > 0) & (eos == self.policy.cfg.eos_token_id)
        return Responses(rows.frames, rows.prompt_ids, rows.prompt_mask, out.tokens,
                         out.lengths, out.logprobs, finished)

    # ------------------------------------------------------------------ 3. trajectory
    def _scores(self, params, rows, token_mask, entropy: bool = False):
        return scoring.token_logprobs(self.policy.model(params), rows.prompt_ids,
                                      rows.prompt_mask, self.policy.preprocess(rows.frames),
                                      rows.tokens, token_mask, entropy=entropy)

    def _trajectory(self, params, ref_params, r: Responses, rewards) -> tuple[Trajectory, dict]:
        token_mask = completion_mask(r.lengths, r.tokens.shape[1])
        old = self._scores(params, r, token_mask).logprobs
        kl = None
        if ref_params is not None:
            ref = self._scores(ref_params, r, token_mask).logprobs
            kl = losses.kl_per_token(old, ref, token_mask, self.rl.kl_estimator)
        else:
            ref = jnp.zeros_like(old)
        adv = self.estimator(rewards, token_mask, self.group_size, kl=kl,
                             kl_coef=self.rl.kl_reward_coef)
        traj = Trajectory(r.frames, r.prompt_ids, r.prompt_mask, r.tokens, token_mask, old, ref,
                          rewards.astype(jnp.float32), adv)
        n = jnp.maximum(jnp.sum(token_mask), 1)
        metrics = {
            "sampler_logp_gap": jnp.max(jnp.where(token_mask, jnp.abs(old - r.sampler_logp),
                                                  0.0)),
            "kl_ref": 0.0 if kl is None else jnp.sum(jnp.where(token_mask, kl, 0.0)) / n,
            "advantage_abs": jnp.sum(jnp.where(token_mask, jnp.abs(adv), 0.0)) / n,
        }
        return traj, metrics

    # ------------------------------------------------------------------ 4. policy update
    def _loss(self, params, t: Trajectory):
        rl = self.rl
        params = stop_frozen(params, rl.freeze_vision)
        s = self._scores(params, t, t.token_mask, entropy=True)
        mask = t.token_mask  # token-level ratios: every valid token is a sample
        loss, metrics = losses.ppo_loss(
            s.logprobs, t.old_logp, t.advantages, mask=mask,
            clip_eps=rl.clip_eps, policy_loss=rl.policy_loss,
            kl_coef=rl.kl_loss_coef, token_logp=s.logprobs, ref_token_logp=t.ref_logp,
            token_mask=mask, kl_estimator=rl.kl_estimator,
            ent_coef=rl.ent_coef, entropy=s.entropy)
        return loss, metrics

    def _update(self, params, opt_state, traj: Trajectory, key):
        rl = self.rl
        b = traj.tokens.shape[0]
        size = b // rl.minibatches

        def minibatch(carry, idx):
            params, opt_state = carry
            batch = jax.tree.map(lambda x: jnp.take(x, idx, axis=0), traj)
            (_, metrics), grads = jax.value_and_grad(self._loss, has_aux=True)(params, batch)
            metrics["grad_norm"] = optax.tree.norm(trainable_part(grads, rl.freeze_vision))
            updates, opt_state = self.tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), metrics

        def epoch(carry, k):
            order = jax.random.permutation(k, b)[: size * rl.minibatches]
            return jax.lax.scan(minibatch, carry, order.reshape(rl.minibatches, size))

        (params, opt_state), metrics = jax.lax.scan(
            epoch, (params, opt_state), jax.random.split(key, rl.update_epochs))
        return params, opt_state, jax.tree.map(jnp.mean, metrics)
