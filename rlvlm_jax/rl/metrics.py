"""Evaluation metrics of sampled responses, on the host (NumPy): pass@k, MAYE's reflection
metrics, response length and the length-clip ratio.

Kept free of JAX and TensorBoard so that training, evaluation and the report can share them.
"""

from __future__ import annotations

import re

import numpy as np

# ---------------------------------------------------------------------------------------------
# pass@k


def _int_array(x, name):
    a = np.asarray(x)
    if a.dtype == bool or not np.issubdtype(a.dtype, np.integer):
        if not (np.issubdtype(a.dtype, np.floating) and np.all(a == np.round(a))):
            raise ValueError(f"{name} must hold integers, got {x!r}")
    return a.astype(np.int64)


def pass_at_k(n, c, k: int):
    """Unbiased pass@k of Chen et al. (2021): 1 - C(n - c, k) / C(n, k).

    n samples per problem of which c are correct; the chance that k of them drawn without
    replacement include a correct one. Computed as 1 - prod_{j<k} (n - c - j) / (n - j): k
    factors in [0, 1], no huge binomials. n and c broadcast (one entry per problem); a float for
    scalar inputs, else an array.
    """
    n_a, c_a = _int_array(n, "n"), _int_array(c, "c")
    k = int(k)
    if k < 1:
        raise ValueError(f"pass@k needs k >= 1, got k={k}")
    if np.any(n_a < 1):
        raise ValueError(f"pass@k needs n >= 1 samples per problem, got n={n!r}")
    if np.any(k > n_a):
        raise ValueError(f"pass@k needs k <= n (samples per problem), got k={k}, n={n!r}")
    if np.any(c_a < 0) or np.any(c_a > n_a):
        raise ValueError(f"pass@k needs 0 <= c <= n correct samples, got c={c!r}, n={n!r}")
    j = np.arange(k)
    fail = np.clip((n_a[..., None] - c_a[..., None] - j) / (n_a[..., None] - j), 0.0, 1.0)
    out = 1.0 - np.prod(fail, axis=-1)
    return float(out) if out.ndim == 0 else out


def pass_at_k_from_correct(correct, k: int) -> float:
    """Mean pass@k over problems from a [problems, n] bool table of which samples were correct."""
    correct = np.asarray(correct)
    if correct.ndim != 2 or correct.shape[0] == 0:
        raise ValueError(
            f"correct must be [problems, n] with at least one problem, got shape {correct.shape}"
        )
    c = correct.astype(bool).sum(axis=1)
    return float(np.mean(pass_at_k(correct.shape[1], c, k)))


# ---------------------------------------------------------------------------------------------
# MAYE's reflection metrics

REFLECTION_WORDS = (
    "re-check", "re-evaluate", "re-examine", "re-think", "recheck", "reevaluate", "reexamine",
    "reevaluation", "rethink", "check again", "think again", "try again", "verify", "wait", "yet",
)
_REFLECTION = re.compile(r"\b(" + "|".join(re.escape(w) for w in REFLECTION_WORDS) + r")\b",
                         re.IGNORECASE)
_WORD = {w: re.compile(r"\b" + re.escape(w) + r"\b", re.IGNORECASE) for w in REFLECTION_WORDS}


def reflection_counts(texts) -> dict[str, int]:
    """Occurrences of each reflection word over all responses, case-insensitive.

    `reflection_count/<word>` and their total `reflection_count` match whole words only (so
    "await" is no "wait" and "verifying" no "verify"); each word is counted on its own, so
    "re-check again" counts both "re-check" and "check again". `reflection_substring_count` is
    MAYE's figure, kept for comparison: plain substring occurrences of every word, which also
    counts "await", "verifying" and "rethinking".
    """
    per_word = {w: sum(len(p.findall(t)) for t in texts) for w, p in _WORD.items()}
    lowered = [t.lower() for t in texts]
    out = {f"reflection_count/{w}": n for w, n in per_word.items()}
    out["reflection_count"] = sum(per_word.values())
    out["reflection_substring_count"] = sum(t.count(w) for t in lowered for w in REFLECTION_WORDS)
    return out


def reflection_metrics(texts, correct, *, counts: bool = False) -> dict[str, float]:
    """MAYE's five reflection ratios over responses and their correctness (nan when undefined).

    A response is reflective when it holds at least one reflection word (whole-word match).
    `counts=True` adds `reflection_counts(texts)`; the default keys are what results.json's
    history and the report expect.
    """
    refl = np.asarray([bool(_REFLECTION.search(t)) for t in texts])
    ok = np.asarray(correct, bool)
    n, n_ref, n_pos, n_ref_pos = len(texts), refl.sum(), ok.sum(), (refl & ok).sum()

    def ratio(a, b):
        return float(a / b) if b else float("nan")

    out = {
        "reflection_ratio": ratio(n_ref, n),
        "reflection_in_correct": ratio(n_ref_pos, n_pos),
        "reflection_in_incorrect": ratio(n_ref - n_ref_pos, n - n_pos),
        "correct_among_reflective": ratio(n_ref_pos, n_ref),
        "correct_among_nonreflective": ratio(n_pos - n_ref_pos, n - n_ref),
    }
    if counts:
        out.update(reflection_counts(texts))
    return out


# ---------------------------------------------------------------------------------------------
# Response length


def response_length_stats(lengths, max_new_tokens: int) -> dict[str, float]:
    """Mean response length (tokens) and the length-clip ratio: the share of responses at (or past)
    the generation limit, MAYE's sign of runaway length. Same keys as the PPO loop's metrics."""
    lengths = np.asarray(lengths)
    if lengths.size == 0:
        raise ValueError("response_length_stats needs at least one response length")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if np.any(lengths < 0):
        raise ValueError(f"response lengths must be >= 0, got min {lengths.min()}")
    return {
        "response_length": float(np.mean(lengths)),
        "length_clip_ratio": float(np.mean(lengths >= max_new_tokens)),
    }
