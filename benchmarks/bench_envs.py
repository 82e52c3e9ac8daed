"""Environment throughput: steps/s per task and batch size with 300x300 pictures.

Measured through the public gymnax API: `jax.vmap(env.step)` inside a `lax.scan`, the whole scan
under `jax.jit`, random actions, auto-reset on. In the same run, a host baseline that draws every
picture with PIL, one environment at a time (what the original gym_cards does), gives the ratio.

    python benchmarks/bench_envs.py                   # default: one XLA CPU device
    python benchmarks/bench_envs.py --devices 2       # the batch sharded over 2 host devices
    python benchmarks/bench_envs.py --both            # both, the sharded run in a subprocess
    python benchmarks/bench_envs.py --style original --original-gym-cards <RL4VLM>/gym-cards
        # gym_cards' own pictures from its card images; the original is timed too

Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tasks", default=None, help="comma-separated task names (default: all)")
    p.add_argument("--batch-sizes", default="1,64,1024")
    p.add_argument("--steps", type=int, default=100, help="scan length per timed call")
    p.add_argument("--repeats", type=int, default=3, help="timed calls (best is reported)")
    p.add_argument("--image-size", type=int, default=300)
    p.add_argument("--devices", type=int, default=1, help="host devices to shard the batch over")
    p.add_argument("--both", action="store_true", help="run with 1 and with 2 devices")
    p.add_argument("--baseline-seconds", type=float, default=2.0, help="time for the PIL baseline")
    p.add_argument(
        "--original-gym-cards",
        default=None,
        help="path to the original RL4VLM gym-cards package (the folder holding\n"
        "gym_cards/); when given, it is timed too, one env, random actions",
    )
    p.add_argument(
        "--style",
        default="default",
        choices=("default", "original"),
        help="picture style; 'original' paints gym_cards' own pictures from the card images\n"
        "of --original-gym-cards (300 px only)",
    )
    args = p.parse_args(argv)
    if args.style == "original" and not args.original_gym_cards:
        p.error("--style original needs --original-gym-cards (the card images' checkout)")
    return args


def env_kwargs(args) -> dict:
    """envs.make's picture arguments for this run."""
    if args.style == "original":
        return {"style": "original", "card_images": args.original_gym_cards}
    return {"image_size": args.image_size}


def measure(task, batch, steps, repeats, picture, devices):
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    import rlvlm_jax.envs as envs

    env, params = envs.make(task, **picture)
    step = jax.vmap(env.step, in_axes=(0, 0, 0, None))

    def body(state, key):
        k_act, k_step = jax.random.split(key)
        action = jax.random.randint(k_act, (batch,), 0, env.num_actions)
        obs, state, reward, terminated, truncated, _ = step(
            jax.random.split(k_step, batch), state, action, params
        )
        return state, reward.sum()

    run = jax.jit(
        lambda state, key: jax.lax.scan(body, state, jax.random.split(key, steps)), donate_argnums=0
    )
    _, state = jax.jit(jax.vmap(env.reset, in_axes=(0, None)))(
        jax.random.split(jax.random.key(0), batch), params
    )
    if devices > 1 and batch % devices == 0:
        mesh = Mesh(np.array(jax.devices()[:devices]), ("data",))
        state = jax.device_put(state, NamedSharding(mesh, PartitionSpec("data")))
    t0 = time.perf_counter()
    state, _ = run(state, jax.random.key(1))
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - t0
    best = float("inf")
    for r in range(repeats):
        t0 = time.perf_counter()
        state, _ = run(state, jax.random.key(2 + r))
        jax.block_until_ready(state)
        best = min(best, time.perf_counter() - t0)
    return batch * steps / best, compile_s


def pil_baseline(task, seconds, picture):
    """One environment on the host: game logic per step plus a full PIL picture per step."""
    import jax
    import numpy as np

    import rlvlm_jax.envs as envs

    env, params = envs.make(task, **picture)
    with jax.default_device(jax.devices("cpu")[0]):
        step_logic = jax.jit(lambda k, s, a: env._step_logic(k, s, a, params))
        reset_logic = jax.jit(lambda k, c: env._reset_logic(k, params, c))
        variants = jax.jit(env.region_variants)
        _, state = env.reset(jax.random.key(0))
        rng = np.random.default_rng(0)
        # Compile the logic before timing: the baseline is meant to time PIL drawing + logic.
        jax.block_until_ready(step_logic(jax.random.key(0), state, 0))
        jax.block_until_ready(reset_logic(jax.random.key(0), state.canvas))
        jax.block_until_ready(variants(state))
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            key = jax.random.key(n)
            state, _, terminated, truncated = step_logic(
                key, state, int(rng.integers(0, env.num_actions))
            )
            if bool(terminated | truncated):
                state = reset_logic(key, state.canvas)
            env.picture.paint_state(variants(state))
            n += 1
    return n / (time.perf_counter() - t0)


def original_baseline(task, seconds, path):
    """The original gym_cards environment (PIL, one process), random actions, reset when done."""
    import gymnasium
    import numpy as np

    sys.path.insert(0, path)
    import gym_cards  # noqa: F401  (registers the gymnasium ids)

    from rlvlm_jax.envs.tasks import get_task

    env = gymnasium.make(get_task(task).gym_id)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        _, _, terminated, truncated, _ = env.step(int(rng.integers(0, env.action_space.n)))
        if terminated or truncated:
            env.reset()
        n += 1
    return n / (time.perf_counter() - t0)


def main(argv=None):
    args = parse_args(argv)
    if args.both:
        rows = []
        for devices in (1, 2):
            cmd = [
                sys.executable,
                __file__,
                "--devices",
                str(devices),
                "--batch-sizes",
                args.batch_sizes,
                "--steps",
                str(args.steps),
                "--repeats",
                str(args.repeats),
                "--image-size",
                str(args.image_size),
                "--baseline-seconds",
                str(args.baseline_seconds if devices == 1 else 0),
            ]
            if args.tasks:
                cmd += ["--tasks", args.tasks]
            if args.style != "default":
                cmd += ["--style", args.style]
                if devices != 1:  # the card images, without timing the original a second time
                    cmd += ["--original-gym-cards", args.original_gym_cards]
            if args.original_gym_cards and devices == 1:
                cmd += ["--original-gym-cards", args.original_gym_cards]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            print(out.rstrip("\n").rsplit("\n", 1)[0])
            rows += json.loads(out.strip().splitlines()[-1])["results"]
        print(json.dumps({"benchmark": "envs", "results": rows}))
        return
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={args.devices}"
    )
    import jax

    from rlvlm_jax.envs.tasks import TASK_NAMES  # after XLA_FLAGS: importing envs imports jax

    print(
        f"# jax {jax.__version__}, {len(jax.devices())} host device(s), "
        f"{os.cpu_count()} cores, image {args.image_size}x{args.image_size}, style {args.style}"
    )
    header = f"{'task':<11} {'devices':>7} {'batch':>6} {'steps/s':>12} {'compile s':>10}"
    print(header + f" {'PIL host baseline':>18} {'ratio':>8} {'original':>9} {'ratio':>8}")
    results = []
    for task in (args.tasks or ",".join(TASK_NAMES)).split(","):
        baseline = (
            pil_baseline(task, args.baseline_seconds, env_kwargs(args))
            if args.baseline_seconds > 0
            else None
        )
        original = (
            original_baseline(task, args.baseline_seconds, args.original_gym_cards)
            if args.original_gym_cards and args.baseline_seconds > 0
            else None
        )
        for batch in map(int, args.batch_sizes.split(",")):
            rate, compile_s = measure(
                task, batch, args.steps, args.repeats, env_kwargs(args), args.devices
            )
            ratio = rate / baseline if baseline else None
            ratio_orig = rate / original if original else None
            print(
                f"{task:<11} {args.devices:>7} {batch:>6} {rate:>12,.0f} {compile_s:>10.1f}"
                + (f" {baseline:>18,.0f} {ratio:>8,.0f}x" if baseline else "")
                + (f" {original:>9,.0f} {ratio_orig:>8,.0f}x" if original else "")
            )
            results.append(
                {
                    "task": task,
                    "devices": args.devices,
                    "batch": batch,
                    "steps_per_s": round(rate, 1),
                    "compile_s": round(compile_s, 2),
                    "pil_baseline_steps_per_s": baseline and round(baseline, 1),
                    "ratio_vs_pil": ratio and round(ratio, 1),
                    "original_steps_per_s": original and round(original, 1),
                    "ratio_vs_original": ratio_orig and round(ratio_orig, 1),
                }
            )
    print(json.dumps({"benchmark": "envs", "results": results}))


if __name__ == "__main__":
    main()
