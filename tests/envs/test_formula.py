"""The compiled formula evaluator against hand cases, the host reference and Python's eval."""

import random
from fractions import Fraction
from math import gcd, prod

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlvlm_jax.envs import formula as F

_SYMBOLS = {
    "+": F.PLUS,
    "-": F.MINUS,
    "*": F.TIMES,
    "/": F.DIVIDE,
    "(": F.LPAREN,
    ")": F.RPAREN,
    "_": F.BLANK,
    ".": F.PAD,
}
_OPERATORS = [F.PLUS, F.MINUS, F.TIMES, F.DIVIDE]


def tokens(text):
    """Space-separated symbols to codes ("_" is BLANK, "." is PAD)."""
    return [_SYMBOLS[t] if t in _SYMBOLS else int(t) for t in text.split()]


def pad(seqs, num_slots, fill=None, rng=None):
    """Batch of padded codes; with ``fill`` == "garbage" the slots past the end get junk."""
    codes = np.zeros((len(seqs), num_slots), np.int32)
    for i, seq in enumerate(seqs):
        codes[i, : len(seq)] = seq
        if fill == "garbage":
            codes[i, len(seq) :] = rng.integers(1, F.NUM_CODES, num_slots - len(seq))
    lengths = np.array([len(s) for s in seqs], np.int32)
    return codes, lengths


_EVALUATORS = {}


def _evaluator(num_slots):
    """``jit(vmap(evaluate))``, kept per slot count so that each compiles once."""
    if num_slots not in _EVALUATORS:
        _EVALUATORS[num_slots] = jax.jit(jax.vmap(F.evaluate))
    return _EVALUATORS[num_slots]


def evaluate_batch(seqs, num_slots=21, fill=None, rng=None):
    """One jitted, vmapped call over the batch; returns Fractions (None if invalid) and arrays."""
    codes, lengths = pad(seqs, num_slots, fill, rng)
    ok, num, den = jax.device_get(_evaluator(num_slots)(codes, lengths))
    return [
        Fraction(int(n), int(d)) if o else None for o, n, d in zip(ok, num, den, strict=True)
    ], (
        ok,
        num,
        den,
    )


VALID = [
    ("8 / ( 3 - 8 / 3 )", 24),
    ("( 10 * 10 - 4 ) / 4", 24),
    ("1 / 3 * 3", 1),
    ("1 / 3", Fraction(1, 3)),
    ("2 / 4", Fraction(1, 2)),
    ("- 3 / 6", Fraction(-1, 2)),
    ("3 / - 6", Fraction(-1, 2)),
    ("7", 7),
    ("10", 10),
    ("- 3 * 2", -6),
    ("3 - - 2", 5),
    ("3 + - 2", 1),
    ("+ ( 4 )", 4),
    ("- - - 5", -5),
    ("+ - + 5", -5),
    ("2 * - 3", -6),
    ("2 * - - 3", 6),
    ("- ( 1 + 2 ) * - 3", 9),
    ("( ( ( 4 ) ) )", 4),
    ("( ( 1 + 2 ) * 3 ) - 4 / 6", Fraction(25, 3)),
    ("1 + 2 * 3", 7),
    ("( 1 + 2 ) * 3", 9),
    ("2 * 3 + 4 * 5", 26),
    ("10 - 3 - 2", 5),
    ("10 - ( 3 - 2 )", 9),
    ("8 / 2 / 2", 2),
    ("8 / ( 2 / 2 )", 8),
    ("1 - 2 * 3 + 4", -1),
    ("6 / 4 * 2", 3),
    ("1 / ( 1 / ( 1 / 7 ) )", Fraction(1, 7)),
    ("2 - 2", 0),
    ("( 2 - 2 ) / 5", 0),
    ("5 * ( 2 - 2 )", 0),
    ("6 * ( 5 - 3 ) * 2", 24),
    ("( 1 + 2 + 3 ) * 4", 24),
    ("4 * ( 1 + 2 + 3 )", 24),
    ("10 * 10 * 10 * 10", 10000),
    ("1 / ( 10 * 10 * 10 * 10 )", Fraction(1, 10000)),
    ("- ( - ( 2 ) )", 2),
    ("( - 2 ) * ( - 3 )", 6),
    ("( 5 - 1 / 5 ) * 5", 24),
    ("3 / ( 1 - 3 / 4 )", 12),
    ("- 8 / ( 3 - 8 / 3 )", -24),
]

INVALID = [
    "",
    "+",
    "-",
    "- -",
    "3 2",
    "1 10",
    "10 1",
    "( )",
    "3 ( 2 )",
    "( 1 ) ( 2 )",
    "( 1 ) 2",
    "1 +",
    "1 + 2 *",
    "* 2",
    "/ 2",
    "2 * * 3",
    "2 / / 3",
    "2 * / 3",
    "( 1 + 2",
    "1 + 2 )",
    ") 1 (",
    "( ( 1 )",
    "( 1 ) )",
    "1 / ( 2 - 2 )",
    "1 / ( 3 - 3 ) - 2",
    "4 / ( 1 - 1 ) * 3",
    "( 3 - 3 ) / ( 3 - 3 )",
    "_",
    "1 + _",
    "_ 1",
    "1 _",
    "( _ )",
    ". 1",
    "1 .",
    "1 + . 2",
    "( + )",
    "( * 2 )",
    "( 2 + )",
    "1 ( + 2 )",
]


def _value(text):
    return F.evaluate_host(tokens(text))


def test_codes_are_the_documented_constants():
    assert (F.PAD, F.PLUS, F.MINUS, F.TIMES, F.DIVIDE, F.LPAREN, F.RPAREN, F.BLANK) == (
        0,
        11,
        12,
        13,
        14,
        15,
        16,
        17,
    )


@pytest.mark.parametrize("text,expected", VALID)
def test_host_reference_valid(text, expected):
    assert _value(text) == expected


@pytest.mark.parametrize("text", INVALID)
def test_host_reference_invalid(text):
    assert _value(text) is None


@pytest.mark.parametrize("num_slots", [6, 21])
def test_hand_cases_compiled(num_slots):
    cases = [(t, Fraction(v)) for t, v in VALID] + [(t, None) for t in INVALID]
    cases = [(tokens(t), v) for t, v in cases if len(tokens(t)) <= num_slots]
    seqs = [s for s, _ in cases]
    got, _ = evaluate_batch(seqs, num_slots)
    for (seq, expected), value in zip(cases, got, strict=True):
        assert value == expected, seq


def test_slots_past_length_are_ignored():
    rng = np.random.default_rng(1)
    seqs = [tokens(t) for t, _ in VALID] + [tokens(t) for t in INVALID]
    clean, _ = evaluate_batch(seqs)
    for _ in range(3):
        dirty, _ = evaluate_batch(seqs, fill="garbage", rng=rng)
        assert dirty == clean
    # Full length (no PAD at all), a length past the array, a cut-off prefix, and the empty one.
    seq = tokens("( 1 + 2 ) * 4 * 2 - 10 / 5 + 2 / ( 7 - 6 )")
    assert len(seq) == 21
    codes = np.tile(np.asarray(seq, np.int32), (4, 1))
    ok, num, den = jax.device_get(_evaluator(21)(codes, np.array([21, 99, 19, 0], np.int32)))
    assert ok.tolist() == [True, True, False, False]
    assert (num[:2] == 24).all() and (den[:2] == 1).all()


def _number(rng):
    small = rng.random() < 0.3  # small numbers make zero sub-expressions (and x/0) likely
    return rng.randint(1, 3) if small else rng.randint(1, 10)


def _expression(rng, count):
    """A random syntactically valid formula with ``count`` numbers."""
    if count == 1:
        out = [_number(rng)]
    elif count == 2 and rng.random() < 0.25:
        n = _number(rng)
        out = [n, F.MINUS, n]  # zero, so that x / (n - n) comes up
    else:
        split = rng.randint(1, count - 1)
        left, right = _expression(rng, split), _expression(rng, count - split)
        # Compound children are bracketed only sometimes: any "X op Y" parses, values differ.
        if split > 1 and rng.random() < 0.6:
            left = [F.LPAREN, *left, F.RPAREN]
        if count - split > 1 and rng.random() < 0.6:
            right = [F.LPAREN, *right, F.RPAREN]
        out = [*left, rng.choice(_OPERATORS), *right]
    if rng.random() < 0.1:
        out = [F.LPAREN, *out, F.RPAREN]
    while rng.random() < 0.15:
        out = [rng.choice([F.PLUS, F.MINUS]), *out]
    return out


def _fits_int32(seq):
    """The module's range bound: |num|, den <= 2**(k-1) * prod(numbers) throughout."""
    numbers = [t for t in seq if F.MIN_NUMBER <= t <= F.MAX_NUMBER]
    return not numbers or 2 ** (len(numbers) - 1) * prod(numbers) < 2**31


def _shrink_numbers(seq):
    seq = list(seq)
    while not _fits_int32(seq):
        seq[max(range(len(seq)), key=lambda i: seq[i] if seq[i] <= F.MAX_NUMBER else 0)] = 1
    return seq


def _random_sequences(rng, n, max_len):
    """Valid formulas (mostly <= 4 numbers), their one- and two-edit mutants, and junk."""
    seqs = []
    while len(seqs) < n:
        kind = rng.random()
        if kind < 0.4:
            # Mostly the environments' up-to-4 numbers, some longer ones for the range comment.
            seq = _expression(rng, rng.randint(1, 4) if rng.random() < 0.9 else rng.randint(5, 8))
        elif kind < 0.7:
            seq = _expression(rng, rng.randint(1, 4))
            for _ in range(rng.randint(1, 2)):
                edit = rng.randrange(3)
                where = rng.randrange(len(seq) + (edit == 1))
                if edit == 0:
                    seq[where] = rng.randrange(F.NUM_CODES)
                elif edit == 1:
                    seq.insert(where, rng.randrange(1, F.NUM_CODES))
                elif len(seq) > 1:
                    del seq[where]
        elif kind < 0.9:
            # Formula-like junk: numbers, operators and brackets only, many numbers allowed.
            alphabet = [*range(1, 11), *_OPERATORS, F.LPAREN, F.RPAREN] + [F.LPAREN, F.RPAREN]
            seq = [rng.choice(alphabet) for _ in range(rng.randint(0, max_len))]
        else:
            seq = [rng.randrange(F.NUM_CODES) for _ in range(rng.randint(0, max_len))]
        if len(seq) <= max_len:
            seqs.append(_shrink_numbers(seq))
    return seqs


@pytest.mark.parametrize("num_slots,count", [(21, 24_000), (6, 4_000)])
def test_random_agreement_with_host_reference(num_slots, count):
    rng = random.Random(num_slots)
    seqs = _random_sequences(rng, count, num_slots)
    got, (ok, num, den) = evaluate_batch(
        seqs, num_slots, fill="garbage", rng=np.random.default_rng(0)
    )
    expected = [F.evaluate_host(s) for s in seqs]
    mismatches = [(s, g, e) for s, g, e in zip(seqs, got, expected, strict=True) if g != e]
    assert not mismatches[:5], f"{len(mismatches)} mismatches"
    # Enough of each outcome to mean something, and valid values come out fully reduced.
    n_valid = sum(e is not None for e in expected)
    assert count * 0.3 < n_valid < count * 0.8
    assert sum(e == 0 for e in expected) > count * 0.003
    assert all(
        d > 0 and gcd(int(n), int(d)) == 1 for o, n, d in zip(ok, num, den, strict=True) if o
    )


def _python_text(seq):
    names = {F.PLUS: "+", F.MINUS: "-", F.TIMES: "*", F.DIVIDE: "/", F.LPAREN: "(", F.RPAREN: ")"}
    names.update({F.PAD: "?", F.BLANK: "?"})
    return " ".join(f"Fraction({t})" if 1 <= t <= 10 else names[t] for t in seq)


def _python_eval(seq):
    """Python's own parser on Fractions: same precedence, unary signs and bracket rules.

    Returns the value, None for a syntax or type error, or ZeroDivisionError.
    """
    try:
        value = eval(_python_text(seq), {"Fraction": Fraction, "__builtins__": {}})
    except ZeroDivisionError as error:
        return error
    except (SyntaxError, TypeError):
        return None
    return value if isinstance(value, Fraction) else None  # e.g. "( )" is a tuple


def test_host_reference_matches_python_eval():
    rng = random.Random(7)
    seqs = _random_sequences(rng, 6_000, 21)
    seqs += [tokens(t) for t, _ in VALID] + [tokens(t) for t in INVALID]
    outcomes = [_python_eval(seq) for seq in seqs]
    for seq, expected in zip(seqs, outcomes, strict=True):
        if isinstance(expected, ZeroDivisionError):
            expected = None
        assert F.evaluate_host(seq) == expected, _python_text(seq)
    assert sum(isinstance(o, Fraction) for o in outcomes) > 1_500
    assert sum(isinstance(o, ZeroDivisionError) for o in outcomes) > 30


def test_equals_and_targets():
    texts = ["8 / ( 3 - 8 / 3 )", "6 + 6", "2 * 6", "10 + 2", "( 6 * 4 )", "1 +"]
    seqs = [tokens(t) for t in texts]
    codes, lengths = pad(seqs, 21)
    both = jax.jit(jax.vmap(lambda c, n: (F.equals(c, n, 24), F.equals(c, n, 12))))
    eq24, eq12 = both(codes, lengths)
    assert eq24.tolist() == [True, False, False, False, True, False]
    assert eq12.tolist() == [False, True, True, True, False, False]


def test_inside_scan_building_a_formula():
    """The environments' pattern: append one token per step and check the formula each step."""
    num_slots = 21

    def step(carry, token):
        codes, length = carry
        codes = jnp.where(jnp.arange(num_slots) == length, token, codes)
        length = length + 1
        return (codes, length), (F.evaluate(codes, length), F.equals(codes, length, 24))

    def episode(tokens_):
        init = (jnp.zeros(num_slots, jnp.int32), jnp.int32(0))
        return jax.lax.scan(step, init, tokens_)

    episodes = [tokens("( 10 * 10 - 4 ) / + 4"), tokens("8 / ( 3 - 8 / 3 ) _")]
    batch = jnp.asarray(pad(episodes, 10)[0])
    (_, lengths), ((ok, num, den), hit) = jax.jit(jax.vmap(episode))(batch)
    assert lengths.tolist() == [10, 10]
    for i, seq in enumerate(episodes):
        prefixes = [F.evaluate_host(seq[: j + 1]) for j in range(len(seq))]
        rows = zip(ok[i], num[i], den[i], strict=True)
        got = [Fraction(int(n), int(d)) if o else None for o, n, d in rows]
        assert got == prefixes
        assert hit[i].tolist() == [p == 24 for p in prefixes]
    assert hit[0, -1] and hit[1, -2] and not hit[1, -1]  # BLANK spoils a finished formula


def test_common_divisor():
    rng = np.random.default_rng(3)
    a = np.concatenate([rng.integers(0, 2**31 - 1, 3000), rng.integers(0, 2**17, 3000), [0, 0, 5]])
    b = np.concatenate([rng.integers(0, 2**31 - 1, 3000), rng.integers(1, 2**17, 3000), [0, 7, 0]])
    scale = rng.integers(1, 2**8, a.size)  # shared factors make the gcd non-trivial
    a, b = (np.where(x < 2**31 // scale, x * scale, x).astype(np.int32) for x in (a, b))
    divisor = jax.jit(F._common_divisor, static_argnums=2)
    true = np.array([gcd(int(x), int(y)) or 1 for x, y in zip(a, b, strict=True)])
    assert (np.asarray(divisor(a, b, 62)) == true).all()
    # 34 steps finish below 2**17; too few steps still give a common divisor (exactness).
    small = (a < 2**17) & (b < 2**17)
    assert (np.asarray(divisor(a, b, 34))[small] == true[small]).all()
    for steps in (4, 34):
        part = np.asarray(divisor(a, b, steps))
        assert ((part > 0) & (a % part == 0) & (b % part == 0)).all()
    assert (np.asarray(divisor(a, b, 4)) != true).any()  # the fallback was exercised


def test_dtypes_and_shapes_under_vmap():
    codes, lengths = pad([tokens("1 + 2"), tokens("3 /")], 6)
    ok, num, den = _evaluator(6)(codes, lengths)
    assert ok.dtype == jnp.bool_ and num.dtype == jnp.int32 and den.dtype == jnp.int32
    assert ok.shape == num.shape == den.shape == (2,)
    assert ok.tolist() == [True, False] and num.tolist() == [3, 0] and den.tolist() == [1, 1]


def test_without_blanks_compacts_like_a_list_filter():
    """Random codes with blanks (and junk past `length`) against a Python list filter."""
    rng = np.random.default_rng(0)
    fn = jax.jit(jax.vmap(F.without_blanks))
    codes = rng.integers(0, F.NUM_CODES, size=(500, 9)).astype(np.int32)
    codes[:, ::3] = np.where(rng.random((500, 3)) < 0.5, F.BLANK, codes[:, ::3])
    lengths = rng.integers(0, 10, size=500).astype(np.int32)
    out, n = jax.device_get(fn(codes, lengths))
    for row, length, got, got_n in zip(codes, lengths, out, n, strict=True):
        want = [int(c) for c in row[:length] if c != F.BLANK]
        assert int(got_n) == len(want)
        assert got[: len(want)].tolist() == want and not got[len(want):].any()
