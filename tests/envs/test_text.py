"""Prompts (byte-exact with RL4VLM), the text-to-action parser, and demonstration round trips."""

import hashlib
import itertools
import json
import random

import numpy as np
import pytest

from rlvlm_jax.envs import demonstrations, parse, prompts, solvers
from rlvlm_jax.envs.parse import action_span, parse_action
from rlvlm_jax.envs.tasks import TASKS, get_task

cot_demonstration = demonstrations.cot_demonstration

# ------------------------------------------------------------------------------------- prompts
# sha256 of the original get_prompt(env, action_only, infos=None) output, computed by running the
# original function; the literal strings below spell some of them out.
PROMPT_SHA256 = {
    ("NumberLine", True): "561aaa3bcfe25b8eb5cc258d1049fda4df23fd60f31ba7adde475129082e4b06",
    ("NumberLine", False): "9500e624c2b5f159facfeb6390862f437043295a58b41f20bc42c8526ae2f0b8",
    ("EZPoints", True): "a11eca9b868615f94e67750e38a2076ea2d0b0b541eb20ae8e9a92998c218552",
    ("EZPoints", False): "e79732bbb26b24eabd74c88ae45efaa50aade9d269dc79c0af6ea289ed0c908c",
    ("Points24", True): "0e8ff9abead4b25b7ee97b9723d3b142dfceb9f0a4c6a64663315a306d3350c1",
    ("Points24", False): "b39ea79f6e5f30b77fc61a1a05583cc87f34b31e6a5b25f102dc44d41a7af1c3",
    ("Blackjack", True): "812204364b1ab3b4576f85efa3abb686879f384b8549d0c695d72ca8aeddb1fb",
    ("Blackjack", False): "c77f56118408b849ba0cc1205e6f66c846c0b56bde88a95e7e2773d0f8a4be20",
}

NUMBERLINE_COT = (
    "You are playing a game called number line. You will see a target number and a current number"
    " in the image. And your goal is to move the current number closer to the target by choosing "
    "either adding or subtracting one to the current number. Your response should be a valid json"
    ' file in the following format: \n{\n "current number": "x", \n"target number": "x", \n'
    '"thoughts": "{first read out the current and target number, then think carefully about which'
    ' action to choose}", \n"action": "-" or "+" \n}'
)
BLACKJACK_ACTION_ONLY = (
    "You are a blackjack player. You are observing the current game state, you can choose between "
    "['stand', 'hit']. Your response should be a valid json file in the following format: \n{\n "
    '"action": "stand" or "hit" \n}'
)
POINTS24_COT_WITH_FORMULA = (
    "You are an expert 24 points card game player. You are observing thee four cards in the image."
    " You are observing the current formula: 8/(3 . You can choose between ['1', '2', '3', '4', "
    "'5', '6', '7', '8', '9', '10', '+', '-', '*', '/', '(', ')', '=']. The number or operator you"
    " choose will be appended to the current formula. Note that 'J', 'Q', and 'K' count as '10'. "
    "Your goal is to output a formula that evaluates to 24, and each number can only be used once."
    " Your response should be a valid json file in the following format: \\{\n "
    '"cards": [x, y, z, w], \n"current formula": 8/(3 , \n"thoughts": {First check whether the '
    "current formula equals 24. If the current formula equals 24, output '='. Otherwise consider "
    "which number or operator should be appended to the current formula to make it equal 24.} \n"
    '"action": "{number}" or "{operator}" \n \\}'
)
EZPOINTS_ACTION_ONLY_WITH_FORMULA = (
    "You are an expert card game player. You are observing two cards in the image. You are "
    "observing the current formula: 6*. You can choose between ['1', '2', '3', '4', '5', '6', '7', "
    "'8', '9', '10', '+', '*', '=']. The number or operator you choose will be appended to the "
    "current formula. Note that 'J', 'Q', and 'K' count as '10'. Your goal is to output a formula "
    "that evaluates to 12, and each number can only be used once. Your response should be a valid "
    'json file in the following format: \\{\n"action": "{number}" or "{operator}" \n \\}'
)


@pytest.mark.parametrize("task,cot", sorted(PROMPT_SHA256))
def test_prompt_bytes_match_original(task, cot):
    text = prompts.task_prompt(task, None, cot)
    assert hashlib.sha256(text.encode()).hexdigest() == PROMPT_SHA256[(task, cot)]
    assert prompts.task_prompt(task, [], cot) == text  # empty formula == no info
    assert prompts.task_prompt(get_task(f"gym_cards/{task}-v0"), None, cot) == text


def test_prompt_literals():
    assert prompts.task_prompt("NumberLine", cot=True) == NUMBERLINE_COT
    assert prompts.task_prompt("Blackjack", cot=False) == BLACKJACK_ACTION_ONLY
    p24 = prompts.task_prompt("Points24", ["8", "/", "(", 3, " "], cot=True)
    assert p24 == POINTS24_COT_WITH_FORMULA
    assert (
        prompts.task_prompt("EZPoints", ["6", "*"], cot=False) == EZPOINTS_ACTION_ONLY_WITH_FORMULA
    )


def test_formula_is_current_and_inserted_where_the_original_puts_it():
    a = prompts.task_prompt("Points24", ["1", "+"], cot=True)
    b = prompts.task_prompt("Points24", ["1", "+", "2"], cot=True)
    assert a != b
    assert b.count("current formula: 1+2. ") == 1 and b.count('"current formula": 1+2, \n') == 1
    assert "current formula: 10. You can" in prompts.task_prompt("EZPoints", ["10"], cot=False)
    # constant prompts ignore any formula
    assert prompts.task_prompt("NumberLine", ["1"]) == prompts.task_prompt("NumberLine")
    assert prompts.formula_text([8, "/", " ", "(", 10]) == "8/ (10"


def test_action_lists_and_lookup():
    assert TASKS["NumberLine"].action_strings == ("-", "+")
    assert TASKS["Blackjack"].action_strings == ("stand", "hit")
    assert TASKS["EZPoints"].action_strings == tuple("1 2 3 4 5 6 7 8 9 10 + * =".split())
    p24 = tuple("1 2 3 4 5 6 7 8 9 10 + - * / ( ) =".split())
    assert TASKS["Points24"].action_strings == p24
    assert [t.num_actions for t in TASKS.values()] == [2, 13, 17, 2]
    assert get_task("gym_cards/Points24-v0") is TASKS["Points24"]
    with pytest.raises(KeyError):
        get_task("Points25")


def test_llava_template():
    full = prompts.full_prompt("Blackjack", cot=False)
    assert full == (
        "A chat between a curious human and an artificial intelligence assistant. The assistant "
        "gives helpful, detailed, and polite answers to the human's questions. USER: <image>\n"
        + BLACKJACK_ACTION_ONLY
        + " ASSISTANT:"
    )


# -------------------------------------------------------------------------------------- parser
PARSE_CASES = [
    # (task, text, expected id, expected n_found)
    ("NumberLine", '{"thoughts": "go up", "action": "+"}', 1, 1),
    ("NumberLine", '"action": "-"', 0, 1),
    ("NumberLine", '"ACTION": "+"', 1, 1),  # lower-cased first
    ("NumberLine", '"action": "+" or "-"', None, 2),  # both present
    ("NumberLine", '"action": + + +', 1, 1),  # duplicates collapse
    ("NumberLine", '"action": "+1"', 1, 1),  # digits are no NumberLine action
    ("NumberLine", '"action": ""', None, 0),
    ("NumberLine", "I would press +", 1, 1),  # no key: last character only
    ("NumberLine", "+ is right.", None, 0),  # no key: last character '.'
    ("NumberLine", "", None, 0),
    ("NumberLine", "'action': '+'", None, 0),  # single quotes are not the key -> last char "'"
    ("NumberLine", '"action" : "+"', None, 0),  # space before colon is not the key
    ("NumberLine", '"thoughts": "+ is wrong", "action": "-"', 0, 1),  # text before key ignored
    ("NumberLine", '"action": "-"} trailing words with a + sign', None, 2),  # tail to the end
    ("NumberLine", None, None, 0),
    ("Blackjack", '"action": "hit"', 1, 1),
    ("Blackjack", '"Action": "STAND"', 0, 1),
    ("Blackjack", '"action": "hit" (not stand)', None, 2),
    ("Blackjack", '"action": "standing"', 0, 1),
    ("Blackjack", '"action": "white"', 1, 1),  # 'white' contains 'hit'
    ("Blackjack", "hit", None, 0),  # no key: last character 't'
    ("Blackjack", '"action": stay', None, 0),
    ("EZPoints", '"action": "10"', 9, 1),  # "10" is not also "1"
    ("EZPoints", '"action": "1"', 0, 1),
    ("EZPoints", '"action": "100"', 9, 1),  # "10" removed, "0" is no action
    ("EZPoints", '"action": "110"', None, 2),  # "10" removed, "1" remains
    ("EZPoints", '"action": "1100"', None, 2),  # removal leaves "10" whose "1" is found
    ("EZPoints", '"action": "1010"', 9, 1),
    ("EZPoints", '"action": "+10"', None, 2),
    ("EZPoints", '"action": "*"', 11, 1),
    ("EZPoints", '"action": "="', 12, 1),
    ("EZPoints", '"action": "-"', None, 0),  # not an EZPoints action
    ("EZPoints", "10", None, 0),  # no key: last character "0"
    ("EZPoints", "answer 7", 6, 1),  # no key: last character "7"
    ("Points24", '"action": "("', 14, 1),
    ("Points24", '"action": ")"', 15, 1),
    ("Points24", '"action": "-1"', None, 2),
    ("Points24", '"action": "10"}', 9, 1),
    ("Points24", '"action": "/"', 13, 1),
    ("Points24", '{"cards": [1, 2, 3, 4], "formula": "1+", "action": "2"}', 1, 1),
]


@pytest.mark.parametrize("task,text,expected,n", PARSE_CASES)
def test_parse_cases(task, text, expected, n):
    assert parse_action(task, text) == (expected, n)


def test_last_versus_first_key():
    text = '{"action": "+", "thoughts": "no, better", "action": "-"}'
    assert parse_action("NumberLine", text) == (0, 1)  # project default: last key
    assert parse_action("NumberLine", text, key="first") == (None, 2)  # the original
    same = '"action": "+", "Action": "+"'
    assert parse_action("NumberLine", same, key="first") == (1, 1)
    with pytest.raises(ValueError):
        parse_action("NumberLine", text, key="middle")


def test_parse_or_random():
    rng = np.random.default_rng(0)
    assert parse.parse_or_random("Points24", '"action": "("', rng) == (14, True)
    draws = [parse.parse_or_random("Points24", "garbage", rng) for _ in range(400)]
    assert all(not ok for _, ok in draws)
    assert {a for a, _ in draws} == set(range(17))  # uniform over the whole action list


def test_action_span():
    text = 'Thoughts... "action": "hit"\n}'
    start, end = action_span(text)
    assert text[start:end] == '"action": "hit"\n}' and end == len(text)
    two = '"action": "+" then "ACTION": "-"'
    assert two[slice(*action_span(two))] == '"ACTION": "-"'
    assert action_span(two, key="first") == (0, len(two))
    assert action_span("no key here") is None and action_span(None) is None
    # lower-casing "İ" gives two code points: offsets must still index the original text
    uni = 'İİ "Action": "+"'
    s, e = action_span(uni)
    assert uni[s:e] == '"Action": "+"'


# ---------------------------------------------------------------------------- demonstrations
def _check_demo(task, text, want_id, json_action):
    obj = json.loads(text)  # valid JSON
    assert list(obj)[-1] == "action"
    assert obj["action"] == TASKS[task].action_strings[json_action]
    assert parse_action(task, text) == (want_id, 1)
    assert parse_action(task, text, key="first") == (want_id, 1)
    assert text.count('"action":') == 1
    span = action_span(text)
    assert text[span[0] :].startswith('"action":')


def test_numberline_demos_all_states_and_overrides():
    for pos, goal in itertools.product(range(6), range(6)):
        if pos == goal:
            continue
        oracle = solvers.numberline_optimal_action(pos, goal)
        text = cot_demonstration("NumberLine", position=pos, goal=goal)
        _check_demo("NumberLine", text, oracle, oracle)
        obj = json.loads(text)
        assert obj["current number"] == str(pos) and obj["target number"] == str(goal)
        assert demonstrations.oracle_action("NumberLine", position=pos, goal=goal) == oracle
        for a in (0, 1, "-", "+"):
            wrong = cot_demonstration("NumberLine", position=pos, goal=goal, action=a)
            aid = a if isinstance(a, int) else "-+".index(a)
            _check_demo("NumberLine", wrong, aid, aid)


def test_blackjack_demos_all_states():
    for ace, up in itertools.product((0, 1), range(1, 11)):
        for total in range(12 if ace else 4, 22):
            oracle = solvers.blackjack_basic_action(total, ace, up)
            state = dict(player_sum=total, usable_ace=ace, dealer_up_value=up)
            _check_demo("Blackjack", cot_demonstration("Blackjack", **state), oracle, oracle)
            for a in (0, 1):
                text = cot_demonstration("Blackjack", action=a, **state)
                _check_demo("Blackjack", text, a, a)
                assert ("I choose to" in text) == (a != oracle)


def test_blackjack_demo_with_cards():
    text = cot_demonstration(
        "Blackjack", player_sum=16, usable_ace=0, dealer_up_value=10, player_cards=[13, 6]
    )
    assert "K and 6" in text and "16" in text
    _check_demo("Blackjack", text, 1, 1)
    soft = cot_demonstration(
        "Blackjack", player_sum=18, usable_ace=1, dealer_up_value=5, player_cards=[1, 7]
    )
    assert "A and 7" in soft and "usable ace" in soft
    _check_demo("Blackjack", soft, 0, 0)
    with pytest.raises(ValueError):  # cards contradict the total
        cot_demonstration(
            "Blackjack", player_sum=15, usable_ace=0, dealer_up_value=10, player_cards=[13, 6]
        )
    with pytest.raises(TypeError):
        cot_demonstration("Blackjack", player_sum=15, usable_ace=0)
    with pytest.raises(ValueError):  # bust: the episode is over
        cot_demonstration("Blackjack", player_sum=23, usable_ace=0, dealer_up_value=10)


def _play_points(task, ranks, max_steps=25):
    """Follows the demonstrations' oracle from an empty formula; checks every step's text."""
    spec = TASKS[task]
    formula = []
    for _ in range(max_steps):
        text = cot_demonstration(task, cards=ranks, formula=formula)
        aid = demonstrations.oracle_action(task, cards=ranks, formula=formula)
        _check_demo(task, text, aid, aid)
        assert json.loads(text)["current formula"] == prompts.formula_text(formula)
        if spec.action_strings[aid] == "=":
            return formula
        formula = formula + [spec.action_strings[aid]]
    raise AssertionError(f"no '=' after {max_steps} steps for {ranks}")


def test_ezpoints_demos_every_reset_hand():
    for first in range(2, 14):
        a = min(first, 10)
        seconds = {12 - a} | ({12 // a} if a in (1, 2, 3, 4, 6) else set())
        for b in seconds:
            for ranks in ([first, b], [b, first]):
                final = _play_points("EZPoints", ranks)
                assert solvers.evaluate_tokens(final) == 12
                assert sorted(int(t) for t in final if t.isdigit()) == sorted(
                    min(r, 10) for r in ranks
                )


def test_ezpoints_demo_special_states():
    # blank token from an invalid move is ignored; off-track and complete formulas end with "="
    text = cot_demonstration("EZPoints", cards=[13, 2], formula=["2", " ", "+"])
    _check_demo("EZPoints", text, 9, 9)
    assert json.loads(text)["current formula"] == "2 +"
    off = cot_demonstration("EZPoints", cards=[13, 2], formula=["2", "*"])
    _check_demo("EZPoints", off, 12, 12)
    for action in range(13):
        _check_demo(
            "EZPoints",
            cot_demonstration("EZPoints", cards=[6, 2], formula=["6"], action=action),
            action,
            action,
        )


def test_points24_demos_follow_a_solution():
    rng = random.Random(0)
    hands = [[8, 3, 8, 3], [1, 1, 1, 1], [13, 12, 4, 4], [1, 5, 5, 5]]
    hands += [[rng.randint(1, 13) for _ in range(4)] for _ in range(60)]
    for ranks in hands:
        final = _play_points("Points24", ranks)
        values = [min(r, 10) for r in ranks]
        if solvers.solve_points24(values) is None:
            assert final == []  # gives up at once
        else:
            assert solvers.evaluate_tokens(final) == 24
            assert sorted(int(t) for t in final if t.isdigit()) == sorted(values)


def test_points24_demo_overrides_and_dead_ends():
    stuck = cot_demonstration("Points24", cards=[12, 1, 4, 6], formula=["1", "+"])
    _check_demo("Points24", stuck, 16, 16)
    assert "cannot be completed" in stuck
    for action in range(17):
        text = cot_demonstration("Points24", cards=[8, 3, 8, 3], formula=["8"], action=action)
        _check_demo("Points24", text, action, action)
    assert json.loads(cot_demonstration("Points24", cards=[13, 1, 11, 12]))["cards"] == [
        "K",
        "A",
        "J",
        "Q",
    ]


def test_sorted_values_sentence_and_the_solution_corpus():
    """The thoughts with sort_values list the values in ascending order; every state on the
    oracle's way through a hand has a text-only record whose words are the thoughts' own from
    that sentence on, and the solutions the records state make the target with the hand."""
    rng = random.Random(1)
    for task, n, target in (("Points24", 4, 24),):
        for _ in range(24):
            ranks = [rng.randint(1, 13) for _ in range(n)]
            values = sorted(min(r, 10) for r in ranks)
            records = dict(demonstrations.solution_corpus(task, hands=[values]))
            formula = []
            for _ in range(25):
                text = cot_demonstration(task, cards=ranks, formula=formula, sort_values=True)
                aid = demonstrations.oracle_action(task, cards=ranks, formula=formula)
                _check_demo(task, text, aid, aid)
                thoughts = json.loads(text)["thoughts"]
                key = "In order, they are " + demonstrations._and([str(v) for v in values])
                assert key + ". The current formula" in thoughts
                context = next(c for c in records if c in thoughts)  # one record per state
                assert thoughts.endswith(context + records.pop(context))
                if TASKS[task].action_strings[aid] == "=":
                    break
                formula = formula + [TASKS[task].action_strings[aid]]
            assert not records  # no record off the oracle's way
            stated = [t.split(" = ")[0].split()[-1] for t in
                      (json.loads(cot_demonstration(task, cards=ranks, sort_values=True))
                       ["thoughts"],) if f" = {target} uses" in t]
            for expr in stated:
                tokens = [x for x in parse_formula(expr)]
                assert solvers.evaluate_tokens(tokens) == target
                assert sorted(int(x) for x in tokens if x.isdigit()) == values
    corpus = demonstrations.solution_corpus("Points24", sort_values=False,
                                            hands=[[1, 2, 3, 4], [1, 1, 1, 1]])
    assert [c for c, _ in corpus if c.endswith("empty.")] == [
        "The cards are A, 2, 3 and 4, which count as 1, 2, 3 and 4. The current formula is "
        "empty.",
        "The cards are A, A, A and A, which count as 1, 1, 1 and 1. The current formula is "
        "empty."]
    for bad in ("EZPoints", "Blackjack"):
        with pytest.raises(ValueError, match="for Points24"):
            demonstrations.solution_corpus(bad)
    with pytest.raises(ValueError, match="for Points24"):
        cot_demonstration("EZPoints", cards=[3, 4], sort_values=True)
    with pytest.raises(ValueError, match="4 values in 1..10"):
        demonstrations.solution_corpus("Points24", hands=[[1, 2, 13, 4]])


def parse_formula(expr: str) -> list[str]:
    """"10*3-8+2" -> its action strings."""
    out, i = [], 0
    while i < len(expr):
        step = 2 if expr.startswith("10", i) else 1
        out.append(expr[i:i + step])
        i += step
    return out


def test_answer_only_round_trip():
    for name, spec in TASKS.items():
        for aid, s in enumerate(spec.action_strings):
            for a in (aid, s):
                text = demonstrations.answer_only(name, a)
                assert json.loads(text) == {"action": s}
                assert parse_action(name, text) == (aid, 1)
    with pytest.raises(ValueError):
        demonstrations.answer_only("NumberLine", "hit")
    with pytest.raises(ValueError):
        demonstrations.answer_only("NumberLine", 2)
