"""Teacher-forced per-token log-probs of given completions (PPO's "old" and "new" log-probs).

The sequence is the left-padded prompt followed by the right-padded completion; one forward pass
gives every completion token's log-prob under softmax(logits / temperature), in float32, zero
where the completion mask is off. The final hidden state at the last prompt token comes back too
(RL4VLM's value head reads it).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from rlvlm_jax.models.llava import positions_from_mask


class Scores(NamedTuple):
    logprobs: jax.Array  # (B, T) float32, 0 where completion_mask is 0
    last_prompt_hidden: jax.Array  # (B, D) final-normed hidden at the last prompt slot


def token_logprobs(model, input_ids, attention_mask, images, completion, completion_mask,
                   temperature=1.0) -> Scores:
    """Log-probs of `completion` (B, T) given the left-padded prompt `input_ids` (B, P)."""
    p = input_ids.shape[1]
    mask = jnp.concatenate([attention_mask, completion_mask.astype(attention_mask.dtype)], axis=1)
    # Images go into the prompt's placeholders only: a generated token that happens to be the
    # image token id is text, as it was for the sampler.
    embeds = jnp.concatenate([model.embed(input_ids, images),
                              model.text.embed_tokens(completion.astype(jnp.int32))], axis=1)
    hidden, _ = model.text.forward(embeds, positions_from_mask(mask), mask)
    # The logits at slot P - 1 + j predict completion token j: only those are projected.
    logits = model.text.logits(hidden[:, p - 1:-1]) / jnp.asarray(temperature, jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(logp, completion[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return Scores(jnp.where(completion_mask.astype(bool), picked, 0.0), hidden[:, p - 1])


def make_scorer(graphdef, **jit_kwargs):
    """A jitted `(params, input_ids, attention_mask, images, completion, completion_mask,
    temperature) -> Scores`; create once and reuse (temperature is traced)."""

    def score(params, input_ids, attention_mask, images, completion, completion_mask,
              temperature):
        model = nnx.merge(graphdef, params)
        return token_logprobs(model, input_ids, attention_mask, images, completion,
                              completion_mask, temperature)

    return jax.jit(score, **jit_kwargs)
