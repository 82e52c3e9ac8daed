"""EZPoints: make 12 from two cards with "+" and "*"."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rlvlm_jax.envs.formula_env import FormulaEnv, FormulaLayout


class EZPoints(FormulaEnv, task="EZPoints"):
    """Actions 0..9 are the numbers 1..10, 10 = "+", 11 = "*", 12 = "="."""

    num_cards = 2
    max_tokens = 5
    smallest_font = 26.0
    layout = FormulaLayout(
        card_size=(135, 189),
        card_origin=(10, 15),
        card_step=145,
        label_origin=(12, 214),
        label_font=26,
        slot_origin=(12, 252),
        slot_cols=6,
        slot_size=(46, 0),
        slot_font=28,
    )

    def _reset_logic(self, key, params, canvas):
        k_rank, k_suit, k_coin, k_swap = jax.random.split(key, 4)
        first = jax.random.randint(k_rank, (), 2, 14)  # never an ace
        n1 = jnp.minimum(first, 10)
        divisor = (n1 == 1) | (n1 == 2) | (n1 == 3) | (n1 == 4) | (n1 == 6)
        n2 = jnp.where(divisor & jax.random.bernoulli(k_coin), 12 // n1, 12 - n1)
        ranks = jnp.stack([first, n2])  # the second card shows its number (10 as a ten)
        ranks = jnp.where(jax.random.bernoulli(k_swap), ranks[::-1], ranks)
        suits = jax.random.randint(k_suit, (2,), 0, 4)
        return self._fresh_state(ranks, suits, canvas)

    def solution_actions(self, state):
        a, b = self.card_values(state)
        op = jnp.where(a + b == self.target, 10, 11)  # "+" else "*" (every reset hand has one)
        solvable = (a + b == self.target) | (a * b == self.target)
        eq = self.equals_action
        actions = jnp.stack([a - 1, op, b - 1, eq, eq, eq]).astype(jnp.int32)
        return actions, solvable
