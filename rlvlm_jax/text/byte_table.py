"""Token ids -> bytes and character offsets inside compiled code (no host round trip).

`byte_table(tokenizer)` builds, once on the host, a (vocab, max_len) uint8 table of each token's
exact bytes plus their lengths: byte-level BPE tokens (GPT-2 style, our card tokenizer) through
the byte<->unicode map, SentencePiece-style tokens (LLaMA/Mistral: "▁" is a space, "<0x0A>" a
byte) directly. Special tokens have no bytes. The jittable functions then turn generated ids into
a padded byte string with per-token byte and character spans, map offsets back to tokens, and
find a byte pattern, so the action parser can locate `"action":` and its tokens on the device.

SentencePiece tokenizers drop the first leading space when decoding a whole text; our byte
string keeps it (offsets are into our string; the parser does not care about that space).
"""

from __future__ import annotations

import json
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class ByteTable(NamedTuple):
    bytes: jax.Array  # (V, L) uint8, zero padded
    lengths: jax.Array  # (V,) int32


class Text(NamedTuple):
    """Detokenised ids. All arrays have static shapes; entries past num_bytes are zero."""

    bytes: jax.Array  # (T * L,) uint8
    num_bytes: jax.Array  # () int32
    token_start: jax.Array  # (T,) byte offset of each token (padding tokens: empty spans)
    token_end: jax.Array  # (T,)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode map used by ByteLevel BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def _decoder_types(tokenizer) -> set[str]:
    spec = json.loads(tokenizer.backend_tokenizer.to_str()).get("decoder") or {}
    found, stack = set(), [spec]
    while stack:
        d = stack.pop()
        if isinstance(d, dict):
            found.add(d.get("type"))
            stack.extend(d.get("decoders") or [])
    return found


def token_bytes_list(tokenizer, vocab_size: int | None = None) -> list[bytes]:
    """Exact bytes of every token id (special and out-of-range ids: b"")."""
    if not hasattr(tokenizer, "backend_tokenizer"):
        raise TypeError("byte tables need a fast (tokenizers-backed) tokenizer")
    kinds = _decoder_types(tokenizer)
    n = len(tokenizer) if vocab_size is None else vocab_size
    special = set(tokenizer.all_special_ids)
    unicode_to_byte = {c: b for b, c in _bytes_to_unicode().items()}
    out = []
    for i in range(n):
        tok = tokenizer.convert_ids_to_tokens(i) if i < len(tokenizer) else None
        if tok is None or i in special:
            out.append(b"")
        elif "ByteLevel" in kinds:
            out.append(bytes(unicode_to_byte[c] for c in tok))
        elif len(tok) == 6 and tok.startswith("<0x") and tok.endswith(">"):
            out.append(bytes([int(tok[3:5], 16)]))  # SentencePiece byte fallback
        else:
            out.append(tok.replace("\u2581", " ").encode("utf-8"))
    return out


def byte_table(tokenizer, vocab_size: int | None = None) -> ByteTable:
    """Host-built table; pass `vocab_size` = the model's (it may exceed the tokenizer's)."""
    toks = token_bytes_list(tokenizer, vocab_size)
    width = max(1, max(map(len, toks)))
    table = np.zeros((len(toks), width), np.uint8)
    for i, b in enumerate(toks):
        table[i, :len(b)] = np.frombuffer(b, np.uint8)
    return ByteTable(jnp.asarray(table), jnp.asarray([len(b) for b in toks], jnp.int32))


def detokenize(table: ByteTable, ids: jax.Array, length: jax.Array) -> Text:
    """The first `length` of `ids` (T,) as a byte string with token spans. Jittable; vmap for
    batches."""
    t = ids.shape[0]
    width = table.bytes.shape[1]
    ids = jnp.clip(ids, 0, table.bytes.shape[0] - 1)
    lens = jnp.where(jnp.arange(t) < length, table.lengths[ids], 0)
    ends = jnp.cumsum(lens).astype(jnp.int32)
    starts = ends - lens
    pos = jnp.arange(t * width, dtype=jnp.int32)
    tok = jnp.clip(jnp.searchsorted(ends, pos, side="right"), 0, t - 1)
    within = jnp.clip(pos - starts[tok], 0, width - 1)
    total = ends[-1]
    data = jnp.where(pos < total, table.bytes[ids[tok], within], 0).astype(jnp.uint8)
    return Text(data, total, starts, ends)


def char_starts(text: Text) -> jax.Array:
    """(N + 1,) number of characters before each byte offset (UTF-8: continuation bytes are
    10xxxxxx), so char offset of byte p is result[p]."""
    n = text.bytes.shape[0]
    is_start = ((text.bytes & 0xC0) != 0x80) & (jnp.arange(n) < text.num_bytes)
    return jnp.concatenate([jnp.zeros(1, jnp.int32), jnp.cumsum(is_start, dtype=jnp.int32)])


def token_char_spans(text: Text) -> tuple[jax.Array, jax.Array]:
    """Character [start, end) of every token in the decoded string."""
    before = char_starts(text)
    return before[text.token_start], before[text.token_end]


def byte_to_token(text: Text, byte_pos: jax.Array) -> jax.Array:
    """Index of the token holding byte `byte_pos` (the last token if past the end)."""
    t = text.token_end.shape[0]
    return jnp.clip(jnp.searchsorted(text.token_end, byte_pos, side="right"), 0, t - 1)


def char_to_token(text: Text, char_pos: jax.Array) -> jax.Array:
    """Index of the token holding character `char_pos`."""
    _, char_end = token_char_spans(text)
    t = char_end.shape[0]
    return jnp.clip(jnp.searchsorted(char_end, char_pos, side="right"), 0, t - 1)


def find_bytes(text: Text, pattern: bytes, last: bool = False) -> jax.Array:
    """Byte offset of the first (or last) occurrence of the static `pattern`, or -1."""
    n, k = text.bytes.shape[0], len(pattern)
    if k == 0 or k > n:
        raise ValueError(f"pattern of {k} bytes cannot be searched in {n}")
    hit = jnp.arange(n - k + 1) <= text.num_bytes - k
    for j, b in enumerate(pattern):
        hit &= text.bytes[j:n - k + 1 + j] == b
    idx = jnp.arange(n - k + 1)
    if last:
        found = jnp.max(jnp.where(hit, idx, -1))
    else:
        found = jnp.min(jnp.where(hit, idx, n))
        found = jnp.where(found == n, -1, found)
    return found.astype(jnp.int32)
