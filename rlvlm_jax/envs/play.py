"""Play a policy in many environments at once, all inside one compiled `lax.scan`.

Used by the oracle demo, the tests of the oracles' success rates and the benchmark. A policy is a
function `(key, state) -> action` for one environment; it is vmapped here.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

Policy = Callable[[jax.Array, object], jax.Array]


def random_policy(env) -> Policy:
    return lambda key, state: jax.random.randint(key, (), 0, env.num_actions)


def oracle_policy(env) -> Policy:
    return lambda key, state: env.oracle_action(key, state)


def make_play(env, policy: Policy, num_envs: int, num_steps: int, params=None):
    """A jitted `play(key) -> stats` that resets `num_envs` envs and steps them `num_steps` times.

    Returns (stats, rewards [num_steps, num_envs], final states). stats: episodes (finished),
    successes (return > 0), return_sum, length_sum, max_length, truncations, and first_return
    [num_envs] (NaN until an env's first episode ends). Rates over all finished episodes in a fixed
    window favour short episodes; rates over first episodes (`summarize`) are unbiased.
    """
    params = env.default_params if params is None else params
    step = jax.vmap(env.step, in_axes=(0, 0, 0, None))
    act = jax.vmap(policy)

    def body(carry, key):
        state, ep_return, ep_length, stats = carry
        k_act, k_step = jax.random.split(key)
        action = act(jax.random.split(k_act, num_envs), state)
        _, state, reward, terminated, truncated, _ = step(
            jax.random.split(k_step, num_envs), state, action, params
        )
        done = terminated | truncated
        ep_return = ep_return + reward
        ep_length = ep_length + 1
        stats = {
            "episodes": stats["episodes"] + jnp.sum(done),
            "successes": stats["successes"] + jnp.sum(done & (ep_return > 0)),
            "return_sum": stats["return_sum"] + jnp.sum(jnp.where(done, ep_return, 0.0)),
            "length_sum": stats["length_sum"] + jnp.sum(jnp.where(done, ep_length, 0)),
            "max_length": jnp.maximum(stats["max_length"], jnp.max(ep_length)),
            "truncations": stats["truncations"] + jnp.sum(truncated),
            "first_return": jnp.where(
                done & jnp.isnan(stats["first_return"]), ep_return, stats["first_return"]
            ),
        }
        ep_return = jnp.where(done, 0.0, ep_return)
        ep_length = jnp.where(done, 0, ep_length)
        return (state, ep_return, ep_length, stats), reward

    @jax.jit
    def play(key):
        k_reset, k_run = jax.random.split(key)
        _, state = jax.vmap(env.reset, in_axes=(0, None))(
            jax.random.split(k_reset, num_envs), params
        )
        zeros = jnp.zeros((num_envs,))
        stats = {
            "episodes": jnp.int32(0),
            "successes": jnp.int32(0),
            "return_sum": 0.0,
            "length_sum": jnp.int32(0),
            "max_length": jnp.int32(0),
            "truncations": jnp.int32(0),
            "first_return": jnp.full((num_envs,), jnp.nan),
        }
        carry = (state, zeros, zeros.astype(jnp.int32), stats)
        (state, _, _, stats), rewards = jax.lax.scan(
            body, carry, jax.random.split(k_run, num_steps)
        )
        return stats, rewards, state

    return play


def summarize(stats) -> dict[str, float]:
    stats = jax.device_get(stats)
    episodes = max(int(stats["episodes"]), 1)
    first = stats["first_return"][~np.isnan(stats["first_return"])]
    return {
        "first_episodes": int(first.size),
        "first_episode_success_rate": float(np.mean(first > 0)) if first.size else float("nan"),
        "episodes": int(stats["episodes"]),
        "success_rate": float(stats["successes"]) / episodes,
        "mean_return": float(stats["return_sum"]) / episodes,
        "mean_length": float(stats["length_sum"]) / episodes,
        "max_length": int(stats["max_length"]),
        "truncations": int(stats["truncations"]),
    }
