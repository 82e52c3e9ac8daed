"""EZPoints: make 12 from two cards with "+" and "*"."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rlvlm_jax.envs import formula as F
from rlvlm_jax.envs.formula_env import (
    FormulaEnv,
    FormulaState,
    card_of,
    card_slot_variants,
    paint_formula_slots,
)
from rlvlm_jax.envs.render import FELT, WHITE, Layout, Picture, card_face, new_canvas, paste

CARD_W, CARD_H = 135, 189


class EZPoints(FormulaEnv):
    """Actions 0..9 are the numbers 1..10, 10 = "+", 11 = "*", 12 = "="."""

    task = "EZPoints"
    action_strings = tuple(str(v) for v in range(1, 11)) + ("+", "*", "=")
    action_codes = tuple(range(1, 11)) + (F.PLUS, F.TIMES)
    num_cards = 2
    target = 12
    max_tokens = 5
    smallest_font = 26.0

    def _build_picture(self, size: int) -> Picture:
        lay = Layout(size, self.task, self.smallest_font)
        w, h = lay.px(CARD_W), lay.px(CARD_H)

        def paint(v):
            img, draw = new_canvas(size, FELT)
            for i in range(2):
                paste(
                    img, card_face(*card_of(v[f"card{i}"]), w, h), lay.px(10 + 145 * i), lay.px(15)
                )
            draw.text((lay.px(12), lay.px(214)), "Formula:", font=lay.font(26), fill=WHITE)
            paint_formula_slots(draw, lay, v, self.max_tokens, (12, 252), 6, 46, 0, 28)
            return np.asarray(img)

        return Picture(size, paint, card_slot_variants(2, self.max_tokens))

    def _reset_logic(self, key, params, canvas):
        k_rank, k_suit, k_coin, k_swap = jax.random.split(key, 4)
        first = jax.random.randint(k_rank, (), 2, 14)  # never an ace
        n1 = jnp.minimum(first, 10)
        divisor = (n1 == 1) | (n1 == 2) | (n1 == 3) | (n1 == 4) | (n1 == 6)
        n2 = jnp.where(divisor & jax.random.bernoulli(k_coin), 12 // n1, 12 - n1)
        ranks = jnp.stack([first, n2])  # the second card shows its number (10 as a ten)
        ranks = jnp.where(jax.random.bernoulli(k_swap), ranks[::-1], ranks)
        suits = jax.random.randint(k_suit, (2,), 0, 4)
        formula, length = self._empty_formula()
        return FormulaState(
            time=jnp.int32(0),
            canvas=canvas,
            ranks=ranks,
            suits=suits,
            formula=formula,
            length=length,
        )

    def solution_actions(self, state):
        a, b = self.card_values(state)
        op = jnp.where(a + b == self.target, 10, 11)  # "+" else "*" (every reset hand has one)
        solvable = (a + b == self.target) | (a * b == self.target)
        eq = self.equals_action
        actions = jnp.stack([a - 1, op, b - 1, eq, eq, eq]).astype(jnp.int32)
        return actions, solvable
