"""Reference policies (uniformly random, oracle) and the first-episode evaluation of every baseline.

    python -m rlvlm_jax.baselines.policies --policy random --task EZPoints --seed 0 \
        --workdir outputs/random_ezpoints [--episodes 500]

The evaluation is the VLM's (`rlvlm_jax.rl.rollout.Actor.make_evaluate`): reset `episodes`
environments, step them all until each one's first episode has ended (or `max_steps`), and judge
each environment by its first episode only: success is a first-episode return > 0, an unfinished
first episode counts as a failure (`summarize_evaluation` makes the figures, so the definitions
are the VLM's own). The random policy draws each action uniformly from the whole action space
(every action id is legal in every task; the VLM falls back to the same draw for unparsable
answers). The oracle is the env's own jittable `oracle_action` (the rule named in
`rlvlm_jax.envs.tasks.Task.oracle`), so both run on the device like the VLM's evaluation.

Outputs in the workdir, in the schema of `rlvlm_jax.train`: config.json (method, task, seed,
episodes, ...) and results.json ({"ppo_eval": {...}, "history": [], "wall_seconds"}).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
from absl import app, flags

from rlvlm_jax import envs
from rlvlm_jax.config_files import flatten, parse_flags
from rlvlm_jax.rl.rollout import summarize_evaluation

POLICIES = ("random", "oracle")
# Every first episode of every task ends within this many steps (NumberLine truncates at 10, the
# formula tasks at 7 and 22, a Blackjack hand busts or stands within 21), so none is cut short.
MAX_EVAL_STEPS = 32

# An action rule: (params, key, batched env state) -> int32 [num_envs] actions.
ActFn = Callable[[object, jax.Array, object], jax.Array]


# ------------------------------------------------------------------------------------ evaluation
def make_evaluate(env, env_params, act: ActFn, num_envs: int, max_steps: int = MAX_EVAL_STEPS):
    """Jitted `evaluate(params, key) -> dict` over the first episode of `num_envs` envs.

    Returns first_return (NaN where the first episode did not end), first_length and steps (env
    steps taken inside first episodes), the fields `summarize` reads.
    """
    if num_envs < 1 or max_steps < 1:
        raise ValueError(f"evaluation needs episodes >= 1 and max_steps >= 1, got {num_envs}, "
                         f"{max_steps}")
    step = jax.vmap(env.step, in_axes=(0, 0, 0, None))

    def evaluate(params, key):
        k_reset, k_run = jax.random.split(key)
        _, state = jax.vmap(env.reset, in_axes=(0, None))(
            jax.random.split(k_reset, num_envs), env_params)
        init = {
            "state": state,
            "t": jnp.int32(0),
            "ep_return": jnp.zeros((num_envs,), jnp.float32),
            "first_return": jnp.full((num_envs,), jnp.nan, jnp.float32),
            "first_length": jnp.zeros((num_envs,), jnp.int32),
            "steps": jnp.int32(0),
        }

        def cond(s):
            return (s["t"] < max_steps) & jnp.any(jnp.isnan(s["first_return"]))

        def body(s):
            k_act, k_env = jax.random.split(jax.random.fold_in(k_run, s["t"]))
            action = act(params, k_act, s["state"]).astype(jnp.int32)
            _, state, reward, term, trunc, _ = step(
                jax.random.split(k_env, num_envs), s["state"], action, env_params)
            ep_return = s["ep_return"] + reward
            active = jnp.isnan(s["first_return"])
            first = active & (term | trunc)
            return {
                "state": state,
                "t": s["t"] + 1,
                "ep_return": jnp.where(term | trunc, 0.0, ep_return),
                "first_return": jnp.where(first, ep_return, s["first_return"]),
                "first_length": jnp.where(first, s["t"] + 1, s["first_length"]),
                "steps": s["steps"] + jnp.sum(active),
            }

        s = jax.lax.while_loop(cond, body, init)
        return {k: s[k] for k in ("first_return", "first_length", "steps")}

    return jax.jit(evaluate)


def summarize(result) -> dict:
    """The VLM's first-episode figures (`summarize_evaluation`) for a policy without text: no
    answer is invalid, and the response-length fields do not apply and are left out."""
    r = jax.device_get(result)
    out = summarize_evaluation({**r, "invalid": 0, "tokens": 0, "clipped": 0})
    out.pop("response_length")
    out.pop("length_clip_ratio")
    return out


def random_policy(env) -> ActFn:
    """Uniform over the whole action space (all ids are legal moves in every task)."""

    def act(params, key, state):
        return jax.random.randint(key, state.time.shape, 0, env.num_actions)

    return act


def oracle_policy(env, env_params) -> ActFn:
    """The env's own oracle, vmapped (optimal for NumberLine/EZPoints, basic strategy for
    Blackjack, a stored solution for Points24)."""
    oracle = jax.vmap(env.oracle_action, in_axes=(0, 0, None))

    def act(params, key, state):
        return oracle(jax.random.split(key, state.time.shape[0]), state, env_params)

    return act


# ------------------------------------------------------------------------------------ outputs
def check_workdir(workdir: str, config: dict) -> dict | None:
    """The finished results of this very config in `workdir` (None: nothing there yet).

    Raises ValueError, writing nothing, when `workdir` is a file or holds results.json of a
    different config: results of two configs must never mix in one folder.
    """
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f"--workdir {workdir} is a file, not a directory")
    results, old_config = os.path.join(workdir, "results.json"), os.path.join(workdir,
                                                                              "config.json")
    if not os.path.exists(results):
        return None
    try:
        with open(old_config) as f:
            old = json.load(f)
    except (OSError, ValueError):
        old = {}
    new = json.loads(json.dumps(config))  # tuples -> lists, as read back from the file
    if old != new:
        a, b = flatten(old), flatten(new)
        diff = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        raise ValueError(f"{workdir} already holds results.json of a different config (differs "
                         f"in {', '.join(diff[:6])}{', ...' if len(diff) > 6 else ''}); use a "
                         "new --workdir")
    with open(results) as f:
        return json.load(f)


def write_json(workdir: str, name: str, value: dict) -> None:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, name), "w") as f:
        json.dump(value, f, indent=1, sort_keys=name == "config.json")


# ------------------------------------------------------------------------------------ runs
def policy_config(policy: str, task: str, seed: int = 0, episodes: int = 500,
                  max_steps: int = MAX_EVAL_STEPS) -> dict:
    """The config.json of a reference policy run; raises ValueError on bad values."""
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
    try:
        name = envs.tasks.get_task(task).name
    except KeyError:
        raise ValueError(f"unknown task {task!r}; choose one of "
                         f"{', '.join(envs.tasks.TASK_NAMES)}") from None
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    return {"method": policy, "task": name, "seed": int(seed), "episodes": int(episodes),
            "max_steps": int(max_steps), "image_size": envs.TASKS[name].min_image_size()}


def evaluate_policy(config: dict) -> dict:
    """First-episode figures of the config's policy (`policy_config`), host floats."""
    env, env_params = envs.make(config["task"], image_size=config["image_size"])
    if config["method"] == "random":
        act = random_policy(env)
    else:
        act = oracle_policy(env, env_params)
    evaluate = make_evaluate(env, env_params, act, config["episodes"], config["max_steps"])
    key = jax.random.fold_in(jax.random.PRNGKey(config["seed"]), 1)
    return summarize(evaluate(None, key))


def run(config: dict, workdir: str) -> dict:
    """Evaluates and writes config.json and results.json (or returns the finished results of
    this config already in `workdir`)."""
    done = check_workdir(workdir, config)
    if done is not None:
        print(f"[done] {workdir} already holds this run's results", flush=True)
        return done
    t0 = time.time()
    ev = evaluate_policy(config)
    results = {"ppo_eval": ev, "history": [], "wall_seconds": time.time() - t0}
    write_json(workdir, "config.json", config)
    write_json(workdir, "results.json", results)
    print(f"[eval] {config['method']} policy on {config['task']}: success "
          f"{ev['success_rate']:.3f}, return {ev['episode_return']:.3f} over {ev['episodes']} "
          f"first episodes; results in {os.path.join(workdir, 'results.json')}", flush=True)
    return results


def _define_flags() -> dict:
    """The command line's flags (defined only when run as a program: importing this module next
    to `rlvlm_jax.train`, whose flags include --workdir, must not clash)."""
    return {
        "policy": flags.DEFINE_enum("policy", None, list(POLICIES), "the reference policy"),
        "task": flags.DEFINE_string("task", None, "NumberLine, EZPoints, Points24 or Blackjack"),
        "seed": flags.DEFINE_integer("seed", 0, "the evaluation's env resets and random draws"),
        "workdir": flags.DEFINE_string("workdir", None, "output directory"),
        "episodes": flags.DEFINE_integer("episodes", 500, "first episodes of this many envs"),
        "max_steps": flags.DEFINE_integer("max_steps", MAX_EVAL_STEPS, "env steps per env"),
    }


def main(argv, flag_holders: dict) -> int:
    del argv
    f = {k: v.value for k, v in flag_holders.items()}
    try:
        config = policy_config(f["policy"], f["task"], f["seed"], f["episodes"], f["max_steps"])
        run(config, f["workdir"])
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # bad flags: one line and exit code 2 (config_files.parse_flags)
    _FLAGS = _define_flags()
    flags.mark_flags_as_required(["policy", "task", "workdir"])
    app.run(lambda argv: sys.exit(main(argv, _FLAGS)), flags_parser=parse_flags)
