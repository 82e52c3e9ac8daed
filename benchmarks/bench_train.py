"""Training throughput of a config: SFT step, rollout and PPO update, compile times apart.

    python benchmarks/bench_train.py [--config experiments/numberline_tiny.py] [--repeats 3]

Prints a table (seconds per call, samples/s, env steps/s, generated tokens/s) and a final JSON
line. Params are the random init: throughput does not depend on what the model has learnt,
except through response lengths (random models rarely stop early, so rollouts here generate the
full `max_new_tokens`, an upper bound on the trained policy's cost).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rlvlm_jax.build import build  # noqa: E402
from rlvlm_jax.rl import sft as sft_lib  # noqa: E402


def load_config(path):
    spec = importlib.util.spec_from_file_location("bench_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def timed(fn, repeats):
    t0 = time.time()
    out = jax.block_until_ready(fn())
    first = time.time() - t0
    times = []
    for _ in range(repeats):
        t0 = time.time()
        out = jax.block_until_ready(fn())
        times.append(time.time() - t0)
    return out, first, float(np.median(times))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="experiments/numberline_tiny.py")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    c = load_config(args.config)
    c.sft.num_demos = max(c.sft.batch_size, 64)
    run = build(c, tempfile.mkdtemp(prefix="bench_train_"))
    params = run.init_params
    rows = []

    data = jax.device_put(sft_lib.make_sft_data(
        run.env, run.tokenizer, run.encoder, c.sft.num_demos, jax.random.key(0), 0.5, c.cot,
        c.max_new_tokens))
    opt = run.sft_tx.init(params)
    idx = jnp.arange(c.sft.batch_size) % c.sft.num_demos
    state = {"p": jax.tree.map(jnp.copy, params), "o": opt}

    def sft_call():
        state["p"], state["o"], m = run.sft_step(state["p"], state["o"], data, idx)
        return m

    _, first, t = timed(sft_call, args.repeats)
    rows.append(("sft step", c.sft.batch_size, first, t, c.sft.batch_size / t, 0.0))

    carry = run.actor.reset(jax.random.key(1), c.ppo.num_envs)
    temp = jnp.float32(c.ppo.temperature)
    out, first, t = timed(lambda: run.rollout(params, carry, jax.random.key(2), temp),
                          args.repeats)
    _, traj, last_value = out
    steps = c.ppo.num_envs * c.ppo.num_steps
    tokens = float(np.sum(jax.device_get(traj.lengths)))
    rows.append(("rollout", steps, first, t, steps / t, tokens / t))

    p2 = jax.tree.map(jnp.copy, params)
    o2 = run.ppo_tx.init(p2)
    upd_state = {"p": p2, "o": o2}
    ref = params if c.ppo.kl_coef > 0 else None

    def upd_call():
        upd_state["p"], upd_state["o"], m = run.update(upd_state["p"], upd_state["o"], traj,
                                                       last_value, jax.random.key(3), ref)
        return m

    _, first, t = timed(upd_call, args.repeats)
    n_upd = steps * c.ppo.epochs
    rows.append(("ppo update", n_upd, first, t, n_upd / t, 0.0))

    print(f"{'stage':<12}{'samples':>9}{'first call s':>14}{'s/call':>9}{'samples/s':>11}"
          f"{'tokens/s':>10}")
    for name, n, first, t, rate, tok in rows:
        print(f"{name:<12}{n:>9}{first:>14.2f}{t:>9.3f}{rate:>11.1f}{tok:>10.0f}")
    result = {r[0].replace(" ", "_"): {"samples": r[1], "first_call_s": round(r[2], 3),
                                       "s_per_call": round(r[3], 4),
                                       "samples_per_s": round(r[4], 2),
                                       "tokens_per_s": round(r[5], 1)} for r in rows}
    result["config"] = args.config
    result["params"] = run.num_params
    result["devices"] = [str(d) for d in jax.devices()]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
