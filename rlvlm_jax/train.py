"""The main job: supervised warm start on oracle demonstrations, then PPO, from one config.

    python -m rlvlm_jax.train --config experiments/numberline_tiny.py --workdir outputs/nl_tiny
    python -m rlvlm_jax.train --config experiments/numberline_tiny.py --workdir ... \
        --config.ppo.iterations=100 --config.ppo.kl_coef=0.001

Everything compiled is built once before the loops: the SFT step, the rollout (one `lax.scan` over
env steps with sampling and parsing inside), the PPO update and the evaluation. The host loop only
calls them, logs and saves. Re-running with the same workdir resumes from the newest checkpoint
(params, optimiser state, env states, RNG, counters) and continues exactly where it stopped.
Outputs in the workdir: tokenizer/, checkpoints/, tb/ (TensorBoard), config.json, results.json.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # multi-host: before gymnax (imported below) starts JAX's backends
    from rlvlm_jax.distributed import initialize_from_argv

    initialize_from_argv(sys.argv[1:])

import contextlib
import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging
from etils import epath
from flax import serialization
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import config_flags

import rlvlm_jax.envs as envs
from rlvlm_jax import distributed as dist
from rlvlm_jax.checkpoints import Checkpointer
from rlvlm_jax.rl import lora as lora_lib
from rlvlm_jax.rl import optimizer as optim
from rlvlm_jax.rl import policy as policy_lib
from rlvlm_jax.rl import ppo as ppo_lib
from rlvlm_jax.rl import sft as sft_lib
from rlvlm_jax.rl import sft_data
from rlvlm_jax.rl.rollout import Actor, EnvCarry, summarize_evaluation
from rlvlm_jax.sharding import BATCH, make_mesh, shard_params
from rlvlm_jax.tensorboard import Progress, Writer, reflection_metrics
from rlvlm_jax.text import tokenizer as tokenizer_lib
from rlvlm_jax.text.prompt_encoder import PromptEncoder

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


# ------------------------------------------------------------------------------------ checks
def validate_config(config) -> None:
    """Clear errors for values that cannot work, before anything is built or compiled."""
    p = config.ppo
    if config.task not in {n.removesuffix("-v0") for n in envs.GYMNAX_IDS.values()}:
        raise ValueError(f"config.task {config.task!r} is not one of {list(envs.TASKS)}")
    buffer = p.num_envs * p.num_steps
    if p.iterations > 0:
        if buffer % p.minibatches:
            raise ValueError(f"ppo buffer num_envs*num_steps = {buffer} does not split into "
                             f"ppo.minibatches = {p.minibatches}")
        if (buffer // p.minibatches) % p.micro_batches:
            raise ValueError(f"ppo minibatch of {buffer // p.minibatches} does not split into "
                             f"ppo.micro_batches = {p.micro_batches}")
        if p.temperature <= 0:
            raise ValueError("ppo.temperature must be > 0 (log-probs are taken at it)")
        if not 0.0 <= p.thought_lambda <= 1.0:
            raise ValueError(f"ppo.thought_lambda must be in [0, 1], got {p.thought_lambda}")
    if p.get("lora_rank", 0) < 0 or (p.get("lora_rank", 0) > 0 and p.lora_alpha <= 0):
        raise ValueError("ppo.lora_rank must be >= 0 (0: full fine-tuning) and ppo.lora_alpha "
                         "> 0 with adapters")
    shape = mesh_shape(config)
    if shape is not None:
        per = shape[0] * shape[1]
        for name, n in (("ppo.num_envs", p.num_envs), ("eval.episodes", config.eval.episodes),
                        ("sft.batch_size", config.sft.batch_size)):
            if n and n % per:
                raise ValueError(f"{name} = {n} does not divide over the mesh's data x fsdp = "
                                 f"{per} devices")
    if not 0.0 <= config.sft.wrong_share <= 1.0:
        raise ValueError(f"sft.wrong_share must be in [0, 1], got {config.sft.wrong_share}")
    if config.sft.steps > 0 and config.sft.batch_size > config.sft.num_demos:
        raise ValueError("sft.batch_size is larger than sft.num_demos")


def mesh_shape(config) -> tuple[int, int, int] | None:
    """config.mesh as (data, fsdp, tensor); with several processes and no mesh, data-parallel
    over every device of every process; None: one device."""
    if config.get("mesh"):
        try:
            shape = tuple(int(x) for x in str(config.mesh).split(","))
        except ValueError:
            shape = ()
        if len(shape) != 3:
            raise ValueError(f"config.mesh must be 'data,fsdp,tensor' sizes, got {config.mesh!r}")
        return shape
    if jax.process_count() > 1:
        return (jax.device_count(), 1, 1)
    return None


# ------------------------------------------------------------------------------------ setup
class Job:
    """Everything built once: tokenizer, env, policy, compiled functions, writer, checkpoints."""

    def __init__(self, config, workdir: str):
        validate_config(config)
        self.config = config
        self.attach(workdir)
        c = config
        self.tokenizer = tokenizer_lib.get_tokenizer(c, workdir)
        pretrained = None
        if c.model.checkpoint:
            self.cfg, pretrained = policy_lib.load_pretrained(c, self.tokenizer)
        else:
            self.cfg = policy_lib.llava_config(c, self.tokenizer)
        bootstrap = not c.ppo.truncation_as_termination
        self.env, self.env_params = envs.make(c.task, image_size=c.image_size,
                                              final_observation=bootstrap)
        max_formula = getattr(self.env, "max_tokens", -1) + 1
        self.encoder = PromptEncoder(self.tokenizer, c.task, c.cot, c.template,
                                     self.cfg.num_image_tokens, max_formula=max_formula)
        need = self.encoder.length + c.max_new_tokens
        if need > self.cfg.text.max_position_embeddings:
            raise ValueError(f"prompt ({self.encoder.length}) + max_new_tokens "
                             f"({c.max_new_tokens}) = {need} exceeds model.max_positions "
                             f"{self.cfg.text.max_position_embeddings}")
        self.policy, self.init_params = policy_lib.init_policy(
            self.cfg, c.model.value_hidden, c.model.init_seed, c.model.init, c.model.pixels,
            dtype=c.model.dtype, param_dtype=c.model.param_dtype, pretrained=pretrained,
            remat=c.model.remat,
            lora_scale=lora_lib.scale_of(c.ppo.get("lora_rank", 0), c.ppo.get("lora_alpha", 0)))
        self.num_params = policy_lib.count_params(self.init_params)
        self.mesh = None
        if mesh_shape(c) is not None:
            self.mesh = make_mesh(mesh_shape(c))
            self.init_params = {k: shard_params(v, self.mesh)
                                for k, v in self.init_params.items()}

        xla = {"xla_backend_optimization_level": 0} if c.get("fast_compile") else None
        root = jax.random.key(c.seed)
        self.k_data, self.k_held, self.k_sft, self.k_ppo, self.k_eval = jax.random.split(root, 5)

        # SFT
        self.sft_tx = optim.make_optimizer(
            optim.warmup_cosine(c.sft.lr, c.sft.steps, c.sft.warmup), c.sft.weight_decay,
            c.sft.grad_clip, self.init_params)
        self.sft_step = sft_lib.make_sft_step(self.policy, self.sft_tx, compiler_options=xla)
        self.sft_answer = sft_lib.make_sft_eval(self.policy, self.tokenizer, c.task,
                                                c.max_new_tokens, compiler_options=xla)
        # PPO
        updates = max(1, c.ppo.iterations * c.ppo.epochs * c.ppo.minibatches)
        self.ppo_schedule = optim.warmup_cosine(c.ppo.lr, updates, c.ppo.warmup, c.ppo.lr_end)
        self.ppo_tx = optim.make_optimizer(self.ppo_schedule, c.ppo.weight_decay, c.ppo.grad_clip,
                                        self.with_lora(self.init_params), c.ppo.freeze_vision)
        self.actor = Actor(self.env, self.env_params, self.policy, self.tokenizer, self.encoder,
                           c.max_new_tokens, c.ppo.thought_lambda, c.ppo.action_only, bootstrap)
        self.rollout = self.actor.make_rollout(c.ppo.num_steps, xla)
        self.update = ppo_lib.make_ppo_update(self.policy, self.ppo_tx, c.ppo, xla)
        self.rollout_metrics = jax.jit(
            lambda traj: {**ppo_lib.rollout_metrics(traj, c.max_new_tokens),
                          "tokens": jnp.sum(traj.lengths)})
        self.evaluate_fn = self.actor.make_evaluate(c.eval.episodes, c.eval.max_steps, xla)

    def attach(self, workdir: str) -> None:
        """Point outputs (config.json, TensorBoard, checkpoints) at `workdir`; the compiled
        functions are kept, so one process can run several workdirs without recompiling."""
        self.workdir = workdir
        epath.Path(workdir).mkdir(parents=True, exist_ok=True)
        self._check_config_file()
        # Every process runs the same loop (collectives must match); only process 0 writes.
        self.writer = Writer(os.path.join(workdir, "tb") if dist.is_main() else None)
        self.ckpt = Checkpointer(os.path.join(workdir, "checkpoints"),
                                 self.config.keep_checkpoints)

    @property
    def lora(self) -> bool:
        return self.config.ppo.get("lora_rank", 0) > 0

    def with_lora(self, params):
        """params plus fresh LoRA adapters (same draw on every call) when ppo.lora_rank > 0."""
        if not self.lora:
            return params
        params = lora_lib.add_lora(params, self.config.ppo, jax.random.fold_in(self.k_ppo, 2))
        if self.mesh is not None:
            params = {**params, "lora": shard_params(params["lora"], self.mesh)}
        return params

    @property
    def keeps_reference(self) -> bool:
        """A frozen copy of the PPO start policy is kept for the KL term (under LoRA the
        frozen base weights are that policy, so no copy)."""
        return self.config.ppo.kl_coef > 0 and not self.lora

    def mesh_context(self):
        """The mesh for every compiled call (activations constrained), or nothing."""
        return contextlib.nullcontext() if self.mesh is None else jax.set_mesh(self.mesh)

    def reset_envs(self, key) -> EnvCarry:
        """Fresh env states, split over the mesh's batch axes when there is a mesh."""
        carry = self.actor.reset(key, self.config.ppo.num_envs)
        if self.mesh is None:
            return carry
        batch = NamedSharding(self.mesh, P(BATCH))
        return jax.tree.map(lambda x: jax.device_put(x, batch), carry)

    def _check_config_file(self) -> None:
        path = epath.Path(self.workdir) / "config.json"
        text = self.config.to_json_best_effort(indent=1, sort_keys=True)
        if path.exists():
            old = json.loads(path.read_text())
            new = json.loads(text)
            # Run length and logging may change on resume; the model, task and data may not.
            fixed = ("task", "image_size", "cot", "template", "model", "tokenizer", "seed",
                     "max_new_tokens")
            diff = [k for k in fixed if old.get(k) != new.get(k)]
            if diff:
                raise ValueError(f"{self.workdir} holds a run with a different config in {diff}; "
                                 "use a new --workdir")
            return  # keep the run's original record (resumes may change run length/logging)
        if dist.is_main():
            path.write_text(text)

    # ------------------------------------------------------------------------ state packing
    def ppo_state(self, params, opt_state, carry: EnvCarry, rng, ref_params):
        state = {
            "params": params,
            "opt": opt_state,
            "env": {"state": serialization.to_state_dict(carry.state),
                    "ep_return": carry.ep_return, "ep_length": carry.ep_length},
            "rng": jax.random.key_data(rng),
        }
        if self.keeps_reference:
            state["ref_params"] = ref_params
        return state

    def unpack_ppo_state(self, state, template_carry: EnvCarry):
        env = state["env"]
        carry = EnvCarry(serialization.from_state_dict(template_carry.state, env["state"]),
                         env["ep_return"], env["ep_length"])
        return (state["params"], state["opt"], carry, jax.random.wrap_key_data(state["rng"]),
                state.get("ref_params"))

    # ------------------------------------------------------------------------ evaluation
    def evaluate(self, params, temperature=None) -> dict:
        t = self.config.eval.temperature if temperature is None else temperature
        t0 = time.time()
        out = summarize_evaluation(dist.to_host(self.evaluate_fn(params, self.k_eval,
                                                                 jnp.float32(t))))
        out["eval_seconds"] = time.time() - t0
        return out

    def decode(self, tokens, length) -> str:
        return self.tokenizer.decode(np.asarray(tokens)[: int(length)], skip_special_tokens=True)


# ------------------------------------------------------------------------------------ stages
def run_sft(job: Job, params, opt_state, start: int, meta: dict, t_start: float):
    c = job.config
    if c.sft.get("json"):  # LLaVA-format SFT data (e.g. RL4VLM's released files)
        demos = sft_data.load_llava_json(c.sft.json, image_size=c.image_size)
        print(f"[sft] {len(demos)} records from {c.sft.json}", flush=True)
        data = sft_lib.encode_demonstrations(demos, job.encoder, job.tokenizer,
                                             c.max_new_tokens, prompt_text=True)
    else:
        print(f"[sft] generating {c.sft.num_demos} demonstrations (wrong share "
              f"{c.sft.wrong_share})", flush=True)
        data = sft_lib.make_sft_data(job.env, job.tokenizer, job.encoder, c.sft.num_demos,
                                     job.k_data, c.sft.wrong_share, c.cot, c.max_new_tokens)
    held_demos = sft_data.make_demonstrations(job.env, c.sft.eval_samples, job.k_held, 0.0, c.cot)
    held = jax.device_put(sft_lib.encode_demonstrations(held_demos, job.encoder, job.tokenizer,
                                                        c.max_new_tokens))
    data = jax.device_put(data)
    schedule = optim.warmup_cosine(c.sft.lr, c.sft.steps, c.sft.warmup)
    progress = Progress("sft", c.sft.steps, start)

    def eval_fn(p):
        return sft_lib.evaluate_sft(job.sft_answer, p, held, job.tokenizer,
                                    held_demos.responses, batch=min(256, c.sft.eval_samples))

    def log(record):
        step = record["step"]
        record["lr"] = float(schedule(step - 1))
        job.writer.scalars(step, record, "sft/")
        if "sample" in record:
            job.writer.text("sft/sample", record["sample"], step)
        if step % 10 == 0 or "action_accuracy" in record or step == c.sft.steps:
            shown = {k: record[k] for k in ("loss", "grad_norm", "action_accuracy",
                                            "fact_accuracy", "parse_rate") if k in record}
            progress(step, shown)

    # Chunks between checkpoints; batches depend on (key, step) only, so resuming is exact.
    step = start
    every = c.sft.checkpoint_every or c.sft.steps
    while step < c.sft.steps:
        stop = min(step + every, c.sft.steps)
        params, opt_state, _ = sft_lib.train_sft(
            job.sft_step, params, opt_state, data, stop, c.sft.batch_size, job.k_sft,
            start=step, eval_fn=eval_fn, eval_every=c.sft.eval_every, log_fn=log)
        if not bool(optim.tree_finite(params)):
            raise FloatingPointError(f"SFT produced non-finite params by step {stop}; the last "
                                     "good checkpoint is kept")
        step = stop
        meta.update(stage="sft", sft_step=step, wall_seconds=time.time() - t_start)
        job.ckpt.save(step, {"params": params, "opt": opt_state}, meta)
    return params


def run_ppo(job: Job, params, opt_state, carry, rng, ref_params, start: int, meta: dict,
            t_start: float, interrupt_after: int | None = None):
    c = job.config
    p = c.ppo
    per_iter = p.num_envs * p.num_steps
    progress = Progress("ppo", p.iterations, start)
    base = c.sft.steps
    evals = meta.setdefault("evals", [])
    for it in range(start, p.iterations):
        rng, k_roll, k_upd = jax.random.split(rng, 3)
        t0 = time.time()
        carry, traj, last_value = job.rollout(params, carry, k_roll, jnp.float32(p.temperature))
        roll = job.rollout_metrics(traj)
        jax.block_until_ready(roll)
        t1 = time.time()
        params, opt_state, upd = job.update(params, opt_state, traj, last_value, k_upd,
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
            lr=float(job.ppo_schedule(step * p.epochs * p.minibatches - 1)),
            env_steps=meta["env_steps"],
            env_steps_per_s=per_iter / max(t2 - t0, 1e-9),
            tokens_per_s=tokens / max(t1 - t0, 1e-9),
            time_rollout=t1 - t0,
            time_update=t2 - t1,
        )
        job.writer.scalars(base + step, scalars, "ppo/")
        timing = ("env_steps_per_s", "tokens_per_s", "time_rollout", "time_update")
        meta.setdefault("history", []).append(
            {"iteration": step, **{k: v for k, v in scalars.items() if k not in timing}})
        if step % c.log_every == 0 or step == p.iterations or it == start:
            _log_samples(job, traj, base + step)
            progress(step, {k: scalars[k] for k in ("success_rate", "episode_return",
                                                     "invalid_action_rate", "approx_kl",
                                                     "clip_frac", "value_loss")})
        if c.eval.every and c.eval.episodes > 0 and step % c.eval.every == 0 \
                and step < p.iterations:
            ev = job.evaluate(params)
            evals.append({"iteration": step, **ev})
            job.writer.scalars(base + step, ev, "eval/")
            print(f"[eval] iteration {step}: success {ev['success_rate']:.3f} over "
                  f"{ev['episodes']} episodes", flush=True)
        if step == p.iterations or (c.checkpoint_every and step % c.checkpoint_every == 0):
            meta.update(stage="ppo", ppo_iter=step, wall_seconds=time.time() - t_start)
            job.ckpt.save(base + step,
                          job.ppo_state(params, opt_state, carry, rng, ref_params), meta)
        if interrupt_after is not None and step >= interrupt_after:
            return None
    return params


def _log_samples(job: Job, traj, step: int) -> None:
    """An observation with its generated text, a few text samples, reflection metrics."""
    tokens, lengths, frames, reward, action = dist.to_host(
        (traj.tokens[0], traj.lengths[0], traj.frames[0, 0], traj.reward[0], traj.action[0]))
    texts = [job.decode(t, n) for t, n in zip(tokens, lengths, strict=True)]
    job.writer.image("ppo/observation", frames, step)
    job.writer.text("ppo/response", f"action {int(action[0])}, reward {float(reward[0])}\n"
                    + texts[0], step)
    job.writer.scalars(step, reflection_metrics(texts, reward >= 0), "ppo/")


def _final_eval(job: Job, params, name: str, step: int) -> dict:
    ev = job.evaluate(params)
    job.writer.scalars(step, ev, "eval/")
    print(f"[eval] {name} policy: success {ev['success_rate']:.3f} over {ev['episodes']} "
          f"episodes at temperature {job.config.eval.temperature} (invalid "
          f"{ev['invalid_action_rate']:.3f}, {ev['eval_seconds']:.0f} s)", flush=True)
    return ev


# ------------------------------------------------------------------------------------ main
def train(config, workdir: str, *, job: Job | None = None,
          interrupt_after: int | None = None) -> dict:
    """Runs (or resumes) the whole job; returns the results also written to results.json.

    `job` reuses compiled functions from an earlier Job with the same config (tests, sweeps);
    `interrupt_after` stops after that many PPO iterations, as a crash would (tests of resume).
    """
    if job is None:
        job = Job(config, workdir)
    else:
        job.attach(workdir)
    with job.mesh_context():
        return _train(job, config, workdir, interrupt_after)


def _train(job: Job, config, workdir: str, interrupt_after: int | None) -> dict:
    t_start = time.time()
    c = config
    print(f"[setup] {c.task}: {job.num_params:,} params, prompt {job.encoder.length} tokens, "
          f"vocab {job.cfg.text.vocab_size}, workdir {workdir}", flush=True)
    latest = job.ckpt.latest_step()
    meta = {"config": json.loads(c.to_json_best_effort())}
    params = jax.tree.map(jnp.copy, job.init_params)  # the compiled steps donate params
    stage, sft_done, ppo_done = "sft", 0, 0
    if latest is not None:
        meta = job.ckpt.read_meta(latest)
        stage, sft_done, ppo_done = meta["stage"], meta.get("sft_step", 0), meta.get("ppo_iter", 0)
        print(f"[resume] checkpoint {latest}: stage {stage}, sft step {sft_done}, "
              f"ppo iteration {ppo_done}", flush=True)
        t_start -= meta.get("wall_seconds", 0.0)
    results = meta.setdefault("results", {})

    if stage == "sft" and sft_done < c.sft.steps:
        opt = job.sft_tx.init(params)
        if latest is not None:
            state, _ = job.ckpt.restore({"params": params, "opt": opt}, latest)
            params, opt = state["params"], state["opt"]
        params = run_sft(job, params, opt, sft_done, meta, t_start)
        sft_done = c.sft.steps
    elif stage == "sft" and latest is not None:
        state, _ = job.ckpt.restore({"params": params, "opt": job.sft_tx.init(params)}, latest)
        params = state["params"]

    rng = jax.random.fold_in(job.k_ppo, 0)
    carry = job.reset_envs(jax.random.fold_in(job.k_ppo, 1))
    if stage == "ppo":
        params = job.with_lora(params)
        ref = params if job.keeps_reference else None
        target = job.ppo_state(params, job.ppo_tx.init(params), carry, rng, ref)
        state, _ = job.ckpt.restore(target, latest)
        params, opt, carry, rng, ref_params = job.unpack_ppo_state(state, carry)
    else:
        if "sft_eval" not in results and c.eval.episodes > 0:
            results["sft_eval"] = _final_eval(job, params, "SFT", c.sft.steps)
        params = job.with_lora(params)
        opt = job.ppo_tx.init(params)
        ref_params = jax.tree.map(jnp.copy, params) if job.keeps_reference else None

    if ppo_done < c.ppo.iterations:
        params = run_ppo(job, params, opt, carry, rng, ref_params, ppo_done, meta, t_start,
                         interrupt_after)
        if params is None:
            job.writer.close()
            return {"interrupted": True}
    if c.ppo.iterations > 0 and "ppo_eval" not in results and c.eval.episodes > 0:
        results["ppo_eval"] = _final_eval(job, params, "PPO", c.sft.steps + c.ppo.iterations)
    results["wall_seconds"] = time.time() - t_start
    results["num_params"] = job.num_params
    results["evals"] = meta.get("evals", [])
    results["history"] = meta.get("history", [])
    if dist.is_main():
        (epath.Path(workdir) / "results.json").write_text(json.dumps(results, indent=1))
    job.writer.close()
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
    except (ValueError, FloatingPointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
