"""The four tasks' rules on hand-built states, and their reset laws, against gym_cards.md."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlvlm_jax.envs import Blackjack, EZPoints, NumberLine, Points24
from rlvlm_jax.envs import formula as F

KEY = jax.random.key(0)


@pytest.fixture(scope="module")
def nl():
    return NumberLine()


@pytest.fixture(scope="module")
def ez():
    return EZPoints()


@pytest.fixture(scope="module")
def p24():
    return Points24()


@pytest.fixture(scope="module")
def bj():
    return Blackjack()


_JITTED = {}


def step_env(env, state, action, key=KEY):
    """One transition without auto-reset, so the next state can be inspected."""
    if env not in _JITTED:  # one compilation per environment
        _JITTED[env] = jax.jit(env.step_env)
    _, nxt, reward, terminated, info = _JITTED[env](key, state, action, env.default_params)
    return nxt, float(reward), bool(terminated), bool(info["truncated"])


# ------------------------------------------------------------------------------------ NumberLine
@pytest.mark.parametrize(
    "position,goal,action,new_position,reward,terminated",
    [
        (2, 4, 1, 3, 0.0, False),  # closer
        (2, 4, 0, 1, -1.0, False),  # farther
        (3, 4, 1, 4, 1.0, True),  # reached
        (0, 3, 0, 0, -1.0, False),  # wall: no move, distance did not shrink
        (5, 2, 1, 5, -1.0, False),  # wall at 5
        (5, 4, 0, 4, 1.0, True),
        (1, 0, 0, 0, 1.0, True),
    ],
)
def test_numberline_moves(nl, position, goal, action, new_position, reward, terminated):
    _, state = nl.reset(KEY)
    state = state.replace(position=jnp.int32(position), goal=jnp.int32(goal))
    nxt, r, te, tr = step_env(nl, state, action)
    assert int(nxt.position) == new_position
    assert (r, te, tr) == (reward, terminated, False)
    assert int(nxt.time) == 1


def test_numberline_truncation_at_ten_steps(nl):
    _, state = nl.reset(KEY)
    state = state.replace(position=jnp.int32(0), goal=jnp.int32(5), time=jnp.int32(8))
    nxt, _, te, tr = step_env(nl, state, 0)  # step 9: not yet
    assert not te and not tr
    nxt, _, te, tr = step_env(nl, nxt, 0)  # step 10
    assert not te and tr
    # Reaching the goal on the 10th step is a termination, not a truncation.
    state = state.replace(position=jnp.int32(4), goal=jnp.int32(5), time=jnp.int32(9))
    _, r, te, tr = step_env(nl, state, 1)
    assert (r, te, tr) == (1.0, True, False)


def test_numberline_reset_law(nl):
    keys = jax.random.split(jax.random.key(1), 120_000)
    states = jax.jit(jax.vmap(lambda k: nl._reset_logic(k, None, jnp.zeros((), jnp.uint8))))(keys)
    start, goal = np.asarray(states.position), np.asarray(states.goal)
    expected = np.zeros((6, 6))
    for s, g in itertools.product(range(6), range(6)):
        expected[s, (g + 1) % 5 if g == s else g] += 1 / 36
    counts = np.zeros((6, 6))
    np.add.at(counts, (start, goal), 1)
    observed = counts / len(keys)
    assert np.all(np.diag(counts) == 0)
    np.testing.assert_allclose(observed, expected, atol=0.004)  # ~4 sigma at n=120k
    assert expected[4, 0] == pytest.approx(2 / 36) and expected[5, 1] == pytest.approx(2 / 36)


# ---------------------------------------------------------------------------------- EZPoints
def ez_state(env, ranks, formula=()):
    _, state = env.reset(KEY)
    codes = np.zeros(env.max_tokens + 1, np.int32)
    codes[: len(formula)] = formula
    return state.replace(
        ranks=jnp.asarray(ranks, jnp.int32),
        formula=jnp.asarray(codes),
        length=jnp.int32(len(formula)),
    )


def act(env, token):
    return env.action_strings.index(token)


def test_ezpoints_numbers_limited_by_cards(ez):
    state = ez_state(ez, [4, 3])
    nxt, r, te, tr = step_env(ez, state, act(ez, "4"))
    assert (r, te, tr) == (0.0, False, False) and list(nxt.formula[:1]) == [4]
    nxt, r, te, tr = step_env(ez, nxt, act(ez, "4"))  # a second 4: only one card shows 4
    assert (r, te, tr) == (-1.0, False, False)
    assert int(nxt.length) == 2 and int(nxt.formula[1]) == F.BLANK
    nxt, r, _, _ = step_env(ez, nxt, act(ez, "7"))  # no card shows 7
    assert r == -1.0 and int(nxt.formula[2]) == F.BLANK


def test_ezpoints_face_cards_count_ten_and_pairs(ez):
    state = ez_state(ez, [12, 2])  # Q and 2: 10 + 2 = 12
    for tok in ["10", "+", "2"]:
        state, r, te, _ = step_env(ez, state, act(ez, tok))
        assert r == 0.0 and not te
    _, r, te, tr = step_env(ez, state, act(ez, "="))
    assert (r, te, tr) == (10.0, True, False)
    state = ez_state(ez, [6, 6], [6, F.PLUS])
    state, r, _, _ = step_env(ez, state, act(ez, "6"))  # two sixes: the second is allowed
    assert r == 0.0


@pytest.mark.parametrize(
    "ranks,formula,reward",
    [
        ([4, 3], [4, F.TIMES, 3], 10.0),
        ([4, 3], [3, F.TIMES, 4], 10.0),
        ([6, 6], [6, F.PLUS, 6], 10.0),
        ([13, 2], [10, F.PLUS, 2], 10.0),
        ([4, 8], [4, F.PLUS, 8], 10.0),
        ([4, 8], [4, F.TIMES, 8], -1.0),  # wrong value
        ([4, 3], [4, F.TIMES], -1.0),  # syntax error
        ([6, 2], [6, F.TIMES, 2], 10.0),
        ([6, 6], [6, F.TIMES, 2], -1.0),  # 2 is not a card here, but also: unused card
        ([4, 3], [], -1.0),  # "=" on an empty formula
        ([4, 3], [4, F.BLANK, 3], -1.0),  # blank skipped: "4 3", two numbers in a row
        ([4, 3], [4, F.TIMES, F.BLANK, 3], 10.0),  # blank skipped: "4* 3" = 12
    ],
)
def test_ezpoints_equals(ez, ranks, formula, reward):
    state = ez_state(ez, ranks, formula)
    nxt, r, te, tr = step_env(ez, state, act(ez, "="))
    assert (r, te, tr) == (reward, True, False)
    assert int(nxt.length) == len(formula)  # "=" is not appended


def test_ezpoints_equals_needs_both_cards(ez):
    # 12 from one card is not enough: both cards must be used.
    state = ez_state(ez, [12, 2], [10, F.PLUS, 2])
    assert step_env(ez, state, act(ez, "="))[1] == 10.0
    state = ez_state(ez, [6, 6], [6, F.TIMES, 2])
    assert step_env(ez, state, act(ez, "="))[1] == -1.0


def test_ezpoints_truncation(ez):
    state = ez_state(ez, [4, 3], [4, F.PLUS, F.PLUS, F.PLUS, F.PLUS])  # 5 tokens: still allowed
    nxt, r, te, tr = step_env(ez, state, act(ez, "*"))
    assert (r, te, tr) == (0.0, False, False) and int(nxt.length) == 6
    after, r, te, tr = step_env(ez, nxt, act(ez, "="))  # more than 5 tokens: truncated
    assert (r, te, tr) == (-1.0, False, True)
    assert int(after.length) == 6 and np.array_equal(after.formula, nxt.formula)


def ezpoints_law():
    """Exact law of the (left, right) shown ranks from gym_cards.md's description."""
    law = {}
    for first in range(2, 14):
        n1 = min(first, 10)
        options = [(12 // n1, 0.5), (12 - n1, 0.5)] if n1 in (1, 2, 3, 4, 6) else [(12 - n1, 1)]
        for n2, p in options:
            for pair in ((first, n2), (n2, first)):
                law[pair] = law.get(pair, 0) + p / 12 / 2
    return law


def test_ezpoints_reset_law(ez):
    keys = jax.random.split(jax.random.key(2), 100_000)
    states = jax.jit(jax.vmap(lambda k: ez._reset_logic(k, None, jnp.zeros((), jnp.uint8))))(keys)
    ranks = np.asarray(states.ranks)
    suits = np.asarray(states.suits)
    law = ezpoints_law()
    observed = {}
    for pair in map(tuple, ranks.tolist()):
        observed[pair] = observed.get(pair, 0) + 1 / len(ranks)
    assert set(observed) <= set(law)
    for pair, p in law.items():
        assert observed.get(pair, 0) == pytest.approx(p, abs=4 * np.sqrt(p / len(ranks)) + 1e-4)
    assert ranks.min() >= 2  # never an ace
    np.testing.assert_allclose(
        np.bincount(suits.ravel(), minlength=4) / suits.size, 0.25, atol=0.005
    )


# ---------------------------------------------------------------------------------- Points24
def test_points24_exact_division(p24):
    # 8 / (3 - 8 / 3) = 24 exactly; the original's float check rejected it.
    tokens = ["8", "/", "(", "3", "-", "8", "/", "3", ")"]
    state = ez_state(p24, [8, 3, 8, 3])
    for tok in tokens:
        state, r, te, _ = step_env(p24, state, act(p24, tok))
        assert r == 0.0 and not te
    _, r, te, tr = step_env(p24, state, act(p24, "="))
    assert (r, te, tr) == (10.0, True, False)


@pytest.mark.parametrize(
    "ranks,tokens,reward",
    [
        ([1, 2, 3, 4], "1 * 2 * 3 * 4", 10.0),
        ([11, 12, 2, 2], "10 + 10 + 2 + 2", 10.0),  # J and Q count 10
        ([1, 2, 3, 4], "2 * 3 * 4", -1.0),  # a card unused
        ([1, 2, 3, 4], "( 1 + 2 + 3 ) * 4", 10.0),
        ([1, 2, 3, 4], "( 1 + 2 + 3 * 4", -1.0),  # unbalanced
        ([6, 6, 6, 6], "6 + 6 + 6 + 6", 10.0),
        ([6, 6, 6, 6], "6 * 6 - 6 - 6", 10.0),
        ([5, 5, 5, 1], "( 5 - 1 / 5 ) * 5", 10.0),
        ([2, 2, 2, 2], "2 / ( 2 - 2 ) + 2", -1.0),  # division by zero
    ],
)
def test_points24_equals(p24, ranks, tokens, reward):
    state = ez_state(p24, ranks)
    for tok in tokens.split():
        state, r, _, _ = step_env(p24, state, act(p24, tok))
        assert r == 0.0
    assert step_env(p24, state, act(p24, "="))[1:] == (reward, True, False)


def test_points24_truncation_after_twenty_tokens(p24):
    state = ez_state(p24, [1, 2, 3, 4], [F.LPAREN] * 20)
    nxt, r, te, tr = step_env(p24, state, act(p24, "("))
    assert (r, te, tr) == (0.0, False, False) and int(nxt.length) == 21
    _, r, te, tr = step_env(p24, nxt, act(p24, "1"))
    assert (r, te, tr) == (-1.0, False, True)


def test_points24_reset_law(p24):
    keys = jax.random.split(jax.random.key(3), 50_000)
    states = jax.jit(jax.vmap(lambda k: p24._reset_logic(k, None, jnp.zeros((), jnp.uint8))))(keys)
    ranks = np.asarray(states.ranks).ravel()
    counts = np.bincount(ranks, minlength=14)[1:]
    np.testing.assert_allclose(counts / ranks.size, 1 / 13, atol=0.003)
    assert np.all(np.asarray(states.length) == 0)


# --------------------------------------------------------------------------------- Blackjack
def bj_state(env, player, dealer_up, dealer_hole):
    """Player cards and dealer cards given as values 1..10 (ranks shown as the values)."""
    _, state = env.reset(KEY)
    ranks = np.zeros(10, np.int32)
    ranks[: len(player)] = player
    return state.replace(
        player_ranks=jnp.asarray(ranks),
        player_suits=jnp.zeros(10, jnp.int32),
        num_player_cards=jnp.int32(len(player)),
        player_sum=jnp.int32(sum(player)),
        player_ace=jnp.bool_(1 in player),
        dealer_rank=jnp.int32(dealer_up),
        dealer_sum=jnp.int32(dealer_up + dealer_hole),
        dealer_ace=jnp.bool_(1 in (dealer_up, dealer_hole)),
    )


def blackjack_value(cards):
    total = sum(cards)
    return total + 10 if 1 in cards and total + 10 <= 21 else total


def test_blackjack_hand_values(bj):
    from rlvlm_jax.envs.blackjack import hand_value

    for cards in [[1, 1], [1, 10], [1, 5, 10], [1, 1, 9], [10, 10, 2], [1, 6], [5, 6]]:
        v, _ = hand_value(jnp.int32(sum(cards)), jnp.bool_(1 in cards))
        assert int(v) == blackjack_value(cards)


def test_blackjack_hit_and_bust(bj):
    # Hit from hard 20: only an ace avoids the bust. Check against the drawn card.
    state = bj_state(bj, [10, 10], 5, 5)
    for seed in range(40):
        nxt, r, te, tr = step_env(bj, state, 1, jax.random.key(seed))
        card_value = min(int(nxt.player_ranks[2]), 10)
        assert int(nxt.num_player_cards) == 3
        if card_value == 1:
            assert (r, te) == (0.0, False)
        else:
            assert (r, te, tr) == (-1.0, True, False)
    # Soft hands do not bust: A + 5 plus any card stays <= 21 (the ace becomes 1).
    state = bj_state(bj, [1, 5], 5, 5)
    for seed in range(20):
        _, r, te, _ = step_env(bj, state, 1, jax.random.key(seed))
        assert (r, te) == (0.0, False)


@pytest.mark.parametrize(
    "player,dealer,reward",
    [
        ([10, 10], [10, 7], 1.0),  # 20 vs 17: dealer stands on 17
        ([10, 7], [10, 7], 0.0),  # push
        ([10, 6], [10, 8], -1.0),
        ([10, 8], [1, 6], 1.0),  # the dealer stands on soft 17 (A + 6): 18 beats it
        ([1, 10], [10, 9], 1.0),  # 21 (no natural bonus)
        ([10, 10, 1], [1, 10], 0.0),  # 21 vs 21
    ],
)
def test_blackjack_stand_without_dealer_draws(bj, player, dealer, reward):
    state = bj_state(bj, player, *dealer)
    nxt, r, te, tr = step_env(bj, state, 0)
    assert (r, te, tr) == (reward, True, False)
    assert int(nxt.dealer_sum) == sum(dealer)  # no card drawn


def test_blackjack_dealer_draws_below_17(bj):
    # Dealer 10 + 6 = 16 must draw: compare with the drawn cards by replaying the dealer's rule.
    state = bj_state(bj, [10, 9], 10, 6)
    outcomes = set()
    for seed in range(60):
        nxt, r, te, _ = step_env(bj, state, 0, jax.random.key(seed))
        d_sum, d_ace = int(nxt.dealer_sum), bool(nxt.dealer_ace)
        value = d_sum + 10 if d_ace and d_sum + 10 <= 21 else d_sum
        assert d_sum > 16 and value >= 17
        expected = 1.0 if value > 21 or value < 19 else (0.0 if value == 19 else -1.0)
        assert r == expected and te
        outcomes.add(r)
    assert outcomes == {-1.0, 0.0, 1.0}


def test_blackjack_tens_shown_as_faces(bj):
    keys = jax.random.split(jax.random.key(4), 20_000)
    states = jax.jit(jax.vmap(lambda k: bj._reset_logic(k, None, jnp.zeros((), jnp.uint8))))(keys)
    shown = np.concatenate(
        [np.asarray(states.player_ranks[:, :2]).ravel(), np.asarray(states.dealer_rank)]
    )
    assert not np.any(shown == 10)
    counts = np.bincount(shown, minlength=14)[1:] / shown.size
    np.testing.assert_allclose(counts[:9], 1 / 13, atol=0.005)
    np.testing.assert_allclose(counts[10:], 4 / 39, atol=0.006)
    assert np.all(
        np.asarray(states.player_sum)
        == np.minimum(np.asarray(states.player_ranks[:, :2]), 10).sum(1)
    )


def test_blank_tokens_are_skipped_as_in_the_original(ez):
    """The issue's example: cards 3 and 4, actions 3, 5 (no 5 held -> blank, -1), *, 4, =. The
    original evaluates "3 *4" = 12 (+10); the stricter reading (``blanks="invalid"``) gives -1."""
    strict = EZPoints(blanks="invalid")
    for env, want in ((ez, 10.0), (strict, -1.0)):
        state = ez_state(env, [3, 4])
        rewards = []
        for tok in ["3", "5", "*", "4", "="]:
            state, r, te, _ = step_env(env, state, act(env, tok))
            rewards.append(r)
        assert rewards == [0.0, -1.0, 0.0, 0.0, want] and te
        assert [F.CODE_TEXT[int(c)] for c in state.formula[:4]] == ["3", " ", "*", "4"]


def test_blanks_rule_is_checked():
    with pytest.raises(ValueError, match="blanks='space'.*'skip', 'invalid'"):
        Points24(blanks="space")
