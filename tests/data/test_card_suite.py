"""The generated card suite: answers follow the task rules, splits are disjoint, draws repeat."""

import itertools
import re
from collections import Counter
from fractions import Fraction

import jax
import numpy as np
import pytest

import rlvlm_jax.envs as envs
from rlvlm_jax.data import card_suite
from rlvlm_jax.data.card_suite import KINDS, SPLITS, draw_states, make_suite, split_of
from rlvlm_jax.envs import solvers
from rlvlm_jax.rl.rewards import exact_or_formula_correct

ALL = list(KINDS)
K = len(ALL)
SIZE = 101  # the smallest picture every env accepts (Blackjack's); one compile per kind
N = 48  # problems per kind in the split fixtures


# ----------------------------------------------------------------- independent rules (test-side)
def _reaches(values: tuple[Fraction, ...], target: Fraction) -> bool:
    """Brute force: combine any two numbers with + - * / (both orders) until one is left."""
    if len(values) == 1:
        return values[0] == target
    for i, j in itertools.combinations(range(len(values)), 2):
        a, b = values[i], values[j]
        rest = tuple(v for k, v in enumerate(values) if k not in (i, j))
        results = {a + b, a - b, b - a, a * b}
        if b:
            results.add(a / b)
        if a:
            results.add(b / a)
        if any(_reaches(rest + (r,), target) for r in results):
            return True
    return False


def _blackjack_total(ranks: list[int]) -> tuple[int, bool]:
    values = [min(r, 10) for r in ranks]
    raw = sum(values)
    usable = 1 in values and raw + 10 <= 21
    return raw + 10 * usable, usable


def expected_answer(kind: str, fields: dict) -> str:
    if kind == "numberline_steps":
        return str(abs(fields["goal"] - fields["position"]))
    if kind == "ezpoints_difference":
        assert fields["formula"] == []  # the episode's start
        values = [min(r, 10) for r in fields["cards"]]
        return str(max(values) - min(values))
    if kind == "points24_solvable":
        assert fields["formula"] == []
        values = tuple(Fraction(min(r, 10)) for r in fields["cards"])
        return "yes" if _reaches(values, Fraction(24)) else "no"
    if kind == "points24_formula":  # the answer is one formula of many: checked in the test
        assert fields["formula"] == []
        values = tuple(Fraction(min(r, 10)) for r in fields["cards"])
        return "formula" if _reaches(values, Fraction(24)) else "no"
    if kind == "blackjack_action":
        total, usable = _blackjack_total(fields["player_cards"])
        assert (total, usable) == (fields["player_sum"], fields["usable_ace"])
        assert len(fields["player_cards"]) == 2  # the first decision
        action = solvers.blackjack_basic_action(total, usable, fields["dealer_up_value"])
        return ("stand", "hit")[action]
    raise AssertionError(kind)


def _row(state, i):
    return jax.tree.map(lambda x: x[i], state)


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def states():
    """split -> kind -> the drawn states behind N problems of that kind."""
    return {s: {k: draw_states(k, s, N, image_size=SIZE) for k in ALL} for s in SPLITS}


@pytest.fixture(scope="module")
def suite():
    return make_suite(ALL, "test", K * N, image_size=SIZE)


# ------------------------------------------------------------------------------------ tests
def test_answers_and_solutions_follow_the_rules(suite, states):
    assert len(suite) == K * N and suite.images.shape == (K * N, SIZE, SIZE, 3)
    assert suite.images.dtype == np.uint8
    for j, kind in enumerate(ALL):
        env = envs.make(KINDS[kind].task, image_size=SIZE)[0]
        state = states["test"][kind]
        rows = range(j, K * N, K)
        for i, row in enumerate(rows):
            fields = env.text_fields(_row(state, i))
            answer = suite.answers[row]
            expected = expected_answer(kind, fields)
            if expected == "formula":  # the formula's value and numbers: checked below
                tokens = re.findall(r"\d+|[-+*/()]", answer)
                assert "".join(tokens) == answer and len(tokens) > 1
                spaced = f"\\boxed{{{' '.join(tokens)}}}"
                assert exact_or_formula_correct([spaced, "\\boxed{no}"],
                                                [answer, answer]).tolist() == [True, False]
            else:
                assert answer == expected, (suite.ids[row], fields)
            assert np.array_equal(suite.images[row], state.canvas[i])
            assert suite.questions[row] == KINDS[kind].question
            sol = suite.solutions[row]
            assert sol.endswith(f"The answer is \\boxed{{{answer}}}."), sol
            assert sol.count("\\boxed") == 1 and len(sol) <= 150
            if kind.startswith("points24") and answer != "no":  # the formula shown is right
                formula = re.search(r"\. (\S+) = 24\.", sol).group(1)
                tokens = re.findall(r"\d+|[-+*/()]", formula)
                assert "".join(tokens) == formula
                assert kind == "points24_solvable" or formula == answer
                assert solvers.evaluate_tokens(tokens) == 24
                numbers = Counter(int(t) for t in tokens if t.isdigit())
                assert numbers == Counter(min(r, 10) for r in fields["cards"])
        # Both answers of the yes/no and hit/stand kinds occur (the answer is not a constant).
        if kind in ("points24_solvable", "blackjack_action"):
            assert len(set(suite.answers[j::K])) == 2
        if kind == "points24_formula":
            assert "no" in suite.answers[j::K] and len(set(suite.answers[j::K])) > 2
    # The pictures are the env's own: one per kind against the host painter.
    for kind in ALL:
        env = envs.make(KINDS[kind].task, image_size=SIZE)[0]
        state = states["test"][kind]
        assert np.array_equal(env.reference_picture(_row(state, 0)), state.canvas[0])


def test_solution_texts_read_the_state():
    ez = card_suite._ezpoints_difference({"cards": [5, 13], "formula": []})
    assert ez == ("5", "The cards are 5 and K, which count as 5 and 10. 10 - 5 = 5. "
                       "The answer is \\boxed{5}.")
    assert card_suite._numberline_steps({"position": 4, "goal": 1})[0] == "3"
    assert card_suite._points24_solvable({"cards": [1, 1, 1, 1]})[0] == "no"
    assert card_suite._points24_solvable({"cards": [8, 3, 8, 3]})[0] == "yes"  # 8/(3-8/3)
    assert card_suite._points24_formula({"cards": [1, 1, 1, 1]})[0] == "no"
    assert card_suite._points24_formula({"cards": [8, 3, 8, 3]}) == (
        "8/(3-8/3)", "The cards are 8, 3, 8 and 3. 8/(3-8/3) = 24. The answer is "
                     "\\boxed{8/(3-8/3)}.")
    bj = card_suite._blackjack_action(
        {"player_sum": 17, "usable_ace": True, "dealer_up_value": 10, "player_cards": [1, 6]})
    assert bj[0] == "hit" and bj[1].startswith("My cards are A and 6, a soft 17. The dealer")


def test_interleaving_ids_and_size_independence(suite):
    n_kinds = len(ALL)
    for row, id_ in enumerate(suite.ids):
        assert id_ == f"{ALL[row % n_kinds]}/test/{row // n_kinds}"
    odd = make_suite(["blackjack_action", "ezpoints_difference", "numberline_steps"], "test", 7,
                     image_size=SIZE)
    assert [i.split("/")[0] for i in odd.ids] == (
        ["blackjack_action", "ezpoints_difference", "numberline_steps"] * 3)[:7]
    assert [i.split("/")[2] for i in odd.ids] == ["0", "0", "0", "1", "1", "1", "2"]
    # A kind's first problems depend neither on the size nor on the other kinds.
    for row, id_ in enumerate(odd.ids):
        kind, _, index = id_.split("/")
        big = ALL.index(kind) + n_kinds * int(index)
        assert suite.ids[big] == id_ and suite.answers[big] == odd.answers[row]
        assert np.array_equal(suite.images[big], odd.images[row])


def test_deterministic(suite):
    again = make_suite(ALL, "test", K * N, image_size=SIZE)
    assert np.array_equal(again.images, suite.images)
    for field in ("questions", "answers", "solutions", "ids"):
        assert getattr(again, field) == getattr(suite, field)
    other = make_suite(ALL, "test", K * N, image_size=SIZE, seed=1)
    assert not np.array_equal(other.images, suite.images)


def test_splits_are_disjoint_in_logical_states(states):
    other_seed = {k: draw_states(k, "train", N, image_size=SIZE, seed=1) for k in ALL}
    for kind in ALL:
        key = KINDS[kind].logical_key
        keys = {s: set(key(states[s][kind]).tolist()) for s in SPLITS}
        assert not keys["train"] & keys["validation"]
        assert not keys["train"] & keys["test"]
        assert not keys["validation"] & keys["test"]
        # The split is a fixed function of the state: another seed's train stays off test.
        seed1 = set(key(other_seed[kind]).tolist())
        assert not seed1 & (keys["validation"] | keys["test"])
        for i, s in enumerate(SPLITS):
            assert (split_of(kind, np.array(sorted(keys[s]))) == i).all()
        if kind != "numberline_steps" and kind != "ezpoints_difference":  # large: few repeats
            assert len(keys["test"]) > N * 3 // 4


def test_ezpoints_state_space():
    """19 ordered rank pairs (the second card is 12 - a or 12 / a) x 16 suit pairs."""
    _, logic, _ = card_suite._drawers("EZPoints", SIZE)
    keys = set()
    for r in range(3):
        _, drawn = jax.device_get(logic(jax.random.PRNGKey(r)))
        keys |= set(KINDS["ezpoints_difference"].logical_key(drawn).tolist())
    assert len(keys) == 304
    counts = np.bincount(split_of("ezpoints_difference", np.array(sorted(keys))))
    assert counts.tolist() == [244, 31, 29]


def test_numberline_split_counts():
    states = card_suite._numberline_states()
    assert len(states) == 30  # 6 positions x 5 other goals
    assert np.bincount(split_of("numberline_steps", states)).tolist() == [18, 6, 6]
    # Every state the env's reset draws is one of the enumerated 30 (else split_of raises).
    _, logic, _ = card_suite._drawers("NumberLine", SIZE)
    _, drawn = jax.device_get(logic(jax.random.PRNGKey(3)))
    keys = set(KINDS["numberline_steps"].logical_key(drawn).tolist())
    assert keys == set(states.tolist())
    with pytest.raises(ValueError, match="not among its 30 enumerated states"):
        split_of("numberline_steps", np.array([0]))  # position 0 == goal 0: never shown


def test_errors():
    with pytest.raises(ValueError, match="unknown problem kind.*'sum'.*known kinds: "
                                         "numberline_steps, ezpoints_difference"):
        make_suite(["sum"], "test", 4)
    with pytest.raises(ValueError, match="unknown split 'dev'; choose one of train, validation"):
        make_suite(ALL, "dev", 4)
    for size in (0, -3, True, 2.0):
        with pytest.raises(ValueError, match="size must be an integer >= 1"):
            make_suite(ALL, "train", size)
    with pytest.raises(ValueError, match="too small to draw EZPoints.*image_size >= 76"):
        make_suite(["numberline_steps", "ezpoints_difference"], "train", 4, image_size=56)
    with pytest.raises(TypeError, match="not a string"):
        make_suite("ezpoints_difference", "train", 4)
    with pytest.raises(ValueError, match="names a kind twice"):
        make_suite(["ezpoints_difference", "ezpoints_difference"], "train", 4)
    with pytest.raises(ValueError, match="kinds is empty"):
        make_suite([], "train", 4)
    with pytest.raises(TypeError, match="seed must be an int"):
        make_suite(ALL, "train", 4, seed=None)
