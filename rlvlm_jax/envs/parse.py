"""Host reference parser from generated text to an env action (RL4VLM's `text_projection`).

`parse_action` reproduces the original post-processing; the device-side parser is checked against
it. Its semantics, subtleties included (all verified against the original source):

1. Non-string input: no action (the original drew a random one).
2. The whole text is lower-cased (so "ACTION", "Stand", "HIT" all count).
3. The key is the exact 9 characters `"action":` after lower-casing: straight double quotes and no
   space before the colon; `'action':`, `"action" :` and `action:` are not keys.
4. Which key: the original used `str.find`, i.e. the FIRST `"action":`, and kept everything after
   it, later keys included (so two keys with different values parse as "several found"). This
   project's spec takes the LAST key (`key="last"`, the default), which differs only for texts
   with several keys; `key="first"` reproduces the original exactly.
5. No key at all: `find` returned -1 and the original kept `text[-1:]`, the last character only.
   Reproduced as is: a bare "+" still parses for NumberLine, but a bare "hit" ("t"), "10" ("0") or
   a trailing "}" / newline gives nothing found.
6. The kept tail runs to the end of the text: closing brace, trailing prose, anything. Matching is
   by bare substring over that whole tail; the value need not be quoted, and quotes do not delimit
   it. The key itself contains none of the action strings, so it never matches.
7. EZPoints and Points24 (the original's test was `'points' in env_name`): if "10" occurs in the
   tail it counts as found and EVERY non-overlapping "10" is deleted (`str.replace`, left to right)
   before the other strings are searched, so "10" alone is not also read as "1". Consequences:
   "100" -> {"10"} ("0" is no action); "110" -> {"10", "1"} (invalid); "1100" -> the deletion
   leaves "10", whose "1" is then found -> invalid; "+10" -> {"10", "+"} (invalid).
8. Every action string found as a substring counts, so "-1" is {"-", "1"} in Points24, "+1" is {"+"}
   in NumberLine (digits are no NumberLine action), "white" contains "hit", "standing" contains
   "stand", and `"hit" (not "stand")` is invalid.
9. Found strings are de-duplicated: "+ +" is one action. Exactly one distinct string -> its index;
   zero or several -> None here. The original then drew a uniformly random action from the task's
   WHOLE action list (`random.randint(0, n-1)`) with no reward penalty; `parse_or_random` does that
   and reports the step as invalid, the metric the paper's text-parsing analysis needs.

`action_span` gives the character span the log-probability of the "action tokens" covers: from the
chosen key to the end of the text. Offsets index the ORIGINAL text even where lower-casing changes
the length (e.g. "İ" lower-cases to two code points).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from rlvlm_jax.envs.tasks import Task, get_task

ACTION_KEY = '"action":'
KeyChoice = Literal["last", "first"]


def _lower_with_offsets(text: str) -> tuple[str, list[int] | None]:
    """Lower-cased text and, only when lengths differ, lower index -> original index."""
    lowered = text.lower()
    if len(lowered) == len(text):
        return lowered, None
    offsets: list[int] = []
    for i, ch in enumerate(text):
        offsets.extend([i] * len(ch.lower()))
    offsets.append(len(text))
    return lowered, offsets


def _key_index(lowered: str, key: KeyChoice) -> int:
    if key == "last":
        return lowered.rfind(ACTION_KEY)
    if key == "first":
        return lowered.find(ACTION_KEY)
    raise ValueError(f"key must be 'last' or 'first', got {key!r}")


def found_actions(task: str | Task, text: str, *, key: KeyChoice = "last") -> list[str]:
    """The distinct action strings found in the kept tail, in action-id order."""
    spec = get_task(task)
    if not isinstance(text, str):
        return []
    lowered = text.lower()
    tail = lowered[_key_index(lowered, key) :]  # index -1 keeps the last character (original)
    found = set()
    if spec.has_ten and "10" in tail:
        found.add("10")
        tail = tail.replace("10", "")
    for action in spec.action_strings:
        if action in tail:
            found.add(action)
    return [a for a in spec.action_strings if a in found]


def parse_action(
    task: str | Task, text: str, *, key: KeyChoice = "last"
) -> tuple[int | None, int]:
    """(action id, number of distinct action strings found); the id is None unless exactly one.

    None means the original's fallback: a uniformly random action, counted here as invalid.
    """
    spec = get_task(task)
    found = found_actions(spec, text, key=key)
    if len(found) == 1:
        return spec.action_strings.index(found[0]), 1
    return None, len(found)


def parse_or_random(
    task: str | Task, text: str, rng: np.random.Generator, *, key: KeyChoice = "last"
) -> tuple[int, bool]:
    """(action id, valid): the original's behaviour, random over all actions when unparsable."""
    spec = get_task(task)
    action, _ = parse_action(spec, text, key=key)
    if action is None:
        return int(rng.integers(spec.num_actions)), False
    return action, True


def action_span(text: str, *, key: KeyChoice = "last") -> tuple[int, int] | None:
    """(start, end) character offsets of the action part: the key through the end of the text.

    None when the key is absent (the caller decides the fallback; the original's token-level
    fallback was "the last 5 tokens", a known defect). Case-insensitive like the parser.
    """
    if not isinstance(text, str):
        return None
    lowered, offsets = _lower_with_offsets(text)
    idx = _key_index(lowered, key)
    if idx < 0:
        return None
    start = idx if offsets is None else offsets[idx]
    return start, len(text)
