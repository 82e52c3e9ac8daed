"""MAYE's single-turn job: SFT on worked solutions, then RL with verifiable rewards, evaluated
MAYE's way every epoch.

    python -m rlvlm_jax.train_single --config experiments/suite_tiny.py --workdir outputs/suite
    python -m rlvlm_jax.train_single --config experiments/suite_tiny.py --workdir ... \
        --config.rl.algorithm=grpo --config.rl.group_size=4
    python -m rlvlm_jax.train_single --config experiments/suite_tiny.py --workdir ... \
        --config.data.train=mm_math5k/train.jsonl --config.data.validation=... \
        --config.data.test=... --config.data.reward=math_verify

The four stages of one iteration are the compiled functions of `rl.single_turn` (built once by
`build.build_single_turn`); this loop only draws prompt batches, judges the decoded responses on
the host (`rl.rewards`), logs, evaluates and saves. Evaluation (MAYE): pass@k at T = 1.0 (k =
eval.pass_k samples), pass@1 at T = 0.6 and at T = 0.01 on the validation and test splits, with
response length, length-clip ratio and reflection metrics; predictions are dumped as JSONL.
Outputs: config.json, tb/, checkpoints/ (after SFT and after every epoch; a rerun resumes),
predictions/, results.json (the history the report reads).
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, logging
from etils import epath
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from rlvlm_jax import pretrain
from rlvlm_jax.build import (
    SingleTurnRun,
    build_single_turn,
    check_positions,
    starts_from_reader,
    suite_kinds,
    undo_on_error,
    validate_single_turn,
)
from rlvlm_jax.config_files import parse_flags
from rlvlm_jax.data import card_suite, jsonl
from rlvlm_jax.data.problems import Problems
from rlvlm_jax.distributed import to_host
from rlvlm_jax.envs.prompts import image_token
from rlvlm_jax.rl import metrics as metrics_lib
from rlvlm_jax.rl import rewards as rewards_lib
from rlvlm_jax.rl import sft as sft_lib
from rlvlm_jax.rl.policy import chat_of
from rlvlm_jax.rl.single_turn import Prompts, encode_problems, prompt_texts
from rlvlm_jax.sharding import BATCH
from rlvlm_jax.tensorboard import Progress
from rlvlm_jax.text.tokenizer import prompt_ids
from rlvlm_jax.train import _CONFIG, _WORKDIR, Outputs  # flags defined there, as evaluate's

SPLITS = ("train", "validation", "test")
EVAL_SPLITS = ("validation", "test")


# ------------------------------------------------------------------------------ 1. data flow
def load_split(config, split: str) -> Problems:
    """A split from its JSONL file, or drawn from the generated card suite."""
    source = str(config.data[split])
    if source == "suite":
        size = config.data.train_size if split == "train" else config.data.eval_size
        return card_suite.make_suite(suite_kinds(config), split, size,
                                     image_size=config.image_size, seed=config.data.suite_seed)
    return jsonl.load_jsonl(source, config.image_size)


class Split:
    """A split's problems and their encoded prompts (host arrays; batches go to the device,
    split over the mesh's batch axes when there is a mesh)."""

    def __init__(self, name: str, problems: Problems, prompts: Prompts, mesh=None, sft=None):
        self.name, self.problems, self.prompts = name, problems, prompts
        self.sharding = None if mesh is None else NamedSharding(mesh, P(BATCH))
        self.sft = sft  # the training split's SFT data (worked solutions), when SFT runs

    def batch(self, index) -> Prompts:
        rows = Prompts(*(x[index] for x in self.prompts))
        if self.sharding is None:
            return Prompts(*(jnp.asarray(x) for x in rows))
        return jax.device_put(rows, self.sharding)


def load_data(run: SingleTurnRun) -> dict[str, Split]:
    c = run.config
    problems = {s: load_split(c, s) for s in SPLITS}
    length = c.prompt_length
    chat = chat_of(run.cfg)
    if not length:  # the longest prompt of any split
        length = max(len(prompt_ids(run.tokenizer, text, run.cfg.num_image_tokens,
                                    image_token(chat)))
                     for p in problems.values()
                     for text in prompt_texts(p.questions, c.template, chat))
    check_positions(run.cfg, length, c.max_new_tokens)
    data = {}
    for name, p in problems.items():
        prompts = encode_problems(p, run.tokenizer, c.template, run.cfg.num_image_tokens, length,
                                  chat)
        sft = encode_solutions(run, p, prompts) if name == "train" and c.sft.steps > 0 else None
        data[name] = Split(name, p, prompts, run.mesh, sft)
    return data


# ------------------------------------------------------------------------------ rewards
def judge(run: SingleTurnRun, texts: list[str], answers: list[str], finished: np.ndarray):
    """(correct bool [B], reward float [B]) on the host: the configured checker plus penalties."""
    c = run.config
    correct = rewards_lib.checker(c.data.reward)(texts, answers)
    reward = rewards_lib.total_reward(correct, finished, texts,
                                      no_eos=c.rl.no_eos_penalty,
                                      format_weight=c.rl.format_weight)
    return np.asarray(correct, bool), np.asarray(reward, np.float32)


def decode(run: SingleTurnRun, tokens: np.ndarray, lengths: np.ndarray) -> list[str]:
    return [run.tokenizer.decode(t[:n], skip_special_tokens=True)
            for t, n in zip(tokens, lengths, strict=True)]


# ------------------------------------------------------------------------------ evaluation
EVAL_SETTINGS = (("pass@{k}_t1.0", 1.0, None), ("pass@1_t0.6", 0.6, 1), ("pass@1_t0.01", 0.01, 1))


def evaluate(run: SingleTurnRun, params, data: dict[str, Split], step: int, key,
             out_dir: str | None) -> dict:
    """MAYE's three settings on the validation and test splits; predictions to JSONL."""
    c = run.config
    size = c.eval.batch_size
    result = {}
    for split in EVAL_SPLITS:
        sp = data[split]
        n = len(sp.problems)
        for name, temperature, k in EVAL_SETTINGS:
            k = k or c.eval.pass_k
            name = name.format(k=c.eval.pass_k)
            correct, lengths, texts = [], [], []
            for lo in range(0, n, size):
                index = np.arange(lo, lo + size) % n  # the last batch wraps: one shape
                key, sub = jax.random.split(key)
                r = run.stages.collect(params, sp.batch(index), sub, jnp.float32(temperature),
                                       group_size=k)
                toks, lens, fin = to_host((r.tokens, r.lengths, r.finished))
                keep = min(size, n - lo) * k
                t = decode(run, toks[:keep], lens[:keep])
                answers = [a for a in sp.problems.answers[lo:lo + size] for _ in range(k)]
                ok, _ = judge(run, t, answers, fin[:keep])
                correct.append(ok.reshape(-1, k))
                lengths.append(lens[:keep])
                texts += t
            correct = np.concatenate(correct)
            lengths = np.concatenate(lengths)
            acc = metrics_lib.pass_at_k_from_correct(correct, k)
            prefix = f"{split}/{name}"
            result[prefix] = float(acc)
            if name == "pass@1_t0.01":  # per question kind (the suite's ids: kind/split/i)
                kinds = [pid.split("/")[0] for pid in sp.problems.ids]
                if all("/" in pid for pid in sp.problems.ids) and len(set(kinds)) > 1:
                    for kind in sorted(set(kinds)):
                        rows = np.array([kd == kind for kd in kinds])
                        result[f"{prefix}/{kind}"] = float(correct[rows].mean())
            if name == "pass@1_t0.01" or name.endswith("t1.0"):
                stats = metrics_lib.response_length_stats(lengths, c.max_new_tokens)
                result.update({f"{prefix}/{m}": float(v) for m, v in stats.items()})
                refl = metrics_lib.reflection_metrics(texts, correct.reshape(-1))
                # An undefined ratio (no reflective answer) is null: results.json stays JSON.
                result.update({f"{prefix}/{m}": float(v) if np.isfinite(v) else None
                               for m, v in refl.items()})
            if out_dir is not None:
                path = os.path.join(out_dir, f"{step}_{split}_{name}.jsonl")
                with open(path, "w") as f:
                    for i, pid in enumerate(sp.problems.ids):
                        f.write(json.dumps({
                            "id": pid, "answer": sp.problems.answers[i],
                            "responses": texts[i * k:(i + 1) * k],
                            "correct": [bool(x) for x in correct[i]]}) + "\n")
    return result


# ------------------------------------------------------------------------------ SFT
def encode_solutions(run: SingleTurnRun, problems: Problems, prompts: Prompts):
    """The SFT data of the training split: its worked solutions as responses (ended by EOS).
    Raises, naming the problem, when one does not fit in max_new_tokens (before any training)."""
    c, tok = run.config, run.tokenizer
    resp = np.full((len(problems), c.max_new_tokens), tok.pad_token_id or 0, np.int32)
    rmask = np.zeros_like(resp)
    for i, text in enumerate(problems.solutions):
        ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        if len(ids) > c.max_new_tokens:
            raise ValueError(f"{problems.ids[i]}: the solution is {len(ids)} tokens with "
                             f"EOS; config.max_new_tokens is {c.max_new_tokens} (raise it, or "
                             "set config.sft.steps=0)")
        resp[i, :len(ids)], rmask[i, :len(ids)] = ids, 1
    blank = np.full((len(problems),), -1, np.int32)
    return sft_lib.SFTData(prompts.frames, prompts.prompt_ids,
                           prompts.prompt_mask, resp, rmask, blank, blank)


def run_sft(run: SingleTurnRun, sft_data, params, log):
    c = run.config
    opt = run.sft_tx.init(params)
    params, _, history = sft_lib.train_sft(run.sft_step, params, opt, jax.device_put(sft_data),
                                           c.sft.steps, c.sft.batch_size, run.keys.sft,
                                           log_fn=log)
    return params, history


# ------------------------------------------------------------------------------ the job
def train_single_turn(config, workdir: str) -> dict:
    """Runs (or resumes) the job; returns the results also written to results.json."""
    path = epath.Path(workdir)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--workdir {workdir} is a file, not a directory")
    validate_single_turn(config)
    if starts_from_reader(config):
        config.model.checkpoint = pretrain.ensure_reader(config)
    with undo_on_error(workdir):
        run = build_single_turn(config, workdir)
        data = load_data(run)
        out = Outputs(config, workdir)
    with run.mesh_context():
        return _train(run, data, out)


def _train(run: SingleTurnRun, data: dict[str, Split], out) -> dict:
    c, r = run.config, run.config.rl
    t_start = time.time()
    pred_dir = os.path.join(out.workdir, "predictions")
    os.makedirs(pred_dir, exist_ok=True)
    print(f"[setup] single-turn {r.algorithm}: {run.num_params:,} params, "
          + ", ".join(f"{s} {len(d.problems)}" for s, d in data.items()), flush=True)
    params = jax.tree.map(jnp.copy, run.init_params)
    meta = {"stage": "start", "epoch": 0, "results": {}, "history": [], "evals": []}
    found = out.ckpt.restore_latest(lambda m: run.restore_target(m["stage"], params),
                                    set_aside=True)
    state = None
    if found is not None:
        step, state, meta = found
        params = state["params"]
        print(f"[resume] checkpoint {step}: stage {meta['stage']}, epoch {meta['epoch']}",
              flush=True)
        t_start -= meta.get("wall_seconds", 0.0)
    results = meta["results"]
    key = jax.random.fold_in(run.keys.ppo, 0)

    if meta["stage"] == "start":
        if c.sft.steps > 0:
            def log(rec):
                out.writer.scalars(rec["step"], rec, "sft/")
                if rec["step"] % 50 == 0 or rec["step"] == c.sft.steps:
                    print(f"[sft] {rec['step']}/{c.sft.steps} loss {rec['loss']:.4g}", flush=True)

            params, _ = run_sft(run, data["train"].sft, params, log)
        ev = evaluate(run, params, data, 0, jax.random.fold_in(run.keys.eval, 0), pred_dir)
        results["sft_eval"] = ev
        _print_eval("SFT" if c.sft.steps > 0 else "start", ev)
        out.writer.scalars(0, ev, "eval/")
        meta.update(stage="sft", epoch=0, wall_seconds=time.time() - t_start)
        out.ckpt.save(0, run.restore_target("sft", params) | {"params": params}, meta)
        state = None

    opt_state = state["opt"] if state is not None and meta["stage"] == "rl" else \
        run.rl_tx.init(params)
    ref_params = None
    if run.keeps_reference:
        ref_params = state["ref_params"] if state is not None and meta["stage"] == "rl" else \
            jax.tree.map(jnp.copy, params)
    train = data["train"]
    n_train = len(train.problems)
    per_epoch = r.iterations_per_epoch
    progress = Progress("rl", r.epochs * per_epoch, meta["epoch"] * per_epoch)
    for epoch in range(meta["epoch"], r.epochs):
        order = np.random.default_rng([c.seed, epoch]).permutation(
            np.resize(np.arange(n_train), per_epoch * r.prompts_per_batch))
        for it in range(per_epoch):
            step = epoch * per_epoch + it + 1
            index = order[it * r.prompts_per_batch:(it + 1) * r.prompts_per_batch]
            k_col, k_upd = jax.random.split(jax.random.fold_in(key, step))
            t0 = time.time()
            resp = run.stages.collect(params, train.batch(index), k_col,
                                      jnp.float32(r.temperature), group_size=r.group_size)
            toks, lens, fin = to_host((resp.tokens, resp.lengths, resp.finished))
            t1 = time.time()
            texts = decode(run, toks, lens)
            answers = [train.problems.answers[i] for i in index for _ in range(r.group_size)]
            correct, reward = judge(run, texts, answers, fin)
            t2 = time.time()
            traj, tm = run.stages.trajectory(params, ref_params, resp, jnp.asarray(reward))
            params, opt_state, um = run.stages.update(params, opt_state, traj, k_upd)
            um, tm = to_host((um, tm))
            t3 = time.time()
            scalars = {k: float(v) for k, v in {**tm, **um}.items()}
            scalars.update(
                reward_mean=float(reward.mean()), accuracy=float(correct.mean()),
                **{k: float(v) for k, v in metrics_lib.response_length_stats(
                    lens, c.max_new_tokens).items()},
                tokens_per_s=float(lens.sum()) / max(t1 - t0, 1e-9),
                time_collect=t1 - t0, time_judge=t2 - t1, time_update=t3 - t2)
            if not np.isfinite(scalars["loss"]):
                raise FloatingPointError(f"non-finite loss at RL step {step}; stopped without "
                                         "saving (the last good checkpoint is kept)")
            out.writer.scalars(step, scalars, "rl/")
            refl = metrics_lib.reflection_metrics(texts, correct)
            out.writer.scalars(step, refl, "rl/")
            timing = ("tokens_per_s", "time_collect", "time_judge", "time_update")
            meta["history"].append({"step": step, "epoch": epoch + 1, **{
                k: v for k, v in scalars.items() if k not in timing}})
            if step % c.log_every == 0 or it == 0:
                progress(step, {k: scalars[k] for k in ("reward_mean", "accuracy",
                                                         "response_length", "kl_ref",
                                                         "clip_frac")})
        ev = evaluate(run, params, data, epoch + 1, jax.random.fold_in(run.keys.eval, epoch + 1),
                      pred_dir)
        meta["evals"].append({"epoch": epoch + 1, "step": (epoch + 1) * per_epoch, **ev})
        out.writer.scalars((epoch + 1) * per_epoch, ev, "eval/")
        _print_eval(f"epoch {epoch + 1}", ev)
        meta.update(stage="rl", epoch=epoch + 1, wall_seconds=time.time() - t_start)
        saved = {"params": params, "opt": opt_state}
        if ref_params is not None:
            saved["ref_params"] = ref_params
        out.ckpt.save((epoch + 1) * per_epoch, saved, meta)

    results.update(summarize(meta["evals"]), evals=meta["evals"], history=meta["history"],
                   wall_seconds=time.time() - t_start, num_params=run.num_params)
    (epath.Path(out.workdir) / "results.json").write_text(json.dumps(results, indent=1))
    out.writer.close()
    print(f"[done] {results['wall_seconds']:.0f} s; results in "
          f"{os.path.join(out.workdir, 'results.json')}", flush=True)
    return results


def summarize(evals: list[dict]) -> dict:
    """MAYE's table entries: the mean and the max over epochs of every accuracy."""
    if not evals:
        return {}
    keys = [k for k in evals[0] if "pass@" in k and k.count("/") == 1]
    return {"mean_over_epochs": {k: float(np.mean([e[k] for e in evals])) for k in keys},
            "max_over_epochs": {k: float(np.max([e[k] for e in evals])) for k in keys}}


def _print_eval(name: str, ev: dict) -> None:
    parts = [f"{k} {v:.3f}" for k, v in ev.items() if "pass@" in k and k.count("/") == 1]
    print(f"[eval] {name}: " + ", ".join(parts), flush=True)


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config: ml_collections.ConfigDict = _CONFIG.value
    logging.set_verbosity(logging.WARNING)
    try:
        train_single_turn(config, _WORKDIR.value)
    except (ValueError, KeyError, FloatingPointError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # bad flags: one line and exit code 2 (config_files.parse_flags)
    app.run(lambda argv: sys.exit(main(argv)), flags_parser=parse_flags)
