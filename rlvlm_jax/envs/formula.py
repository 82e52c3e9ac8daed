"""Exact evaluation of the short arithmetic formulas built in EZPoints and Points24.

The environments press "=" inside compiled code, so the evaluator must be jittable and
vmappable, and it must be exact: the original compared floats with ``==``, which rejects
8/(3-8/3) = 24. Values are reduced fractions of int32.

Token codes: ``PAD`` = 0 (slot after the end), numbers 1..10 are their own codes, then
``PLUS`` ``MINUS`` ``TIMES`` ``DIVIDE`` ``LPAREN`` ``RPAREN`` = 11..16, and ``BLANK`` = 17 (the
placeholder the environments append after an invalid number). The environments follow the
original and drop blanks before evaluating (`without_blanks`: there a blank is a space in the
string Python evaluates); `evaluate` itself treats a BLANK inside the formula as invalid, which is
the environments' stricter option (``blanks="invalid"``).

Grammar (each token is one symbol)::

    expr    := term (('+' | '-') term)*
    term    := unary (('*' | '/') unary)*
    unary   := ('+' | '-') unary | primary
    primary := NUMBER | '(' expr ')'

This deliberately departs from the original, which ran Python ``eval`` on the tokens joined
without separators: there "1" "2" read as 12, "**" as power and "//" as floor division. Here two
numbers in a row, "**", "//", "()", "3(2)", "(1)(2)", a leading "*" or "/", a trailing operator, an
empty formula, unbalanced parentheses, any BLANK or PAD inside the formula, and division by zero
(also by a zero sub-expression, as in 1/(2-2)) are all invalid. Unary signs are allowed as in
Python: "-3*2", "3--2" and "+(4)" are valid. Unary minus binds tighter than ``*``/``/``, which
cannot change a value since negation commutes with them.

Range: every intermediate (before and after reduction) of a formula with k numbers n_i has
``|num|, den <= 2**(k-1) * prod(n_i)`` (induction over +, -, *, /). The environments allow at
most 4 numbers <= 10, so everything stays below 8 * 10**4, far inside int32. Larger inputs are
exact only while that bound stays below 2**31.
"""

from __future__ import annotations

from fractions import Fraction

import jax.numpy as jnp
from jax import lax

PAD = 0
MIN_NUMBER = 1
MAX_NUMBER = 10
PLUS = 11
MINUS = 12
TIMES = 13
DIVIDE = 14
LPAREN = 15
RPAREN = 16
BLANK = 17
NUM_CODES = 18

# The text of every token code but PAD: the action string of each number and operator, and " "
# for BLANK (as the original showed it in the prompt's formula). The one code -> text table of the
# project: formula tokens in text fields and prompts, the prompt encoder's per-code token ids, and
# the pictures (which draw nothing for a blank) all read it.
CODE_TEXT: dict[int, str] = {n: str(n) for n in range(MIN_NUMBER, MAX_NUMBER + 1)} | {
    PLUS: "+",
    MINUS: "-",
    TIMES: "*",
    DIVIDE: "/",
    LPAREN: "(",
    RPAREN: ")",
    BLANK: " ",
}
TEXT_CODE: dict[str, int] = {text: code for code, text in CODE_TEXT.items()}

# Stein's GCD on odd parts a, b < 2**m ends within 2*m steps: a*b at least halves per step.
# In the scan, 34 steps finish every gcd whose inputs are below 2**17, which covers the
# environments' bound above; an unfinished one falls back to the common power of two, which
# keeps the fraction exact if not fully reduced. The final value gets 62 steps (any int32).
_STEP_GCD_STEPS = 34
_FINAL_GCD_STEPS = 62


def _ctz(x):
    """Trailing zeros of a positive int32 (vector popcount; a loop would not vectorise)."""
    return lax.population_count((x & -x) - 1)


def _shr(x, n):
    # Logical, and 0 stays 0 whatever the shift, so _ctz(0) needs no meaning.
    return lax.shift_right_logical(x, n)


def _common_divisor(a, b, steps):
    """gcd(|a|, |b|) if ``steps`` Stein steps finish, else 2**ctz; never 0 (for 0/0 it is 1).

    A fixed number of branch-free steps: under vmap a data-dependent loop would run to the
    slowest lane anyway.
    """
    a = jnp.abs(a)
    b = jnp.abs(b)
    shift = _ctz(a | b)
    a = _shr(a, _ctz(a))
    b = _shr(b, _ctz(b))

    def body(_, ab):
        # Both odd or 0; (lo, odd part of hi - lo) keeps the gcd, and (0, g) is a fixed point.
        a, b = ab
        lo = jnp.minimum(a, b)
        d = jnp.maximum(a, b) - lo
        return lo, _shr(d, _ctz(d))

    # A rolled loop: on CPU it ran faster than the unrolled chain and compiles much faster.
    a, b = lax.fori_loop(0, steps, body, (a, b))
    odd = jnp.where((a == 0) | (b == 0), jnp.maximum(a, b), 1)
    g = lax.shift_left(odd, shift)
    return jnp.where(g == 0, 1, g)


def _reduce(num, den, steps=_STEP_GCD_STEPS):
    g = _common_divisor(num, den, steps)
    return lax.div(num, g), lax.div(den, g)


def _add(an, ad, minus, bn, bd, steps=_STEP_GCD_STEPS):
    bn = jnp.where(minus, -bn, bn)
    return _reduce(an * bd + bn * ad, ad * bd, steps)


def _mul(an, ad, divide, bn, bd):
    """Returns a*b or a/b, and whether that divides by zero."""
    num = jnp.where(divide, an * bd, an * bn)
    den = jnp.where(divide, ad * bn, ad * bd)
    neg = den < 0
    num, den = _reduce(jnp.where(neg, -num, num), jnp.where(neg, -den, den))
    return num, den, divide & (bn == 0)


# Saved-level fields: the enclosing level's sum and pending +/-, its term and pending * or /,
# and the unary sign that applies to the parenthesised group.
_S_NUM, _S_DEN, _ADD_MINUS, _T_NUM, _T_DEN, _MUL_DIV, _SIGN = range(7)


def evaluate(codes, length):
    """Evaluate ``codes[:length]`` exactly; returns ``(ok, num, den)`` with den > 0.

    Operator precedence with two registers per parenthesis level (a running sum and a running
    product) so each slot needs at most one add and one multiply, all computed and then
    selected with ``where``: under vmap every branch runs anyway.
    """
    codes = jnp.asarray(codes, jnp.int32)
    (num_slots,) = codes.shape
    length = jnp.clip(jnp.asarray(length, jnp.int32), 0, num_slots)
    # A valid formula at depth d needs 2d+1 slots, so deeper nesting is an error, not an overflow.
    max_depth = max(1, (num_slots - 1) // 2)
    levels = jnp.arange(max_depth, dtype=jnp.int32)
    one = jnp.int32(1)
    zero = jnp.int32(0)

    def step(state, xs):
        code, pos = xs
        ok, expect, sign, depth, s_num, s_den, add_minus, t_num, t_den, mul_div, saved = state
        active = pos < length
        is_number = (code >= MIN_NUMBER) & (code <= MAX_NUMBER)
        is_sign = (code == PLUS) | (code == MINUS)
        is_close = code == RPAREN

        # Cases; everything else at this slot is a syntax error.
        c_number = active & expect & is_number
        c_unary = active & expect & is_sign
        c_open = active & expect & (code == LPAREN) & (depth < max_depth)
        c_add = active & ~expect & is_sign
        c_mul = active & ~expect & ((code == TIMES) | (code == DIVIDE))
        c_close = active & ~expect & is_close & (depth > 0)
        c_operand = c_number | c_close

        # The level's value, needed by a binary +/- and by ")".
        v_num, v_den = _add(s_num, s_den, add_minus, t_num, t_den)
        outer = jnp.sum(jnp.where((levels == depth - 1)[:, None], saved, 0), axis=0)
        # An operand (a signed number, or a closed group) joins the pending product.
        o_num = jnp.where(is_close, outer[_SIGN] * v_num, sign * code)
        o_den = jnp.where(is_close, v_den, one)
        m_num, m_den, div_zero = _mul(
            jnp.where(is_close, outer[_T_NUM], t_num),
            jnp.where(is_close, outer[_T_DEN], t_den),
            jnp.where(is_close, outer[_MUL_DIV] != 0, mul_div),
            o_num,
            o_den,
        )

        valid = c_number | c_unary | c_open | c_add | c_mul | c_close
        ok = ok & ~(active & ~valid) & ~(c_operand & div_zero)
        expect = jnp.where(c_operand, False, jnp.where(valid, True, expect))

        row = jnp.stack(
            [
                s_num,
                s_den,
                add_minus.astype(jnp.int32),
                t_num,
                t_den,
                mul_div.astype(jnp.int32),
                sign,
            ]
        )
        saved = jnp.where((c_open & (levels == depth))[:, None], row[None, :], saved)
        depth = depth + c_open.astype(jnp.int32) - c_close.astype(jnp.int32)

        new_level = c_open | c_add  # a new term (and for "(", a new sum) starts
        sign = jnp.where(c_unary & (code == MINUS), -sign, jnp.where(c_number | c_open, one, sign))
        s_num = jnp.where(
            c_add, v_num, jnp.where(c_open, zero, jnp.where(c_close, outer[_S_NUM], s_num))
        )
        s_den = jnp.where(
            c_add, v_den, jnp.where(c_open, one, jnp.where(c_close, outer[_S_DEN], s_den))
        )
        add_minus = jnp.where(
            c_add,
            code == MINUS,
            jnp.where(c_open, False, jnp.where(c_close, outer[_ADD_MINUS] != 0, add_minus)),
        )
        t_num = jnp.where(c_operand, m_num, jnp.where(new_level, one, t_num))
        t_den = jnp.where(c_operand, m_den, jnp.where(new_level, one, t_den))
        mul_div = jnp.where(c_mul, code == DIVIDE, jnp.where(new_level, False, mul_div))
        state = (ok, expect, sign, depth, s_num, s_den, add_minus, t_num, t_den, mul_div, saved)
        return state, None

    # Start of a level: sum 0 with a pending "+", product 1 with a pending "*".
    init = (
        jnp.bool_(True),  # ok
        jnp.bool_(True),  # expecting an operand
        one,  # pending unary sign
        zero,  # depth
        zero,
        one,
        jnp.bool_(False),
        one,
        one,
        jnp.bool_(False),
        jnp.zeros((max_depth, 7), jnp.int32),
    )
    positions = jnp.arange(num_slots, dtype=jnp.int32)
    state, _ = lax.scan(step, init, (codes, positions))
    ok, expect, _, depth, s_num, s_den, add_minus, t_num, t_den, _, _ = state
    num, den = _add(s_num, s_den, add_minus, t_num, t_den, _FINAL_GCD_STEPS)
    ok = ok & ~expect & (depth == 0)
    return ok, jnp.where(ok, num, zero), jnp.where(ok, den, one)


def without_blanks(codes, length):
    """``(codes, length)`` with every BLANK among the first ``length`` slots removed, order kept.

    The original joined the tokens into one string for Python's ``eval``, where a blank is a
    space and so is skipped: cards 3 and 4 with 3, (unheld 5 -> blank), *, 4 read "3 *4" = 12.
    Jittable: a stable compaction by prefix counts, PAD after the new length.
    """
    codes = jnp.asarray(codes, jnp.int32)
    (num_slots,) = codes.shape
    slots = jnp.arange(num_slots, dtype=jnp.int32)
    keep = (slots < length) & (codes != BLANK)
    target = jnp.where(keep, jnp.cumsum(keep) - 1, num_slots)  # num_slots: dropped
    out = jnp.full((num_slots + 1,), PAD, jnp.int32).at[target].set(codes)[:num_slots]
    return out, jnp.sum(keep).astype(jnp.int32)


def equals(codes, length, target: int):
    """Whether the formula is valid and its value is exactly ``target``."""
    ok, num, den = evaluate(codes, length)
    return ok & (num == target) & (den == 1)


class _Invalid(Exception):
    pass


def evaluate_host(codes) -> Fraction | None:
    """Reference value of the whole token list (pass ``codes[:length]``), or None if invalid.

    Plain recursive descent over Python ints, written independently of ``evaluate`` so that
    tests can check one against the other.
    """
    tokens = [int(c) for c in codes]
    pos = 0

    def peek():
        return tokens[pos] if pos < len(tokens) else None

    def take():
        nonlocal pos
        pos += 1
        return tokens[pos - 1]

    def expr():
        value = term()
        while peek() in (PLUS, MINUS):
            op = take()
            rhs = term()
            value = value + rhs if op == PLUS else value - rhs
        return value

    def term():
        value = unary()
        while peek() in (TIMES, DIVIDE):
            op = take()
            rhs = unary()
            if op == TIMES:
                value = value * rhs
            elif rhs == 0:
                raise _Invalid
            else:
                value = value / rhs
        return value

    def unary():
        if peek() == PLUS:
            take()
            return unary()
        if peek() == MINUS:
            take()
            return -unary()
        return primary()

    def primary():
        token = peek()
        if token is not None and MIN_NUMBER <= token <= MAX_NUMBER:
            return Fraction(take())
        if token == LPAREN:
            take()
            value = expr()
            if peek() != RPAREN:
                raise _Invalid
            take()
            return value
        raise _Invalid

    try:
        value = expr()
    except _Invalid:
        return None
    return value if pos == len(tokens) else None
