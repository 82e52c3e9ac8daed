"""Supervised warm-start data: oracle chain-of-thought demonstrations, and LLaVA-format JSON.

RL4VLM starts PPO from an SFT policy that is good but imperfect ("LLaVA-sft"). We make such data
from the environments themselves: states visited by a partly random behaviour policy, each paired
with its picture, the task prompt of that step (the current formula included) and the oracle's
chain-of-thought answer, where a configurable share of answers carry a deliberately wrong action.
The same records can be written as, or read from, the LLaVA SFT JSON format of RL4VLM's released
data (`[{"id", "image", "conversations": [{"from": "human", ...}, {"from": "gpt", ...}]}]`).
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from rlvlm_jax.envs import demonstrations, prompts


@dataclasses.dataclass
class Demonstrations:
    """Aligned SFT records: images uint8[N, H, W, 3], prompt (user turn, `<image>` included) and
    response (assistant turn) texts, and for generated data the actions (-1 when unknown)."""

    images: np.ndarray
    prompts: list[str]
    responses: list[str]
    actions: np.ndarray
    oracle_actions: np.ndarray

    def __len__(self) -> int:
        return len(self.prompts)


def visited_states(env, num_states: int, key: jax.Array, explore: float = 0.3, params=None):
    """`num_states` states (pictures included) from envs following the oracle, but a uniformly
    random action with probability `explore`, so that off-path states appear too."""
    params = env.default_params if params is None else params
    num_envs = min(256, -(-num_states // 16))  # >= 16 steps per env: mid-episode states too
    num_steps = -(-num_states // num_envs)
    step = jax.vmap(env.step, in_axes=(0, 0, 0, None))

    def policy(k, state):
        k_coin, k_rand = jax.random.split(k)
        random_action = jax.random.randint(k_rand, (), 0, env.num_actions)
        oracle = env.oracle_action(k, state)
        return jnp.where(jax.random.bernoulli(k_coin, explore), random_action, oracle)

    def body(state, k):
        k_act, k_step = jax.random.split(k)
        action = jax.vmap(policy)(jax.random.split(k_act, num_envs), state)
        _, nxt, *_ = step(jax.random.split(k_step, num_envs), state, action, params)
        return nxt, state

    @jax.jit
    def run(key):
        k_reset, k_run = jax.random.split(key)
        _, state = jax.vmap(env.reset, in_axes=(0, None))(
            jax.random.split(k_reset, num_envs), params
        )
        _, states = jax.lax.scan(body, state, jax.random.split(k_run, num_steps))
        return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:])[:num_states], states)

    return run(key)


def make_demonstrations(
    env,
    num_samples: int,
    key: jax.Array,
    wrong_share: float = 0.0,
    cot: bool = True,
    explore: float = 0.3,
    picture=None,
    sort_values: bool = False,
) -> Demonstrations:
    """Demonstrations for `env`'s task; a `wrong_share` of them answer with a uniformly chosen
    non-oracle action (the thoughts state the true facts, then choose that action).

    `picture` (a function of a state's `text_fields`, returning uint8 [H, W, 3]) paints the
    pictures instead of the env (another renderer of the same states, e.g. the original
    gym_cards env's for a host task). `sort_values`: `demonstrations.cot_demonstration`'s."""
    if not 0.0 <= wrong_share <= 1.0:
        raise ValueError(f"wrong_share must be in [0, 1], got {wrong_share}")
    k_states, k_oracle, k_wrong = jax.random.split(key, 3)
    states = visited_states(env, num_samples, k_states, explore)
    oracle = np.asarray(
        jax.jit(jax.vmap(env.oracle_action))(jax.random.split(k_oracle, num_samples), states)
    )
    rng = np.random.default_rng(np.asarray(jax.random.key_data(k_wrong)).ravel())
    wrong = rng.random(num_samples) < wrong_share
    shift = rng.integers(1, env.num_actions, num_samples)  # any action but the oracle's
    actions = np.where(wrong, (oracle + shift) % env.num_actions, oracle)
    host = jax.device_get(states)
    prompt_list, responses, painted = [], [], []
    for i, fields in enumerate(env.text_fields_batch(host)):
        if picture is not None:
            painted.append(np.asarray(picture(fields), np.uint8))
        prompt_list.append(prompts.full_prompt(env.task, fields.get("formula"), cot=cot))
        if cot:
            responses.append(demonstrations.cot_demonstration(
                env.task, action=int(actions[i]), sort_values=sort_values, **fields))
        else:
            responses.append(demonstrations.answer_only(env.task, int(actions[i])))
    return Demonstrations(
        np.asarray(host.canvas) if picture is None else np.stack(painted),
        prompt_list,
        responses,
        actions.astype(np.int32),
        oracle.astype(np.int32),
    )


# ---------------------------------------------------------------------------- LLaVA SFT JSON
def _user_turn(prompt: str) -> str:
    """The user's turn of the LLaVA-1 template (`USER: ... ASSISTANT:`), `<image>` included."""
    start = prompt.find("USER: ")
    end = prompt.rfind(" ASSISTANT:")
    return prompt[start + len("USER: ") : end] if start >= 0 and end > start else prompt


def save_llava_json(data: Demonstrations, directory: str, name: str = "sft.json") -> str:
    """Writes images as PNGs beside a LLaVA-format JSON file; returns the JSON path."""
    os.makedirs(os.path.join(directory, "images"), exist_ok=True)
    records = []
    for i in range(len(data)):
        image = f"images/{i:06d}.png"
        Image.fromarray(data.images[i]).save(os.path.join(directory, image))
        records.append(
            {
                "id": f"{i:06d}",
                "image": image,
                "conversations": [
                    {"from": "human", "value": _user_turn(data.prompts[i])},
                    {"from": "gpt", "value": data.responses[i]},
                ],
            }
        )
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        json.dump(records, f, indent=1)
    return path


def load_llava_json(path: str, image_size: int | None = None) -> Demonstrations:
    """Reads LLaVA-format SFT JSON (image paths relative to the file or absolute); prompts are
    rebuilt with the LLaVA-1 template. Images are resized to `image_size` if given (bicubic)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"SFT JSON file not found: {path}")
    with open(path) as f:
        try:
            records = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a list of records, got {type(records).__name__}")
    root = os.path.dirname(os.path.abspath(path))
    images, prompt_list, responses = [], [], []
    for n, rec in enumerate(records):
        where = (
            f"{path}: record {n} (id {rec.get('id', '?')!r})"
            if isinstance(rec, dict)
            else f"{path}: record {n}"
        )
        if not isinstance(rec, dict) or "image" not in rec or "conversations" not in rec:
            raise ValueError(f"{where}: needs 'image' and 'conversations'")
        turns = rec["conversations"]
        if len(turns) < 2 or turns[0].get("from") != "human" or turns[1].get("from") != "gpt":
            raise ValueError(f"{where}: expected a human turn then a gpt turn")
        user = turns[0]["value"]
        if "<image>" not in user:
            raise ValueError(f"{where}: the human turn has no <image> placeholder")
        image_path = (
            rec["image"] if os.path.isabs(rec["image"]) else os.path.join(root, rec["image"])
        )
        if not os.path.isfile(image_path):
            raise FileNotFoundError(f"{where}: image not found: {image_path}")
        with Image.open(image_path) as img:
            img = img.convert("RGB")
            if image_size is not None:
                img = img.resize((image_size, image_size), Image.BICUBIC)
            images.append(np.asarray(img))
        prompt_list.append(prompts.llava_conversation(user.replace("<image>\n", "", 1)))
        responses.append(turns[1]["value"])
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise ValueError(f"{path}: images have different sizes {sorted(shapes)}; pass image_size")
    n = len(records)
    return Demonstrations(
        np.stack(images) if images else np.zeros((0, 0, 0, 3), np.uint8),
        prompt_list,
        responses,
        np.full(n, -1, np.int32),
        np.full(n, -1, np.int32),
    )
