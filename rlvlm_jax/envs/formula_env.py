"""The rules shared by EZPoints and Points24: build a formula from the cards' numbers, press "=".

The formula is kept as token codes of `rlvlm_jax.envs.formula` (numbers are their own codes), and
"=" is judged by that module's exact rational evaluator inside the compiled step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from gymnax.environments import environment

from rlvlm_jax.envs import formula as F
from rlvlm_jax.envs.base import CardEnv, CardEnvState
from rlvlm_jax.envs.render import NUM_CARDS, card_id

TOKEN_TEXT = {
    F.PAD: "",
    F.BLANK: "",
    F.PLUS: "+",
    F.MINUS: "-",
    F.TIMES: "*",
    F.DIVIDE: "/",
    F.LPAREN: "(",
    F.RPAREN: ")",
    **{v: str(v) for v in range(1, 11)},
}
SUCCESS_REWARD = 10.0


@struct.dataclass
class FormulaState(CardEnvState):
    ranks: jax.Array  # int32[num_cards], 1..13 (face cards count 10)
    suits: jax.Array  # int32[num_cards], 0..3
    formula: jax.Array  # int32[max_tokens + 1] token codes, PAD after `length`
    length: jax.Array


@struct.dataclass
class FormulaParams(environment.EnvParams):
    max_steps_in_episode: int = 10_000  # unused: episodes end by "=" or by the formula-length rule


class FormulaEnv(CardEnv):
    """Rules (gym_cards.md): if the formula already has more than `max_tokens` tokens the step is
    truncated with reward -1 and the action is ignored; a number used more often than the cards
    show gives -1 and appends a blank token (which makes the formula unevaluable); "=" ends the
    episode with +10 if the formula equals `target` exactly and uses every card, else -1."""

    num_cards: int = 0
    target: int = 0
    max_tokens: int = 0
    # Token code of each action; "=" (the last action) has none.
    action_codes: tuple[int, ...] = ()

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

        ok, num, den = F.evaluate(state.formula, state.length)
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

    def _empty_formula(self):
        return jnp.zeros((self.max_tokens + 1,), jnp.int32), jnp.int32(0)

    def formula_tokens(self, state) -> list[str]:
        """The formula as the env's token strings; a blank shows as " " (as in the original)."""
        text = {
            code: tok for code, tok in zip(self.action_codes, self.action_strings, strict=False)
        }
        codes = np.asarray(state.formula)[: int(state.length)]
        return [text.get(int(c), " ") for c in codes]

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


def paint_formula_slots(draw, lay, variants, max_tokens, origin, cols, slot_w, row_h, size_pt):
    """Tokens in fixed slots (row-major), centred, white: fixed positions keep updates cheap."""
    fnt = lay.font(size_pt)
    for i in range(max_tokens + 1):
        text = TOKEN_TEXT[variants[f"slot{i}"]]
        if text:
            r, c = divmod(i, cols)
            x = lay.px(origin[0] + slot_w * c + slot_w / 2)
            y = lay.px(origin[1] + row_h * r)
            draw.text((x, y), text, font=fnt, fill=(255, 255, 255), anchor="ma")


def card_slot_variants(num_cards: int, max_tokens: int) -> dict[str, int]:
    out = {f"card{i}": NUM_CARDS for i in range(num_cards)}
    out.update({f"slot{i}": F.NUM_CODES for i in range(max_tokens + 1)})
    return out


def card_of(variant: int) -> tuple[int, int]:
    """(rank, suit) of a card id."""
    return variant // 4 + 1, variant % 4
