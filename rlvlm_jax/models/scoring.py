"""Teacher-forced per-token log-probs of given completions: the one scorer (PPO's new and
reference log-probs and entropies, SFT's likelihood, the sampler's parity tests).

The sequence is the left-padded prompt followed by the right-padded completion; one forward pass
gives every completion token's log-prob under softmax(logits / temperature), in float32, zero
where the completion mask is off. The final hidden state at the last prompt token comes back too
(RL4VLM's value head reads it), and on request the entropy of each token's distribution.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx


class Scores(NamedTuple):
    logprobs: jax.Array  # (B, T) float32, 0 where completion_mask is 0
    last_prompt_hidden: jax.Array  # (B, D) final-normed hidden at the last prompt slot
    entropy: jax.Array | None = None  # (B, T) float32, 0 where masked; only with entropy=True


def entropy_of(logp: jax.Array) -> jax.Array:
    """Entropy over the last axis of a distribution given by its log-probs (..., V) -> (...)."""
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def token_logprobs(model, input_ids, attention_mask, images, completion, completion_mask,
                   temperature=1.0, *, entropy: bool = False) -> Scores:
    """Log-probs of `completion` (B, T) given the left-padded prompt `input_ids` (B, P).

    `temperature` may be a Python float or traced; `entropy=True` also returns each token's
    entropy of softmax(logits / temperature), from the same log-softmax.
    """
    p = input_ids.shape[1]
    mask = jnp.concatenate([attention_mask, completion_mask.astype(attention_mask.dtype)], axis=1)
    # Images go into the prompt's placeholders only: a generated token that happens to be the
    # image token id is text, as it was for the sampler.
    embeds = jnp.concatenate([model.embed(input_ids, images),
                              model.text.embed_tokens(completion.astype(jnp.int32))], axis=1)
    # The positions the sampler gave these tokens (M-RoPE's 3-D ones for Qwen2-VL: 1-D positions
    # would score other log-probs than were sampled).
    positions = model.score_positions(input_ids, attention_mask, completion_mask,
                                      images is not None)
    hidden, _ = model.text.forward(embeds, positions, mask)
    # The logits at slot P - 1 + j predict completion token j: only those are projected.
    logits = model.text.logits(hidden[:, p - 1:-1]).astype(jnp.float32)
    logp = jax.nn.log_softmax(logits / jnp.asarray(temperature, jnp.float32), axis=-1)
    picked = jnp.take_along_axis(logp, completion[..., None].astype(jnp.int32), axis=-1)[..., 0]
    ent = entropy_of(logp) if entropy else None
    keep = completion_mask.astype(bool)
    return Scores(jnp.where(keep, picked, 0.0), hidden[:, p - 1],
                  None if ent is None else jnp.where(keep, ent, 0.0))


def make_scorer(graphdef, entropy: bool = False, **jit_kwargs):
    """A jitted `(params, input_ids, attention_mask, images, completion, completion_mask,
    temperature) -> Scores`; create once and reuse (temperature is traced)."""

    def score(params, input_ids, attention_mask, images, completion, completion_mask,
              temperature):
        model = nnx.merge(graphdef, params)
        return token_logprobs(model, input_ids, attention_mask, images, completion,
                              completion_mask, temperature, entropy=entropy)

    return jax.jit(score, **jit_kwargs)
