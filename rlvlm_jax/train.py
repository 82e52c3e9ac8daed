"""The main job: supervised warm start on oracle demonstrations, then PPO, from one config.

    python -m rlvlm_jax.train --config experiments/numberline_tiny.py --workdir outputs/nl_tiny
    python -m rlvlm_jax.train --config experiments/numberline_tiny.py --workdir ... \
        --config.ppo.iterations=100 --config.ppo.kl_coef=0.001

Everything is built once before the loops by `rlvlm_jax.build.build` (the SFT step, the rollout:
one `lax.scan` over env steps with sampling and parsing inside, the PPO update, the evaluation);
the host loop here only calls them, logs and saves. Re-running with the same workdir resumes from
the newest readable checkpoint (params, optimiser state, env states, RNG, counters) and continues
exactly where it stopped; host environments (`config.env.kind = "host"`, `envs.host`) are reset
instead, since their state lives outside JAX and cannot be saved.
Outputs in the workdir: tokenizer/, checkpoints/, tb/ (TensorBoard), config.json, results.json.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # multi-host: before gymnax (imported below) starts JAX's backends
    from rlvlm_jax.distributed import initialize_from_argv

    initialize_from_argv(sys.argv[1:])

import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging
from etils import epath
from ml_collections import config_flags

from rlvlm_jax import distributed as dist
from rlvlm_jax import pretrain
from rlvlm_jax.build import Run, build, starts_from_reader, undo_on_error, validate_config
from rlvlm_jax.checkpoints import Checkpointer
from rlvlm_jax.config_files import field as _field
from rlvlm_jax.config_files import parse_flags
from rlvlm_jax.rl import sft as sft_lib
from rlvlm_jax.rl import sft_data
from rlvlm_jax.rl.metrics import reflection_metrics
from rlvlm_jax.rl.rollout import summarize_evaluation
from rlvlm_jax.tensorboard import Progress, Writer

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "experiment config file", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "output directory (resumes if it has checkpoints); "
                                "a local path, a filesystem all hosts share, or gs://")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "multi-host run: call "
                                 "jax.distributed.initialize (auto-detects TPU VMs and SLURM)")
_COORDINATOR = flags.DEFINE_string("coordinator", None, "with --distributed: host:port of "
                                   "process 0 (only where auto-detection does not apply)")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "with --coordinator: process count")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "with --coordinator: this process's index")
flags.mark_flags_as_required(["config", "workdir"])


# ------------------------------------------------------------------------------------ outputs
class Outputs:
    """Where a run writes: config.json (checked on resume), TensorBoard, checkpoints.

    Kept apart from the built `Run`, so one process can run several workdirs with the same
    compiled functions (tests, sweeps)."""

    def __init__(self, config, workdir: str):
        self.config = config
        self.workdir = workdir
        epath.Path(workdir).mkdir(parents=True, exist_ok=True)
        self._check_config_file()
        # Every process runs the same loop (collectives must match); only process 0 writes.
        self.writer = Writer(os.path.join(workdir, "tb") if dist.is_main() else None)
        self.ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), config.keep_checkpoints)

    def _check_config_file(self) -> None:
        path = epath.Path(self.workdir) / "config.json"
        text = self.config.to_json_best_effort(indent=1, sort_keys=True)
        if path.exists():
            old = json.loads(path.read_text())
            new = json.loads(text)
            # Run length and logging may change on resume; the model, task and data may not.
            fixed = ("task", "env", "image_size", "cot", "template", "model", "tokenizer",
                     "seed", "max_new_tokens")
            diff = [k for k in fixed if old.get(k) != new.get(k)]
            if diff:
                raise ValueError(f"{self.workdir} holds a run with a different config in {diff}; "
                                 "use a new --workdir")
            return  # keep the run's original record (resumes may change run length/logging)
        if dist.is_main():
            path.write_text(text)


def evaluate(run: Run, params, temperature=None) -> dict:
    """First-episode statistics of `params` over config.eval.episodes environments."""
    t = run.config.eval.temperature if temperature is None else temperature
    t0 = time.time()
    out = summarize_evaluation(dist.to_host(run.evaluate_fn(params, run.keys.eval,
                                                            jnp.float32(t))))
    out["eval_seconds"] = time.time() - t0
    return out


def decode(run: Run, tokens, length) -> str:
    return run.tokenizer.decode(np.asarray(tokens)[: int(length)], skip_special_tokens=True)


# ------------------------------------------------------------------------------------ stages
def run_sft(run: Run, out: Outputs, params, opt_state, start: int, meta: dict,
            t_start: float):
    c = run.config
    if c.sft.json:  # LLaVA-format SFT data (e.g. RL4VLM's released files)
        demos = sft_data.load_llava_json(c.sft.json, image_size=c.image_size)
        print(f"[sft] {len(demos)} records from {c.sft.json}", flush=True)
        data = sft_lib.encode_demonstrations(demos, run.encoder, run.tokenizer,
                                             c.max_new_tokens, prompt_text=True)
    else:
        print(f"[sft] generating {c.sft.num_demos} demonstrations (wrong share "
              f"{c.sft.wrong_share})", flush=True)
        demos, own_prompts = run.demonstrations(c.sft.num_demos, run.keys.data,
                                                c.sft.wrong_share)
        data = sft_lib.encode_demonstrations(demos, run.encoder, run.tokenizer,
                                             c.max_new_tokens, prompt_text=own_prompts)
    # Held-out oracle answers; a host task without a demonstrations function has none.
    held_demos, own_prompts = run.demonstrations(c.sft.eval_samples, run.keys.held, 0.0)
    if held_demos is not None:
        held = jax.device_put(sft_lib.encode_demonstrations(
            held_demos, run.encoder, run.tokenizer, c.max_new_tokens, prompt_text=own_prompts))
    else:
        print("[sft] the host task has no demonstrations function: no held-out SFT evaluation",
              flush=True)
    data = jax.device_put(data)
    text, text_batch = None, _field(c, "sft.text_batch_size")
    if text_batch:  # text-only records mixed into every step (config.sft.text_corpus)
        records = sft_lib.text_records(_field(c, "sft.text_corpus"), c.task,
                                       _field(c, "sft.sort_values"))
        text = jax.device_put(sft_lib.encode_text(records, run.tokenizer))
        print(f"[sft] {len(records)} text-only records ({_field(c, 'sft.text_corpus')}), "
              f"{text_batch} per step", flush=True)
    schedule = run.sft_schedule
    progress = Progress("sft", c.sft.steps, start)

    def eval_fn(p):
        return sft_lib.evaluate_sft(run.sft_answer, p, held, run.tokenizer,
                                    held_demos.responses, batch=min(256, c.sft.eval_samples))

    if held_demos is None:
        eval_fn = None

    def log(record):
        step = record["step"]
        record["lr"] = float(schedule(step - 1))
        out.writer.scalars(step, record, "sft/")
        if "sample" in record:
            out.writer.text("sft/sample", record["sample"], step)
        if step % 10 == 0 or "action_accuracy" in record or step == c.sft.steps:
            shown = {k: record[k] for k in ("loss", "text_loss", "grad_norm", "action_accuracy",
                                            "fact_accuracy", "parse_rate") if k in record}
            progress(step, shown)

    # Chunks between checkpoints; batches depend on (key, step) only, so resuming is exact.
    step = start
    every = c.sft.checkpoint_every or c.sft.steps
    while step < c.sft.steps:
        stop = min(step + every, c.sft.steps)
        params, opt_state, _ = sft_lib.train_sft(
            run.sft_step, params, opt_state, data, stop, c.sft.batch_size, run.keys.sft,
            start=step, eval_fn=eval_fn, eval_every=c.sft.eval_every, log_fn=log, text=text,
            text_batch_size=text_batch)
        step = stop
        meta.update(stage="sft", sft_step=step, wall_seconds=time.time() - t_start)
        # Raises FloatingPointError, writing nothing, unless params and opt state are finite.
        out.ckpt.save(step, {"params": params, "opt": opt_state}, meta)
    return params


def run_ppo(run: Run, out: Outputs, params, opt_state, carry, rng, ref_params, start: int,
            meta: dict, t_start: float, interrupt_after: int | None = None):
    c = run.config
    p = c.ppo
    per_iter = p.num_envs * p.num_steps
    progress = Progress("ppo", p.iterations, start)
    base = c.sft.steps
    evals = meta.setdefault("evals", [])
    for it in range(start, p.iterations):
        rng, k_roll, k_upd = jax.random.split(rng, 3)
        t0 = time.time()
        carry, traj, last_value = run.rollout(params, carry, k_roll, jnp.float32(p.temperature))
        roll = run.rollout_metrics(traj)
        jax.block_until_ready(roll)
        t1 = time.time()
        params, opt_state, upd = run.update(params, opt_state, traj, last_value, k_upd,
                                            ref_params)
        upd = dist.to_host(upd)
        t2 = time.time()
        if not upd.pop("finite"):
            raise FloatingPointError(f"non-finite loss or gradient at PPO iteration {it + 1}; "
                                     "stopped without saving (the last good checkpoint is kept)")
        roll = {k: float(v) for k, v in dist.to_host(roll).items()}
        tokens = roll.pop("tokens")
        step = it + 1
        meta["env_steps"] = meta.get("env_steps", 0) + per_iter
        scalars = {**roll, **{k: float(v) for k, v in upd.items()}}
        scalars.update(
            lr=float(run.ppo_schedule(step * p.epochs * p.minibatches - 1)),
            env_steps=meta["env_steps"],
            env_steps_per_s=per_iter / max(t2 - t0, 1e-9),
            tokens_per_s=tokens / max(t1 - t0, 1e-9),
            time_rollout=t1 - t0,
            time_update=t2 - t1,
        )
        out.writer.scalars(base + step, scalars, "ppo/")
        timing = ("env_steps_per_s", "tokens_per_s", "time_rollout", "time_update")
        meta.setdefault("history", []).append(
            {"iteration": step, **{k: v for k, v in scalars.items() if k not in timing}})
        if step % c.log_every == 0 or step == p.iterations or it == start:
            # Undefined ratios (no reflective answer, say) are NaN: stored as null, so results.json
            # stays JSON and a resumed run's history compares equal.
            meta["history"][-1].update({k: v if np.isfinite(v) else None for k, v in
                                        _log_samples(run, out, traj, base + step).items()})
            progress(step, {k: scalars[k] for k in ("success_rate", "episode_return",
                                                     "invalid_action_rate", "approx_kl",
                                                     "clip_frac", "value_loss")})
        if c.eval.every and c.eval.episodes > 0 and step % c.eval.every == 0 \
                and step < p.iterations:
            ev = evaluate(run, params)
            evals.append({"iteration": step, **ev})
            out.writer.scalars(base + step, ev, "eval/")
            print(f"[eval] iteration {step}: success {ev['success_rate']:.3f} over "
                  f"{ev['episodes']} episodes", flush=True)
        if step == p.iterations or (c.checkpoint_every and step % c.checkpoint_every == 0):
            meta.update(stage="ppo", ppo_iter=step, wall_seconds=time.time() - t_start)
            # The loss and gradients were finite; the updated weights and moments must be too
            # (an lr of NaN keeps the gradients finite): FloatingPointError, nothing written.
            out.ckpt.save(base + step,
                          run.ppo_state(params, opt_state, carry, rng, ref_params), meta)
        if interrupt_after is not None and step >= interrupt_after:
            return None
    return params


def _log_samples(run: Run, out: Outputs, traj, step: int) -> dict:
    """An observation with its generated text, and MAYE's reflection metrics of the first env
    step's responses (returned for results.json's history)."""
    tokens, lengths, frames, reward, action = dist.to_host(
        (traj.tokens[0], traj.lengths[0], traj.frames[0, 0], traj.reward[0], traj.action[0]))
    texts = [decode(run, t, n) for t, n in zip(tokens, lengths, strict=True)]
    out.writer.image("ppo/observation", frames, step)
    out.writer.text("ppo/response", f"action {int(action[0])}, reward {float(reward[0])}\n"
                    + texts[0], step)
    reflection = reflection_metrics(texts, reward >= 0)
    out.writer.scalars(step, reflection, "ppo/")
    return reflection


def _final_eval(run: Run, out: Outputs, params, name: str, step: int) -> dict:
    ev = evaluate(run, params)
    out.writer.scalars(step, ev, "eval/")
    print(f"[eval] {name} policy: success {ev['success_rate']:.3f} over {ev['episodes']} "
          f"episodes at temperature {run.config.eval.temperature} (invalid "
          f"{ev['invalid_action_rate']:.3f}, {ev['eval_seconds']:.0f} s)", flush=True)
    return ev


# ------------------------------------------------------------------------------------ main
def start_from_reader(config) -> None:
    """With no model.checkpoint and `config.pretrain.enabled`: the reader of the config's recipe,
    pretrained on first use and cached (`pretrain.ensure_reader`), becomes model.checkpoint, so
    config.json names the weights the run started from."""
    if not starts_from_reader(config):
        return
    validate_config(config)  # bad input is answered before minutes of pretraining
    config.model.checkpoint = pretrain.ensure_reader(config)


def train(config, workdir: str, *, run: Run | None = None,
          interrupt_after: int | None = None) -> dict:
    """Runs (or resumes) the whole job; returns the results also written to results.json.

    `run` reuses what an earlier `build` of the same config made (compiled functions; tests,
    sweeps); `interrupt_after` stops after that many PPO iterations, as a crash would (tests of
    resume). Bad input raises ValueError before anything is written (`build.validate_config`);
    what the build wrote before failing on input it could not check earlier is removed.
    """
    path = epath.Path(workdir)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--workdir {workdir} is a file, not a directory")
    if run is None:
        start_from_reader(config)  # writes only into the readers' cache
    with undo_on_error(workdir):  # a run refused here (bad input) leaves its workdir as it was
        if run is None:
            run = build(config, workdir)
        out = Outputs(config, workdir)  # config.json: written only once the build succeeded
    with run.mesh_context():
        return _train(run, out, interrupt_after)


def _train(run: Run, out: Outputs, interrupt_after: int | None) -> dict:
    t_start = time.time()
    c, workdir = run.config, out.workdir
    print(f"[setup] {c.task}: {run.num_params:,} params, prompt {run.encoder.length} tokens, "
          f"vocab {run.cfg.text.vocab_size}, workdir {workdir}", flush=True)
    meta = {"config": json.loads(c.to_json_best_effort())}
    params = jax.tree.map(jnp.copy, run.init_params)  # the compiled steps donate params
    stage, sft_done, ppo_done = "sft", 0, 0
    # The newest readable checkpoint: its meta (stage, counters) and arrays come from one step;
    # unreadable newer steps are named in a warning and moved aside (this run rewrites them).
    found = out.ckpt.restore_latest(lambda m: run.restore_target(m["stage"], params),
                                    set_aside=True)
    state = None
    if found is not None:
        latest, state, meta = found
        stage, sft_done, ppo_done = meta["stage"], meta.get("sft_step", 0), meta.get("ppo_iter", 0)
        print(f"[resume] checkpoint {latest}: stage {stage}, sft step {sft_done}, "
              f"ppo iteration {ppo_done}", flush=True)
        t_start -= meta.get("wall_seconds", 0.0)
    results = meta.setdefault("results", {})

    if stage == "sft" and sft_done < c.sft.steps:
        if state is None:
            opt = run.sft_tx.init(params)
        else:
            params, opt = state["params"], state["opt"]
        params = run_sft(run, out, params, opt, sft_done, meta, t_start)
        sft_done = c.sft.steps
    elif stage == "sft" and state is not None:
        params = state["params"]

    rng = jax.random.fold_in(run.keys.ppo, 0)
    carry = run.reset_envs(jax.random.fold_in(run.keys.ppo, 1))
    if stage == "ppo":
        params, opt, carry, rng, ref_params = run.unpack_ppo_state(state, carry)
    else:
        if "sft_eval" not in results and c.eval.episodes > 0:
            results["sft_eval"] = _final_eval(run, out, params, "SFT", c.sft.steps)
        params = run.with_lora(params)
        opt = run.ppo_tx.init(params)
        ref_params = jax.tree.map(jnp.copy, params) if run.keeps_reference else None

    if ppo_done < c.ppo.iterations:
        params = run_ppo(run, out, params, opt, carry, rng, ref_params, ppo_done, meta, t_start,
                         interrupt_after)
        if params is None:
            out.writer.close()
            return {"interrupted": True}
    if c.ppo.iterations > 0 and "ppo_eval" not in results and c.eval.episodes > 0:
        results["ppo_eval"] = _final_eval(run, out, params, "PPO", c.sft.steps + c.ppo.iterations)
    results["wall_seconds"] = time.time() - t_start
    results["num_params"] = run.num_params
    results["evals"] = meta.get("evals", [])
    results["history"] = meta.get("history", [])
    if dist.is_main():
        (epath.Path(workdir) / "results.json").write_text(json.dumps(results, indent=1))
    out.writer.close()
    print(f"[done] {results['wall_seconds']:.0f} s; results in "
          f"{os.path.join(workdir, 'results.json')}", flush=True)
    return results


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config: ml_collections.ConfigDict = _CONFIG.value
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    try:
        if _DISTRIBUTED.value or _COORDINATOR.value:  # initialised at import (see the top)
            print(f"[distributed] process {jax.process_index()} of {jax.process_count()}, "
                  f"{jax.local_device_count()} local of {jax.device_count()} devices", flush=True)
            if not dist.is_main():  # only process 0 logs; errors still reach stderr
                sys.stdout = open(os.devnull, "w")
        train(config, _WORKDIR.value)
    except (ValueError, FloatingPointError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # bad flags: one line and exit code 2 (config_files.parse_flags)
    app.run(lambda argv: sys.exit(main(argv)), flags_parser=parse_flags)
