"""pass@k against brute-force enumeration; MAYE's reflection metrics; response length stats."""

import itertools
import math

import numpy as np
import pytest

from rlvlm_jax.rl import metrics as M


def brute_pass_at_k(n, c, k):
    """Share of the k-subsets of n samples (the first c correct) holding a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 8))
def test_pass_at_k_matches_enumeration(n):
    for k in range(1, n + 1):
        for c in range(n + 1):
            assert M.pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12)
        # Vectorised over problems.
        got = M.pass_at_k(n, np.arange(n + 1), k)
        want = [brute_pass_at_k(n, c, k) for c in range(n + 1)]
        np.testing.assert_allclose(got, want, atol=1e-12)


def test_pass_at_k_edges_and_large_n():
    assert M.pass_at_k(8, 0, 1) == 0.0
    assert M.pass_at_k(8, 8, 8) == 1.0
    assert M.pass_at_k(8, 3, 1) == pytest.approx(3 / 8)
    assert M.pass_at_k(8, 5, 4) == 1.0  # fewer than k wrong samples: every draw has a right one
    assert isinstance(M.pass_at_k(8, 3, 2), float)
    # Large n: the binomials are huge, the product form is not.
    n, c, k = 1000, 7, 300
    exact = 1 - math.comb(n - c, k) / math.comb(n, k)
    assert M.pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-12)
    assert M.pass_at_k(np.array([10, 20]), np.array([1, 2]), 3) == pytest.approx(
        [brute_pass_at_k(10, 1, 3), brute_pass_at_k(20, 2, 3)])


def test_pass_at_k_errors():
    with pytest.raises(ValueError, match="k <= n"):
        M.pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="k >= 1"):
        M.pass_at_k(4, 1, 0)
    with pytest.raises(ValueError, match="c <= n"):
        M.pass_at_k(4, 5, 1)
    with pytest.raises(ValueError, match="c <= n"):
        M.pass_at_k(4, np.array([1, 5]), 1)
    with pytest.raises(ValueError, match="c <= n"):
        M.pass_at_k(4, -1, 1)
    with pytest.raises(ValueError, match="integers"):
        M.pass_at_k(4, 1.5, 1)


def test_pass_at_k_from_correct():
    rng = np.random.default_rng(0)
    correct = rng.random((9, 6)) < rng.random((9, 1))
    correct[0] = False
    correct[1] = True
    for k in (1, 3, 6):
        want = np.mean([brute_pass_at_k(6, int(c), k) for c in correct.sum(1)])
        assert M.pass_at_k_from_correct(correct, k) == pytest.approx(want)
    with pytest.raises(ValueError, match="problems, n"):
        M.pass_at_k_from_correct(correct[0], 1)
    with pytest.raises(ValueError, match="k <= n"):
        M.pass_at_k_from_correct(correct, 7)


TEXTS = [
    "Wait, let me verify this. Wait again.",  # wait x2, verify
    "I await the verifying step.",  # substrings only: (a)wait, verify(ing)
    "The answer is 4.",
    "Let me re-check again, yet I rethink.",  # re-check, check again, yet, rethink
    "RETHINKING it: think again.",  # think again; substring also rethink(ing)
]


def test_reflection_counts_word_boundaries_vs_substrings():
    counts = M.reflection_counts(TEXTS)
    assert set(counts) == {f"reflection_count/{w}" for w in M.REFLECTION_WORDS} | {
        "reflection_count", "reflection_substring_count"}
    nonzero = {k: v for k, v in counts.items() if v and k.startswith("reflection_count/")}
    assert nonzero == {
        "reflection_count/wait": 2, "reflection_count/verify": 1, "reflection_count/re-check": 1,
        "reflection_count/check again": 1, "reflection_count/yet": 1,
        "reflection_count/rethink": 1, "reflection_count/think again": 1,
    }
    assert counts["reflection_count"] == 8
    # MAYE's substring figure also counts "await", "verifying" and "RETHINKING".
    assert counts["reflection_substring_count"] == 11
    assert M.reflection_counts(["await"])["reflection_count/wait"] == 0
    assert M.reflection_counts(["await"])["reflection_substring_count"] == 1


def test_reflection_ratios_by_hand():
    # Reflective (whole words): texts 0, 3, 4. Correct: texts 0, 1.
    correct = [True, True, False, False, False]
    got = M.reflection_metrics(TEXTS, correct)
    assert list(got) == ["reflection_ratio", "reflection_in_correct", "reflection_in_incorrect",
                         "correct_among_reflective", "correct_among_nonreflective"]
    want = {
        "reflection_ratio": 3 / 5,  # N_ref / N
        "reflection_in_correct": 1 / 2,  # N_ref+ / N+
        "reflection_in_incorrect": 2 / 3,  # (N_ref - N_ref+) / (N - N+)
        "correct_among_reflective": 1 / 3,  # N_ref+ / N_ref
        "correct_among_nonreflective": 1 / 2,  # (N+ - N_ref+) / (N - N_ref)
    }
    assert got == pytest.approx(want)
    both = M.reflection_metrics(TEXTS, correct, counts=True)
    assert both == pytest.approx({**want, **M.reflection_counts(TEXTS)})


def test_reflection_ratios_undefined_are_nan():
    got = M.reflection_metrics(["no reflection here", "none"], [False, False])
    assert got["reflection_ratio"] == 0.0
    assert math.isnan(got["reflection_in_correct"])
    assert math.isnan(got["correct_among_reflective"])
    assert got["correct_among_nonreflective"] == 0.0


def test_response_length_stats():
    got = M.response_length_stats(np.array([3, 16, 10, 16]), 16)
    assert got == {"response_length": pytest.approx(11.25), "length_clip_ratio": 0.5}
    with pytest.raises(ValueError, match="at least one"):
        M.response_length_stats([], 16)
    with pytest.raises(ValueError, match=">= 0"):
        M.response_length_stats([-1, 2], 16)
