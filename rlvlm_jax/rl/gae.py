"""Generalised advantage estimation over a time-major [T, B] rollout with auto-reset.

With auto-reset, `values[t + 1]` after a finished episode belongs to the *next* episode's first
observation, so it must never be used as the bootstrap of step t. Instead:

- terminated[t]: the episode really ended; the next value is 0.
- truncated[t]: the episode was cut by a time limit; bootstrap from `final_values[t]`, the value of
  the final (pre-reset) observation, which the rollout must record.
- otherwise: bootstrap from `values[t + 1]`, or `last_value` at t = T - 1.

Either way the GAE recursion does not carry the advantage across the boundary. A step that is both
terminated and truncated counts as terminated. RL4VLM treated truncation as termination
(`truncation_as_termination=True` reproduces that, and then `final_values` is not needed).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class GAEOutput(NamedTuple):
    advantages: jax.Array  # [T, B]
    returns: jax.Array  # [T, B] value targets: advantages + values


def gae(
    rewards,
    values,
    terminated,
    truncated,
    last_value,
    final_values=None,
    *,
    gamma=0.9,
    gae_lambda=0.95,
    truncation_as_termination=False,
) -> GAEOutput:
    """Advantages and value targets for a [T, B, ...] rollout (time first).

    rewards, values, terminated, truncated, final_values: [T, B]; last_value: [B], the value of the
    observation after the last step. gamma and gae_lambda may be traced.
    """
    values = jnp.asarray(values)
    dtype = jnp.promote_types(jnp.result_type(rewards, values), jnp.float32)
    rewards = jnp.asarray(rewards, dtype)
    values = values.astype(dtype)
    last_value = jnp.asarray(last_value, dtype)
    term = jnp.asarray(terminated).astype(bool)
    trunc = jnp.asarray(truncated).astype(bool)
    if values.shape[1:] != last_value.shape:
        raise ValueError(
            f"last_value shape {last_value.shape} != values.shape[1:] {values.shape[1:]}"
        )

    next_values = jnp.concatenate([values[1:], last_value[None]], axis=0)
    if truncation_as_termination:
        term = term | trunc
    elif final_values is None:
        raise ValueError(
            "truncated steps need final_values (value of the pre-reset observation); "
            "pass them or set truncation_as_termination=True"
        )
    else:
        next_values = jnp.where(trunc, jnp.asarray(final_values, dtype), next_values)
    next_values = jnp.where(term, 0.0, next_values)
    deltas = rewards + gamma * next_values - values
    carry_on = 1.0 - (term | trunc).astype(dtype)

    def step(next_adv, x):
        delta, cont = x
        adv = delta + gamma * gae_lambda * cont * next_adv
        return adv, adv

    _, advantages = jax.lax.scan(step, jnp.zeros_like(last_value), (deltas, carry_on), reverse=True)
    return GAEOutput(advantages, advantages + values)
