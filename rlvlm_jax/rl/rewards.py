"""Host-side rewards for single-turn problems (MAYE's setting): +1 for a correct final answer,
plus optional shaping terms, all computed from decoded texts on the host.

The judged answer is always the response's last `\\boxed{...}` (or `\\fbox{...}`): the prompt asks
for one, and every checker reads the same thing, so switching checkers never changes what the
policy has to output. A response without a boxed answer is wrong.

Checkers (`REWARD_CHECKERS`, looked up with `checker`):
- "math_verify": symbolic / numeric equivalence with HuggingFace's `math-verify` (what MAYE used,
  besides two looser fallbacks of its own): "\\frac{1}{2}" == "0.5", "30^\\circ" == "30".
- "exact": normalised string match, numbers compared by value ("15" == "15.0").
- "exact_or_formula": "exact", and where the answer is an arithmetic formula (the card suite's
  Points24 formulas), any formula of the same whole numbers, each used as often, with the same
  exact value: "8/(3-8/3)" == "(8/(3-(8/3)))"; "3*8*(4-3)" != "3*8" (a number left out).

Shaping terms are pure functions of the texts (and of the `finished` flags), returning float32
arrays; `total_reward` combines them. MAYE's released config (GAIR-NLP/MAYE,
recipes/configs/full_ppo_vllm_distributed.yaml and maye/rlhf/rewards.py) used:
accuracy +1; a response cut at the token limit (no EOS) or shorter than 18 tokens scores exactly
-0.1, whatever else it earned; -0.1 x the share of CJK ideographs in the text, always added; and
+1 for exactly one <think>...</think> block, always added (its chat-template prompt never asks for
one). `total_reward`'s defaults keep the first two parts only (see there).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence

import numpy as np

logger = logging.getLogger(__name__)

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")


def extract_boxed(text: str) -> str | None:
    """The content of the last top-level `\\boxed{...}` / `\\fbox{...}` in `text`, nested braces
    included (`\\boxed{\\frac{1}{2}}` -> `\\frac{1}{2}`), or None if there is none.

    Escaped braces (`\\{`, `\\}`) do not count towards nesting, so set answers such as
    `\\boxed{\\{1, 2\\}}` come out whole. If the last box is never closed (a response cut at the
    token limit), the answer is incomplete and None is returned rather than an earlier box: an
    earlier box is often an intermediate result, not the final answer. A box inside another box
    belongs to the outer one. Only the braced form is read (not `\\boxed 5`).
    """
    found = None
    pos = 0
    while True:
        m = _BOX_RE.search(text, pos)
        if m is None:
            return found
        depth, i = 1, m.end()
        while i < len(text) and depth:
            c = text[i]
            if c == "\\":
                i += 2  # an escaped character (\{, \}, \\) never opens or closes a group
                continue
            depth += (c == "{") - (c == "}")
            i += 1
        if depth:
            return None  # the last box is unterminated: no final answer
        found = text[m.end():i - 1]
        pos = i


# ------------------------------------------------------------------------------------- checkers


def _timeout_whole_seconds(timeout_s: float) -> int:
    """math-verify arms `signal.alarm`, which takes whole seconds: a float there raises a
    TypeError that the library swallows, turning every answer wrong; so round up, to >= 1 s."""
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be positive seconds, got {timeout_s!r}")
    return max(1, math.ceil(timeout_s))


def _check_lengths(responses: Sequence[str], answers: Sequence[str]) -> None:
    if len(responses) != len(answers):
        raise ValueError(f"{len(responses)} responses but {len(answers)} answers: pass one "
                         "answer per response (repeat a problem's answer for each of its samples)")


_DEGREE_RE = re.compile(r"\^?\s*(?:°|\\textdegree\b|\\degree\b)")


def _latex_degrees(text: str) -> str:
    """Unicode and gensymb degree signs as LaTeX `^{\\circ}`, which math-verify reads as degrees:
    models write "45°", which it would otherwise fail to parse."""
    return _DEGREE_RE.sub(r"^{\\circ}", text)


def _judge_main_thread(responses: Sequence[str], answers: Sequence[str], seconds: int):
    """Judges on the calling (main) thread, with math-verify's own SIGALRM timeouts."""
    import math_verify
    from math_verify.errors import TimeoutException

    latex = [math_verify.LatexExtractionConfig()]

    def parse(boxed: str):
        # The library's box extractor reads the content of \boxed{...}: parsing the box rather
        # than the bare text makes it read the whole thing as one LaTeX expression.
        return math_verify.parse("\\boxed{" + _latex_degrees(boxed) + "}", extraction_config=latex,
                                 parsing_timeout=seconds)

    gold_cache: dict[str, list] = {}
    out = np.zeros(len(responses), bool)
    for i, (response, answer) in enumerate(zip(responses, answers, strict=True)):
        boxed = extract_boxed(response)
        if boxed is None or not boxed.strip() or not answer.strip():
            continue
        try:
            if answer not in gold_cache:  # a group's samples share one answer: parse it once
                gold_cache[answer] = parse(answer)
            gold, pred = gold_cache[answer], parse(boxed)
            out[i] = bool(gold and pred and math_verify.verify(gold, pred,
                                                               timeout_seconds=seconds))
        except (Exception, TimeoutException):  # the library catches these itself; belt and braces
            logger.debug("math-verify failed on response %d", i, exc_info=True)
    return out


def _judge_in_subprocess(responses: Sequence[str], answers: Sequence[str], seconds: int):
    """Judges in a fresh Python process, where the main thread (and so SIGALRM) is free: used when
    called off the main thread, where math-verify's signal-based timeout cannot be armed. A
    subprocess (not fork) because this process may run JAX's threads."""
    payload = json.dumps({"responses": list(responses), "answers": list(answers),
                          "timeout_s": seconds})
    # Per response at most: two parses and a few comparisons, each cut at `seconds`.
    deadline = 30 + 8 * seconds * len(responses)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH")) if p))
    code = "from rlvlm_jax.rl.rewards import _judge_stdin; _judge_stdin()"
    try:
        done = subprocess.run([sys.executable, "-c", code], input=payload, capture_output=True,
                              text=True, timeout=deadline, env=env)
    except subprocess.TimeoutExpired:
        logger.warning("math-verify judge process passed its %d s deadline: all %d responses "
                       "of this batch count as wrong", deadline, len(responses))
        return np.zeros(len(responses), bool)
    if done.returncode != 0:
        raise RuntimeError(f"the math-verify judge process failed (exit {done.returncode}); is "
                           f"math-verify installed (requirements.txt)? Its stderr:\n"
                           f"{done.stderr[-2000:]}")
    return np.asarray(json.loads(done.stdout.strip().splitlines()[-1]), bool)


def _judge_stdin() -> None:
    """The subprocess side of `_judge_in_subprocess`: JSON in on stdin, a JSON list out."""
    job = json.loads(sys.stdin.read())
    out = math_verify_correct(job["responses"], job["answers"], timeout_s=job["timeout_s"])
    print(json.dumps(out.tolist()))


def math_verify_correct(responses: Sequence[str], answers: Sequence[str], *,
                        timeout_s: float = 5.0) -> np.ndarray:
    """bool[N]: whether each response's last boxed answer equals its gold answer (LaTeX, e.g.
    "20", "\\frac{1}{2}", "30^\\circ") by math-verify's symbolic and numeric comparison.

    Degree signs written "45°" or "\\degree" are read as "^{\\circ}" first (the library does not
    parse them). Never raises on what it judges: no boxed answer, an empty one, a parse failure or
    a timeout all count as wrong. `timeout_s` bounds each parse and each comparison (math-verify's
    default and MAYE's: 5 s), rounded up to whole seconds because the library times out with
    `signal.alarm`. A pathological answer ("(10^{6})!") thus costs a few `timeout_s` at most.

    Threads: `signal` works only on the main thread, and off it math-verify raises ValueError
    instead of judging. The training loop calls this on the main thread, where the library's
    alarms run as designed (they replace any SIGALRM handler of ours for the call, and cancel
    a pending `signal.alarm`). Called from another thread, the batch is judged in a fresh
    subprocess with the same timeouts (about 0.6 s to start), so it stays bounded and correct.
    """
    _check_lengths(responses, answers)
    seconds = _timeout_whole_seconds(timeout_s)
    if not responses:
        return np.zeros(0, bool)
    if threading.current_thread() is threading.main_thread():
        return _judge_main_thread(responses, answers, seconds)
    return _judge_in_subprocess(responses, answers, seconds)


_NUMBER_RE = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _normalise(text: str) -> str:
    text = "".join(text.split()).lower()
    return text[:-1] if text.endswith(".") else text


def _same(pred: str, gold: str) -> bool:
    if pred == gold:
        return True
    if _NUMBER_RE.fullmatch(pred) and _NUMBER_RE.fullmatch(gold):
        return float(pred) == float(gold)
    return False


def exact_match_correct(responses: Sequence[str], answers: Sequence[str]) -> np.ndarray:
    """bool[N]: whether each response's last boxed answer equals its answer after normalising
    both (strip, lower-case, drop all whitespace, drop one trailing period); plain decimal numbers
    compare by value ("15" == "15.0" == "1.5e1"). No boxed answer counts as wrong: there is no
    fallback to "answer: ..." text, for the same output contract as "math_verify"."""
    _check_lengths(responses, answers)
    out = np.zeros(len(responses), bool)
    for i, (response, answer) in enumerate(zip(responses, answers, strict=True)):
        boxed = extract_boxed(response)
        if boxed is None:
            continue
        pred, gold = _normalise(boxed), _normalise(answer)
        out[i] = bool(gold) and _same(pred, gold)
    return out


_FORMULA_TOKEN_RE = re.compile(r"\s*(\d+|[-+*/()])")


def _formula_tokens(text: str) -> list[str] | None:
    """The tokens of `text` if it is only whole numbers, + - * /, parentheses and spaces, with at
    least one operator; else None."""
    tokens, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _FORMULA_TOKEN_RE.match(text, pos)
        if m is None:
            return None
        tokens.append(m.group(1))
        pos = m.end()
    return tokens if any(t in "+-*/" for t in tokens) else None


def _same_formula(pred: str, gold_tokens: list[str]) -> bool:
    # Imported here: the math-verify subprocess imports this module and needs no jax.
    from rlvlm_jax.envs.solvers import evaluate_tokens

    tokens = _formula_tokens(pred)
    if tokens is None:
        return False
    numbers = sorted(int(t) for t in tokens if t.isdigit())
    if numbers != sorted(int(t) for t in gold_tokens if t.isdigit()):
        return False
    try:
        return evaluate_tokens(tokens) == evaluate_tokens(gold_tokens)
    except (ValueError, ZeroDivisionError):  # malformed, or a division by zero
        return False


def exact_or_formula_correct(responses: Sequence[str], answers: Sequence[str]) -> np.ndarray:
    """bool[N]: `exact_match_correct`, and for an answer that is an arithmetic formula (whole
    numbers, + - * /, parentheses; at least one operator), also any boxed formula that uses the
    same numbers, each as often as the answer does, and has the same exact value. For questions
    with many right formulas (make 24 from four cards): the answer is one of them, the check
    accepts all. A malformed formula or a division by zero is wrong."""
    out = exact_match_correct(responses, answers)
    for i, (response, answer) in enumerate(zip(responses, answers, strict=True)):
        gold = _formula_tokens(answer)
        if out[i] or gold is None:
            continue
        boxed = extract_boxed(response)
        out[i] = boxed is not None and _same_formula(boxed, gold)
    return out


REWARD_CHECKERS: dict[str, Callable[[Sequence[str], Sequence[str]], np.ndarray]] = {
    "math_verify": math_verify_correct,
    "exact": exact_match_correct,
    "exact_or_formula": exact_or_formula_correct,
}


def checker(name: str) -> Callable[[Sequence[str], Sequence[str]], np.ndarray]:
    """The checker registered as `name` in `REWARD_CHECKERS`."""
    try:
        return REWARD_CHECKERS[name]
    except KeyError:
        raise KeyError(f"unknown reward checker {name!r}; known checkers: "
                       f"{', '.join(sorted(REWARD_CHECKERS))}") from None


# --------------------------------------------------------------------------------- shaping terms

# "Non-English" = CJK text, the language mixing MAYE penalised (Qwen drifting into Chinese). MAYE
# counted CJK Unified Ideographs (U+4E00-U+9FFF) only; we also count Extension A, CJK punctuation,
# kana, Hangul and full-width forms (，。：（）), the same failure in other clothes. Latin-1, Greek
# letters and math symbols (π, √, ≤, °, ∠, △) are never counted.
_CJK_RE = re.compile("[\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff"
                     "\uac00-\ud7af\uff00-\uffef]")


def no_eos_penalty(finished: np.ndarray, value: float = -0.1) -> np.ndarray:
    """float32[N]: `value` for responses cut at the token limit (`finished` False: no EOS), else 0.
    A truncated response rarely holds a final answer; the penalty discourages rambling."""
    finished = np.asarray(finished, bool)
    return np.where(finished, 0.0, value).astype(np.float32)


def too_short_penalty(responses: Sequence[str], min_chars: int, value: float = -0.1) -> np.ndarray:
    """float32[N]: `value` for responses with fewer than `min_chars` characters once stripped of
    surrounding whitespace (a bare "\\boxed{3}" guess with no reasoning), else 0. MAYE counted
    tokens (18); characters keep this a function of the text alone (~3-4 characters a token)."""
    return np.array([value if len(r.strip()) < min_chars else 0.0 for r in responses], np.float32)


def non_english_penalty(responses: Sequence[str], value: float = -0.1, *,
                        proportional: bool = True) -> np.ndarray:
    """float32[N]: for language mixing. `proportional` (MAYE's form): `value` x the share of the
    response's characters that are CJK (see `_CJK_RE`); otherwise `value` as soon as there is one
    such character. 0 for responses with none, and for empty ones."""
    out = np.zeros(len(responses), np.float32)
    for i, r in enumerate(responses):
        n = len(_CJK_RE.findall(r))
        if n:
            out[i] = value * n / len(r) if proportional else value
    return out


def format_reward(responses: Sequence[str], weight: float = 0.0) -> np.ndarray:
    """float32[N]: `weight` for responses with a non-empty boxed answer, else 0. Off (weight 0) by
    default: correctness already requires the box. (MAYE's own format term rewarded one
    <think>...</think> block instead, a format its chat-template prompt did not ask for.)"""
    return np.array([weight if (b := extract_boxed(r)) is not None and b.strip() else 0.0
                     for r in responses], np.float32)


def total_reward(correct: np.ndarray, finished: np.ndarray, responses: Sequence[str], *,
                 no_eos: float | None = -0.1, min_chars: int = 0, too_short: float = -0.1,
                 non_english: float = 0.0, non_english_proportional: bool = True,
                 format_weight: float = 0.0, length_penalty_replaces: bool = True) -> np.ndarray:
    """float32[N]: 1.0 for a correct answer else 0.0, plus the enabled shaping terms.

    Defaults: +1 correct and -0.1 for a truncated response (`no_eos`). A term whose value is 0
    (or None) is off, as are by default the too-short penalty (on when `min_chars` > 0 and
    `too_short` != 0), the non-English penalty (`non_english`) and the format reward
    (`format_weight`). With `length_penalty_replaces` (MAYE's rule:
    `scores[mask] = reward_penalty`), a truncated or too-short response scores exactly its
    length penalties (their sum if both fire), its accuracy and other terms discarded; without
    it they are added like the others. The non-English and format terms are always added.
    Closer to MAYE's full recipe: `min_chars` of roughly 4 x 18 (it counted 18 tokens) and
    `non_english=-0.1`.
    """
    correct = np.asarray(correct, bool)
    finished = np.asarray(finished, bool)
    if not len(correct) == len(finished) == len(responses):
        raise ValueError(f"misaligned reward inputs: {len(correct)} correct flags, "
                         f"{len(finished)} finished flags, {len(responses)} responses")
    score = correct.astype(np.float32)
    if non_english:
        score += non_english_penalty(responses, non_english, proportional=non_english_proportional)
    if format_weight:
        score += format_reward(responses, format_weight)
    length = np.zeros(len(responses), np.float32)
    hit = np.zeros(len(responses), bool)
    if no_eos:
        length += no_eos_penalty(finished, no_eos)
        hit |= ~finished
    if min_chars > 0 and too_short:
        length += too_short_penalty(responses, min_chars, too_short)
        hit |= np.array([len(r.strip()) < min_chars for r in responses], bool)
    if length_penalty_replaces:
        return np.where(hit, length, score).astype(np.float32)
    return (score + length).astype(np.float32)
