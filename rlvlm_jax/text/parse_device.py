"""On-device text -> action parsing with the host reference parser's exact semantics.

`make_action_parser(task, key)` builds a jittable, vmappable function of a padded byte string
(uint8[N] + length, e.g. `byte_table.Text`) that does what `envs.parse.parse_action` and
`envs.parse.action_span` do, so rollouts parse generated text inside compiled code:

- ASCII A-Z are lower-cased; the key is the exact 9 bytes `"action":` (last or first occurrence);
  without a key the tail is the last character only (the original's `text[-1:]`).
- Every action string found as a bare substring of the tail counts; EZPoints/Points24 first note
  "10" and delete every occurrence of it. "10" cannot overlap itself, so deleting all its
  occurrences is exactly `str.replace("10", "")`; the remaining bytes are compacted so that the
  other strings are searched in the same text the host searches ("1100" -> "10" -> "1" found).
- Exactly one distinct action string found -> its id, else -1 (the caller's random fallback).

Non-ASCII text: the device works on UTF-8 bytes and lower-cases ASCII only. For valid UTF-8 this
still equals the host exactly, because the patterns are pure ASCII and every multi-byte UTF-8 byte
is >= 0x80, so only two code points matter: U+0130 "İ" lower-cases to "i" + U+0307 and U+212A
(Kelvin sign) to "k" (the only non-ASCII code points whose `str.lower()` contains ASCII). "k"
occurs in no pattern, and the "i" is always followed by U+0307, so it never completes `"action":`
or "hit". A last character that is non-ASCII is never an action, and neither is the last byte of
its encoding. Offsets differ in unit only: `span_start` is a byte offset, where the host's
`action_span` gives a character offset into the original string (`byte_table.char_starts` maps
one to the other). Invalid UTF-8 is parsed as raw bytes; bytes >= 0x80 never match.

`action_token_mask` turns the span into the token mask the PPO log-probability needs
(lambda * CoT log-probs + action log-probs); `token_masks` is the one place where the generated-
token, chain-of-thought and action masks are derived from each other (rollouts and PPO use it).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rlvlm_jax.envs.parse import ACTION_KEY, KeyChoice
from rlvlm_jax.envs.tasks import Task, get_task
from rlvlm_jax.text.byte_table import ByteTable, Text, byte_to_token, detokenize

MissingKey = Literal["last_char", "all", "none"]


class ParsedAction(NamedTuple):
    """Result of one parse; all int32 scalars except `found`."""

    action: jax.Array  # action id, -1 unless exactly one distinct action string was found
    n_found: jax.Array  # number of distinct action strings found (host: parse_action's second)
    span_start: jax.Array  # byte offset of the chosen `"action":` key, -1 when there is none
    found: jax.Array  # (num_actions,) bool, which action strings were found


def _lower_ascii(data: jax.Array) -> jax.Array:
    upper = (data >= ord("A")) & (data <= ord("Z"))
    return jnp.where(upper, data + (ord("a") - ord("A")), data).astype(jnp.uint8)


def _occurrences(buf: jax.Array, patterns: list[bytes], end: jax.Array) -> jax.Array:
    """bool[P, N]: pattern p starts at i and ends by `end`; one sliding comparison per length."""
    n = buf.shape[0]
    blocks, order = [], []
    for k in sorted({len(p) for p in patterns}):
        which = [i for i, p in enumerate(patterns) if len(p) == k]
        padded = jnp.concatenate([buf, jnp.zeros(k - 1, buf.dtype)]) if k > 1 else buf
        windows = jnp.stack([padded[j : j + n] for j in range(k)], axis=-1)  # (N, k)
        table = jnp.asarray([list(patterns[i]) for i in which], jnp.uint8)  # (P_k, k)
        hit = jnp.all(windows[None] == table[:, None], axis=-1)  # (P_k, N)
        blocks.append(hit & (jnp.arange(n) + k <= end))
        order += which
    hits = jnp.concatenate(blocks) if len(blocks) > 1 else blocks[0]
    return hits if order == sorted(order) else hits[np.argsort(order)]


def _ascii_patterns(strings) -> list[bytes]:
    out = []
    for s in strings:
        b = s.encode("ascii")  # the lower-casing argument above needs ASCII patterns
        if not b or b != b.lower() or 0 in b:
            raise ValueError(f"pattern {s!r} must be non-empty lower-case ASCII without NUL")
        out.append(b)
    return out


def make_action_parser(task: str | Task, key: KeyChoice = "last"):
    """`parse(data, length=None) -> ParsedAction` for `task`; `data` is uint8[N] or a `Text`.

    Mirrors `parse.parse_action(task, text, key=key)` and `parse.action_span(text, key=key)`
    (see the module docstring). Static shapes only; jit and vmap freely.
    """
    spec = get_task(task)
    if key not in ("last", "first"):
        raise ValueError(f"key must be 'last' or 'first', got {key!r}")
    key_pattern = _ascii_patterns([ACTION_KEY])[0]
    patterns = _ascii_patterns(spec.action_strings)
    ten = b"10"
    if spec.has_ten and ten not in patterns:
        raise ValueError(f"{spec.name} has the '10' rule but no '10' action")

    def parse(data, length=None) -> ParsedAction:
        if isinstance(data, Text):
            data, length = data.bytes, data.num_bytes
        if length is None:
            raise TypeError("pass the byte string's length (or a Text)")
        data = jnp.asarray(data, jnp.uint8)
        n = data.shape[0]
        length = jnp.clip(jnp.asarray(length, jnp.int32), 0, n)
        low = _lower_ascii(data)
        pos = jnp.arange(n, dtype=jnp.int32)

        key_hit = _occurrences(low, [key_pattern], length)[0]
        if key == "last":
            key_at = jnp.max(jnp.where(key_hit, pos, -1))
        else:
            key_at = jnp.min(jnp.where(key_hit, pos, n))
            key_at = jnp.where(key_at == n, -1, key_at)
        key_at = key_at.astype(jnp.int32)
        # No key: the last byte. The last character of valid UTF-8 is an action only when it is
        # a single ASCII byte, so this equals the host's `text[-1:]` (see module docstring).
        start = jnp.where(key_at >= 0, key_at, jnp.maximum(length - 1, 0))
        in_tail = (pos >= start) & (pos < length)

        if spec.has_ten:
            ten_hit = _occurrences(low, [ten], length)[0] & in_tail
            removed = ten_hit | jnp.concatenate([jnp.zeros(1, bool), ten_hit[:-1]])
            kept = in_tail & ~removed
            slot = jnp.where(kept, jnp.cumsum(kept) - 1, n)
            rest = jnp.zeros_like(low).at[slot].set(low, mode="drop")
            found = jnp.any(_occurrences(rest, patterns, jnp.sum(kept, dtype=jnp.int32)), -1)
            # "10" counts iff it is in the tail before the deletion (str.replace semantics).
            found = found.at[patterns.index(ten)].set(jnp.any(ten_hit))
        else:
            found = jnp.any(_occurrences(low, patterns, length) & (pos >= start), -1)
        n_found = jnp.sum(found, dtype=jnp.int32)
        action = jnp.where(n_found == 1, jnp.argmax(found), -1).astype(jnp.int32)
        return ParsedAction(action, n_found, key_at, found)

    return parse


def _last_char_start(text: Text) -> jax.Array:
    """Byte offset where the last UTF-8 character starts (0 for an empty text)."""
    n = text.bytes.shape[0]
    pos = jnp.arange(n, dtype=jnp.int32)
    is_start = ((text.bytes & 0xC0) != 0x80) & (pos < text.num_bytes)
    return jnp.max(jnp.where(is_start, pos, 0))


def action_token_mask(
    text: Text, span_start: jax.Array, num_tokens: jax.Array, missing: MissingKey = "last_char"
) -> jax.Array:
    """bool[T]: which generated tokens are action tokens (the rest, chain of thought).

    Action tokens are a suffix of the first `num_tokens`: from the token holding byte
    `span_start` (the key's opening quote, so a token straddling the boundary, e.g. `,\\n "`,
    counts as action) to the last generated token, special tokens such as EOS included. Tokens
    with no bytes before that token (e.g. a special token right before the key) are CoT.
    Tokens at or past `num_tokens` (padding) are False.

    When `span_start` < 0 (no key), `missing` decides: "last_char" (default) marks the suffix from
    the token holding the last character's first byte, which is the text the parser read; "all"
    marks every generated token; "none" marks none (everything gets lambda). With no bytes at all
    "last_char" marks every generated token (there is no chain of thought).
    """
    t = text.token_start.shape[0]
    idx = jnp.arange(t, dtype=jnp.int32)
    has_key = span_start >= 0
    if missing == "last_char":
        fallback = jnp.where(text.num_bytes > 0, byte_to_token(text, _last_char_start(text)), 0)
    elif missing == "all":
        fallback = jnp.int32(0)
    elif missing == "none":
        fallback = jnp.int32(t)
    else:
        raise ValueError(f"missing must be 'last_char', 'all' or 'none', got {missing!r}")
    first = jnp.where(has_key, byte_to_token(text, jnp.maximum(span_start, 0)), fallback)
    return (idx >= first) & completion_mask(num_tokens, t)


def completion_mask(lengths: jax.Array, num_slots: int) -> jax.Array:
    """bool[..., num_slots]: the first `lengths[...]` slots, i.e. the generated tokens (EOS
    included) of right-padded completions."""
    return jnp.arange(num_slots, dtype=jnp.int32) < jnp.asarray(lengths)[..., None]


class TokenMasks(NamedTuple):
    """Disjoint token masks of right-padded completions, bool [..., T]."""

    token: jax.Array  # generated tokens (EOS included) = cot | action
    cot: jax.Array  # chain-of-thought tokens: generated, not action (their log-probs get lambda)
    action: jax.Array  # action tokens (`action_token_mask`)


def token_masks(action_mask: jax.Array, lengths: jax.Array) -> TokenMasks:
    """The masks of completions of `lengths` generated tokens whose action tokens are
    `action_mask` [..., T] (from `parse_tokens`)."""
    token = completion_mask(lengths, action_mask.shape[-1])
    return TokenMasks(token, token & ~action_mask, action_mask)


def parse_tokens(
    parser,
    table: ByteTable,
    ids: jax.Array,
    num_tokens: jax.Array,
    missing: MissingKey = "last_char",
) -> tuple[ParsedAction, jax.Array]:
    """Detokenise generated `ids` (T,), parse them and mask their action tokens, in one go."""
    text = detokenize(table, ids, num_tokens)
    parsed = parser(text)
    return parsed, action_token_mask(text, parsed.span_start, num_tokens, missing)
