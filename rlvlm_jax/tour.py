"""A tour of the card environments: oracle and random play, pictures and text episodes.

For each task it (1) plays the oracle and a random policy in thousands of environments inside one
compiled scan and reports first-episode success rates, and (2) plays one episode through the text
interface the VLM uses: picture -> prompt (with the current formula) -> chain-of-thought
demonstration -> reference parser -> action -> env step, saving every picture and text.

    python -m rlvlm_jax.tour --config experiments/tour.py --workdir outputs/tour
"""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags
from PIL import Image

import rlvlm_jax.envs as envs
from rlvlm_jax.envs import demonstrations, parse, prompts
from rlvlm_jax.envs.play import make_play, oracle_policy, random_policy, summarize
from rlvlm_jax.envs.tasks import TASK_NAMES


def play_text_episode(env, key, outdir, max_steps=30):
    """One oracle episode through text; returns the list of step records."""
    step = jax.jit(env.step)
    policy = jax.jit(env.oracle_action)
    key, k_reset = jax.random.split(key)
    _, state = jax.jit(env.reset)(k_reset)
    records, frames, total = [], [], 0.0
    for t in range(max_steps):
        fields = env.text_fields(state)
        formula = fields.get("formula")
        prompt = prompts.full_prompt(env.task, formula, cot=True)
        oracle = int(policy(key, state))
        answer = demonstrations.cot_demonstration(env.task, action=oracle, **fields)
        action, n_found = parse.parse_action(env.task, answer)
        if action != oracle:
            raise RuntimeError(f"{env.task}: the demonstration parsed to {action}, not {oracle}")
        picture = np.asarray(state.canvas)
        frames.append(picture)
        Image.fromarray(picture).save(os.path.join(outdir, f"{env.task}_step{t}.png"))
        key, k_step = jax.random.split(key)
        _, state, reward, terminated, truncated, _ = step(k_step, state, action)
        total += float(reward)
        records.append(
            {
                "step": t,
                "prompt": prompt,
                "response": answer,
                "action": env.action_strings[action],
                "reward": float(reward),
                "terminated": bool(terminated),
                "truncated": bool(truncated),
            }
        )
        if bool(terminated | truncated):
            break
    sheet = np.concatenate(frames, axis=1)
    Image.fromarray(sheet).save(os.path.join(outdir, f"{env.task}_episode.png"))
    return records, total


_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file (get_config)")
_WORKDIR = flags.DEFINE_string("workdir", "outputs/tour", "where pictures and texts are written")


def main(argv):
    del argv
    args, outdir = _CONFIG.value, _WORKDIR.value
    if args is None:
        raise app.UsageError("--config is required, e.g. --config experiments/tour.py")
    unknown = [t for t in args.tasks.split(",") if t not in TASK_NAMES]
    if unknown:
        raise app.UsageError(
            f"unknown task(s) {unknown} in config.tasks; choose from {', '.join(TASK_NAMES)}"
        )
    os.makedirs(outdir, exist_ok=True)
    key = jax.random.key(args.seed)
    summary = {}
    print(
        f"{'task':<11} {'policy':<7} {'episodes':>9} {'success':>8} {'return':>7} "
        f"{'length':>7} {'steps/s':>9}"
    )
    for task in args.tasks.split(","):
        env, _ = envs.make(task, image_size=args.image_size)
        summary[task] = {}
        for name, policy in (("oracle", oracle_policy(env)), ("random", random_policy(env))):
            key, k_play = jax.random.split(key)
            play = make_play(env, policy, args.num_envs, args.steps)
            jax.block_until_ready(play(k_play))  # compile
            t0 = time.perf_counter()
            stats, _, _ = jax.block_until_ready(play(k_play))
            rate = args.num_envs * args.steps / (time.perf_counter() - t0)
            s = summarize(stats)
            s["steps_per_s"] = rate
            summary[task][name] = s
            print(
                f"{task:<11} {name:<7} {s['first_episodes']:>9} "
                f"{s['first_episode_success_rate']:>8.1%} {s['mean_return']:>7.2f} "
                f"{s['mean_length']:>7.2f} {rate:>9,.0f}"
            )
        key, k_ep = jax.random.split(key)
        records, total = play_text_episode(env, k_ep, outdir)
        summary[task]["text_episode_return"] = total
        with open(os.path.join(outdir, f"{task}_episode.json"), "w") as f:
            json.dump(records, f, indent=1)
    with open(os.path.join(outdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"pictures, episode texts and summary.json written to {outdir}/")


if __name__ == "__main__":
    app.run(main)
