"""The task table agrees with everything that reads it: env classes, prompts, parsers, oracles."""

import ast
import re

import gymnax
import jax
import numpy as np
import pytest

import rlvlm_jax.envs as envs
from rlvlm_jax.envs import demonstrations, parse, prompts, solvers, tasks
from rlvlm_jax.envs import formula as F
from rlvlm_jax.envs.tasks import TASKS, get_task
from rlvlm_jax.text.parse_device import make_action_parser


def test_lookup_by_every_name():
    assert tasks.TASK_NAMES == ("NumberLine", "EZPoints", "Points24", "Blackjack")
    for name, spec in TASKS.items():
        assert spec.name == name
        assert spec.gymnax_id == f"{name}-v0" and spec.gym_id == f"gym_cards/{name}-v0"
        for key in (name, spec.gymnax_id, spec.gym_id, spec):
            assert get_task(key) is spec
    with pytest.raises(
        KeyError,
        match=re.escape("unknown task 'Points25'; expected one of ['Blackjack', 'EZPoints', "),
    ):
        get_task("Points25")
    with pytest.raises(KeyError, match="unknown task 'points24'"):
        get_task("points24")  # names are case-sensitive


def test_env_classes_and_gymnax_ids_come_from_the_table():
    assert tuple(envs.TASKS) == tasks.TASK_NAMES
    assert envs.GYMNAX_IDS == {n: t.gymnax_id for n, t in TASKS.items()}
    for name, spec in TASKS.items():
        cls = envs.TASKS[name]
        assert cls.task_spec is spec and cls.task == name
        assert cls.action_strings is spec.action_strings
        assert gymnax.registered_envs.count(spec.gymnax_id) == 1
        if spec.has_formula:  # formula envs: target and one token code per action but "="
            assert cls.target == spec.target
            assert [F.CODE_TEXT[c] for c in cls.action_codes] == list(spec.action_strings[:-1])
            assert spec.action_strings[-1] == "="
    env, _ = envs.make("gym_cards/NumberLine-v0")  # every id works, the default size is the table's
    assert isinstance(env, envs.NumberLine) and env.num_actions == TASKS["NumberLine"].num_actions
    assert env.image_size == TASKS["NumberLine"].image_size == 300
    with pytest.raises(ValueError, match="unknown task 'Poker'"):
        envs.make("Poker")


def test_formula_code_text_table():
    assert set(F.CODE_TEXT) == set(range(1, F.NUM_CODES))  # every code but PAD
    assert F.CODE_TEXT[F.BLANK] == " " and F.CODE_TEXT[10] == "10"
    assert {c: t for t, c in F.TEXT_CODE.items()} == F.CODE_TEXT


@pytest.mark.parametrize("name", ["EZPoints", "Points24"])
def test_prompt_choices_and_target_match_the_table(name):
    spec = TASKS[name]
    text = prompts.task_prompt(name, None, cot=True)
    listed = re.search(r"You can choose between \[(.*?)\]\. ", text).group(1)
    assert tuple(s.strip("'") for s in listed.split(", ")) == spec.action_strings
    assert f"a formula that evaluates to {spec.target}," in text


def test_prompts_carry_the_formula_iff_the_table_says_so():
    for name, spec in TASKS.items():
        with_formula = prompts.task_prompt(name, ["7", "+"], cot=True)
        assert (with_formula != prompts.task_prompt(name, None, cot=True)) == spec.has_formula
    assert "['stand', 'hit']" in prompts.task_prompt("Blackjack")
    assert '"action": "-" or "+"' in prompts.task_prompt("NumberLine")


@pytest.mark.parametrize("name", list(TASKS))
def test_parsers_read_every_action_of_the_table(name):
    spec = TASKS[name]
    texts = [f'{{"action": "{a}"}}' for a in spec.action_strings] + ['"action": "110"']
    host = [parse.parse_action(name, t) for t in texts]
    ids = [(i, 1) for i in range(spec.num_actions)]
    assert host[:-1] == ids
    # The "10" rule: "110" reads as {"10", "1"} (invalid) in the points tasks, as nothing elsewhere.
    assert host[-1] == ((None, 2) if spec.has_ten else (None, 0))
    width = max(len(t.encode()) for t in texts)
    data = np.zeros((len(texts), width), np.uint8)
    for i, t in enumerate(texts):
        data[i, : len(t.encode())] = list(t.encode())
    lengths = np.asarray([len(t.encode()) for t in texts], np.int32)
    out = jax.jit(jax.vmap(make_action_parser(name)))(data, lengths)
    assert out.found.shape == (len(texts), spec.num_actions)
    pairs = zip(out.action.tolist(), out.n_found.tolist(), strict=True)
    device = [(None if a < 0 else a, n) for a, n in pairs]
    assert device == host


# One state per task and the named solver's answer for it.
_ORACLE_CASES = {
    "NumberLine": ({"position": 1, "goal": 4}, lambda f: f(1, 4)),
    "EZPoints": ({"cards": [13, 2]}, lambda f: f(10, 2)[0]),  # K counts as 10: 10 + 2
    "Points24": ({"cards": [8, 3, 8, 3]}, lambda f: f([8, 3, 8, 3])[0]),
    "Blackjack": (
        {"player_sum": 16, "usable_ace": False, "dealer_up_value": 10},
        lambda f: f(16, False, 10),
    ),
}


@pytest.mark.parametrize("name", list(TASKS))
def test_oracle_names_the_solver_the_demonstrations_follow(name):
    spec = TASKS[name]
    solver = getattr(solvers, spec.oracle)
    state, call = _ORACLE_CASES[name]
    answer = call(solver)
    expected = answer if isinstance(answer, int) else spec.action_strings.index(answer)
    assert demonstrations.oracle_action(name, **state) == expected


def test_tasks_module_is_the_bottom_of_the_package():
    """tasks.py imports nothing of the project, so env classes and prompts can import it."""
    tree = ast.parse(open(tasks.__file__).read())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module)
    assert imported <= {"__future__", "dataclasses"}, imported
