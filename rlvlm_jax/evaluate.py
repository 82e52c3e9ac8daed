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
import math
import numbers
import os
import sys
import time

import jax
import jax.numpy as jnp
from absl import app, flags, logging
from etils import epath

from rlvlm_jax.build import build, undo_on_error
from rlvlm_jax.checkpoints import Checkpointer, CheckpointError
from rlvlm_jax.config_files import parse_flags
from rlvlm_jax.rl.rollout import summarize_evaluation
from rlvlm_jax.train import _CONFIG, _WORKDIR, Outputs, start_from_reader  # flags defined there


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
    """Restore params from `workdir` and evaluate them; returns (and writes) the summary.

    Raises ValueError, creating nothing, when `workdir` holds no checkpoint (a mistyped
    directory), `step` is not one of its checkpoints, or the episodes or temperature cannot
    work; then the config is checked as training checks it (`build.validate_config`)."""
    if isinstance(episodes, bool) or not isinstance(episodes, numbers.Integral) or episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {episodes!r}")
    if not math.isfinite(temperature):
        raise ValueError(f"--temperature must be a number (<= 0: greedy), got {temperature!r}")
    steps = checkpoint_steps(workdir)
    if step is not None and step not in steps:
        raise ValueError(f"--step {step}: {workdir} has no checkpoint {step}; it has "
                         f"{', '.join(map(str, steps))}")
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.eval.episodes = episodes
    start_from_reader(config)  # the model the run started from, as training resolved it
    with undo_on_error(workdir):  # what a refused evaluation wrote (a tokenizer) is removed
        run = build(config, workdir)
        out = Outputs(config, workdir)
    with run.mesh_context():
        return _evaluate(run, out, episodes, temperature, step, seed)


def checkpoint_steps(workdir: str) -> list[int]:
    """The checkpoint steps of a training workdir; ValueError naming the directory when it does
    not exist or holds none (nothing is created)."""
    root = epath.Path(workdir)
    if not root.is_dir():
        raise ValueError(f"--workdir {workdir} does not exist (or is not a directory); give the "
                         "workdir of a training run")
    if not (root / "checkpoints").is_dir():
        raise ValueError(f"--workdir {workdir} holds no checkpoints/ (is it a training run's "
                         "workdir?)")
    steps = Checkpointer(os.path.join(workdir, "checkpoints")).all_steps()
    if not steps:
        raise ValueError(f"--workdir {workdir} holds no checkpoint yet")
    return sorted(steps)


def _evaluate(run, out, episodes, temperature, step, seed) -> dict:
    # Meta (the stage) and arrays from one step; without --step, the newest readable one (an
    # unreadable newer step is named in a warning and left in place: training may be running);
    # an unreadable --step is a one-line CheckpointError.
    def target(meta):
        return run.restore_target(meta["stage"])

    if step is None:
        found = out.ckpt.restore_latest(target)
        if found is None:
            raise CheckpointError(f"no checkpoint in {out.ckpt.directory}")
        step, state, meta = found
    else:
        state, meta = out.ckpt.restore(target, step)
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
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(out))
    return 0


if __name__ == "__main__":  # bad flags: one line and exit code 2 (config_files.parse_flags)
    _flags = _define_flags()
    app.run(lambda argv: sys.exit(main(argv, _flags)), flags_parser=parse_flags)
