"""Single-turn rewards: boxed answers, the math-verify and exact checkers, MAYE's shaping terms."""

import threading
import time

import numpy as np
import pytest

from rlvlm_jax.rl import rewards
from rlvlm_jax.rl.rewards import (
    REWARD_CHECKERS,
    checker,
    exact_match_correct,
    exact_or_formula_correct,
    extract_boxed,
    format_reward,
    math_verify_correct,
    no_eos_penalty,
    non_english_penalty,
    too_short_penalty,
    total_reward,
)


@pytest.mark.parametrize("text, boxed", [
    ("so x = \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
    ("first \\boxed{1}, then finally \\boxed{2}", "2"),
    ("\\fbox{7}", "7"),
    ("\\boxed {3}", "3"),
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
    ("\\boxed{\\boxed{5}}", "\\boxed{5}"),
    ("\\boxed{}", ""),
    ("no box here", None),
    ("\\boxed{1} and then cut off \\boxed{\\frac{3}{", None),
])
def test_extract_boxed(text, boxed):
    assert extract_boxed(text) == boxed


def test_math_verify_judges_known_pairs():
    pairs = [
        ("The answer is \\boxed{20}.", "20", True),
        ("\\boxed{0.5}", "\\frac{1}{2}", True),
        ("\\boxed{\\frac{1}{2}}", "0.5", True),
        ("\\boxed{30}", "30^\\circ", True),
        ("\\boxed{30^{\\circ}}", "30", True),
        ("\\boxed{45°}", "45^\\circ", True),  # a Unicode degree sign is read as \circ
        ("\\boxed{\\sqrt{12}}", "2\\sqrt{3}", True),
        ("\\boxed{21}", "20", False),
        ("\\boxed{20} ... on second thought \\boxed{21}", "20", False),  # the last box counts
        ("the answer is 20", "20", False),  # no boxed answer
        ("\\boxed{}", "20", False),
        ("\\boxed{@@##}", "20", False),  # fails to parse
        ("\\boxed{\\frac{}", "20", False),
        ("\\boxed{20}", "", False),
    ]
    responses, answers, expected = zip(*pairs, strict=True)
    # A float timeout must not break judging (math-verify's alarm takes whole seconds).
    got = math_verify_correct(list(responses), list(answers), timeout_s=0.5)
    assert got.dtype == bool and got.tolist() == list(expected)


def test_math_verify_timeout_counts_as_wrong_without_raising():
    start = time.monotonic()
    got = math_verify_correct(["\\boxed{(10^{6})!}", "\\boxed{2}"], ["2", "2"], timeout_s=1)
    assert got.tolist() == [False, True]
    assert time.monotonic() - start < 6


def test_math_verify_off_the_main_thread_matches_the_main_thread():
    responses = ["\\boxed{0.5}", "\\boxed{3}", "none"]
    answers = ["\\frac{1}{2}", "4", "1"]
    result = {}
    worker = threading.Thread(target=lambda: result.update(
        got=math_verify_correct(responses, answers, timeout_s=2)))
    worker.start()
    worker.join(60)
    assert result["got"].tolist() == [True, False, False]


def test_math_verify_argument_errors():
    with pytest.raises(ValueError, match="2 responses but 1 answers"):
        math_verify_correct(["a", "b"], ["1"])
    with pytest.raises(ValueError, match="timeout_s must be positive"):
        math_verify_correct(["a"], ["1"], timeout_s=0)
    assert math_verify_correct([], []).shape == (0,)


def test_exact_match():
    pairs = [
        ("\\boxed{15}", "15.0", True),
        ("\\boxed{ Hit. }", "hit", True),
        ("\\boxed{1.5e1}", "15", True),
        ("\\boxed{x + 1}", "x+1", True),
        ("\\boxed{stand}", "hit", False),
        ("\\boxed{0.5}", "\\frac{1}{2}", False),  # exact is exact: no symbolic equivalence
        ("answer: hit", "hit", False),  # no boxed answer
        ("\\boxed{}", "", False),
    ]
    responses, answers, expected = zip(*pairs, strict=True)
    assert exact_match_correct(list(responses), list(answers)).tolist() == list(expected)


def test_exact_or_formula():
    pairs = [
        ("\\boxed{8/(3-8/3)}", "8/(3-8/3)", True),
        ("\\boxed{ (8 / (3 - (8/3))) }", "8/(3-8/3)", True),  # another grouping, same value
        ("\\boxed{(5+7-6)*4}", "4*(7-6+5)", True),  # another formula of the same cards
        ("\\boxed{3*8}", "1*1*3*8", False),  # 24, but two cards left out
        ("\\boxed{1*1*3*8*1}", "1*1*3*8", False),  # a card used twice
        ("\\boxed{(10-4)*4+0}", "(10-4)*4", False),  # a number that is not a card
        ("\\boxed{8/(3-3)*8}", "3*8*(3-8/8)", False),  # division by zero
        ("\\boxed{8/(3-8/3}", "8/(3-8/3)", False),  # malformed
        ("\\boxed{2*12}", "24", False),  # a plain-number answer is matched exactly
        ("\\boxed{no}", "no", True),
        ("\\boxed{1*1*3*8}", "no", False),
        ("\\boxed{15.0}", "15", True),  # everything "exact" accepts
        ("(5+7-6)*4", "(5+7-6)*4", False),  # no boxed answer
    ]
    responses, answers, expected = zip(*pairs, strict=True)
    got = exact_or_formula_correct(list(responses), list(answers))
    assert got.tolist() == list(expected)


def test_penalties_and_format_reward():
    np.testing.assert_array_equal(no_eos_penalty(np.array([True, False])), np.float32([0, -0.1]))
    assert no_eos_penalty(np.array([True, False])).dtype == np.float32
    np.testing.assert_array_equal(too_short_penalty(["  \\boxed{3}  ", "a longer answer"], 10,
                                                    -0.5), np.float32([-0.5, 0.0]))
    texts = ["所以答案是 \\boxed{3}", "angle ∠ABC = 30°, π r², x ≤ 2", "答案，", ""]
    share = non_english_penalty(texts, -0.1)
    np.testing.assert_allclose(share, [-0.1 * 5 / len(texts[0]), 0.0, -0.1, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(non_english_penalty(texts, -0.2, proportional=False),
                                  np.float32([-0.2, 0.0, -0.2, 0.0]))
    np.testing.assert_array_equal(format_reward(["\\boxed{3}", "\\boxed{ }", "3"], 0.5),
                                  np.float32([0.5, 0.0, 0.0]))
    assert not format_reward(["\\boxed{3}"]).any()  # weight 0 by default


def test_total_reward():
    correct = np.array([True, True, False, False])
    finished = np.array([True, False, True, False])
    responses = ["\\boxed{1}", "\\boxed{1} and on and on", "\\boxed{2}", "wrong and cut"]
    np.testing.assert_allclose(total_reward(correct, finished, responses),
                               [1.0, -0.1, 0.0, -0.1])  # MAYE: a truncated response scores -0.1
    np.testing.assert_allclose(
        total_reward(correct, finished, responses, length_penalty_replaces=False),
        [1.0, 0.9, 0.0, -0.1])
    for off in (None, 0.0):  # a zero penalty is off: it does not wipe out a truncated success
        np.testing.assert_allclose(total_reward(correct, finished, responses, no_eos=off),
                                   [1.0, 1.0, 0.0, 0.0])
    np.testing.assert_allclose(
        total_reward(correct, finished, responses, min_chars=12, too_short=-0.5,
                     format_weight=0.25),
        [-0.5, -0.1, -0.5, -0.1])
    mixed = total_reward(np.array([True]), np.array([True]), ["答 \\boxed{1}"], non_english=-0.1)
    np.testing.assert_allclose(mixed, [1.0 - 0.1 / 11], rtol=1e-6)
    assert total_reward(correct, finished, responses).dtype == np.float32
    with pytest.raises(ValueError, match="misaligned reward inputs"):
        total_reward(correct[:3], finished, responses)


def test_checker_registry():
    assert checker("math_verify") is math_verify_correct and checker("exact") is exact_match_correct
    assert checker("exact_or_formula") is exact_or_formula_correct
    assert set(REWARD_CHECKERS) == {"math_verify", "exact", "exact_or_formula"}
    with pytest.raises(KeyError, match="unknown reward checker 'mathverify'; known checkers: "
                                       "exact, exact_or_formula, math_verify"):
        checker("mathverify")
    assert rewards.extract_boxed is extract_boxed
