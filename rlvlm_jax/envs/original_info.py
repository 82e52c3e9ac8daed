"""The original gym_cards `info` keys, as arrays, for code written against RL4VLM's environments.

RL4VLM's gym_cards returned, from `reset` and `step`, an `info` dict describing the game; our envs
return only `terminated`, `truncated`, `bad_action` and `final_observation`. Wrap an env to get the
original's keys as well, computed inside the compiled step (int32 arrays, no strings, so `jit`,
`vmap` and `scan` work), from the state the step reached *before* any auto-reset, i.e. what the
original reported for the step that ended an episode:

    env = OriginalInfoWrapper(rlvlm_jax.envs.make("gym_cards/EZPoints-v0")[0])
    obs, state, reward, terminated, truncated, info = env.step(key, state, action)
    info["Numbers"], to_original("EZPoints", jax.device_get(info))["Cards"]  # ['S3', 'HT'], ...

A wrapper rather than a flag on `make`: the envs' own step, its info and every experiment built
on it stay exactly as they are; the wrapper is opt-in, composes with gymnax's wrappers (apply it
first, it needs the card env itself), and `original_info(env, state)` gives the same keys for any
state, e.g. after `reset` (where the original also returned them; gymnax's reset returns no info).

How the original's keys map (original value -> array here):

NumberLine
  "Target": int goal                      -> int32 goal (0..5)
  "Current": int position                 -> int32 position (0..5)
EZPoints, Points24
  "Cards": ["H5", "SK", ...] suit + rank  -> int32[num_cards, 2] rows (rank 1..13, suit 0..3);
                                             the original's text is ORIGINAL_SUITS[suit] +
                                             ORIGINAL_RANKS[rank] (10 is "T")
  "Numbers": [5, 10, ...] card values     -> int32[num_cards] min(rank, 10)
  "Formula": [5, "+", " ", ...] tokens    -> int32[max_tokens + 1] token codes of
                                             `rlvlm_jax.envs.formula` (numbers 1..10 are their
                                             own codes, BLANK = a blank " " token), PAD (0)
                                             after the end
Blackjack
  "Player Card": [(value, face, suit)]    -> int32[10, 3] rows (value 1..10, rank, suit); rank 1
                                             is "A", 2..9 the number, 11..13 "J"/"Q"/"K" (a value
                                             10 is never shown as a ten); rows past the player's
                                             cards are 0. Only the first 10 cards are kept (the
                                             picture shows 10; an 11th card needs 10 low cards).
  "Dealer Card": [(value, face, suit)]    -> int32[1, 3]: the face-up card only. The original's
                                             list also held the face-down card and, after a
                                             stand, the dealer's draws; our state keeps only the
                                             hand's total, given as
  (no original key)                       -> "dealer_total": int32 best total of the dealer's
                                             whole hand (the original's sum_hand of its list)

`to_original(task, info)` turns one env's (host) info into the original's Python values.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from gymnax.wrappers.purerl import GymnaxWrapper

from rlvlm_jax.envs import formula as F
from rlvlm_jax.envs.base import CardEnv
from rlvlm_jax.envs.blackjack import hand_value
from rlvlm_jax.envs.tasks import get_task

# Our suit index 0..3 is spades, hearts, diamonds, clubs (`render.SUITS`); the original's letters.
ORIGINAL_SUITS = "SHDC"
# The original's rank text (`_card_num_to_str` / Blackjack's faces), by rank 1..13 (index 0 unused).
ORIGINAL_RANKS = ("", "A", "2", "3", "4", "5", "6", "7", "8", "9", "T", "J", "Q", "K")

# The keys each task adds (ours in lower case: the original had no such key).
KEYS = {
    "NumberLine": ("Target", "Current"),
    "EZPoints": ("Cards", "Numbers", "Formula"),
    "Points24": ("Cards", "Numbers", "Formula"),
    "Blackjack": ("Player Card", "Dealer Card", "dealer_total"),
}


def original_info(env: CardEnv, state) -> dict[str, jax.Array]:
    """The original's info keys for one (unbatched) state of `env`; traceable, vmap it for a
    batch."""
    task = _card_env(env).task
    i32 = functools.partial(jnp.asarray, dtype=jnp.int32)
    if task == "NumberLine":
        return {"Target": i32(state.goal), "Current": i32(state.position)}
    if task in ("EZPoints", "Points24"):
        return {
            "Cards": jnp.stack([state.ranks, state.suits], axis=-1).astype(jnp.int32),
            "Numbers": i32(jnp.minimum(state.ranks, 10)),
            "Formula": i32(state.formula),
        }
    if task == "Blackjack":
        ranks = state.player_ranks
        player = jnp.stack([jnp.minimum(ranks, 10), ranks, state.player_suits], axis=-1)
        up = jnp.stack([jnp.minimum(state.dealer_rank, 10), state.dealer_rank, state.dealer_suit])
        total, _ = hand_value(state.dealer_sum, state.dealer_ace)
        return {
            "Player Card": jnp.where(ranks[:, None] > 0, player, 0).astype(jnp.int32),
            "Dealer Card": up[None, :].astype(jnp.int32),
            "dealer_total": i32(total),
        }
    raise ValueError(f"original_info knows the four gym_cards tasks, not {task!r}")


def to_original(task: str, info: dict) -> dict[str, Any]:
    """The original's Python values (strings, tokens, tuples) of one env's info on the host
    (`jax.device_get` it first; index a batch row by row). Keys the original lacked are dropped."""
    task = get_task(task).name
    if task == "NumberLine":
        return {"Target": int(info["Target"]), "Current": int(info["Current"])}
    if task in ("EZPoints", "Points24"):
        cards = np.asarray(info["Cards"])
        codes = [int(c) for c in np.asarray(info["Formula"]) if c != F.PAD]
        return {
            "Cards": [ORIGINAL_SUITS[s] + ORIGINAL_RANKS[r] for r, s in cards.tolist()],
            "Numbers": [int(n) for n in np.asarray(info["Numbers"])],
            "Formula": [c if F.MIN_NUMBER <= c <= F.MAX_NUMBER else F.CODE_TEXT[c] for c in codes],
        }
    if task == "Blackjack":

        def cards(rows):
            return [(v, ORIGINAL_RANKS[r], ORIGINAL_SUITS[s]) for v, r, s in rows if v > 0]

        return {
            "Dealer Card": cards(np.asarray(info["Dealer Card"]).tolist()),
            "Player Card": cards(np.asarray(info["Player Card"]).tolist()),
        }
    raise ValueError(f"to_original knows the four gym_cards tasks, not {task!r}")


class OriginalInfoWrapper(GymnaxWrapper):
    """A card env whose `step` info also carries the original gym_cards keys (see the module
    docstring); everything else (observations, states, rewards, other keys) is the env's own."""

    def __init__(self, env: CardEnv):
        super().__init__(_card_env(env))

    def reset(self, key, params=None):
        return self._env.reset(key, params)

    def step(self, key, state, action, params=None):
        self._env.check_action(action)
        return self._step(key, state, action, params)

    @functools.partial(jax.jit, static_argnames=("self",))
    def _step(self, key, state, action, params=None):
        *out, info, reached = self._env.transition(key, state, action, params)
        return (*out, {**info, **original_info(self._env, reached)})


def _card_env(env) -> CardEnv:
    if not isinstance(env, CardEnv):
        raise TypeError(
            f"the original gym_cards info needs a card env (rlvlm_jax.envs.make(...)), got "
            f"{type(env).__name__}; wrap the card env with OriginalInfoWrapper first, then apply "
            "other wrappers around it"
        )
    return env
