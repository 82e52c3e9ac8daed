"""Evaluate a trained policy: success rate over N first episodes at a temperature (or greedy).

    python -m rlvlm_jax.evaluate --config experiments/numberline_tiny.py --workdir outputs/nl \
        --episodes 500 --temperature 0.2 [--step 250]

Reads the newest (or `--step`) checkpoint of the workdir's run, plays `--episodes` environments
until each has finished its first episode (one compiled while loop), and writes the result as
JSON (`eval_<step>_t<temperature>.json` in the workdir) and to TensorBoard (`tb/`, under
`evaluate/`). A temperature <= 0 is greedy decoding.
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax
import jax.numpy as jnp
from absl import app, flags, logging

from rlvlm_jax.build import build
from rlvlm_jax.checkpoints import CheckpointError
from rlvlm_jax.rl.rollout import summarize_evaluation
from rlvlm_jax.train import _CONFIG, _WORKDIR, Outputs  # --config, --workdir defined there


def _define_flags():
    """This command's own flags, defined only when it runs (importing stays side-effect free)."""
    return {
        "episodes": flags.DEFINE_integer("episodes", 500, "first episodes (one per env)"),
        "temperature": flags.DEFINE_float("temperature", 0.2, "sampling temperature (<= 0: "
                                          "greedy)"),
        "step": flags.DEFINE_integer("step", None, "checkpoint step (default: the newest)"),
        "seed": flags.DEFINE_integer("seed", 1234, "seed of the evaluation episodes"),
    }


def evaluate_checkpoint(config, workdir: str, episodes: int, temperature: float,
                        step: int | None = None, seed: int = 1234) -> dict:
    """Restore params from `workdir` and evaluate them; returns (and writes) the summary."""
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.eval.episodes = episodes
    run = build(config, workdir)
    out = Outputs(config, workdir)
    with run.mesh_context():
        return _evaluate(run, out, episodes, temperature, step, seed)


def _evaluate(run, out, episodes, temperature, step, seed) -> dict:
    step = out.ckpt.latest_step() if step is None else step
    if step is None:
        raise CheckpointError(f"no checkpoint in {out.ckpt.directory}")
    meta = out.ckpt.read_meta(step)
    state, _ = out.ckpt.restore(run.restore_target(meta["stage"]), step)
    t0 = time.time()
    result = summarize_evaluation(
        run.evaluate_fn(state["params"], jax.random.key(seed), jnp.float32(temperature)))
    result.update(eval_seconds=time.time() - t0, checkpoint_step=step, stage=meta["stage"],
                  temperature=temperature)
    out.writer.scalars(step, result, f"evaluate/t{temperature:g}/")
    out.writer.close()
    path = os.path.join(out.workdir, f"eval_{step}_t{temperature:g}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    return result


def main(argv, f) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    try:
        out = evaluate_checkpoint(_CONFIG.value, _WORKDIR.value, f["episodes"].value,
                                  f["temperature"].value, f["step"].value, f["seed"].value)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    _flags = _define_flags()
    app.run(lambda argv: sys.exit(main(argv, _flags)))
