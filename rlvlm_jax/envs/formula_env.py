"""The rules shared by EZPoints and Points24: build a formula from the cards' numbers, press "=".

The formula is kept as token codes of `rlvlm_jax.envs.formula` (numbers are their own codes), and
"=" is judged by that module's exact rational evaluator inside the compiled step.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from gymnax.environments import environment

from rlvlm_jax.envs import formula as F
from rlvlm_jax.envs.base import CardEnv, CardEnvState
from rlvlm_jax.envs.render import (
    FELT,
    NUM_CARDS,
    WHITE,
    Layout,
    Picture,
    card_face,
    card_id,
    new_canvas,
    paste,
)

SUCCESS_REWARD = 10.0


class FormulaLayout(NamedTuple):
    """Where a formula task draws things, in design (300 px) units."""

    card_size: tuple[int, int]  # w, h
    card_origin: tuple[int, int]  # x, y of the first card
    card_step: int  # x distance between cards
    label_origin: tuple[int, int]  # "Formula:"
    label_font: int
    slot_origin: tuple[int, int]  # the first token slot
    slot_cols: int
    slot_size: tuple[int, int]  # w, row height
    slot_font: int


@struct.dataclass
class FormulaState(CardEnvState):
    ranks: jax.Array  # int32[num_cards], 1..13 (face cards count 10)
    suits: jax.Array  # int32[num_cards], 0..3
    formula: jax.Array  # int32[max_tokens + 1] token codes, PAD after `length`
    length: jax.Array


@struct.dataclass
class FormulaParams(environment.EnvParams):
    max_steps_in_episode: int = 10_000  # unused: episodes end by "=" or by the formula-length rule


BLANK_RULES = ("skip", "invalid")


class FormulaEnv(CardEnv):
    """Rules (gym_cards.md): if the formula already has more than `max_tokens` tokens the step is
    truncated with reward -1 and the action is ignored; a number used more often than the cards
    show gives -1 and appends a blank token; "=" ends the episode with +10 if the formula equals
    `target` exactly and uses every card, else -1.

    Args (beyond `CardEnv`'s):
      blanks: how "=" reads a blank token. "skip" (default, the original: a blank is a space in
        the string Python evaluates, so cards 3 and 4 with 3, unheld 5, *, 4 make 12) or
        "invalid" (stricter: any blank makes the formula unevaluable).
    """

    num_cards: int = 0
    max_tokens: int = 0
    layout: FormulaLayout
    target: int = 0  # from the task table
    action_codes: tuple[int, ...] = ()  # from the table's action strings through `F.TEXT_CODE`

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.task_spec is not None:
            # The formula's goal, and the token code of each action but "=" (the last, no code).
            cls.target = cls.task_spec.target
            cls.action_codes = tuple(F.TEXT_CODE[s] for s in cls.action_strings[:-1])

    def __init__(self, image_size: int | None = None, final_observation: bool = False,
                 blanks: str = "skip", **kwargs):
        if blanks not in BLANK_RULES:
            raise ValueError(f"{self.task}: blanks={blanks!r}; choose one of {BLANK_RULES} "
                             "('skip' reads a blank as the original's space)")
        self.blanks = blanks
        super().__init__(image_size, final_observation, **kwargs)

    def _build_picture(self, size: int) -> Picture:
        lay, spec = Layout(size, self.task, self.smallest_font), self.layout
        w, h = lay.px(spec.card_size[0]), lay.px(spec.card_size[1])
        x0, y0 = spec.card_origin

        def paint(v):
            img, draw = new_canvas(size, FELT)
            for i in range(self.num_cards):
                face = card_face(*card_of(v[f"card{i}"]), w, h)
                paste(img, face, lay.px(x0 + spec.card_step * i), lay.px(y0))
            label_xy = (lay.px(spec.label_origin[0]), lay.px(spec.label_origin[1]))
            draw.text(label_xy, "Formula:", font=lay.font(spec.label_font), fill=WHITE)
            fnt = lay.font(spec.slot_font)
            (sx, sy), (sw, sh) = spec.slot_origin, spec.slot_size
            for i in range(self.max_tokens + 1):
                text = F.CODE_TEXT.get(v[f"slot{i}"], "").strip()  # PAD, BLANK: nothing
                if text:  # fixed slots (row-major), centred: fixed positions keep updates cheap
                    r, c = divmod(i, spec.slot_cols)
                    xy = (lay.px(sx + sw * c + sw / 2), lay.px(sy + sh * r))
                    draw.text(xy, text, font=fnt, fill=WHITE, anchor="ma")
            return np.asarray(img)

        variants = {f"card{i}": NUM_CARDS for i in range(self.num_cards)}
        variants.update({f"slot{i}": F.NUM_CODES for i in range(self.max_tokens + 1)})
        return Picture(size, paint, variants)

    def _fresh_state(self, ranks, suits, canvas) -> FormulaState:
        return FormulaState(
            time=jnp.int32(0),
            canvas=canvas,
            ranks=ranks,
            suits=suits,
            formula=jnp.zeros((self.max_tokens + 1,), jnp.int32),
            length=jnp.int32(0),
        )

    @property
    def default_params(self) -> FormulaParams:
        return FormulaParams()

    @property
    def equals_action(self) -> int:
        return self.num_actions - 1

    def card_values(self, state):
        return jnp.minimum(state.ranks, 10)

    def region_variants(self, state):
        ids = card_id(state.ranks, state.suits)
        out = {f"card{i}": ids[i] for i in range(self.num_cards)}
        out.update({f"slot{i}": state.formula[i] for i in range(self.max_tokens + 1)})
        out["formula"] = (state.formula, state.length)  # the original style's line of tokens
        return out

    def _step_logic(self, key, state, action, params):
        over = state.length > self.max_tokens
        is_eq = action == self.equals_action
        code = jnp.asarray(np.array(self.action_codes + (F.PAD,), np.int32))[action]
        is_num = (code >= 1) & (code <= 10)
        values = self.card_values(state)
        in_formula = jnp.arange(self.max_tokens + 1) < state.length
        used = jnp.sum((state.formula == code) & in_formula)
        available = jnp.sum(values == code)
        valid = ~is_num | (used < available)
        append = ~over & ~is_eq
        new_code = jnp.where(valid, code, F.BLANK)
        slot = jnp.arange(self.max_tokens + 1) == state.length
        formula = jnp.where(append & slot, new_code, state.formula)
        length = state.length + append.astype(jnp.int32)

        judged = (state.formula, state.length)
        if self.blanks == "skip":
            judged = F.without_blanks(*judged)
        ok, num, den = F.evaluate(*judged)
        # Every card used, each exactly once: the formula's numbers are the cards' multiset.
        numbers = jnp.arange(1, 11)[:, None]
        in_cards = jnp.sum(values[None, :] == numbers, axis=1)
        in_use = jnp.sum((state.formula[None, :] == numbers) & in_formula[None, :], axis=1)
        all_used = jnp.all(in_cards == in_use)
        success = ok & (den == 1) & (num == self.target) & all_used
        reward = jnp.where(
            over,
            -1.0,
            jnp.where(is_eq, jnp.where(success, SUCCESS_REWARD, -1.0), jnp.where(valid, 0.0, -1.0)),
        )
        terminated = ~over & is_eq
        nxt = state.replace(time=state.time + 1, formula=formula, length=length)
        return nxt, reward, terminated, over

    def formula_tokens(self, state) -> list[str]:
        """The formula as the env's token strings; a blank shows as " " (as in the original)."""
        codes = np.asarray(state.formula)[: int(state.length)]
        return [F.CODE_TEXT[int(c)] for c in codes]

    def text_fields(self, state):
        return {
            "cards": [int(r) for r in np.asarray(state.ranks)],
            "formula": self.formula_tokens(state),
        }

    # ---------------------------------------------------------------------- oracle
    def solution_actions(self, state) -> tuple[jax.Array, jax.Array]:
        """(int32[max_tokens + 1] action ids of a solution followed by "=", solvable flag)."""
        raise NotImplementedError

    def oracle_action(self, key, state, params=None):
        """Play the stored solution token by token, then "=". Off the solution's path (a state
        that another policy reached) or on an unsolvable hand it presses "=" at once."""
        actions, solvable = self.solution_actions(state)
        codes = jnp.asarray(np.array(self.action_codes + (F.PAD,), np.int32))[actions]
        in_formula = jnp.arange(self.max_tokens + 1) < state.length
        on_path = ~jnp.any(in_formula & (state.formula != codes))
        nxt = actions[jnp.minimum(state.length, self.max_tokens)]
        return jnp.where(solvable & on_path, nxt, self.equals_action).astype(jnp.int32)


def card_of(variant: int) -> tuple[int, int]:
    """(rank, suit) of a card id."""
    return variant // 4 + 1, variant % 4
