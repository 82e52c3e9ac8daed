"""The on-device parser equals the host reference parser; action token masks on known tokens."""

import functools
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlvlm_jax.envs import demonstrations
from rlvlm_jax.envs.parse import action_span, found_actions, parse_action
from rlvlm_jax.envs.tasks import TASKS, Task
from rlvlm_jax.text import byte_table as bt
from rlvlm_jax.text.parse_device import action_token_mask, make_action_parser, parse_tokens

N_BYTES = 512
N_STRINGS = 10_000
N_BASES = 300
KEY = '"action":'
# Multi-byte characters, including the only two whose lower() holds ASCII (U+0130, U+212A).
UNICODE = ["é", "İ", "K", "ß", "✓", "→", "😀", "Σ", "ǅ", "Ａ"]
# fmt: off
PIECES = [
    "10", "1", "0", "100", "110", "1100", "+10", "-1", "+1", "01", "101", "hit", "stand",
    "white", "standing", "HIT", "Stand", KEY, '"ACTION":', '"Action": "', "'action':",
    '"action" :', "action:", '"', "}", "\n", " ", ", ",
]
# fmt: on


# ------------------------------------------------------------------------------ string factory
def _states(task, rng):
    """Env-like states (possibly off-track formulas) for `cot_demonstration`."""
    if task == "NumberLine":
        pos, goal = rng.sample(range(6), 2)
        return {"position": pos, "goal": goal}
    if task == "Blackjack":
        soft = rng.random() < 0.3
        total = rng.randint(12, 21) if soft else rng.randint(4, 21)
        return {"player_sum": total, "usable_ace": soft, "dealer_up_value": rng.randint(1, 10)}
    n = 2 if task == "EZPoints" else 4
    cards = [rng.randint(1, 13) for _ in range(n)]
    actions = TASKS[task].action_strings
    formula = []
    if rng.random() < 0.6:  # a prefix of the oracle's own path, or random tokens and blanks
        for _ in range(rng.randint(0, 5)):
            nxt = demonstrations.oracle_action(task, cards=cards, formula=formula)
            if actions[nxt] == "=":
                break
            formula.append(actions[nxt])
    else:
        formula = [rng.choice(actions[:-1] + (" ",)) for _ in range(rng.randint(0, 4))]
    return {"cards": cards, "formula": formula}


def _bases(task, rng):
    out = []
    n_act = TASKS[task].num_actions
    for _ in range(N_BASES):
        state = _states(task, rng)
        action = None if rng.random() < 0.5 else rng.randrange(n_act)
        out.append(demonstrations.cot_demonstration(task, action=action, **state))
    out += [demonstrations.answer_only(task, a) for a in range(n_act)]
    return out


def _insert(text, piece, rng):
    tail = text.rfind(KEY)
    lo = tail + len(KEY) if tail >= 0 and rng.random() < 0.6 else 0
    at = rng.randint(min(lo, len(text)), len(text))
    return text[:at] + piece + text[at:]


def _mutate(text, task, rng):
    actions = TASKS[task].action_strings
    kind = rng.randrange(10)
    if kind == 0:  # drop or damage the key
        variant = rng.choice(["", '"action" :', "action:", "'action':", '"actions":', '"act"'])
        return text.replace(KEY, variant, rng.choice([1, -1]))
    if kind == 1:  # a second key with another action, before or after the first
        extra = f'"action": "{rng.choice(actions)}"'
        return _insert(text, extra, rng) if rng.random() < 0.5 else text + ",\n " + extra
    if kind == 2:  # case changes
        mode = rng.randrange(3)
        if mode == 0:
            return text.upper()
        if mode == 1:
            return text.title()
        return "".join(c.swapcase() if rng.random() < 0.3 else c for c in text)
    if kind == 3:  # digits, action strings of all tasks, keys
        return _insert(text, rng.choice(PIECES), rng)
    if kind == 4:  # this task's action strings (and words holding them)
        extra = ("white", "standing", "HIT") if task == "Blackjack" else ()
        return _insert(text, rng.choice(actions + extra), rng)
    if kind == 5:  # truncate at a random point, mostly after the key
        tail = text.rfind(KEY)
        lo = tail + len(KEY) if tail >= 0 and rng.random() < 0.7 else 0
        return text[: rng.randint(min(lo, len(text)), len(text))]
    if kind == 6:  # random ASCII junk
        junk = "".join(chr(rng.randint(9, 126)) for _ in range(rng.randint(1, 8)))
        return _insert(text, junk, rng) if rng.random() < 0.5 else text + junk
    if kind == 7:  # delete a random range
        a = rng.randint(0, len(text))
        return text[:a] + text[a + rng.randint(1, 20) :]
    if kind == 8:  # non-ASCII characters (anywhere, or last)
        ch = rng.choice(UNICODE)
        return _insert(text, ch, rng) if rng.random() < 0.7 else text + ch
    return text.rstrip("}\n ")  # ends right after the value's quote (fallback reads '"')


def _junk(task, rng):
    """Short texts built from action strings, keys and characters, often with no key."""
    alphabet = PIECES + list(TASKS[task].action_strings) + UNICODE[:3] + list("ab xyz{}:'\"")
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))


# fmt: off
HAND_MADE = [
    "", "+", "-", "hit", "10", "0", "1", "100", "110", "1100", "+10", "-1", "+1", "white",
    "standing", '"hit" (not "stand")', "+ +", '"action": "10"', '"action": "100"',
    '"action": "1100"', '"action": "110"', '"ACTION": "HIT"', '"Action": "Stand"',
    '{"action": "+"}', '"action": "-", "action": "+"', '"action": "-"\n"action": "-"',
    '"action":', '"action": ', "İ", "hİt", '"actİon": "hit"', "K", "é", "x é+",
    '"action": "9"}',
    '"action": "1" "action": "0"', '"action" : "+"', "action: +", "'action': '+'",
]
# fmt: on


def _corpus(task, seed):
    rng = random.Random(seed)
    bases = _bases(task, rng)
    texts = list(HAND_MADE) + list(bases)
    while len(texts) < N_STRINGS:
        r = rng.random()
        if r < 0.15:
            texts.append(_junk(task, rng))
            continue
        text = rng.choice(bases)
        for _ in range(rng.choice([0, 1, 1, 2, 2, 3, 4]) if r < 0.9 else 1):
            text = _mutate(text, task, rng)
        while len(text.encode()) > N_BYTES:  # keep whole characters
            text = text[:-1]
        texts.append(text)
    return texts


def _pack(texts, rng):
    """uint8 (B, N_BYTES) with random garbage past each length (the parser must ignore it)."""
    data = rng.integers(0, 256, (len(texts), N_BYTES), dtype=np.uint8)
    lengths = np.zeros(len(texts), np.int32)
    for i, t in enumerate(texts):
        b = t.encode()
        data[i, : len(b)] = np.frombuffer(b, np.uint8)
        lengths[i] = len(b)
    return data, lengths


def _byte_offset(text, char_offset):
    return len(text[:char_offset].encode())


# ---------------------------------------------------------------------------- parser vs host
@pytest.mark.parametrize("task", sorted(TASKS))
def test_device_parser_equals_host_parser(task):
    texts = _corpus(task, seed=sorted(TASKS).index(task))
    assert len(texts) >= N_STRINGS
    data, lengths = _pack(texts, np.random.default_rng(0))
    spec = TASKS[task]
    stats = {}
    for key in ("last", "first"):
        out = jax.jit(jax.vmap(make_action_parser(task, key)))(data, lengths)
        action, n_found, start, found = map(np.asarray, out)
        cols = (action, n_found, start, found)
        rows = zip(texts, *(c.tolist() for c in cols), strict=True)
        for text, act, n, at, hits in rows:
            assert (None if act < 0 else act, n) == parse_action(task, text, key=key), (key, text)
            names = [a for a, f in zip(spec.action_strings, hits, strict=True) if f]
            assert names == found_actions(task, text, key=key), (key, text)
            span = action_span(text, key=key)
            assert at == (-1 if span is None else _byte_offset(text, span[0])), (key, text)
        stats[key] = (action, n_found, start)
    # The corpus reaches every branch often.
    action, n_found, start = stats["last"]
    assert (action >= 0).sum() > 2000
    assert (n_found == 0).sum() > 500 and (n_found >= 2).sum() > 300
    assert (start < 0).sum() > 500
    if task != "Blackjack":  # no single character is a Blackjack action
        assert ((start < 0) & (action >= 0)).sum() > 20
    assert (stats["first"][1] != n_found).sum() > 100
    assert len(set(action.tolist())) == spec.num_actions + 1
    assert sum(any(ord(c) > 127 for c in t) for t in texts) > 500
    if spec.has_ten:
        assert sum("10" in t for t in texts) > 1000


def test_ten_rule_with_multi_byte_actions():
    """The "10" deletion compacts the text: multi-byte strings formed across it are found."""
    spec = Task(name="Synthetic", gym_id="synthetic", gymnax_id="synthetic",
                action_strings=("10", "01", "11", "00", "1+", "=1", "+"), has_formula=False,
                has_ten=True, target=None)  # fmt: skip
    rng = random.Random(5)
    # "1=101" -> "1=1" after the deletion: "=1" is found although "=" and "1" were not adjacent.
    texts = ['"action": 1=101'] + [
        "".join(rng.choice(["1", "0", "+", "=", "A", KEY]) for _ in range(rng.randint(0, 14)))
        for _ in range(2000)
    ]
    data, lengths = _pack(texts, np.random.default_rng(1))
    for key in ("last", "first"):
        out = jax.jit(jax.vmap(make_action_parser(spec, key)))(data, lengths)
        for text, act, n in zip(texts, out.action.tolist(), out.n_found.tolist(), strict=True):
            assert (None if act < 0 else act, n) == parse_action(spec, text, key=key), text
    assert out.found[0].tolist() == [True, False, False, False, False, True, False]
    assert found_actions(spec, texts[0]) == ["10", "=1"]


@functools.cache
def _jitted(task, key="last"):
    return jax.jit(make_action_parser(task, key))


def test_hand_made_cases():
    def run(text, task="Points24", key="last"):
        b = np.zeros(32, np.uint8)
        raw = text.encode()
        b[: len(raw)] = np.frombuffer(raw, np.uint8)
        out = _jitted(task, key)(b, len(raw))
        return int(out.action), int(out.n_found), int(out.span_start)

    assert run('"action": "100"') == (9, 1, 0)  # "10" only
    assert run('"action": "1100"')[:2] == (-1, 2)  # deletion leaves "10" -> "1" found
    assert run("x+10") == (-1, 0, -1)  # no key: only the last character "0", no action
    assert run("+") == (10, 1, -1)  # no key: the last character
    assert run('"ACTION": "-1"')[:2] == (-1, 2)
    assert run('a "action": "*"', "EZPoints") == (11, 1, 2)
    assert run('"action": "-" "action": "+"', "NumberLine", "first")[:2] == (-1, 2)
    assert run('"action": "-" "action": "+"', "NumberLine", "last") == (1, 1, 14)
    assert run('"action": "white"', "Blackjack") == (1, 1, 0)
    assert run("", "Blackjack") == (-1, 0, -1)


def test_text_input_and_bad_arguments():
    text = bt.Text(
        jnp.asarray(np.frombuffer(b'"action": "+"\0\0\0', np.uint8)),
        jnp.int32(13),
        jnp.zeros(1, jnp.int32),
        jnp.zeros(1, jnp.int32),
    )
    assert int(jax.jit(make_action_parser("NumberLine"))(text).action) == 1
    with pytest.raises(ValueError):
        make_action_parser("NumberLine", key="middle")
    with pytest.raises(TypeError):
        make_action_parser("NumberLine")(text.bytes)
    with pytest.raises(ValueError):
        action_token_mask(text, jnp.int32(0), 1, missing="some")


# ------------------------------------------------------------------------- action token masks
EOS = b""  # special tokens have no bytes


def _table(vocab, width=None):
    width = width or max(1, max(map(len, vocab)))
    arr = np.zeros((len(vocab), width), np.uint8)
    for i, p in enumerate(vocab):
        arr[i, : len(p)] = np.frombuffer(p, np.uint8)
    table = bt.ByteTable(jnp.asarray(arr), jnp.asarray([len(p) for p in vocab], jnp.int32))
    return table, {p: i for i, p in enumerate(vocab)}


@functools.cache
def _mask_fn(task, key, missing):
    fn = functools.partial(parse_tokens, make_action_parser(task, key), missing=missing)
    return jax.jit(fn)


def _mask(pieces, num_tokens, task="Blackjack", key="last", missing="last_char"):
    """(action, mask as 0/1 over `num_tokens` positions) of a hand-made token sequence."""
    vocab = [b"<pad>"] + sorted(set(pieces) - {b"<pad>"})
    vocab += [b"<pad>"] * (32 - len(vocab))  # fixed shapes: one compilation per parser
    table, index = _table(vocab, width=16)
    ids = [index[p] for p in pieces] + [index[b"<pad>"]] * (24 - len(pieces))
    parsed, mask = _mask_fn(task, key, missing)(table, jnp.asarray(ids), len(pieces))
    return int(parsed.action), np.asarray(mask[:num_tokens]).astype(int).tolist()


def _toks(spec):
    return [p.encode() for p in spec.split("|")]


def test_action_mask_on_known_tokens():
    toks = _toks('{|\n| "|thoughts|":| "|I| hit|",|\n "|action|":| "|hit|"|\n}') + [EOS]
    # The key opens inside '\n "' (token 9): it straddles the boundary, so it is an action token.
    assert _mask(toks, 20) == (1, [0] * 9 + [1] * 8 + [0] * 3)
    # A key that starts a token, right after a byte-less special token: that one is CoT.
    toks = [b"I", b" stand", EOS, b'"action":', b' "', b"hit", b'"', EOS]
    assert _mask(toks, 8) == (1, [0, 0, 0, 1, 1, 1, 1, 1])
    # Upper-case key; two keys: "last" masks from the second, "first" from the first.
    toks = [b"x", b'"ACTION":', b' "stand"', b", ", b'"action":', b' "hit"']
    assert _mask(toks, 6) == (1, [0, 0, 0, 0, 1, 1])
    assert _mask(toks, 6, key="first") == (-1, [0, 1, 1, 1, 1, 1])


def test_action_mask_without_key():
    toks = [b"I", b" choose", b" +", EOS]
    assert _mask(toks, 5, "NumberLine") == (1, [0, 0, 1, 1, 0])  # the token of the last char
    assert _mask(toks, 5, "NumberLine", missing="all") == (1, [1, 1, 1, 1, 0])
    assert _mask(toks, 5, "NumberLine", missing="none") == (1, [0, 0, 0, 0, 0])
    # The last character "é" split over two byte tokens: the mask starts at its first byte.
    toks = [b"caf", b"\xc3", b"\xa9", EOS]
    assert _mask(toks, 4, "NumberLine") == (-1, [0, 1, 1, 1])
    assert _mask([EOS], 3, "NumberLine") == (-1, [1, 0, 0])  # no text, no chain of thought


def test_action_mask_random_tokenisations():
    """Random token boundaries (splitting UTF-8 characters too) over mutated demonstrations."""
    rng = random.Random(1)
    texts = _corpus("Blackjack", seed=3)[:200]
    n_tok = 160
    segs = []
    for t in texts:
        raw, cuts = t.encode(), [0]
        while cuts[-1] < len(raw):
            cuts.append(min(len(raw), cuts[-1] + rng.randint(1, 6)))
        pieces = [raw[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=False)]
        pieces = pieces[: n_tok - 1] + [EOS] * rng.randint(0, 1)
        segs.append(pieces)
    table, index = _table(sorted({p for s in segs for p in s} | {b"<pad>"}))
    ids = np.full((len(segs), n_tok), index[b"<pad>"], np.int32)
    for i, s in enumerate(segs):
        ids[i, : len(s)] = [index[p] for p in s]
    lengths = np.asarray([len(s) for s in segs], np.int32)
    fn = jax.jit(jax.vmap(lambda i, n: parse_tokens(make_action_parser("Blackjack"), table, i, n)))
    parsed, masks = fn(jnp.asarray(ids), jnp.asarray(lengths))
    n_key = 0
    for i, s in enumerate(segs):
        raw = b"".join(s)
        text = raw.decode()
        want = parse_action("Blackjack", text)
        got = int(parsed.action[i])
        assert (None if got < 0 else got, int(parsed.n_found[i])) == want
        span = action_span(text)
        if span is None:  # reference: from the token holding the last character's first byte
            start = len(raw) - len(text[-1:].encode()) if raw else None
        else:
            start = len(text[: span[0]].encode())
            n_key += 1
        ends = np.cumsum([len(p) for p in s])
        first = 0 if start is None else int(np.argmax(ends > start))
        want_mask = [first <= j < len(s) for j in range(n_tok)]
        assert np.asarray(masks[i]).tolist() == want_mask, text
    assert n_key > 100
