"""SFT demonstrations from the oracles, and the LLaVA-format JSON loader."""

import json
import re

import jax
import numpy as np
import pytest

import rlvlm_jax.envs as envs
from rlvlm_jax.envs import parse
from rlvlm_jax.rl.sft_data import load_llava_json, make_demonstrations, save_llava_json


@pytest.mark.parametrize("task", [
    "NumberLine",  # every task's CoT demonstrations parse to their actions in test_text_fields too
    pytest.param("EZPoints", marks=pytest.mark.slow),
    pytest.param("Blackjack", marks=pytest.mark.slow),
])
def test_demonstrations_parse_to_their_actions_with_the_wrong_share(task):
    env = envs.make(task, image_size=envs.TASKS[task].min_image_size())[0]
    data = make_demonstrations(env, 400, jax.random.key(0), wrong_share=0.5)
    assert len(data) == 400 and data.images.shape[0] == 400 and data.images.dtype == np.uint8
    wrong = data.actions != data.oracle_actions
    assert 0.4 < wrong.mean() < 0.6
    for prompt, response, action in zip(data.prompts, data.responses, data.actions, strict=True):
        assert prompt.count("<image>") == 1 and prompt.endswith("ASSISTANT:")
        assert parse.parse_action(task, response) == (int(action), 1)
    clean = make_demonstrations(env, 64, jax.random.key(1), wrong_share=0.0, cot=False)
    assert np.array_equal(clean.actions, clean.oracle_actions)
    assert all('"thoughts"' not in r for r in clean.responses)


def test_pictures_match_the_prompts_formula():
    env = envs.make("EZPoints", image_size=96)[0]
    data = make_demonstrations(env, 128, jax.random.key(2))
    # Mid-episode states carry their current formula in the prompt; different formulas come with
    # different pictures (blank tokens, shown as " ", are left out: a trailing blank is an empty
    # slot in the picture, as in the original).
    formulas = [re.search(r"current formula: (.*?)\. You can", p).group(1) for p in data.prompts]
    assert sum(bool(f) for f in formulas) > 32
    by_formula = {}
    for f, image in zip(formulas, data.images, strict=True):
        if " " not in f:
            by_formula.setdefault(f, image)
    pictures = list(by_formula.values())
    assert all(not np.array_equal(a, b) for i, a in enumerate(pictures) for b in pictures[:i])
    with pytest.raises(ValueError, match="wrong_share"):
        make_demonstrations(env, 4, jax.random.key(0), wrong_share=1.5)


def test_llava_json_round_trip_and_errors(tmp_path):
    env = envs.make("NumberLine", image_size=64)[0]
    data = make_demonstrations(env, 12, jax.random.key(3), wrong_share=0.25)
    path = save_llava_json(data, str(tmp_path))
    records = json.load(open(path))
    assert records[0]["conversations"][0]["value"].startswith("<image>\n")
    loaded = load_llava_json(path)
    np.testing.assert_array_equal(loaded.images, data.images)
    assert loaded.prompts == data.prompts and loaded.responses == data.responses
    assert load_llava_json(path, image_size=32).images.shape == (12, 32, 32, 3)

    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            [
                {
                    "id": "x",
                    "image": "missing.png",
                    "conversations": [
                        {"from": "human", "value": "<image>\nhi"},
                        {"from": "gpt", "value": "ok"},
                    ],
                }
            ]
        )
    )
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_llava_json(str(bad))
    bad.write_text(
        json.dumps(
            [
                {
                    "id": "y",
                    "image": records[0]["image"],
                    "conversations": [
                        {"from": "human", "value": "no image here"},
                        {"from": "gpt", "value": "ok"},
                    ],
                }
            ]
        )
    )
    with pytest.raises(ValueError, match="no <image> placeholder"):
        load_llava_json(str(bad))
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_llava_json(str(bad))
    with pytest.raises(FileNotFoundError):
        load_llava_json(str(tmp_path / "nope.json"))
