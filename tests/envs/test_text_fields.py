"""Env states -> prompt and demonstration text -> reference parser -> the env's oracle action."""

import jax
import pytest

import rlvlm_jax.envs as envs
from rlvlm_jax.envs import demonstrations, parse, prompts
from rlvlm_jax.envs.play import make_play, oracle_policy


@pytest.mark.parametrize("task", list(envs.TASKS))
def test_device_oracle_agrees_with_host_demonstrations(task):
    env = envs.make(task, image_size=envs.TASKS[task].min_image_size())[0]
    # States along oracle trajectories (so formulas are on the solution path).
    _, _, states = make_play(env, oracle_policy(env), num_envs=64, num_steps=3)(jax.random.key(0))
    device = jax.device_get(
        jax.jit(jax.vmap(env.oracle_action))(jax.random.split(jax.random.key(1), 64), states)
    )
    for i in range(64):
        state = jax.tree.map(lambda x, i=i: x[i], states)
        fields = env.text_fields(state)
        prompt = prompts.full_prompt(task, fields.get("formula"), cot=True)
        assert prompt.count("<image>") == 1
        if "formula" in fields:
            assert prompts.formula_text(fields["formula"]) in prompt  # the current formula
        text = demonstrations.cot_demonstration(task, action=int(device[i]), **fields)
        assert parse.parse_action(task, text) == (int(device[i]), 1)
        host = demonstrations.oracle_action(task, **fields)
        if task == "Points24":
            # Both solve exactly the solvable hands; they may pick different solutions.
            assert (host == env.equals_action) == (int(device[i]) == env.equals_action)
        else:
            assert host == int(device[i]), (fields, host, int(device[i]))
