"""Oracles for the card tasks: Points24/EZPoints solvers, Blackjack basic strategy, NumberLine.

Used for SFT demonstrations, on-device oracle tables and to know the best achievable success
rates. Everything is exact (fractions) unless a function says otherwise.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from fractions import Fraction
from typing import NamedTuple

import numpy as np

# ============================================================================ arithmetic formulas
# A formula is a list of Points24 action strings. Precedence: 1 for + -, 2 for * /, 3 for a number.
_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}
_ATOM = 3


def _apply(op: str, a, b):
    """a op b, or None for a division by zero; works for Fraction and for Python int/float."""
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if b == 0:
        return None
    return a / b


def _join(op: str, left: tuple, right: tuple) -> tuple[list[str], int]:
    """Prints `left op right` with the fewest parentheses that keep the tree's grouping.

    `left`/`right` are (tokens, precedence). A right operand of equal precedence needs parentheses
    only under the non-associative "-" and "/"; everything else follows precedence. Dropping the
    parentheses of a+(b-c) or a*(b/c) re-groups the formula but keeps its exact value.
    """
    (lt, lp), (rt, rp) = left, right
    p = _PREC[op]
    if lp < p:
        lt = ["(", *lt, ")"]
    if rp < p or (rp == p and op in "-/"):
        rt = ["(", *rt, ")"]
    return [*lt, op, *rt], p


def evaluate_tokens(tokens: Sequence[str]) -> Fraction:
    """Exact value of a formula of action strings (the correct version of the env's `eval`).

    Raises ValueError for malformed formulas and ZeroDivisionError for a division by zero. Only
    binary + - * / and parentheses: no unary minus, no digit concatenation.
    """
    toks = [t for t in tokens if t.strip()]
    pos = 0

    def peek():
        return toks[pos] if pos < len(toks) else None

    def take():
        nonlocal pos
        pos += 1
        return toks[pos - 1]

    def atom() -> Fraction:
        t = peek()
        if t == "(":
            take()
            v = expr()
            if peek() != ")":
                raise ValueError(f"missing ')' in {tokens}")
            take()
            return v
        if t is not None and t.isdigit():
            take()
            return Fraction(int(t))
        raise ValueError(f"unexpected {t!r} in {tokens}")

    def term() -> Fraction:
        v = atom()
        while peek() in ("*", "/"):
            op = take()
            rhs = atom()
            if op == "/" and rhs == 0:
                raise ZeroDivisionError(f"division by zero in {tokens}")
            v = v * rhs if op == "*" else v / rhs
        return v

    def expr() -> Fraction:
        v = term()
        while peek() in ("+", "-"):
            op = take()
            rhs = term()
            v = v + rhs if op == "+" else v - rhs
        return v

    value = expr()
    if pos != len(toks):
        raise ValueError(f"trailing {toks[pos:]} in {tokens}")
    return value


def _sub_splits(values: tuple[int, ...]):
    """Ordered (left, right) splits of a sorted multiset into two sorted non-empty multisets."""
    n = len(values)
    seen = set()
    for k in range(1, n):
        for idx in itertools.combinations(range(n), k):
            left = tuple(values[i] for i in idx)
            if left in seen:
                continue
            seen.add(left)
            right = tuple(values[i] for i in range(n) if i not in idx)
            yield left, right


def _cost(tokens: list[str], negative: int) -> tuple:
    """Preference among equal-valued formulas: fewest parentheses, fewest negative intermediates."""
    return (tokens.count("("), negative, len(tokens), tokens)


@functools.cache
def _reachable(values: tuple[int, ...]) -> dict[Fraction, dict[int, tuple]]:
    """value -> {top precedence: (cost, tokens, negatives)} for a sorted multiset, best per class.

    Keeping the best formula per top-level precedence class (not just per value) is what lets the
    parent choose the print with the fewest parentheses.
    """
    if len(values) == 1:
        tokens = [str(values[0])]
        return {Fraction(values[0]): {_ATOM: (_cost(tokens, 0), tokens, 0)}}
    out: dict[Fraction, dict[int, tuple]] = {}
    for left, right in _sub_splits(values):
        for lv, lclasses in _reachable(left).items():
            for rv, rclasses in _reachable(right).items():
                for op in "+-*/":
                    v = _apply(op, lv, rv)
                    if v is None:
                        continue
                    slot = out.setdefault(v, {})
                    for lp, (_, lt, ln) in lclasses.items():
                        for rp, (_, rt, rn) in rclasses.items():
                            tokens, p = _join(op, (lt, lp), (rt, rp))
                            neg = ln + rn + (v < 0)
                            cand = (_cost(tokens, neg), tokens, neg)
                            if p not in slot or cand[0] < slot[p][0]:
                                slot[p] = cand
    return out


def _target_pairs(lmap: dict, rmap: dict, t: Fraction):
    """(op, left value, right value) with `left op right == t`, scanning the smaller side only."""
    if len(lmap) <= len(rmap):
        for lv in lmap:
            cands = [("+", t - lv), ("-", lv - t)]
            if lv:
                cands.append(("*", t / lv))
                if t:
                    cands.append(("/", lv / t))
            for op, rv in cands:
                if rv in rmap:
                    yield op, lv, rv
    else:
        for rv in rmap:
            cands = [("+", t - rv), ("-", t + rv)]
            if rv:
                cands += [("*", t / rv), ("/", t * rv)]
            for op, lv in cands:
                if lv in lmap:
                    yield op, lv, rv


def solve_points24(values: Sequence[int], target: int = 24) -> list[str] | None:
    """A formula (action strings) using each value once that equals `target` exactly, or None.

    Among all solutions it prints one with the fewest parentheses (then fewest negative
    intermediate values, then shortest, then lexicographically first), so the result is
    deterministic and the easiest for a model to write. Exact fractions: 8/(3-8/3) counts.

    Speed: reachable values of every sub-multiset of size <= 3 are memoised; the full hand is
    checked target-first (for each split, scan the smaller side's values and look up the partner
    value that would hit the target), so all 715 distinct hands take about 0.4 s from cold.
    A target of 0 would miss "x * 0" solutions; the tasks' targets are 24 and 12.
    """
    vals = tuple(sorted(int(v) for v in values))
    if len(vals) == 1:
        return [str(vals[0])] if vals[0] == target else None
    t = Fraction(target)
    best = None
    for left, right in _sub_splits(vals):
        lmap, rmap = _reachable(left), _reachable(right)
        for op, lv, rv in _target_pairs(lmap, rmap, t):
            for lp, (_, lt, ln) in lmap[lv].items():
                for rp, (_, rt, rn) in rmap[rv].items():
                    tokens, _ = _join(op, (lt, lp), (rt, rp))
                    cost = _cost(tokens, ln + rn + (t < 0))
                    if best is None or cost < best[0]:
                        best = (cost, tokens)
    return None if best is None else list(best[1])


@functools.lru_cache(maxsize=1)
def _table24() -> dict[tuple[int, ...], tuple[str, ...] | None]:
    table = {}
    for hand in itertools.combinations_with_replacement(range(1, 11), 4):
        sol = solve_points24(hand)
        table[hand] = None if sol is None else tuple(sol)
    return table


def points24_solution_table() -> dict[tuple[int, ...], list[str] | None]:
    """Sorted 4-tuple of values 1..10 -> a minimal-parentheses solution for 24, or None (cached)."""
    return {k: (None if v is None else list(v)) for k, v in _table24().items()}


@functools.cache
def _expression_map(values: tuple[int, ...]) -> dict[Fraction, tuple[tuple[tuple, int], ...]]:
    """value -> every (tokens, precedence) formula tree over a sorted multiset, in any leaf order.

    Only used for sub-multisets of a hand (size <= 3), where it stays small and is shared.
    """
    if len(values) == 1:
        return {Fraction(values[0]): (((str(values[0]),), _ATOM),)}
    out: dict[Fraction, list] = {}
    for left, right in _sub_splits(values):
        for lv, lexprs in _expression_map(left).items():
            for rv, rexprs in _expression_map(right).items():
                for op in "+-*/":
                    v = _apply(op, lv, rv)
                    if v is None:
                        continue
                    bucket = out.setdefault(v, [])
                    for lt, lp in lexprs:
                        for rt, rp in rexprs:
                            tokens, p = _join(op, (lt, lp), (rt, rp))
                            bucket.append((tuple(tokens), p))
    return {v: tuple(e) for v, e in out.items()}


@functools.lru_cache(maxsize=4096)
def _all_solutions(values: tuple[int, ...], target: int) -> tuple[tuple[str, ...], ...]:
    t = Fraction(target)
    if len(values) == 1:
        return ((str(values[0]),),) if values[0] == target else ()
    sols = set()
    for left, right in _sub_splits(values):
        lmap, rmap = _expression_map(left), _expression_map(right)
        for op, lv, rv in _target_pairs(lmap, rmap, t):
            for lt, lp in lmap[lv]:
                for rt, rp in rmap[rv]:
                    sols.add(tuple(_join(op, (lt, lp), (rt, rp))[0]))
    return tuple(sorted(sols, key=lambda s: _cost(list(s), 0)))


def points24_solutions(values: Sequence[int], target: int = 24) -> list[list[str]]:
    """Every distinct minimal-parentheses print of every formula tree equal to `target`.

    Used to continue a partly written formula (any solution it is a prefix of). Sorted by fewest
    parentheses first. Found target-first like `solve_points24`; cached per hand.
    """
    vals = tuple(sorted(int(v) for v in values))
    return [list(t) for t in _all_solutions(vals, target)]


# ---------------------------------------------------------------- the original's float semantics
@functools.cache
def _reachable_float(values: tuple[int, ...]) -> frozenset:
    """Values Python's `eval` can produce from the multiset (ints stay ints until a division)."""
    if len(values) == 1:
        return frozenset([values[0]])
    out = set()
    for left, right in _sub_splits(values):
        for a in _reachable_float(left):
            for b in _reachable_float(right):
                for op in "+-*/":
                    v = _apply(op, a, b)
                    if v is not None:
                        out.add(v)
    return frozenset(out)


def points24_float_solvable(values: Sequence[int], target: int = 24) -> bool:
    """Whether some formula reaches `target` under the original env's check, `eval(f) == target`.

    Python evaluates the formula in floats once a division occurs, so 8/(3-8/3) gives
    23.999999999999982 and is rejected. Every tree can be written with the parenthesis tokens, so
    the question is whether any tree's float value equals the target. Merging equal values (6 and
    6.0) is safe: the result of each later operation depends only on the operand values.

    Scope: binary + - * / and parentheses only. The original's `eval` on concatenated tokens also
    accepts tricks no card rule intends (adjacent digits such as "2","4" reading 24, "**" from two
    "*", "//" from two "/", unary minus); they are not counted here.
    """
    vals = tuple(sorted(int(v) for v in values))
    return target in _reachable_float(vals)


_CARD_VALUE_WEIGHTS = {v: (4 if v == 10 else 1) for v in range(1, 11)}  # out of 13 ranks


class Points24Share(NamedTuple):
    exact: Fraction  # a solution exists in exact arithmetic
    original_float: Fraction  # some formula passes the original's float `== 24`


@functools.lru_cache(maxsize=1)
def solvable_share_points24() -> Points24Share:
    """Exact probability that a reset hand (4 cards, rank uniform 1..13, value min(rank, 10)) can
    make 24, in exact arithmetic and under the original's float check (denominator 13^4)."""
    table = _table24()
    exact = floating = 0
    for hand in itertools.product(range(1, 11), repeat=4):
        w = 1
        for v in hand:
            w *= _CARD_VALUE_WEIGHTS[v]
        key = tuple(sorted(hand))
        if table[key] is not None:
            exact += w
            # A float result equal to 24 implies an exact value within ~1e-13 of 24, and values of
            # four cards <= 10 are fractions with small denominators, so it IS 24: only exactly
            # solvable hands need the float check.
            if points24_float_solvable(key):
                floating += w
    return Points24Share(Fraction(exact, 13**4), Fraction(floating, 13**4))


# ======================================================================================= EZPoints
def ezpoints_solutions(a: int, b: int, target: int = 12) -> list[list[str]]:
    """All EZPoints formulas (number op number with + or *) equal to target, card order first."""
    out = []
    for x, y in ((a, b), (b, a)):
        for op in "+*":
            if _apply(op, x, y) == target:
                sol = [str(x), op, str(y)]
                if sol not in out:
                    out.append(sol)
    return out


def solve_ezpoints(a: int, b: int, target: int = 12) -> list[str]:
    """The EZPoints formula for values (a, b) in card order, e.g. (6, 2) -> ["6", "*", "2"].

    Every reset hand is solvable (the second card is drawn as 12 - a or 12 // a); anything else
    raises ValueError.
    """
    sols = ezpoints_solutions(a, b, target)
    if not sols:
        raise ValueError(f"no EZPoints formula makes {target} from {a} and {b}")
    return sols[0]


# ===================================================================================== NumberLine
def numberline_optimal_action(position: int, goal: int) -> int:
    """1 ("+") below the goal, 0 ("-") above it; the env never shows position == goal."""
    if position == goal:
        raise ValueError("position equals goal: the episode has already ended")
    return 1 if position < goal else 0


# ====================================================================================== Blackjack
# Gymnasium's rules: infinite deck [1..9, 10, 10, 10, 10]; the dealer's hole card is dealt at reset
# and never peeked (a dealer blackjack simply counts as 21 at the showdown); the dealer draws below
# 17 counting a usable ace as 11 (stands on soft 17); no natural bonus; only hit and stand.
_DECK = {v: Fraction(4 if v == 10 else 1, 13) for v in range(1, 11)}


def _add_card(total: int, soft: bool, card: int) -> tuple[int, bool]:
    """Adds a card to (total counting a usable ace as 11, usable ace), gymnasium's `sum_hand`."""
    if soft:
        total += card
        return (total - 10, False) if total > 21 else (total, True)
    if card == 1 and total + 11 <= 21:
        return total + 11, True
    return total + card, False


@functools.cache
def _dealer_final(total: int, soft: bool) -> tuple[tuple[int, Fraction], ...]:
    """Distribution of the dealer's final total (22 = bust) from a dealer hand state."""
    if total > 21:
        return ((22, Fraction(1)),)
    if total >= 17:
        return ((total, Fraction(1)),)
    dist: dict[int, Fraction] = {}
    for card, p in _DECK.items():
        for final, q in _dealer_final(*_add_card(total, soft, card)):
            dist[final] = dist.get(final, Fraction(0)) + p * q
    return tuple(sorted(dist.items()))


def _dealer_from_up(up: int) -> tuple[tuple[int, Fraction], ...]:
    return _dealer_final(*_add_card(0, False, up))


class _Outcome(NamedTuple):
    win: Fraction
    push: Fraction
    loss: Fraction

    @property
    def ev(self) -> Fraction:
        return self.win - self.loss


def _stand_outcome(total: int, up: int) -> _Outcome:
    win = push = loss = Fraction(0)
    for final, p in _dealer_from_up(up):
        if final > 21 or total > final:
            win += p
        elif total == final:
            push += p
        else:
            loss += p
    return _Outcome(win, push, loss)


@functools.cache
def _play(total: int, soft: bool, up: int) -> tuple[int, _Outcome]:
    """(best action, outcome probabilities under optimal play) maximising expected reward.

    Ties go to stand. The hand's raw sum grows with every card, so the recursion terminates.
    """
    stand = _stand_outcome(total, up)
    win = push = loss = Fraction(0)
    for card, p in _DECK.items():
        nt, ns = _add_card(total, soft, card)
        if nt > 21:
            loss += p
        else:
            o = _play(nt, ns, up)[1]
            win, push, loss = win + p * o.win, push + p * o.push, loss + p * o.loss
    hit = _Outcome(win, push, loss)
    return (1, hit) if hit.ev > stand.ev else (0, stand)


def blackjack_basic_action(player_sum: int, usable_ace: bool | int, dealer_up_value: int) -> int:
    """0 = stand, 1 = hit: the exactly optimal hit/stand policy for gymnasium's rules.

    Computed by exact dynamic programming over the infinite deck (maximising expected reward, ties
    to stand), so it is this rule set's true basic strategy. It equals the textbook multi-deck
    stand-on-soft-17 hit/stand chart: hard 12 hits against 2, 3 and 7..A, hard 13-16 stand against
    2..6, soft 18 stands against 2..8 and hits against 9, 10 and ace, hard 16 hits against 10.
    """
    if not 1 <= dealer_up_value <= 10:
        raise ValueError(f"dealer_up_value must be 1..10, got {dealer_up_value}")
    if player_sum > 21:
        return 0
    if usable_ace and player_sum < 12:
        raise ValueError(f"a usable ace means a total of at least 12, got {player_sum}")
    if player_sum < 2:
        raise ValueError(f"player_sum too small: {player_sum}")
    return _play(int(player_sum), bool(usable_ace), int(dealer_up_value))[0]


@functools.lru_cache(maxsize=1)
def _strategy_table() -> np.ndarray:
    table = np.full((32, 2, 11), -1, dtype=np.int32)
    for s in range(32):
        for ace in (0, 1):
            for up in range(1, 11):
                if s > 21:
                    table[s, ace, up] = 0  # bust: no decision, stand is harmless
                elif s < 12 and (ace or s < 2):
                    table[s, ace, up] = 1  # unreachable; hit, as with any total that cannot bust
                else:
                    table[s, ace, up] = blackjack_basic_action(s, ace, up)
    table.setflags(write=False)
    return table


def blackjack_strategy_table() -> np.ndarray:
    """int32 [32, 2, 11] = action for [player_sum, usable_ace, dealer_up_value].

    Column 0 (no dealer card has value 0) holds -1 so a 0-based lookup bug shows. Totals above 21
    hold 0 and unreachable soft totals below 12 hold 1, so any clipped lookup is an action.
    """
    return _strategy_table().copy()


def _initial_hands():
    """(total, usable ace, probability) of the player's two-card hand."""
    for c1, p1 in _DECK.items():
        for c2, p2 in _DECK.items():
            yield (*_add_card(*_add_card(0, False, c1), c2), p1 * p2)


def blackjack_outcome_probabilities() -> dict[str, Fraction]:
    """Exact win/push/loss probabilities and expected reward of basic strategy from the deal.

    A success in the paper's sense (return > 0) is a win; a push is not.
    """
    win = push = loss = Fraction(0)
    for up, pu in _DECK.items():
        for total, soft, ph in _initial_hands():
            o, p = _play(total, soft, up)[1], pu * ph
            win, push, loss = win + p * o.win, push + p * o.push, loss + p * o.loss
    return {"win": win, "push": push, "loss": loss, "ev": win - loss}


def _hand_value(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(total with a usable ace as 11, usable ace) for a [n, k] array of card values, 0 = none."""
    raw = values.sum(axis=1)
    usable = (values == 1).any(axis=1) & (raw + 10 <= 21)
    return raw + 10 * usable, usable


def blackjack_monte_carlo(n_hands: int, seed: int = 0, table: np.ndarray | None = None) -> dict:
    """Simulated win/push/loss rates of a strategy table under gymnasium's rules (NumPy)."""
    table = blackjack_strategy_table() if table is None else table
    rng = np.random.default_rng(seed)
    deck = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 10, 10, 10])
    draw = lambda: deck[rng.integers(13, size=n_hands)]
    player = np.zeros((n_hands, 12), dtype=np.int64)
    dealer = np.zeros((n_hands, 12), dtype=np.int64)
    dealer[:, 0], dealer[:, 1] = draw(), draw()
    player[:, 0], player[:, 1] = draw(), draw()
    up = dealer[:, 0]
    active = np.ones(n_hands, dtype=bool)
    for k in range(2, 12):
        total, usable = _hand_value(player)
        hit = active & (table[np.minimum(total, 31), usable.astype(int), up] == 1)
        card = draw()
        player[hit, k] = card[hit]
        active = hit
    ptotal, _ = _hand_value(player)
    for k in range(2, 12):
        total, _ = _hand_value(dealer)
        more = total < 17
        card = draw()
        dealer[more, k] = card[more]
    dtotal, _ = _hand_value(dealer)
    pbust, dbust = ptotal > 21, dtotal > 21
    win = ~pbust & (dbust | (ptotal > dtotal))
    push = ~pbust & ~dbust & (ptotal == dtotal)
    loss = ~win & ~push
    return {"win": win.mean(), "push": push.mean(), "loss": loss.mean()}
