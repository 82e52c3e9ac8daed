"""Slow: the on-device action parser equals the host reference parser on >= 10^5 texts per task.

Two paths, both compiled once per (task, key) with fixed shapes and run in fixed-size batches:

1. Bytes -> `make_action_parser`: 10^5 texts per task (demonstrations of random states, answers
   with every action string of every task, random mutations of both, short junk, and raw byte
   strings that are not valid UTF-8), each parsed with key="last" and key="first".
2. Token ids -> `detokenize` -> parser -> action token mask (`parse_tokens`) with the card
   tokenizer: 3 * 10^4 id sequences per task (encoded texts with token-level damage, uniformly
   random ids, random ids drawn like the corpus's ids with keys spliced in).

The reference for every row is the host: `parse_action`, `found_actions` and `action_span` on the
text. Bytes that are not valid UTF-8 are given to the host as `bytes.decode("utf-8",
"surrogateescape")` (each invalid byte becomes a lone surrogate, which `lower()` keeps and which
matches no ASCII pattern): that is `parse_device`'s documented "invalid UTF-8 is parsed as raw
bytes; bytes >= 0x80 never match". Compared per row: action id, number of distinct action strings
found, which ones, the key's byte offset, and on the token path the decoded bytes and the action
token mask. The mask's reference: the tokens from the one holding the key's first byte, or, with
no key, the one holding the first byte of the last character (`text[-1:]` for valid UTF-8; for
invalid UTF-8 the last byte that is not a continuation byte 10xxxxxx, the device's convention,
which the test also counts against Python's decoder and prints).
"""

from __future__ import annotations

import random

import jax
import numpy as np
import pytest

from rlvlm_jax.envs import demonstrations
from rlvlm_jax.envs.parse import action_span, found_actions, parse_action
from rlvlm_jax.envs.tasks import TASK_NAMES, TASKS
from rlvlm_jax.text import byte_table as bt
from rlvlm_jax.text.parse_device import make_action_parser, parse_tokens
from tests.text.test_parse_device import _states  # env-like states, off-track formulas too

N_TEXTS = 100_000  # byte path, per task (each parsed with both keys)
N_SEQUENCES = 30_000  # token path, per task
N_BYTES = 512
N_TOKENS = 128
BATCH = 8192
KEY = '"action":'
ALL_ACTIONS = sorted({a for t in TASKS.values() for a in t.action_strings})
# Non-ASCII characters: U+0130 and U+212A are the only ones whose lower() holds ASCII; U+1E9E
# lower-cases to a shorter encoding; fullwidth and curly quotes look like the key's quotes.
UNICODE = [
    "é", "İ", "\u212a", "ß", "\u1e9e", "✓", "→", "😀", "Σ", "ǅ", "Ａ", "\uff02", "“", "”", "‘",
    "\u0301", "\ufb01", "\u00a0", "\u2028", "\x00", "\x7f",
]  # fmt: skip
KEY_VARIANTS = [
    KEY, '"ACTION":', '"Action":', '"action" :', '"action" : ', "'action':", "action:",
    '\\"action\\":', "“action”:", '"action"：', "\uff02action\uff02:", '"act ion":',
    '"actions":', '""action":', '"action"::', '"action":"', '"İaction":', '"actİon":',
    '"ACTİON":', '"a\u0301ction":', '"action:', 'action":', "",
]  # fmt: skip
PIECES = [
    "10", "1", "0", "100", "110", "1100", "1010", "+10", "-1", "+1", "01", "101", "10+",
    "hit", "stand", "white", "standing", "HIT", "Stand", "StAnD", "hi t", "=", "==", "*", "/",
    "(", ")", "()", "-", "+", "+-", "24", "12", '"', "'", "}", "{", "\n", " ", ", ", ":", "\t",
]  # fmt: skip


# ------------------------------------------------------------------------------ text factory
def _answers(task):
    """Answers holding each action string (this task's and the others'), in several shapes."""
    out = []
    for a in ALL_ACTIONS + list(TASKS[task].action_strings):
        out += [
            f'"action": "{a}"',
            f'{{"action": "{a}"}}',
            f'{{\n "action": "{a}"\n}}',
            f'"action":"{a}"',
            f'"action": {a}',
            f'"ACTION": "{a.upper()}"',
            f"The action is {a}",
            a,
            f"{a}\n",
            f'"thoughts": "I choose {a}.",\n "action": "{a}"',
        ]
    return out


def _bases(task, rng, n):
    out = []
    for _ in range(n):
        action = None if rng.random() < 0.5 else rng.randrange(TASKS[task].num_actions)
        out.append(demonstrations.cot_demonstration(task, action=action, **_states(task, rng)))
    out += [demonstrations.answer_only(task, a) for a in range(TASKS[task].num_actions)]
    return out + _answers(task)


def _position(text, rng):
    """A random insertion point, often after the last key (where the parser looks)."""
    tail = text.rfind(KEY)
    lo = tail + len(KEY) if tail >= 0 and rng.random() < 0.6 else 0
    return rng.randint(min(lo, len(text)), len(text))


def _insert(text, piece, rng):
    at = _position(text, rng)
    return text[:at] + piece + text[at:]


def _random_char(rng):
    r = rng.random()
    if r < 0.6:
        return chr(rng.randint(32, 126))
    if r < 0.8:
        return rng.choice(UNICODE)
    return chr(rng.choice([0, 9, 10, 13, 27, 127]))


def _mutate(text, task, rng):
    actions = TASKS[task].action_strings
    kind = rng.randrange(14)
    if kind == 0:  # delete characters
        a = rng.randint(0, len(text))
        return text[:a] + text[a + rng.randint(1, 4 if rng.random() < 0.7 else 30) :]
    if kind == 1:  # insert characters
        return _insert(text, "".join(_random_char(rng) for _ in range(rng.randint(1, 4))), rng)
    if kind == 2:  # case changes
        mode = rng.randrange(4)
        if mode == 0:
            return text.upper()
        if mode == 1:
            return text.title()
        if mode == 2:
            return text.swapcase()
        return "".join(c.swapcase() if rng.random() < 0.3 else c for c in text)
    if kind == 3:  # a duplicated "action" key (another action, or the same), before or after
        extra = f'"action": "{rng.choice(actions + tuple(ALL_ACTIONS))}"'
        if rng.random() < 0.3:
            extra = text[text.find(KEY) :] if KEY in text else extra
        if rng.random() < 0.5:
            return _insert(text, extra, rng)
        return text + rng.choice([",\n ", " ", "", "\n"]) + extra
    if kind == 4:  # damage or replace the key(s)
        return text.replace(KEY, rng.choice(KEY_VARIANTS), rng.choice([1, 2, -1]))
    if kind == 5:  # truncation, mostly after the key
        tail = text.rfind(KEY)
        lo = tail + len(KEY) if tail >= 0 and rng.random() < 0.7 else 0
        return text[: rng.randint(min(lo, len(text)), len(text))]
    if kind == 6:  # quotes: straight -> curly / single / none / doubled
        old = rng.choice(['"', '"', "'"])
        new = rng.choice(["“", "”", "'", "", '""', "\\\"", "\uff02"])
        return text.replace(old, new, rng.choice([1, 2, 3, -1]))
    if kind == 7:  # unicode anywhere, or last
        ch = "".join(rng.choice(UNICODE) for _ in range(rng.randint(1, 3)))
        return _insert(text, ch, rng) if rng.random() < 0.7 else text + ch
    if kind == 8:  # digits, action strings of every task, words that hold action strings
        return _insert(text, rng.choice(PIECES + ALL_ACTIONS), rng)
    if kind == 9:  # this task's action strings
        return _insert(text, rng.choice(actions), rng)
    if kind == 10:  # ends right after the value, or with trailing prose
        if rng.random() < 0.5:
            return text.rstrip("}\n ")
        return text + rng.choice([" Done.", "\n", "}", " I choose hit.", " so +", "0", "1"])
    if kind == 11:  # whitespace changes
        return text.replace(rng.choice([" ", "\n", ": "]), rng.choice(["", "  ", "\t", ":"]))
    if kind == 12:  # swap two chunks
        a, b = sorted(rng.randint(0, len(text)) for _ in range(2))
        return text[b:] + text[a:b] + text[:a]
    return text + text if rng.random() < 0.5 else text[: len(text) // 2]  # repeat or halve


def _junk(task, rng):
    """Short texts from action strings, keys, pieces and characters, often without a key."""
    alphabet = PIECES + ALL_ACTIONS + KEY_VARIANTS[:6] + UNICODE[:6] + list("ab xyz{}:'\"")
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14)))


def _fit(text, limit):
    text = text[:limit]
    while len(text.encode()) > limit:  # keep whole characters
        text = text[:-1]
    return text


def _invalid_utf8(raw, rng):
    """Damage a byte string: stray continuation / lead bytes, or a cut inside a character."""
    kind = rng.randrange(3)
    if kind == 0:
        at = rng.randint(0, len(raw))
        stray = bytes(rng.randint(0x80, 0xFF) for _ in range(rng.randint(1, 3)))
        return raw[:at] + stray + raw[at:]
    if kind == 1:  # end in the middle of a multi-byte character
        char = rng.choice(["é", "→", "😀", "İ"]).encode()
        return raw + char[: rng.randint(1, len(char) - 1)]
    return raw + bytes([rng.choice([0x80, 0xBF, 0xC3, 0xE2, 0xF0, 0xFF])])


def texts_for(task, n, seed):
    """`n` byte strings (<= N_BYTES) for `task`; about 3% are not valid UTF-8."""
    rng = random.Random(seed)
    bases = _bases(task, rng, 1500)
    out = [_fit(t, N_BYTES).encode() for t in bases]
    while len(out) < n:
        r = rng.random()
        if r < 0.1:
            text = _junk(task, rng)
        else:
            text = rng.choice(bases)
            for _ in range(rng.choice([1, 1, 2, 2, 3, 4, 6]) if r < 0.97 else 0):
                text = _mutate(text, task, rng)
        raw = _fit(text, N_BYTES - 4).encode()
        if rng.random() < 0.03:
            raw = _invalid_utf8(raw, rng)
        out.append(raw)
    return out[:n]


# --------------------------------------------------------------------------------- references
def host_text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def host_parse(task, raw: bytes, key):
    """(action or -1, n_found, key byte offset or -1, found flags): `ParsedAction`'s order."""
    text = host_text(raw)
    action, n_found = parse_action(task, text, key=key)
    names = set(found_actions(task, text, key=key))
    span = action_span(text, key=key)
    start = -1 if span is None else len(text[: span[0]].encode("utf-8", "surrogateescape"))
    found = [a in names for a in TASKS[task].action_strings]
    return (-1 if action is None else action), n_found, start, found


def host_parse_all(task, raws, key):
    rows = [host_parse(task, r, key) for r in raws]
    return (
        np.array([r[0] for r in rows], np.int32),
        np.array([r[1] for r in rows], np.int32),
        np.array([r[2] for r in rows], np.int32),
        np.array([r[3] for r in rows], bool),
    )


def _mismatch_report(what, index, raws, got, want, limit=5):
    rows = np.nonzero(index)[0]
    lines = [f"{what}: {len(rows)} rows differ; first ones (text, device, host):"]
    for i in rows[:limit]:
        lines.append(f"  {raws[i]!r}: device {got[i]!r}, host {want[i]!r}")
    return "\n".join(lines)


def assert_rows_equal(what, raws, got, want):
    got, want = np.asarray(got), np.asarray(want)
    bad = got != want
    if bad.ndim > 1:
        bad = bad.reshape(len(bad), -1).any(1)
    assert not bad.any(), _mismatch_report(what, bad, raws, got.tolist(), want.tolist())


# ------------------------------------------------------------------------------ byte path
def _pack(raws, rng):
    """uint8 (B, N_BYTES) with random garbage past each length (the parser must ignore it)."""
    data = rng.integers(0, 256, (len(raws), N_BYTES), dtype=np.uint8)
    lengths = np.zeros(len(raws), np.int32)
    for i, b in enumerate(raws):
        data[i, : len(b)] = np.frombuffer(b, np.uint8)
        lengths[i] = len(b)
    return data, lengths


def run_batched(fn, *arrays):
    """`fn` (jitted, one compilation) over fixed-size batches; the last one padded."""
    n = len(arrays[0])
    outs = []
    for lo in range(0, n, BATCH):
        chunk = [a[lo : lo + BATCH] for a in arrays]
        pad = BATCH - len(chunk[0])
        if pad:
            chunk = [np.concatenate([c, np.zeros((pad,) + c.shape[1:], c.dtype)]) for c in chunk]
        out = jax.device_get(fn(*chunk))
        outs.append(jax.tree.map(lambda x, m=BATCH - pad: np.asarray(x)[:m], out))
    return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)


@pytest.mark.slow
@pytest.mark.parametrize("task", TASK_NAMES)
def test_device_parser_equals_host_on_1e5_texts(task):
    """10^5 texts per task, both key choices: every row's action, count, found set and key
    offset equal the host's; the corpus reaches every branch many times."""
    raws = texts_for(task, N_TEXTS, seed=TASK_NAMES.index(task))
    assert len(raws) >= 100_000 and max(map(len, raws)) <= N_BYTES
    data, lengths = _pack(raws, np.random.default_rng(0))
    spec = TASKS[task]
    results = {}
    for key in ("last", "first"):
        parse = jax.jit(jax.vmap(make_action_parser(task, key)))
        out = run_batched(parse, data, lengths)
        want = host_parse_all(task, raws, key)
        for name, got, ref in zip(("action", "n_found", "span_start", "found"), out, want,
                                  strict=True):  # fmt: skip
            assert_rows_equal(f"{task} key={key} {name}", raws, got, ref)
        results[key] = out
    action, n_found, start, _ = results["last"]
    # Coverage: every outcome occurs often.
    assert (action >= 0).sum() > 20_000
    assert (n_found == 0).sum() > 5_000 and (n_found >= 2).sum() > 2_000
    assert (start < 0).sum() > 5_000 and (start >= 0).sum() > 50_000
    if task != "Blackjack":  # a single character is never a Blackjack action
        assert ((start < 0) & (action >= 0)).sum() > 200
    assert (results["first"][1] != n_found).sum() > 1_000
    assert np.bincount(action + 1, minlength=spec.num_actions + 1).min() > 200
    assert sum(any(b >= 0x80 for b in r) for r in raws) > 10_000
    invalid = sum(1 for r in raws if host_text(r).encode("utf-8", "replace") != r)
    assert invalid > 1_000
    if spec.has_ten:
        assert sum(b"10" in r for r in raws) > 10_000


# ------------------------------------------------------------------------------ token path
@pytest.fixture(scope="module")
def card_tokenizer(tmp_path_factory):
    """The card tokenizer the training builds by default (byte-level BPE, 2048 at most)."""
    from rlvlm_jax.text.tokenizer import build_card_tokenizer, load_tokenizer

    path = tmp_path_factory.mktemp("card_tokenizer")
    build_card_tokenizer(str(path))
    return load_tokenizer(str(path))


def sequences_for(task, tok, vocab, n, seed):
    """`n` id sequences (<= N_TOKENS): encoded texts with token-level damage, uniform ids, and
    ids drawn like the corpus's with whole keys and action strings spliced in."""
    rng = random.Random(seed)
    raws = texts_for(task, 4000, seed=100 + seed)
    texts = [r.decode() for r in raws if r.decode("utf-8", "replace").encode() == r]
    encoded = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    pool = [i for e in encoded for i in e]  # ids with the corpus's frequencies
    key_ids = tok(KEY, add_special_tokens=False)["input_ids"]
    specials = list(tok.all_special_ids)
    out = []
    while len(out) < n:
        r = rng.random()
        if r < 0.6:  # an encoded text, damaged at token level
            ids = list(rng.choice(encoded))
            for _ in range(rng.choice([0, 0, 1, 2, 3])):
                kind, at = rng.randrange(5), rng.randint(0, len(ids))
                if kind == 0:
                    ids.insert(at, rng.choice(specials))
                elif kind == 1:
                    ids[at : at + 1] = [rng.randrange(vocab)]
                elif kind == 2:
                    del ids[at : at + rng.randint(1, 5)]
                elif kind == 3:
                    ids = ids[:at]
                else:
                    ids[at:at] = key_ids
        elif r < 0.75:  # uniformly random ids, ids past the tokenizer's vocabulary included
            ids = [rng.randrange(vocab) for _ in range(rng.randint(0, N_TOKENS))]
        else:  # corpus-like ids with keys and action strings spliced in
            ids = [rng.choice(pool) for _ in range(rng.randint(0, 60))]
            for _ in range(rng.randint(0, 3)):
                piece = rng.choice([KEY, KEY + " ", f'"{rng.choice(ALL_ACTIONS)}"'])
                at = rng.randint(0, len(ids))
                ids[at:at] = tok(piece, add_special_tokens=False)["input_ids"]
        out.append(ids[:N_TOKENS])
    return out


def _last_char_start(raw: bytes) -> int | None:
    """Byte offset of the last character's first byte; None for no bytes."""
    if not raw:
        return None
    try:
        text = raw.decode()
    except UnicodeDecodeError:  # the device's convention for invalid UTF-8 (module docstring)
        starts = [i for i, b in enumerate(raw) if b & 0xC0 != 0x80]
        return starts[-1] if starts else 0
    return len(raw) - len(text[-1:].encode())


def _python_last_char_start(raw: bytes) -> int:
    return len(raw) - len(host_text(raw)[-1:].encode("utf-8", "surrogateescape"))


@pytest.mark.slow
@pytest.mark.parametrize("task", TASK_NAMES)
def test_token_path_equals_host_on_random_token_sequences(task, card_tokenizer):
    """3 * 10^4 id sequences per task through `parse_tokens` (detokenize, parse, mask), both key
    choices: decoded bytes, action, count, found set, key offset and the action token mask equal
    the host's, and the decoded text equals the tokenizer's own `decode` where it is valid."""
    tok = card_tokenizer
    vocab = len(tok) + 8  # a model's vocabulary may exceed the tokenizer's: no bytes there
    table = bt.byte_table(tok, vocab_size=vocab)
    token_bytes = bt.token_bytes_list(tok, vocab)
    seqs = sequences_for(task, tok, vocab, N_SEQUENCES, seed=TASK_NAMES.index(task))
    ids = np.zeros((len(seqs), N_TOKENS), np.int32)
    pad_rng = np.random.default_rng(1)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        ids[i, len(s) :] = pad_rng.integers(0, vocab, N_TOKENS - len(s))  # ignored garbage
    num_tokens = np.array([len(s) for s in seqs], np.int32)
    raws = [b"".join(token_bytes[i] for i in s) for s in seqs]

    # The byte table is what the tokenizer decodes (where the bytes are valid UTF-8).
    decoded = tok.batch_decode(
        [[i for i in s if i < len(tok)] for s in seqs], skip_special_tokens=True
    )
    valid = [r.decode("utf-8", "replace") == host_text(r) for r in raws]
    bad = [i for i, v in enumerate(valid) if v and decoded[i] != raws[i].decode()]
    assert not bad, [(seqs[i], decoded[i], raws[i]) for i in bad[:5]]

    # Mask references; bytes before each token end.
    ends = [np.cumsum([len(token_bytes[i]) for i in s]) for s in seqs]

    def first_token(i, byte):
        return 0 if byte is None else int(np.searchsorted(ends[i], byte, side="right"))

    for key in ("last", "first"):
        parser = make_action_parser(task, key)

        @jax.jit
        @jax.vmap
        def run(ids, n, parser=parser):
            text = bt.detokenize(table, ids, n)
            parsed, mask = parse_tokens(parser, table, ids, n)
            return text.bytes, text.num_bytes, parsed, mask

        data, num_bytes, parsed, mask = run_batched(run, ids, num_tokens)
        got_raws = [bytes(data[i, : num_bytes[i]]) for i in range(len(seqs))]
        assert_rows_equal(f"{task} decoded bytes", raws, got_raws, raws)
        want = host_parse_all(task, raws, key)
        for name, got, ref in zip(("action", "n_found", "span_start", "found"), parsed, want,
                                  strict=True):  # fmt: skip
            assert_rows_equal(f"{task} tokens key={key} {name}", raws, got, ref)
        span_start = want[2]
        first = np.array(
            [
                first_token(i, _last_char_start(raws[i]) if span_start[i] < 0 else span_start[i])
                for i in range(len(seqs))
            ]
        )
        j = np.arange(N_TOKENS)
        want_mask = (j[None] >= first[:, None]) & (j[None] < num_tokens[:, None])
        assert_rows_equal(f"{task} tokens key={key} mask", raws, mask, want_mask)

    action, _, start, _ = parsed
    assert (action >= 0).sum() > 5_000 and (start >= 0).sum() > 10_000 and (start < 0).sum() > 5_000
    n_invalid = len(valid) - sum(valid)
    assert n_invalid > 2_000  # token boundaries inside characters, stray bytes
    # Where Python's decoder would start the last character elsewhere (stray continuation bytes
    # at the end, no key): the device's mask then starts at an earlier token. Reported only.
    differ = sum(
        1
        for i, r in enumerate(raws)
        if r
        and start[i] < 0
        and first_token(i, _python_last_char_start(r)) != first_token(i, _last_char_start(r))
    )
    print(f"{task}: {n_invalid} invalid UTF-8 sequences; {differ} without a key whose mask would "
          "start at another token with Python's decoder's last character")  # fmt: skip

