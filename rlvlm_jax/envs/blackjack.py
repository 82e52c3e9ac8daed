"""Blackjack with pixels: gymnasium's rules (infinite deck, dealer stands on soft 17, no natural
bonus), actions 0 = stand ("stick") and 1 = hit."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from gymnax.environments import environment

from rlvlm_jax.envs.base import CardEnv, CardEnvState
from rlvlm_jax.envs.render import (
    FELT,
    NUM_CARDS,
    WHITE,
    Layout,
    Picture,
    card_back,
    card_face,
    card_id,
    new_canvas,
    paste,
)

CARD_W, CARD_H = 52, 72
SHOWN_PLAYER_CARDS = 10  # two rows of five; later cards still count but are not drawn
MAX_DEALER_DRAWS = 15  # the dealer starts at >= 2 and stops at >= 17 drawing >= 1 per card


@struct.dataclass
class BlackjackState(CardEnvState):
    player_ranks: jax.Array  # int32[10] ranks shown (1..13; 10s show as J/Q/K), 0 = no card
    player_suits: jax.Array  # int32[10]
    num_player_cards: jax.Array
    player_sum: jax.Array  # aces counted as 1
    player_ace: jax.Array  # holds an ace
    dealer_rank: jax.Array  # the face-up card
    dealer_suit: jax.Array
    dealer_sum: jax.Array  # both cards, aces as 1
    dealer_ace: jax.Array


@struct.dataclass
class BlackjackParams(environment.EnvParams):
    max_steps_in_episode: int = 10_000  # unused: a hand always ends (bust or stand)


def hand_value(total, has_ace):
    """Best total: one ace counts 11 when that stays <= 21 (a "usable" ace)."""
    usable = has_ace & (total + 10 <= 21)
    return total + 10 * usable, usable


def draw_cards(key, shape):
    """(shown rank, value) of cards from the infinite deck [1..9, 10, 10, 10, 10]; a value of 10
    is shown as J, Q or K uniformly (never as a ten), as in gymnasium's picture."""
    k_rank, k_face = jax.random.split(key)
    rank = jax.random.randint(k_rank, shape, 1, 14)
    shown = jnp.where(rank >= 10, jax.random.randint(k_face, shape, 11, 14), rank)
    return shown, jnp.minimum(rank, 10)


class Blackjack(CardEnv, task="Blackjack"):
    """Hit: draw; bust -> -1, terminated. Stand: the dealer draws below 17 and the higher
    non-bust total wins (+1 / 0 / -1), terminated."""

    smallest_font = 72 * 0.27

    @property
    def default_params(self) -> BlackjackParams:
        return BlackjackParams()

    def _build_picture(self, size: int) -> Picture:
        lay = Layout(size, self.task, self.smallest_font)
        w, h = lay.px(CARD_W), lay.px(CARD_H)

        def face(variant):
            return card_face(variant // 4 + 1, variant % 4, w, h)

        def paint(v):
            img, draw = new_canvas(size, FELT)
            draw.text((lay.px(8), lay.px(6)), "Dealer", font=lay.font(22), fill=WHITE)
            paste(img, face(v["dealer"]), lay.px(8), lay.px(34))
            paste(img, card_back(w, h), lay.px(66), lay.px(34))
            draw.text((lay.px(8), lay.px(114)), "Player", font=lay.font(22), fill=WHITE)
            for i in range(SHOWN_PLAYER_CARDS):
                if v[f"player{i}"]:
                    r, c = divmod(i, 5)
                    paste(img, face(v[f"player{i}"] - 1), lay.px(8 + 58 * c), lay.px(142 + 80 * r))
            return np.asarray(img)

        variants = {"dealer": NUM_CARDS}
        variants.update({f"player{i}": NUM_CARDS + 1 for i in range(SHOWN_PLAYER_CARDS)})
        return Picture(size, paint, variants)

    def region_variants(self, state):
        out = {"dealer": card_id(state.dealer_rank, state.dealer_suit)}
        shown = jnp.where(
            state.player_ranks > 0, card_id(state.player_ranks, state.player_suits) + 1, 0
        )
        out.update({f"player{i}": shown[i] for i in range(SHOWN_PLAYER_CARDS)})
        return out

    def _reset_logic(self, key, params, canvas):
        k_cards, k_suits = jax.random.split(key)
        shown, values = draw_cards(k_cards, (4,))  # dealer up, dealer hole, player, player
        suits = jax.random.randint(k_suits, (3,), 0, 4)
        slots = jnp.arange(SHOWN_PLAYER_CARDS)
        return BlackjackState(
            time=jnp.int32(0),
            canvas=canvas,
            player_ranks=jnp.where(slots == 0, shown[2], jnp.where(slots == 1, shown[3], 0)),
            player_suits=jnp.where(slots == 0, suits[1], jnp.where(slots == 1, suits[2], 0)),
            num_player_cards=jnp.int32(2),
            player_sum=values[2] + values[3],
            player_ace=(values[2] == 1) | (values[3] == 1),
            dealer_rank=shown[0],
            dealer_suit=suits[0],
            dealer_sum=values[0] + values[1],
            dealer_ace=(values[0] == 1) | (values[1] == 1),
        )

    def _step_logic(self, key, state, action, params):
        k_hit, k_suit, k_dealer = jax.random.split(key, 3)
        hit = action == 1
        # Hit: one more card for the player.
        shown, value = draw_cards(k_hit, ())
        slot = jnp.arange(SHOWN_PLAYER_CARDS) == state.num_player_cards
        suit = jax.random.randint(k_suit, (), 0, 4)
        p_sum = state.player_sum + jnp.where(hit, value, 0)
        p_ace = state.player_ace | (hit & (value == 1))
        p_value, _ = hand_value(p_sum, p_ace)
        bust = p_value > 21
        # Stand: the dealer draws while below 17 (and so stands on soft 17).
        _, d_values = draw_cards(k_dealer, (MAX_DEALER_DRAWS,))

        def dealer_draw(i, carry):
            total, ace = carry
            draws = hand_value(total, ace)[0] < 17
            return total + jnp.where(draws, d_values[i], 0), ace | (draws & (d_values[i] == 1))

        d_sum, d_ace = jax.lax.fori_loop(
            0, MAX_DEALER_DRAWS, dealer_draw, (state.dealer_sum, state.dealer_ace)
        )
        d_value, _ = hand_value(d_sum, d_ace)
        player_score = jnp.where(p_value > 21, 0, p_value)
        dealer_score = jnp.where(d_value > 21, 0, d_value)
        stand_reward = jnp.sign(player_score - dealer_score).astype(jnp.float32)
        reward = jnp.where(hit, jnp.where(bust, -1.0, 0.0), stand_reward)
        terminated = jnp.where(hit, bust, True)
        nxt = state.replace(
            time=state.time + 1,
            player_ranks=jnp.where(hit & slot, shown, state.player_ranks),
            player_suits=jnp.where(hit & slot, suit, state.player_suits),
            num_player_cards=state.num_player_cards + hit.astype(jnp.int32),
            player_sum=p_sum,
            player_ace=p_ace,
            dealer_sum=jnp.where(hit, state.dealer_sum, d_sum),
            dealer_ace=jnp.where(hit, state.dealer_ace, d_ace),
        )
        return nxt, reward, terminated, jnp.bool_(False)

    def player_value(self, state):
        return hand_value(state.player_sum, state.player_ace)

    def text_fields(self, state):
        value, usable = self.player_value(state)
        shown = [int(r) for r in np.asarray(state.player_ranks) if r > 0]
        return {
            "player_sum": int(value),
            "usable_ace": bool(usable),
            "dealer_up_value": min(int(state.dealer_rank), 10),
            "player_cards": shown,
        }

    def oracle_action(self, key, state, params=None):
        """Basic strategy for hit/stand (infinite deck, dealer stands on soft 17)."""
        value, usable = self.player_value(state)
        up = jnp.minimum(state.dealer_rank, 10)
        return jnp.asarray(_strategy_table())[jnp.minimum(value, 31), usable.astype(jnp.int32), up]


@functools.cache
def _strategy_table() -> np.ndarray:
    from rlvlm_jax.envs.solvers import blackjack_strategy_table

    return np.asarray(blackjack_strategy_table(), np.int32)
