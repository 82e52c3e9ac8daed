"""Will a config fit? Memory and FLOPs of a PPO iteration per device, before renting a slice.

    python -m rlvlm_jax.plan --config experiments/llava_mistral_7b_numberline.py \
        --mesh 1,4,8 --device v5e-32 --probe_layers 2,4 \
        --config.ppo.num_envs=32 --config.ppo.num_steps=16 --config.eval.episodes=512

`--device`: a slice (v4-32 and v5p-N count TensorCores, 2 per chip: v4-32 is 16 devices;
v5e-N / v5litepod-N / v6e-N count chips), a plain kind (v5e, h100, a100-80gb: the mesh gives
the count) or `<gpu>xN`; see rlvlm_jax/devices.py. Unknown devices, meshes that do not match
the slice or divide the params / batch, and config fields that do not exist are errors before
anything is compiled (exit code 1, or 2 for flags).

The planner builds the run with training's own builder, `rlvlm_jax.build.build(config,
abstract=True)` (same policy, optimiser, env, actor, rollout and PPO update functions, same
parameter shardings from the rule table, env states split over the batch axes), with shape-only
arrays (`jax.ShapeDtypeStruct`s: nothing is allocated), on `data x fsdp x tensor` simulated CPU
devices, feeds the rollout's output shardings to the update and compiles both ahead of time. It
prints per device:

- params, optimiser state (and a KL reference copy): exact, from shapes and shardings;
- the KV cache: closed form, layers x 2 x envs x kv_heads x (prompt + new tokens) x head_dim x
  bytes of the compute dtype / (data x fsdp x tensor shards), as the rollout allocates it;
- activations / temporaries: XLA's buffer assignment (`memory_analysis().temp_size_in_bytes`)
  of each compiled step; the rollout's temporaries include the KV cache;
- the peak: max(rollout phase, update phase). Rollout phase = its arguments + outputs +
  temporaries + what stays resident but is not an argument (optimiser state, KL reference);
  update phase = its arguments + outputs - donated aliases + temporaries + the env states;
- FLOPs per PPO iteration (see `count_flops`), per device and in total;
- whether the peak fits the device's HBM with headroom, and what to change when it does not.

The last line printed is the whole report as JSON.

How the model, tokenizer and prompt length are found, and the limits of XLA:CPU's figures:
`rlvlm_jax/planning/__init__.py`.
"""
# ruff: noqa: E402  (the device count must be in the environment before jax is imported)

from __future__ import annotations

import os
import re
import sys

from rlvlm_jax.config_files import flag_error, flag_value  # imports no jax

_REEXEC = "_RLVLM_PLAN_REEXEC"


def _prepare_environment(argv: list[str]) -> None:
    """Simulated CPU devices, as many as the mesh needs, before jax initialises a backend."""
    mesh = flag_value(argv, "mesh")
    try:
        n = 1
        for x in (mesh or "").split(","):
            n *= int(x)
    except ValueError:
        return  # reported properly by main
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                   os.environ.get("XLA_FLAGS", ""))
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


if __name__ == "__main__":
    _prepare_environment(sys.argv[1:])

import dataclasses
import functools
import json
import math
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from ml_collections import config_flags

from rlvlm_jax import devices as devices_lib
from rlvlm_jax import planning
from rlvlm_jax.build import Run, build, with_shardings
from rlvlm_jax.envs.prompts import QWEN_SPECIALS, image_token
from rlvlm_jax.models import presets
from rlvlm_jax.planning.accounting import (
    _memory,
    count,
    count_flops,
    device_bytes,
    extrapolate,
    global_bytes,
    kv_cache_bytes,
)
from rlvlm_jax.planning.report import contributors, format_report, suggestions, warnings
from rlvlm_jax.rl import optimizer as optim
from rlvlm_jax.rl import policy as policy_lib
from rlvlm_jax.sharding import AXES
from rlvlm_jax.text.prompt_encoder import prompt_text
from rlvlm_jax.text.tokenizer import IMAGE_TOKEN, build_card_tokenizer, load_tokenizer

GIB = 1024**3
CHARS_PER_TOKEN = 3.5  # prompt-length estimate without the model's tokenizer (see docstring)
FAST_COMPILE = {"xla_backend_optimization_level": 0}
# XLA:CPU passes the planner skips by default (`--disable_passes`):
# - constant_folding evaluated, on the host, `tree_finite` of the frozen vision tower's gradients
#   (constant zeros): ~300M elements for CLIP-L; the 7B update did not finish compiling in 36 min
#   on 2 cores. Skipping it changed the tiny config's temporaries by 0.01%. The PPO and SFT
#   steps now check and norm only the trainable gradients (`optimizer.trainable_part`); the
#   pass stays off until a full 7B compile with it has been timed.
# - while-loop-invariant-code-motion hoists each layer's FSDP all-gather out of the decode loop
#   and the env-step scan, so every device would hold every layer's gathered weights for the
#   whole rollout (the 7B at 2 layers on fsdp=8: 11.9 GB of temporaries instead of 7.0 GB). TPU
#   and GPU compiles run under a device memory limit (rematerialisation undoes such hoisting);
#   XLA:CPU has none, so the hoisted figure would describe no real accelerator.
DISABLED_PASSES = "constant_folding,while-loop-invariant-code-motion"


class PlanError(ValueError):
    """Input the planner cannot plan (raised before anything is compiled)."""


# ------------------------------------------------------------------------------------ inputs
def parse_mesh(text) -> tuple[int, int, int]:
    if isinstance(text, (tuple, list)):
        parts = list(text)
    else:
        parts = str(text).split(",")
    try:
        shape = tuple(int(x) for x in parts)
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise PlanError(f"--mesh must be three positive sizes data,fsdp,tensor (e.g. 1,32,1), "
                        f"got {text!r}")
    return shape


@functools.cache
def _card_tokenizer(vocab_size: int, chat: str = "llava"):
    with tempfile.TemporaryDirectory(prefix="rlvlm_plan_tok_") as tmp:
        build_card_tokenizer(tmp, vocab_size, chat=chat)
        return load_tokenizer(tmp)  # read into memory: the directory goes


def _preset_for(config, config_path: str | None) -> str | None:
    """The preset a pretrained-model config means, from its file or checkpoint name."""
    text = f"{config_path or ''} {config.model.get('checkpoint', '')}".lower()
    qwen = re.search(r"qwen2(?:[._]?(5))?[-_]?vl[-_]?(\d+)b", text)
    if qwen:
        return f"qwen2{'.5' if qwen.group(1) else ''}-vl-{qwen.group(2)}b"
    if "mistral" in text:
        return "llava-v1.6-mistral-7b"
    if re.search(r"llava[-_]?1\.?5|vicuna", text):
        return "llava-1.5-7b"
    return None


def _get_preset(name: str):
    """A LLaVA or Qwen-VL preset by name (`models.presets`)."""
    if name in presets.QWEN_PRESETS:
        return presets.get_qwen(name)
    try:
        return presets.get(name)
    except KeyError:
        known = sorted(presets.PRESETS) + sorted(presets.QWEN_PRESETS)
        raise PlanError(f"unknown preset {name!r}; known: {known}") from None


def _at_image_size(cfg, config):
    """A Qwen config at config.image_size^2 px (its tower takes any multiple of 28: the planner
    plans the run's fixed grid); a LLaVA config unchanged."""
    if policy_lib.chat_of(cfg) != "qwen":
        return cfg
    size = config.image_size
    cfg = dataclasses.replace(cfg, vision=dataclasses.replace(
        cfg.vision, image_height=size, image_width=size))
    try:
        cfg.validate()
    except ValueError as e:
        raise PlanError(f"config.image_size {size}: {e}") from None
    return cfg


@dataclasses.dataclass
class ModelSource:
    cfg: object  # LlavaConfig
    tokenizer: object
    description: str
    exact_prompt: bool  # the tokenizer is the model's own


def model_source(config, preset: str | None = "auto", config_path: str | None = None):
    """(model config, tokenizer) without weights; see the module docstring. Without the model's
    own tokenizer the card tokenizer stands in (with Qwen's special tokens for a Qwen model)."""
    from rlvlm_jax.models.conversion import config_from_hf

    m = config.model
    tok_path = config.tokenizer.path or ""
    ckpt = m.get("checkpoint", "") or ""
    own_tok = None
    for path in (tok_path, ckpt):
        if path and any(os.path.isfile(os.path.join(path, f))
                        for f in ("tokenizer.json", "tokenizer.model")):
            own_tok = load_tokenizer(path)
            break
    if tok_path and own_tok is None:
        raise PlanError(f"config.tokenizer.path {tok_path!r} holds no tokenizer")
    vocab = int(config.tokenizer.get("vocab_size", 2048))

    def stand_in(cfg):
        return own_tok or _card_tokenizer(vocab, policy_lib.chat_of(cfg))

    if preset in (None, "auto"):
        preset = None
        if ckpt and os.path.isfile(os.path.join(ckpt, "config.json")):
            with open(os.path.join(ckpt, "config.json")) as f:
                hf = json.load(f)
            qwen = hf.get("model_type") in policy_lib.QWEN_MODEL_TYPES
            size = config.image_size
            cfg = config_from_hf(hf, (size, size) if qwen else None)
            _check_image_size(cfg, config)
            return ModelSource(cfg, stand_in(cfg), f"{ckpt}/config.json", own_tok is not None)
        preset = _preset_for(config, config_path)
        if preset is None and ckpt:
            known = sorted(presets.PRESETS) + sorted(presets.QWEN_PRESETS)
            raise PlanError(f"config.model.checkpoint {ckpt!r} does not exist here and no preset "
                            f"matches the config; pass --preset (one of {known})")
    if preset and preset != "none":
        cfg = _at_image_size(_get_preset(preset), config)
        _check_image_size(cfg, config)
        return ModelSource(cfg, stand_in(cfg), f"preset {preset}", own_tok is not None)
    tokenizer = own_tok or _card_tokenizer(vocab, "llava" if policy_lib.family(m) == "llava"
                                           else "qwen")
    cfg = policy_lib.llava_config(config.model, config.image_size, tokenizer)
    return ModelSource(cfg, tokenizer, "config.model fields", True)


def _check_image_size(cfg, config) -> None:
    if policy_lib.chat_of(cfg) == "qwen":  # (H, W): the run's pictures are square
        hw = (cfg.vision.image_height, cfg.vision.image_width)
        if hw != (config.image_size, config.image_size):
            raise PlanError(f"the model's vision tower runs a {hw[0]}x{hw[1]} px grid; "
                            f"config.image_size is {config.image_size}")
        return
    if cfg.vision.image_size != config.image_size:
        raise PlanError(f"the model's vision tower takes {cfg.vision.image_size} px; "
                        f"config.image_size is {config.image_size}")


def estimate_prompt_tokens(encoder) -> int:
    """Prompt length without the model's tokenizer: image tokens + BOS + characters / 3.5 +
    formula slots, from the prompt text the (stand-in) `encoder` holds."""
    chat = getattr(encoder, "chat", "llava")
    text = prompt_text(encoder.task, ["\x00"] if encoder.num_slots else None, encoder.cot,
                       encoder.template, chat)
    specials = 0  # Qwen's chat template: one token each (the image pad is counted above)
    for token in (QWEN_SPECIALS if chat == "qwen" else ()):
        specials += text.count(token) * (token != image_token(chat))
        text = text.replace(token, "")
    chars = len(text.replace(IMAGE_TOKEN, "").replace("\x00", ""))
    return (encoder.num_image_tokens + 1 + specials + math.ceil(chars / CHARS_PER_TOKEN)
            + encoder.num_slots * encoder.max_formula)


# ------------------------------------------------------------------------------------ build
@dataclasses.dataclass
class Abstract:
    """The run, shape-only (`build(..., abstract=True)`), and the PPO stage's arguments."""

    run: Run
    source: ModelSource
    params: dict  # ShapeDtypeStructs with shardings (adapters included under LoRA)
    opt_state: object
    carry: object
    key: jax.ShapeDtypeStruct
    temperature: jax.ShapeDtypeStruct
    ref_params: object
    prompt_source: str

    @property
    def config(self):
        return self.run.config

    @property
    def policy(self):
        return self.run.policy

    @property
    def mesh(self):
        return self.run.mesh

    @property
    def prompt_tokens(self) -> int:
        return self.run.encoder.length


def abstract_job(config, mesh_shape, *, preset="auto", prompt_tokens: int | None = None,
                 fast_compile: bool = True, disable_passes: str = DISABLED_PASSES, devices=None,
                 config_path: str | None = None, text_layers: int | None = None) -> Abstract:
    """What training builds for PPO, shape-only, on a mesh of simulated devices: the one
    builder (`rlvlm_jax.build`) with `abstract=True`. Raises PlanError / ShardingError /
    ValueError on bad input, before compiling anything."""
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.mesh = ",".join(map(str, mesh_shape))
    src = model_source(config, preset, config_path)
    if text_layers:  # a depth probe (see `plan`): the same model with fewer decoder layers
        src = dataclasses.replace(src, cfg=dataclasses.replace(
            src.cfg, text=dataclasses.replace(src.cfg.text, num_layers=int(text_layers))))
    how = "tokenizer"
    if prompt_tokens:
        how = "--prompt_tokens"
    elif not src.exact_prompt:
        prompt_tokens = estimate_prompt_tokens
        how = f"estimate (image tokens + characters / {CHARS_PER_TOKEN})"
    xla = dict(FAST_COMPILE) if (fast_compile or config.fast_compile) else {}
    if disable_passes:
        xla["xla_disable_hlo_passes"] = disable_passes
    run = build(config, abstract=True, model=(src.cfg, src.tokenizer),
                prompt_tokens=prompt_tokens, devices=devices, xla_options=xla or None)
    params = run.with_lora(run.init_params)
    key = run.key_struct()
    return Abstract(run, src, params, run.init_opt_state(run.ppo_tx, params),
                    run.reset_envs(key), key,
                    jax.ShapeDtypeStruct((), jnp.float32, sharding=run._replicated()),
                    params if run.keeps_reference else None, how)


# ------------------------------------------------------------------------------------ compile
def compile_steps(a: Abstract, log=print) -> dict:
    """Lower and compile the rollout and the update exactly as training calls them."""
    out = {}
    with jax.set_mesh(a.mesh):
        t0 = time.time()
        lowered = a.run.rollout.lower(a.params, a.carry, a.key, a.temperature)
        roll = lowered.compile()
        out["rollout"] = {"compiled": roll, "seconds": time.time() - t0}
        log(f"[plan] rollout compiled in {out['rollout']['seconds']:.0f} s")
        _, traj_shape, lv_shape = lowered.out_info
        _, traj_sh, lv_sh = roll.output_shardings
        traj = with_shardings(traj_shape, traj_sh)
        last_value = with_shardings(lv_shape, lv_sh)
        t0 = time.time()
        upd = a.run.update.lower(a.params, a.opt_state, traj, last_value, a.key, a.ref_params)
        upd = upd.compile()
        out["update"] = {"compiled": upd, "seconds": time.time() - t0}
        log(f"[plan] update compiled in {out['update']['seconds']:.0f} s")
    out["trajectory"] = traj
    out["last_value"] = last_value
    return out


# ------------------------------------------------------------------------------------ plan
def measure(a: Abstract, flops: bool, log=print) -> dict:
    """Compile `a`'s rollout and update; XLA's memory figures, trajectory size and FLOPs."""
    steps = compile_steps(a, log)
    out = {"rollout": _memory(steps["rollout"]["compiled"]),
           "update": _memory(steps["update"]["compiled"]),
           "trajectory_bytes": device_bytes(steps["trajectory"]),
           "compile_seconds": {"rollout": steps["rollout"]["seconds"],
                               "update": steps["update"]["seconds"]}}
    if flops:
        out["flops"] = count_flops(a, steps, log)
    return out


def plan(config, mesh, device: str, *, preset="auto", prompt_tokens: int | None = None,
         fast_compile: bool = True, disable_passes: str = DISABLED_PASSES, headroom: float = 0.1,
         flops: bool = True, devices=None, config_path: str | None = None,
         probe_layers=None, log=print) -> dict:
    """The report (a JSON-able dict). Raises PlanError, DeviceError, ShardingError or ValueError
    for bad input before compiling anything.

    `probe_layers` (e.g. (2, 4)): instead of compiling the full model, compile it with these
    decoder depths and extrapolate XLA's figures (temporaries, arguments, outputs, FLOPs)
    linearly to the full depth; params, optimiser state and KV cache stay exact. For machines
    on which the full compile is too slow or too big (the 7B update on 32 simulated devices).
    """
    t_start = time.time()
    shape = parse_mesh(mesh)
    target = devices_lib.parse(device)
    target.check_mesh(math.prod(shape))
    if not 0 <= headroom < 1:
        raise PlanError(f"--headroom must be in [0, 1), got {headroom}")
    kw = dict(preset=preset, prompt_tokens=prompt_tokens, fast_compile=fast_compile,
              disable_passes=disable_passes, devices=devices, config_path=config_path)
    a = abstract_job(config, shape, **kw)  # checks the config as training does
    config, p = a.config, a.config.ppo
    buffer = p.num_envs * p.num_steps
    full_depth = a.policy.cfg.text.num_layers
    if probe_layers:
        probes = sorted({int(x) for x in probe_layers})
        if len(probes) < 2 or probes[0] < 1 or probes[-1] >= full_depth:
            raise PlanError(f"--probe_layers needs two or more depths in [1, {full_depth}), "
                            f"got {list(probe_layers)}")
        runs = []
        for depth in probes:
            log(f"[plan] probe: {depth} of {full_depth} decoder layers")
            runs.append(measure(abstract_job(config, shape, text_layers=depth, **kw), flops,
                                log))
        m = extrapolate(runs, probes, full_depth)
    else:
        m = measure(a, flops, log)
    roll, upd = m["rollout"], m["update"]
    cfg = a.policy.cfg
    params_b = device_bytes(a.params)
    opt_b = device_bytes(a.opt_state)
    ref_b = device_bytes(a.ref_params) if a.ref_params is not None else 0
    env_b = device_bytes(a.carry)
    traj_b = m["trajectory_bytes"]
    kv = kv_cache_bytes(cfg.text, p.num_envs, a.prompt_tokens + config.max_new_tokens,
                        jnp.dtype(config.model.dtype), shape)
    rollout_peak = (roll["arguments"] + roll["outputs"] - roll["aliased"] + roll["temporaries"]
                    + opt_b + ref_b)
    update_peak = (upd["arguments"] + upd["outputs"] - upd["aliased"] + upd["temporaries"]
                   + env_b)
    peak = max(rollout_peak, update_peak)
    hbm = target.accelerator.hbm_bytes
    budget = int(hbm * (1 - headroom))
    labels = optim.trainable_labels(a.params, bool(p.freeze_vision))
    trainable = sum(int(np.prod(x.shape)) for x, lab in
                    zip(jax.tree.leaves(a.params), jax.tree.leaves(labels), strict=True)
                    if lab == "train")
    per_device = {
        "params": params_b, "optimizer_state": opt_b, "reference_params": ref_b,
        "env_state": env_b, "kv_cache": kv["per_device"],
        "rollout_temporaries": roll["temporaries"],
        "rollout_temporaries_besides_kv_cache": max(roll["temporaries"] - kv["per_device"], 0),
        "trajectory": traj_b, "update_temporaries": upd["temporaries"],
        "rollout_phase_peak": rollout_peak, "update_phase_peak": update_peak, "peak": peak,
    }
    report = {
        "config": config_path, "device": target.name, "accelerator": target.accelerator.label,
        "devices": math.prod(shape), "mesh": dict(zip(AXES, shape, strict=True)),
        "hbm_per_device": hbm, "headroom": headroom, "budget_per_device": budget,
        "fits": peak <= budget, "peak_share_of_hbm": peak / hbm,
        "model": {
            "source": a.source.description, "params": count(a.params),
            "trainable_params": trainable, "params_bytes_total": global_bytes(a.params),
            "dtype": str(config.model.dtype), "param_dtype": str(config.model.param_dtype),
            "remat": bool(config.model.remat), "lora_rank": int(p.lora_rank),
            "text_layers": cfg.text.num_layers, "vision_layers": cfg.vision.num_layers,
            "prompt_tokens": a.prompt_tokens, "prompt_tokens_source": a.prompt_source,
            "max_new_tokens": int(config.max_new_tokens),
        },
        "ppo": {"num_envs": p.num_envs, "num_steps": p.num_steps, "epochs": p.epochs,
                "minibatches": p.minibatches, "micro_batches": p.micro_batches,
                "micro_batch_size": buffer // (p.minibatches * p.micro_batches),
                "kl_coef": float(p.kl_coef), "freeze_vision": bool(p.freeze_vision)},
        "per_device_bytes": per_device,
        "kv_cache": kv,
        "xla_memory_analysis": {"rollout": roll, "update": upd},
        "compile_seconds": m["compile_seconds"],
        "compiler_options": a.run.compiler_options or {},
        "extrapolated": m.get("extrapolated"),
    }
    if flops:
        fl = m["flops"]
        n = math.prod(shape)
        report["flops"] = {
            "method": "XLA cost_analysis of the compiled per-device programs, loop bodies "
                      "multiplied by their trip counts (see plan.count_flops)"
                      + (" at the probe depths, extrapolated linearly" if probe_layers else ""),
            "per_device": {"rollout": fl["rollout"], "update": fl["update"],
                           "iteration": fl["iteration"]},
            "total": {k: v * n for k, v in (("rollout", fl["rollout"]),
                                            ("update", fl["update"]),
                                            ("iteration", fl["iteration"]))},
            "units_per_device": fl["units"],
            "seconds_at_peak": fl["iteration"] / target.accelerator.peak_flops,
        }
    if report["extrapolated"]:
        report["extrapolated"]["rollout_arguments_exact"] = params_b + env_b + 12
    report["warnings"] = warnings(report, shape)
    report["contributors"] = contributors(report)
    report["suggestions"] = [] if report["fits"] else suggestions(a, report, shape, target)
    report["wall_seconds"] = time.time() - t_start
    return report


# ------------------------------------------------------------------------------------ CLI
def _define_flags(fv: flags.FlagValues):
    config_flags.DEFINE_config_file("config", None, "experiment config file", flag_values=fv,
                                    lock_config=True)
    flags.DEFINE_string("mesh", None, "data,fsdp,tensor device counts, e.g. 1,32,1",
                        flag_values=fv)
    flags.DEFINE_string("device", None, "accelerator: v5e-32, v4-32, v5p-8, v6e-16, v5e, "
                        "h100, h100x8, a100-80gb, ...", flag_values=fv)
    flags.DEFINE_string("preset", "auto", "model preset when the config's checkpoint is absent "
                        "(auto: from the config's name; none: the config's model fields)",
                        flag_values=fv)
    flags.DEFINE_integer("prompt_tokens", None, "padded prompt length (default: from the "
                         "tokenizer, or estimated)", flag_values=fv)
    flags.DEFINE_float("headroom", 0.1, "HBM share kept free (runtime, fragmentation)",
                       flag_values=fv)
    flags.DEFINE_bool("fast_compile", True, "XLA:CPU backend optimisation level 0 (buffer "
                      "assignment is unchanged; compiles several times faster)", flag_values=fv)
    flags.DEFINE_string("disable_passes", DISABLED_PASSES, "XLA passes skipped (comma list; "
                        "'' compiles with XLA:CPU's whole pipeline); see plan.DISABLED_PASSES",
                        flag_values=fv)
    flags.DEFINE_list("probe_layers", None, "compile at these decoder depths (e.g. 2,4) and "
                      "extrapolate XLA's figures linearly to the full depth (big models on "
                      "small machines)", flag_values=fv)
    flags.DEFINE_bool("flops", True, "count FLOPs (compiles the loop bodies too)",
                      flag_values=fv)
    return fv


def main(argv: list[str]) -> int:
    fv = _define_flags(flags.FlagValues())
    if any(a in ("-h", "--help", "--helpfull") for a in argv[1:]):
        print(__doc__)
        print(planning.__doc__)
        print(fv.get_help())
        return 0
    try:
        fv(argv)
    except (flags.Error, KeyError, ValueError, AttributeError) as e:
        print(f"error: {flag_error(argv, e)}", file=sys.stderr)
        return 2
    for name in ("config", "mesh", "device"):
        if fv[name].value is None:
            print(f"error: --{name} is required", file=sys.stderr)
            return 2
    try:
        shape = parse_mesh(fv.mesh)
        devices_lib.parse(fv.device).check_mesh(math.prod(shape))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if jax.device_count() < math.prod(shape):
        if os.environ.get(_REEXEC) or jax.default_backend() != "cpu":
            print(f"error: the mesh needs {math.prod(shape)} devices, jax has "
                  f"{jax.device_count()} ({jax.default_backend()})", file=sys.stderr)
            return 1
        _prepare_environment(argv[1:])
        os.environ[_REEXEC] = "1"
        os.execv(sys.executable, [sys.executable, "-m", "rlvlm_jax.plan", *argv[1:]])
    config_path = config_flags.get_config_filename(fv["config"])
    try:
        report = plan(fv.config, shape, fv.device, preset=fv.preset,
                      prompt_tokens=fv.prompt_tokens, fast_compile=fv.fast_compile,
                      disable_passes=fv.disable_passes,
                      headroom=fv.headroom, flops=fv.flops, config_path=config_path,
                      probe_layers=fv.probe_layers,
                      log=lambda s: print(s, file=sys.stderr, flush=True))
    except (ValueError, FileNotFoundError) as e:  # PlanError, DeviceError, ShardingError
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_report(report), flush=True)
    print(json.dumps(report, default=float), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
