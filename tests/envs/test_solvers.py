"""Points24/EZPoints solvers, their solvable shares, and Blackjack basic strategy."""

import itertools
import re
import time
from fractions import Fraction

import numpy as np
import pytest

from rlvlm_jax.envs import solvers


def _eval_fraction(tokens):
    """Independent check: Python's own parser on the formula with every number a Fraction."""
    src = re.sub(r"\d+", lambda m: f"Fraction({m.group()})", "".join(tokens))
    return eval(src, {"Fraction": Fraction})


FORMULA_TOKENS = set("1 2 3 4 5 6 7 8 9 10 + - * / ( )".split())


def _numbers(tokens):
    return sorted(int(t) for t in tokens if t.isdigit())


# ------------------------------------------------------------------------------------ Points24
def test_table_solutions_are_exact_and_use_the_hand():
    table = solvers.points24_solution_table()
    assert len(table) == 715
    assert sum(v is not None for v in table.values()) == 566  # the known 1..10 count
    for hand, sol in table.items():
        if sol is None:
            continue
        assert _numbers(sol) == list(hand)
        assert _eval_fraction(sol) == 24
        assert solvers.evaluate_tokens(sol) == 24
        assert set(sol) <= FORMULA_TOKENS
        assert not any(a.isdigit() and b.isdigit() for a, b in itertools.pairwise(sol))


def test_table_parentheses_are_minimal():
    """Dropping any parenthesis pair of a table solution breaks it (no redundant pair)."""
    for sol in solvers.points24_solution_table().values():
        if sol is None or "(" not in sol:
            continue
        stack, pairs = [], []
        for i, t in enumerate(sol):
            if t == "(":
                stack.append(i)
            elif t == ")":
                pairs.append((stack.pop(), i))
        for i, j in pairs:
            rest = [t for k, t in enumerate(sol) if k not in (i, j)]
            try:
                assert solvers.evaluate_tokens(rest) != 24, sol
            except ZeroDivisionError:
                pass


def test_known_hands():
    assert solvers.solve_points24((1, 1, 1, 1)) is None
    assert solvers.solve_points24((1, 1, 1, 2)) is None
    assert solvers.solve_points24((10, 10, 10, 10)) is None
    assert solvers.solve_points24((3, 3, 8, 8)) == ["8", "/", "(", "3", "-", "8", "/", "3", ")"]
    assert solvers.evaluate_tokens(solvers.solve_points24([8, 3, 8, 3])) == 24  # any order
    assert solvers.solve_points24((1, 2, 3, 4)) == ["1", "*", "2", "*", "3", "*", "4"]
    for hand in [(1, 5, 5, 5), (4, 4, 10, 10), (1, 4, 5, 6), (3, 3, 7, 7), (2, 2, 10, 10)]:
        sol = solvers.solve_points24(hand)
        assert sol is not None and _eval_fraction(sol) == 24 and _numbers(sol) == sorted(hand)
    assert solvers.solve_points24((2, 5), target=10) == ["2", "*", "5"]
    assert solvers.solve_points24((7,), target=7) == ["7"]


def test_float_semantics_reject_8_over_3_minus_8_over_3():
    assert not solvers.points24_float_solvable((3, 3, 8, 8))
    assert 8 / (3 - 8 / 3) != 24  # the reason
    assert solvers.points24_float_solvable((1, 5, 5, 5))  # (5-1/5)*5 happens to be 24.0
    assert solvers.points24_float_solvable((1, 2, 3, 4))
    assert not solvers.points24_float_solvable((1, 1, 1, 1))


def test_all_solutions_contain_the_table_solution():
    for hand in [(3, 3, 8, 8), (1, 2, 3, 4), (1, 4, 6, 10)]:
        sols = solvers.points24_solutions(hand)
        assert solvers.solve_points24(hand) in sols
        assert all(solvers.evaluate_tokens(s) == 24 for s in sols)
        assert all(_numbers(s) == sorted(hand) for s in sols)
    assert solvers.points24_solutions((1, 1, 1, 1)) == []


def _brute_force_prints(vals):
    """Every tree over the values in every leaf order, printed like the solver prints."""
    if len(vals) == 1:
        yield Fraction(vals[0]), [str(vals[0])], 3
        return
    for k in range(1, len(vals)):
        for idx in itertools.combinations(range(len(vals)), k):
            left = [vals[i] for i in idx]
            right = [vals[i] for i in range(len(vals)) if i not in idx]
            for lv, lt, lp in _brute_force_prints(left):
                for rv, rt, rp in _brute_force_prints(right):
                    for op in "+-*/":
                        if op == "/" and rv == 0:
                            continue
                        v = {"+": lv + rv, "-": lv - rv, "*": lv * rv, "/": lv / rv if rv else 0}
                        tokens, p = solvers._join(op, (lt, lp), (rt, rp))
                        yield v[op], tokens, p


@pytest.mark.parametrize("hand", [(1, 2, 3, 4), (3, 3, 8, 8), (1, 5, 5, 5), (2, 7, 9, 10)])
def test_all_solutions_match_brute_force(hand):
    brute = {tuple(t) for v, t, _ in _brute_force_prints(list(hand)) if v == 24}
    assert {tuple(s) for s in solvers.points24_solutions(hand)} == brute


def test_table_speed_from_cold():
    solvers._reachable.cache_clear()
    solvers._table24.cache_clear()
    t0 = time.perf_counter()
    table = solvers.points24_solution_table()
    assert time.perf_counter() - t0 < 5.0  # about 0.4 s on one core
    assert len(table) == 715


def test_solvable_shares():
    share = solvers.solvable_share_points24()
    assert 0.70 < share.exact < 0.76
    assert share.exact == Fraction(20876, 13**4)
    # the float check loses exactly the 6 orderings of (3, 3, 8, 8), each of weight 1/13^4
    assert share.exact - share.original_float == Fraction(6, 13**4)
    # cross-check the exact share by brute force over card values
    weights = {v: (4 if v == 10 else 1) for v in range(1, 11)}
    table = solvers.points24_solution_table()
    total = sum(
        weights[a] * weights[b] * weights[c] * weights[d]
        for a, b, c, d in itertools.product(range(1, 11), repeat=4)
        if table[tuple(sorted((a, b, c, d)))] is not None
    )
    assert Fraction(total, 13**4) == share.exact


def test_evaluate_tokens_errors():
    assert solvers.evaluate_tokens(["(", "1", "+", "2", ")", "*", "8"]) == 24
    assert solvers.evaluate_tokens(["6", " ", "*", "2"]) == 12  # blanks are ignored like spaces
    for bad in (["1", "+"], ["(", "1"], ["1", "2"], [")"], []):
        with pytest.raises(ValueError):
            solvers.evaluate_tokens(bad)
    with pytest.raises(ZeroDivisionError):
        solvers.evaluate_tokens(["1", "/", "(", "2", "-", "2", ")"])


# ------------------------------------------------------------------------------------ EZPoints
def test_ezpoints_every_reset_hand():
    for a in range(2, 11):
        seconds = {12 - a} | ({12 // a} if a in (1, 2, 3, 4, 6) else set())
        for b in seconds:
            for x, y in ((a, b), (b, a)):
                sol = solvers.solve_ezpoints(x, y)
                assert sol[0] == str(x) and sol[2] == str(y)  # card order kept
                assert solvers.evaluate_tokens(sol) == 12
    assert solvers.solve_ezpoints(6, 2) == ["6", "*", "2"]
    assert solvers.solve_ezpoints(10, 2) == ["10", "+", "2"]
    with pytest.raises(ValueError):
        solvers.solve_ezpoints(5, 5)


def test_numberline():
    assert solvers.numberline_optimal_action(0, 3) == 1
    assert solvers.numberline_optimal_action(5, 2) == 0
    with pytest.raises(ValueError):
        solvers.numberline_optimal_action(2, 2)


# ----------------------------------------------------------------------------------- Blackjack
H, S = 1, 0
# Textbook stand-on-soft-17 hit/stand chart; dealer columns 2..10 then ace.
TEXTBOOK_HARD = {
    12: [H, H, S, S, S, H, H, H, H, H],
    13: [S, S, S, S, S, H, H, H, H, H],
    14: [S, S, S, S, S, H, H, H, H, H],
    15: [S, S, S, S, S, H, H, H, H, H],
    16: [S, S, S, S, S, H, H, H, H, H],
    17: [S] * 10,
}
TEXTBOOK_SOFT = {17: [H] * 10, 18: [S, S, S, S, S, S, S, H, H, H], 19: [S] * 10}
DEALER_COLUMNS = [2, 3, 4, 5, 6, 7, 8, 9, 10, 1]


def test_basic_strategy_matches_textbook():
    table = solvers.blackjack_strategy_table()
    for soft, chart in ((0, TEXTBOOK_HARD), (1, TEXTBOOK_SOFT)):
        for total, row in chart.items():
            for up, want in zip(DEALER_COLUMNS, row, strict=True):
                assert solvers.blackjack_basic_action(total, soft, up) == want, (total, soft, up)
                assert table[total, soft, up] == want
    for up in range(1, 11):
        assert all(solvers.blackjack_basic_action(t, 0, up) == 1 for t in range(4, 12))
        assert all(solvers.blackjack_basic_action(t, 0, up) == 0 for t in range(17, 22))
        assert all(solvers.blackjack_basic_action(t, 1, up) == 1 for t in range(12, 18))
        assert all(solvers.blackjack_basic_action(t, 1, up) == 0 for t in range(19, 22))


def test_strategy_table_layout():
    table = solvers.blackjack_strategy_table()
    assert table.shape == (32, 2, 11) and table.dtype == np.int32
    assert (table[:, :, 0] == -1).all()
    assert set(np.unique(table[:, :, 1:])) == {0, 1}
    assert (table[22:, :, 1:] == 0).all()
    table[0, 0, 0] = 5  # a copy: the cached table is untouched
    assert solvers.blackjack_strategy_table()[0, 0, 0] == -1


def test_basic_strategy_win_rate():
    probs = solvers.blackjack_outcome_probabilities()
    assert probs["win"] + probs["push"] + probs["loss"] == 1
    assert 0.42 < probs["win"] < 0.44  # ~42.9%
    assert -0.06 < probs["ev"] < -0.03
    mc = solvers.blackjack_monte_carlo(60_000, seed=1)
    assert abs(mc["win"] - float(probs["win"])) < 0.012
    assert abs(mc["push"] - float(probs["push"])) < 0.01
    # and it beats never hitting (same random cards)
    never = solvers.blackjack_monte_carlo(60_000, seed=1, table=np.zeros((32, 2, 11), np.int32))
    assert never["win"] < mc["win"]
