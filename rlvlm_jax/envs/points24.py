"""Points24: make 24 from four cards with + - * / and parentheses, judged exactly."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from rlvlm_jax.envs.formula_env import FormulaEnv, FormulaLayout


class Points24(FormulaEnv, task="Points24"):
    """Actions 0..9 are the numbers 1..10, then "+", "-", "*", "/", "(", ")", "=".

    Deliberate difference from the original: "=" is judged with exact rational arithmetic, so
    formulas such as 8/(3-8/3) count as 24 (the original's float division rejected them).
    """

    num_cards = 4
    max_tokens = 20
    smallest_font = 22.0
    layout = FormulaLayout(
        card_size=(67, 93),
        card_origin=(6, 58),
        card_step=73,
        label_origin=(10, 162),
        label_font=24,
        slot_origin=(10, 196),
        slot_cols=7,
        slot_size=(40, 34),
        slot_font=22,
    )

    def _reset_logic(self, key, params, canvas):
        k_rank, k_suit = jax.random.split(key)
        ranks = jax.random.randint(k_rank, (4,), 1, 14)
        suits = jax.random.randint(k_suit, (4,), 0, 4)
        return self._fresh_state(ranks, suits, canvas)

    def solution_actions(self, state):
        values = jnp.sort(self.card_values(state))
        index = jnp.sum((values - 1) * jnp.array([1000, 100, 10, 1]))
        table, solvable = _solution_table(self.max_tokens + 1, self.equals_action)
        return jnp.asarray(table)[index], jnp.asarray(solvable)[index]


@functools.cache
def _solution_table(width: int, equals_action: int) -> tuple[np.ndarray, np.ndarray]:
    """Action ids of one exact solution per sorted hand (indexed by its values in base 10)."""
    from rlvlm_jax.envs.solvers import points24_solution_table

    strings = Points24.action_strings
    table = np.full((10_000, width), equals_action, np.int32)
    solvable = np.zeros((10_000,), bool)
    for hand, tokens in points24_solution_table().items():
        if tokens is None:
            continue
        index = sum((v - 1) * 10 ** (3 - i) for i, v in enumerate(sorted(hand)))
        assert len(tokens) < width, tokens
        table[index, : len(tokens)] = [strings.index(t) for t in tokens]
        solvable[index] = True
    return table, solvable
