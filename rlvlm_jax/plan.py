"""Will a config fit? Memory and FLOPs of a PPO iteration per device, before renting a slice.

    python -m rlvlm_jax.plan --config experiments/llava_mistral_7b_numberline.py \
        --mesh 1,4,8 --device v5e-32 --probe_layers 2,4 \
        --config.ppo.num_envs=32 --config.ppo.num_steps=16 --config.eval.episodes=512

`--device`: a slice (v4-32 and v5p-N count TensorCores, 2 per chip: v4-32 is 16 devices;
v5e-N / v5litepod-N / v6e-N count chips), a plain kind (v5e, h100, a100-80gb: the mesh gives
the count) or `<gpu>xN`; see rlvlm_jax/devices.py. Unknown devices, meshes that do not match
the slice or divide the params / batch, and config fields that do not exist are errors before
anything is compiled (exit code 1, or 2 for flags).

The planner builds the job as `rlvlm_jax.train.Job` does (same policy, optimiser, env, actor,
rollout and PPO update functions, same parameter shardings from the rule table, env states split
over the batch axes, the rollout's output shardings feeding the update) but with shape-only
parameters (`jax.ShapeDtypeStruct`s: nothing is allocated), on `data x fsdp x tensor` simulated
CPU devices, and compiles the rollout and the update ahead of time. It prints per device:

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

Model config: from the experiment's fields like training does when it starts from scratch; for a
config that starts from a pretrained checkpoint, from `config.model.checkpoint`'s config.json
when that directory exists, else from `--preset` (default: chosen from the config's file name,
e.g. llava_mistral_7b_* -> llava-v1.6-mistral-7b; `--preset=none` forces the config's fields).
Tokenizer: the config's (`tokenizer.path`, or the checkpoint's) when it exists; otherwise the card
tokenizer stands in, which gives exact shapes for configs trained with it (the tiny ones) but not
the prompt length of another vocabulary: for a preset the prompt length is then estimated as
image tokens + BOS + ceil(template characters / 3.5) (+ formula slots), a little above what
LLaMA/Mistral tokenizers give on this English/JSON text (~4 characters per token). Override it
with `--prompt_tokens`. The ids' contents are irrelevant to shapes and FLOPs.

Limits: the temporaries are those of XLA:CPU's compilation of the partitioned program; the TPU
and GPU compilers fuse and lay out differently (and keep bf16 where the CPU may widen to f32), so
treat them as an estimate; params, optimiser state and the KV cache are exact. The planner
compiles with XLA:CPU's backend optimisation level 0 (`--fast_compile`; identical buffer sizes
on the tiny config) and without two passes (`--disable_passes`, see DISABLED_PASSES): constant
folding (hours on the 7B's frozen tower, 0.01% on the tiny config) and while-loop invariant code
motion (which on CPU, with no memory limit, hoists every layer's FSDP all-gather out of the
decode loop). Neither changes what the programs compute. Two CPU effects remain in the 7B's
temporaries and inflate them: XLA:CPU has no bf16 matmul, so bf16 operands are widened to f32
copies, and FSDP gathers the f32 master weights (the model casts after reading the sharded
param), so a tensor axis (1,4,8 on v5e-32) shrinks them far more than fsdp alone. For a
model too big to compile here, `--probe_layers 2,4` compiles two shallow copies and
extrapolates (checked on the tiny config: within 0.5% of the direct compile). The SFT stage
and the evaluation loop are not planned.
"""
# ruff: noqa: E402  (the device count must be in the environment before jax is imported)

from __future__ import annotations

import os
import re
import sys

_REEXEC = "_RLVLM_PLAN_REEXEC"


def _flag_value(argv: list[str], name: str) -> str | None:
    for i, a in enumerate(argv):
        if a == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
    return None


def _prepare_environment(argv: list[str]) -> None:
    """Simulated CPU devices, as many as the mesh needs, before jax initialises a backend."""
    mesh = _flag_value(argv, "mesh")
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
import ml_collections
import numpy as np
import optax
from absl import flags
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import config_flags

import rlvlm_jax.envs as envs
from rlvlm_jax import devices as devices_lib
from rlvlm_jax.models import presets, sampling
from rlvlm_jax.models.llama import init_cache
from rlvlm_jax.rl import lora as lora_lib
from rlvlm_jax.rl import optimizer as optim
from rlvlm_jax.rl import policy as policy_lib
from rlvlm_jax.rl import ppo as ppo_lib
from rlvlm_jax.rl.rollout import Actor
from rlvlm_jax.sharding import AXES, BATCH, ShardingError, Shardings, make_mesh, param_shardings
from rlvlm_jax.text.prompt_encoder import PromptEncoder, prompt_text
from rlvlm_jax.text.tokenizer import IMAGE_TOKEN, build_card_tokenizer, load_tokenizer
from rlvlm_jax.train import validate_config

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
def _card_tokenizer(vocab_size: int):
    with tempfile.TemporaryDirectory(prefix="rlvlm_plan_tok_") as tmp:
        build_card_tokenizer(tmp, vocab_size)
        return load_tokenizer(tmp)  # read into memory: the directory goes


def _preset_for(config, config_path: str | None) -> str | None:
    """The preset a pretrained-model config means, from its file or checkpoint name."""
    text = f"{config_path or ''} {config.model.get('checkpoint', '')}".lower()
    if "mistral" in text:
        return "llava-v1.6-mistral-7b"
    if re.search(r"llava[-_]?1\.?5|vicuna", text):
        return "llava-1.5-7b"
    return None


@dataclasses.dataclass
class ModelSource:
    cfg: object  # LlavaConfig
    tokenizer: object
    description: str
    exact_prompt: bool  # the tokenizer is the model's own


def model_source(config, preset: str | None = "auto", config_path: str | None = None):
    """(LlavaConfig, tokenizer) without weights; see the module docstring."""
    from rlvlm_jax.models.conversion import config_from_hf

    m = config.model
    tok_path = config.tokenizer.get("path", "") or ""
    ckpt = m.get("checkpoint", "") or ""
    own_tok = None
    for path in (tok_path, ckpt):
        if path and any(os.path.isfile(os.path.join(path, f))
                        for f in ("tokenizer.json", "tokenizer.model")):
            own_tok = load_tokenizer(path)
            break
    if tok_path and own_tok is None:
        raise PlanError(f"config.tokenizer.path {tok_path!r} holds no tokenizer")
    tokenizer = own_tok or _card_tokenizer(int(config.tokenizer.get("vocab_size", 2048)))

    if preset in (None, "auto"):
        preset = None
        if ckpt and os.path.isfile(os.path.join(ckpt, "config.json")):
            with open(os.path.join(ckpt, "config.json")) as f:
                cfg = config_from_hf(json.load(f))
            _check_image_size(cfg, config)
            return ModelSource(cfg, tokenizer, f"{ckpt}/config.json", own_tok is not None)
        preset = _preset_for(config, config_path)
        if preset is None and ckpt:
            raise PlanError(f"config.model.checkpoint {ckpt!r} does not exist here and no preset "
                            f"matches the config; pass --preset (one of {sorted(presets.PRESETS)})")
    if preset and preset != "none":
        try:
            cfg = presets.get(preset)
        except KeyError as e:
            raise PlanError(str(e.args[0])) from None
        _check_image_size(cfg, config)
        return ModelSource(cfg, tokenizer, f"preset {preset}", own_tok is not None)
    cfg = policy_lib.llava_config(config, tokenizer)
    return ModelSource(cfg, tokenizer, "config.model fields", True)


def _check_image_size(cfg, config) -> None:
    if cfg.vision.image_size != config.image_size:
        raise PlanError(f"the model's vision tower takes {cfg.vision.image_size} px; "
                        f"config.image_size is {config.image_size}")


def estimate_prompt_tokens(config, num_image_tokens: int, max_formula: int) -> int:
    """Prompt length without the model's tokenizer: image tokens + BOS + chars / 3.5 + formula."""
    spec_has_formula = envs.prompts.get_task(config.task).has_formula
    text = prompt_text(config.task, ["\x00"] if spec_has_formula else None, config.cot,
                       config.template)
    slots = text.count("\x00")
    chars = len(text.replace(IMAGE_TOKEN, "").replace("\x00", ""))
    return num_image_tokens + 1 + math.ceil(chars / CHARS_PER_TOKEN) + slots * max_formula


# ------------------------------------------------------------------------------------ sizes
def _itemsize(dtype) -> int:
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return 8  # threefry: 2 x uint32
    return np.dtype(dtype).itemsize


def device_bytes(tree) -> int:
    """Bytes one device holds of a tree of ShapeDtypeStructs with shardings (largest shard)."""
    total = 0
    for x in jax.tree.leaves(tree):
        shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
        total += int(np.prod(shape, dtype=np.int64)) * _itemsize(x.dtype)
    return total


def global_bytes(tree) -> int:
    return sum(int(np.prod(x.shape, dtype=np.int64)) * _itemsize(x.dtype)
               for x in jax.tree.leaves(tree))


def count(tree) -> int:
    return sum(int(np.prod(x.shape, dtype=np.int64)) for x in jax.tree.leaves(tree))


def kv_cache_bytes(text_cfg, batch: int, context: int, dtype, mesh_shape) -> dict:
    """Closed form of the rollout's KV cache: total and per device under sharding.CACHE_SPEC
    (batch over data x fsdp, kv heads over tensor; a dim the axes do not divide stays whole)."""
    d, f, t = mesh_shape
    per_elem = np.dtype(dtype).itemsize
    total = (text_cfg.num_layers * 2 * batch * text_cfg.num_kv_heads * context
             * text_cfg.dim_per_head * per_elem)
    # `constrain` applies the cache's spec only when every dim divides, else leaves it whole
    divides = batch % (d * f) == 0 and text_cfg.num_kv_heads % t == 0
    shards = d * f * t if divides else 1
    return {"total": int(total), "per_device": int(total // shards), "shards": shards}


def _with_shardings(shapes, shardings):
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, shardings)


def _keys(path) -> tuple:
    return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def follow_params(tree, params, param_sh, fallback):
    """Shardings for an optimiser state: a leaf whose path ends with a param's path and has its
    shape gets that param's sharding (as `tx.init` on placed params gives: zeros_like keeps the
    placement); anything else (step counts) the fallback."""
    index = {}
    for (path, leaf), sh in zip(jax.tree_util.tree_leaves_with_path(params),
                                jax.tree.leaves(param_sh), strict=True):
        index[_keys(path)] = (tuple(leaf.shape), sh)

    def one(path, leaf):
        ks = _keys(path)
        for i in range(len(ks)):
            hit = index.get(ks[i:])
            if hit is not None and hit[0] == tuple(leaf.shape):
                return hit[1]
        return fallback

    return jax.tree_util.tree_map_with_path(one, tree)


def _memory(compiled) -> dict:
    m = compiled.memory_analysis()
    return {"arguments": int(m.argument_size_in_bytes), "outputs": int(m.output_size_in_bytes),
            "aliased": int(m.alias_size_in_bytes), "temporaries": int(m.temp_size_in_bytes),
            "code": int(m.generated_code_size_in_bytes)}


def _flops(compiled) -> float:
    ca = compiled.cost_analysis()
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else {}
    return float((ca or {}).get("flops", 0.0))


# ------------------------------------------------------------------------------------ build
@dataclasses.dataclass
class Abstract:
    """The job, shape-only: what `Job` builds, with ShapeDtypeStructs for every array."""

    config: ml_collections.ConfigDict
    source: ModelSource
    mesh: object
    policy: object
    actor: Actor
    tx: optax.GradientTransformation
    rollout: object
    update: object
    params: dict  # ShapeDtypeStructs with shardings
    opt_state: object
    carry: object
    key: jax.ShapeDtypeStruct
    temperature: jax.ShapeDtypeStruct
    ref_params: object
    prompt_tokens: int
    prompt_source: str
    compiler_options: dict | None


def _lora_rank(config) -> int:
    return int(config.ppo.get("lora_rank", 0) or 0)


def build(config, mesh_shape, *, preset="auto", prompt_tokens: int | None = None,
          fast_compile: bool = True, disable_passes: str = DISABLED_PASSES, devices=None,
          config_path: str | None = None, text_layers: int | None = None) -> Abstract:
    """Everything `Job.__init__` builds for PPO, abstractly, on a mesh of simulated devices.
    Raises PlanError / ShardingError / ValueError on bad input, before compiling anything."""
    c = config
    n = math.prod(mesh_shape)
    devs = list(jax.devices() if devices is None else devices)
    if len(devs) < n:
        raise PlanError(f"the mesh needs {n} devices but this process has {len(devs)}; run "
                        "`python -m rlvlm_jax.plan`, which sets "
                        "XLA_FLAGS=--xla_force_host_platform_device_count before jax starts")
    mesh = make_mesh(mesh_shape, devs[:n])

    src = model_source(c, preset, config_path)
    if text_layers:  # a depth probe (see `plan`): the same model with fewer decoder layers
        src = dataclasses.replace(src, cfg=dataclasses.replace(
            src.cfg, text=dataclasses.replace(src.cfg.text, num_layers=int(text_layers))))
    cfg = src.cfg
    bootstrap = not c.ppo.truncation_as_termination
    env, env_params = envs.make(c.task, image_size=c.image_size, final_observation=bootstrap)
    max_formula = getattr(env, "max_tokens", -1) + 1
    encoder = PromptEncoder(src.tokenizer, c.task, c.cot, c.template, cfg.num_image_tokens,
                            max_formula=max_formula)
    if prompt_tokens:
        encoder.length, how = int(prompt_tokens), "--prompt_tokens"
    elif src.exact_prompt:
        how = "tokenizer"
    else:
        encoder.length = estimate_prompt_tokens(c, cfg.num_image_tokens, max_formula)
        how = f"estimate (image tokens + characters / {CHARS_PER_TOKEN})"
    need = encoder.length + c.max_new_tokens
    if need > cfg.text.max_position_embeddings:
        raise PlanError(f"prompt ({encoder.length}) + max_new_tokens ({c.max_new_tokens}) = "
                        f"{need} exceeds the model's {cfg.text.max_position_embeddings} positions")

    holder = {}
    rank = _lora_rank(c)
    scale = lora_lib.scale_of(rank, c.ppo.get("lora_alpha", 0))

    def init():
        policy, params = policy_lib.init_policy(
            cfg, c.model.value_hidden, c.model.init_seed, c.model.init, c.model.pixels,
            dtype=c.model.dtype, param_dtype=c.model.param_dtype, remat=c.model.remat,
            lora_scale=scale)
        holder["policy"] = policy
        if rank:
            params = lora_lib.add_lora(params, c.ppo, jax.random.key(0))  # Job.with_lora
        return params

    shapes = jax.eval_shape(init)
    policy = holder["policy"]
    param_sh = {k: param_shardings(v, mesh) for k, v in shapes.items()}  # as Job shards them
    params = _with_shardings(shapes, param_sh)
    rep = NamedSharding(mesh, P())
    batch = NamedSharding(mesh, P(BATCH))

    updates = max(1, c.ppo.iterations * c.ppo.epochs * c.ppo.minibatches)
    schedule = optim.warmup_cosine(c.ppo.lr, updates, c.ppo.warmup, c.ppo.lr_end)
    tx = optim.make_optimizer(schedule, c.ppo.weight_decay, c.ppo.grad_clip, shapes,
                           c.ppo.freeze_vision)
    opt_shapes = jax.eval_shape(tx.init, shapes)
    opt_state = _with_shardings(opt_shapes, follow_params(opt_shapes, shapes, param_sh, rep))

    actor = Actor(env, env_params, policy, src.tokenizer, encoder, c.max_new_tokens,
                  c.ppo.thought_lambda, c.ppo.action_only, bootstrap)
    key_shape = jax.eval_shape(lambda: jax.random.key(0))
    key = jax.ShapeDtypeStruct(key_shape.shape, key_shape.dtype, sharding=rep)
    carry_shapes = jax.eval_shape(lambda k: actor.reset(k, c.ppo.num_envs), key)
    carry = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=batch),
                         carry_shapes)
    temperature = jax.ShapeDtypeStruct((), jnp.float32, sharding=rep)
    ref = None
    if c.ppo.kl_coef > 0 and "lora" not in shapes:
        ref = params  # Job: a copy of the params, placed alike

    xla = dict(FAST_COMPILE) if (fast_compile or c.get("fast_compile")) else {}
    if disable_passes:
        xla["xla_disable_hlo_passes"] = disable_passes
    xla = xla or None
    rollout = actor.make_rollout(c.ppo.num_steps, xla)
    update = ppo_lib.make_ppo_update(policy, tx, c.ppo, xla)
    return Abstract(c, src, mesh, policy, actor, tx, rollout, update, params, opt_state, carry,
                    key, temperature, ref, encoder.length, how, xla)


# ------------------------------------------------------------------------------------ compile
def compile_steps(a: Abstract, log=print) -> dict:
    """Lower and compile the rollout and the update exactly as training calls them."""
    out = {}
    with jax.set_mesh(a.mesh):
        t0 = time.time()
        lowered = a.rollout.lower(a.params, a.carry, a.key, a.temperature)
        roll = lowered.compile()
        out["rollout"] = {"compiled": roll, "seconds": time.time() - t0}
        log(f"[plan] rollout compiled in {out['rollout']['seconds']:.0f} s")
        _, traj_shape, lv_shape = lowered.out_info
        _, traj_sh, lv_sh = roll.output_shardings
        traj = _with_shardings(traj_shape, traj_sh)
        last_value = _with_shardings(lv_shape, lv_sh)
        t0 = time.time()
        upd = a.update.lower(a.params, a.opt_state, traj, last_value, a.key, a.ref_params)
        upd = upd.compile()
        out["update"] = {"compiled": upd, "seconds": time.time() - t0}
        log(f"[plan] update compiled in {out['update']['seconds']:.0f} s")
    out["trajectory"] = traj
    out["last_value"] = last_value
    return out


def count_flops(a: Abstract, steps: dict, log=print) -> dict:
    """FLOPs per PPO iteration from XLA's cost analysis, per device.

    XLA's cost analysis counts a loop body once, whatever its trip count (checked: a 10-step
    scan of a matmul reports one matmul). So the whole compiled rollout and update are counted
    once each, and the loop bodies are compiled on their own (same functions, same shardings)
    and added for their remaining trips:

        rollout = S * (R - V) + V + S * (T - 2) * D
        update  = U + (E*M*K - 1) * G + (E*M - 1) * O  [+ (chunks - 1) * F with a KL reference]

    R, U: the compiled rollout / update; S env steps, T max_new_tokens; D one decode step (the
    sampler's while body: `sampling.decode` compiled alone); V the bootstrap value
    (`Actor.last_value`); E epochs, M minibatches, K micro-batches; O the optimiser step
    (`tx.update` + apply); F the reference scoring of one chunk (`ppo.score`); G one
    micro-batch's forward + backward = U - O (- F), which also absorbs the one-off GAE and
    shuffling (tiny). Every response is counted at T tokens (decoding stops early when all
    envs answered) and the truncation bootstrap value at every step (an upper bound).
    """
    c, p = a.config, a.config.ppo
    n_steps, t_new = c.ppo.num_steps, c.max_new_tokens
    units = {}
    with jax.set_mesh(a.mesh):
        r = _flops(steps["rollout"]["compiled"])
        u = _flops(steps["update"]["compiled"])
        t0 = time.time()
        xla = a.compiler_options
        v = _flops(jax.jit(a.actor.last_value, compiler_options=xla)
                   .lower(a.params, a.carry).compile())
        d = _flops(_decode_step(a).compile())
        o = _flops(jax.jit(lambda g, s, q: optax.apply_updates(q, a.tx.update(g, s, q)[0]),
                           compiler_options=xla).lower(a.params, a.opt_state, a.params).compile())
        f = 0.0
        chunks = 1
        n = p.num_envs * p.num_steps
        if p.kl_coef > 0:
            chunk = n // (p.minibatches * p.micro_batches)
            chunks = n // max(1, chunk)
            f = _flops(_score_chunk(a, steps["trajectory"], chunk).compile())
        log(f"[plan] FLOP units compiled in {time.time() - t0:.0f} s")
    g = max(u - o - f, 0.0)
    rollout = n_steps * (r - v) + v + n_steps * (t_new - 2) * d
    k = p.epochs * p.minibatches
    update = u + (k * p.micro_batches - 1) * g + (k - 1) * o + (chunks - 1) * f
    units.update(rollout_program=r, update_program=u, bootstrap_value=v, decode_step=d,
                 optimizer_step=o, reference_chunk=f, micro_batch=g)
    return {"rollout": rollout, "update": update, "iteration": rollout + update,
            "units": units}


def _decode_step(a: Abstract):
    """The sampler's decode loop for the rollout's batch (its body is counted once)."""
    b, plen, t = a.config.ppo.num_envs, a.prompt_tokens, a.config.max_new_tokens
    cfg = a.policy.cfg
    policy, actor = a.policy, a.actor
    vlm = a.params["vlm"]  # LoRA, when on, is merged into weights of these same shapes
    sh = Shardings(a.mesh, vlm)

    def prefill(vlm_params, ids, mask, frames, key):
        model = nnx.merge(policy.vlm_graph, vlm_params)
        cache = init_cache(cfg.text, b, plen + t, model.dtype)
        knobs = sampling.make_knobs(1.0, eos_ids=actor.sampling.eos_ids)
        return sampling.prefill(model, ids, mask, policy.preprocess(frames), cache, key, knobs,
                                cfg=actor.sampling)

    ids = jax.ShapeDtypeStruct((b, plen), jnp.int32)
    frames = jax.ShapeDtypeStruct((b, a.config.image_size, a.config.image_size, 3), jnp.uint8)
    state, cache = jax.eval_shape(prefill, vlm, ids, ids, frames, a.key)
    kw = sampling.jit_shardings(sh)["decode"]
    state_sh, cache_sh = kw["in_shardings"][1], kw["in_shardings"][2]
    cache_sh = jax.tree.map(lambda _: cache_sh, cache)

    def decode(vlm_params, state, cache):
        model = nnx.merge(policy.vlm_graph, vlm_params)
        return sampling.decode(model, state, cache, cfg=actor.sampling)

    return jax.jit(decode, compiler_options=a.compiler_options).lower(
        vlm, _with_shardings(state, state_sh), _with_shardings(cache, cache_sh))


def _score_chunk(a: Abstract, traj, chunk: int):
    """`ppo.score` of the KL reference on one chunk of samples (the update's `lax.map` body)."""
    batch = NamedSharding(a.mesh, P(BATCH))
    policy, temp = a.policy, float(a.config.ppo.temperature)

    def row(x):
        return jax.ShapeDtypeStruct((chunk, *x.shape[2:]), x.dtype, sharding=batch)

    def score(params, frames, ids, mask, tokens, tmask):
        return ppo_lib.score(policy.model(params), ids, mask, policy.preprocess(frames), tokens,
                             tmask, temp)[0]

    tmask = jax.ShapeDtypeStruct((chunk, traj.tokens.shape[-1]), jnp.bool_, sharding=batch)
    params = a.ref_params if a.ref_params is not None else a.params
    return jax.jit(score, compiler_options=a.compiler_options).lower(
        params, row(traj.frames), row(traj.prompt_ids), row(traj.prompt_mask), row(traj.tokens),
        tmask)


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


def _fit(xs, ys, at):
    """Least-squares line through (xs, ys), evaluated at `at`; and the largest residual."""
    slope, intercept = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    resid = max(abs(slope * x + intercept - y) for x, y in zip(xs, ys, strict=True))
    return slope * at + intercept, resid


def extrapolate(runs: list[dict], depths: list[int], full: int) -> dict:
    """Per-quantity linear fits in the decoder depth (KV cache, remat residuals, gradients and
    per-layer FLOPs grow linearly with it; one layer's working set does not)."""
    out = {"trajectory_bytes": runs[-1]["trajectory_bytes"],
           "compile_seconds": {k: sum(r["compile_seconds"][k] for r in runs)
                               for k in ("rollout", "update")}}
    resid = {}
    for prog in ("rollout", "update"):
        out[prog] = {}
        for k in runs[0][prog]:
            v, e = _fit(depths, [r[prog][k] for r in runs], full)
            out[prog][k] = int(round(v))
            resid[f"{prog}.{k}"] = e
    if "flops" in runs[0]:
        fl = {"units": {}}
        for k in ("rollout", "update", "iteration"):
            fl[k] = _fit(depths, [r["flops"][k] for r in runs], full)[0]
        for k in runs[0]["flops"]["units"]:
            fl["units"][k] = _fit(depths, [r["flops"]["units"][k] for r in runs], full)[0]
        out["flops"] = fl
    out["extrapolated"] = {
        "probe_layers": depths, "full_layers": full,
        "probes": [{"layers": d, "rollout": r["rollout"], "update": r["update"],
                    **({"flops_iteration": r["flops"]["iteration"]} if "flops" in r else {})}
                   for d, r in zip(depths, runs, strict=True)],
        "largest_fit_residual_bytes": max(resid.values()),
    }
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
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.mesh = ",".join(map(str, shape))
    validate_config(config)  # batch sizes that do not divide over the mesh, bad PPO sizes
    p = config.ppo
    buffer = p.num_envs * p.num_steps
    if buffer % p.minibatches or (buffer // p.minibatches) % p.micro_batches:
        raise PlanError(f"ppo buffer {buffer} does not split into {p.minibatches} minibatches "
                        f"of {p.micro_batches} micro-batches")
    kw = dict(preset=preset, prompt_tokens=prompt_tokens, fast_compile=fast_compile,
              disable_passes=disable_passes, devices=devices, config_path=config_path)
    a = build(config, shape, **kw)
    full_depth = a.policy.cfg.text.num_layers
    if probe_layers:
        probes = sorted({int(x) for x in probe_layers})
        if len(probes) < 2 or probes[0] < 1 or probes[-1] >= full_depth:
            raise PlanError(f"--probe_layers needs two or more depths in [1, {full_depth}), "
                            f"got {list(probe_layers)}")
        runs = []
        for depth in probes:
            log(f"[plan] probe: {depth} of {full_depth} decoder layers")
            runs.append(measure(build(config, shape, text_layers=depth, **kw), flops, log))
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
            "remat": bool(config.model.remat), "lora_rank": _lora_rank(config),
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
        "compiler_options": a.compiler_options or {},
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


def warnings(report, shape) -> list[str]:
    """Settings that compile but waste the mesh."""
    d, f, t = shape
    pp, out = report["ppo"], []
    micro = pp["micro_batch_size"]
    if micro % (d * f):
        most = max(1, micro * pp["micro_batches"] // (d * f))
        out.append(f"a micro-batch of {micro} samples does not split over data x fsdp = "
                   f"{d * f} devices: its activations are not batch-sharded (devices repeat "
                   f"work); use ppo.micro_batches <= {most} so each micro-batch has a "
                   f"multiple of {d * f} samples")
    return out


def contributors(report) -> list[dict]:
    """The peak phase's parts, largest first."""
    b = report["per_device_bytes"]
    if b["rollout_phase_peak"] >= b["update_phase_peak"]:
        phase = "rollout"
        parts = {"params": b["params"], "optimizer state": b["optimizer_state"],
                 "reference params": b["reference_params"], "KV cache": b["kv_cache"],
                 "other rollout temporaries": b["rollout_temporaries_besides_kv_cache"],
                 "trajectory (rollout output)": b["trajectory"], "env state": b["env_state"]}
    else:
        phase = "update"
        parts = {"params": b["params"], "optimizer state": b["optimizer_state"],
                 "reference params": b["reference_params"],
                 "update temporaries (activations, gradients)": b["update_temporaries"],
                 "trajectory (update input)": b["trajectory"], "env state": b["env_state"]}
    return [{"phase": phase, "part": k, "bytes": v}
            for k, v in sorted(parts.items(), key=lambda kv: -kv[1]) if v > 0]


def _sharded_state_bytes(a: Abstract, shape) -> int:
    """params + optimiser state + reference per device on another mesh (no compile)."""
    mesh = jax.sharding.AbstractMesh(tuple(shape), AXES)

    def per(tree):
        total = 0
        for x in jax.tree.leaves(tree):
            spec = x.sharding.spec
            shard = list(x.shape)
            for dim, axes in enumerate(spec):
                if axes is None:
                    continue
                axes = (axes,) if isinstance(axes, str) else axes
                shard[dim] //= math.prod(mesh.shape[ax] for ax in axes)
            total += int(np.prod(shard, dtype=np.int64)) * _itemsize(x.dtype)
        return total

    out = per(a.params) + per(a.opt_state)
    return out + (per(a.ref_params) if a.ref_params is not None else 0)


def _divides(a: Abstract, shape) -> bool:
    mesh = jax.sharding.AbstractMesh(tuple(shape), AXES)
    try:
        for v in a.params.values():
            param_shardings(v, mesh)
    except ShardingError:
        return False
    p = a.config.ppo
    return p.num_envs % (shape[0] * shape[1]) == 0


def suggestions(a: Abstract, report, shape, target) -> list[dict]:
    """Concrete changes, largest estimated saving first (estimates; re-plan to confirm)."""
    c, p = a.config, a.config.ppo
    b = report["per_device_bytes"]
    upd_phase = b["update_phase_peak"] >= b["rollout_phase_peak"]
    state = b["params"] + b["optimizer_state"] + b["reference_params"]
    out = []
    d, f, t = shape
    n = d * f * t
    cand = []
    if d > 1:
        cand.append((1, d * f, t))
    if target.devices is None:
        cand += [(d, f * 2, t), (d, f * 4, t)]
    for new in cand:
        if _divides(a, new):
            saved = state - _sharded_state_bytes(a, new)
            extra = "" if math.prod(new) == n else f" ({math.prod(new)} devices)"
            out.append({"change": f"--mesh {','.join(map(str, new))}{extra}",
                        "why": "shard params and optimiser state over more devices (fsdp)",
                        "saves_bytes": saved, "estimate": "exact"})
            break
    if not c.model.remat and upd_phase:
        out.append({"change": "--config.model.remat=True",
                    "why": "recompute each layer's activations in the backward pass",
                    "saves_bytes": b["update_temporaries"] // 2, "estimate": "at most"})
    micro = (p.num_envs * p.num_steps) // (p.minibatches * p.micro_batches)
    if upd_phase and micro % 2 == 0 and (micro // 2) % (d * f) == 0:
        out.append({"change": f"--config.ppo.micro_batches={p.micro_batches * 2}",
                    "why": f"micro-batches of {micro // 2} instead of {micro}: half the "
                           "activations live at once", "saves_bytes": b["update_temporaries"] // 2,
                    "estimate": "at most"})
    if jnp.dtype(c.model.param_dtype) == jnp.float32:
        out.append({"change": "--config.model.param_dtype=bfloat16",
                    "why": "bf16 params (and, with optax's defaults, bf16 Adam moments); "
                           "less precise updates", "saves_bytes": state // 2,
                    "estimate": "exact"})
    rank = _lora_rank(c)
    if rank == 0:
        if "lora_rank" in p:
            frac = _lora_fraction(a, 128, report["model"]["trainable_params"])
            out.append({"change": "--config.ppo.lora_rank=128",
                        "why": "LoRA: Adam state only for adapters and the value head (RL4VLM: "
                               "r=128); merging adapters adds temporaries, re-plan",
                        "saves_bytes": int(b["optimizer_state"] * (1 - frac)),
                        "estimate": "rough"})
        else:
            out.append({"change": "LoRA (ppo.lora_rank)", "why": "not available in this "
                        "checkout; would drop most of the optimiser state", "saves_bytes": 0,
                        "estimate": "rough"})
    heads = math.gcd(a.policy.cfg.text.num_kv_heads, a.policy.cfg.vision.num_heads)
    temps = b["update_temporaries"] if upd_phase else b["rollout_temporaries"]
    for k in (8, 4, 2):
        new = (d, f // k, t * k)
        if f % k == 0 and heads % (t * k) == 0 and _divides(a, new):
            out.append({"change": f"--mesh {','.join(map(str, new))}",
                        "why": f"tensor parallelism x{k}: each device gathers 1/{t * k} of a "
                               "layer's weights over fsdp, attention and MLP activations split "
                               "by heads (rough: half the saving the ratio suggests)",
                        "saves_bytes": int(temps * (1 - 1 / k) / 2), "estimate": "rough"})
            break
    if not upd_phase and p.num_envs % 2 == 0 and (p.num_envs // 2) % (d * f) == 0:
        out.append({"change": f"--config.ppo.num_envs={p.num_envs // 2} "
                              f"--config.ppo.num_steps={p.num_steps * 2}",
                    "why": "half the envs per rollout (same buffer): half the KV cache and "
                           "rollout activations", "saves_bytes": b["rollout_temporaries"] // 2,
                    "estimate": "at most"})
    return sorted(out, key=lambda s: -s["saves_bytes"])


def _lora_fraction(a: Abstract, rank: int, trainable: int) -> float:
    """(adapters of `rank` + value head) / the current trainable params (for the estimate)."""
    try:
        paths = lora_lib.target_paths(a.params["vlm"])
        flat = {"/".join(_keys(p)): x
                for p, x in jax.tree_util.tree_leaves_with_path(a.params["vlm"])}
        adapters = sum(sum(lora_lib._split(path, flat[path].shape)) * rank for path in paths)
    except Exception:  # noqa: BLE001 - an optional estimate
        return 1.0
    return min(1.0, (adapters + count(a.params["value"])) / max(trainable, 1))


# ------------------------------------------------------------------------------------ output
def _gib(x) -> str:
    """Right-aligned GiB (or MiB below 0.1 GiB), 12 characters."""
    if abs(x) >= 0.1 * GIB:
        return f"{x / GIB:8.2f} GiB"
    return f"{x / 2**20:8.2f} MiB"


def format_report(r: dict) -> str:
    b, m, pp = r["per_device_bytes"], r["model"], r["ppo"]
    mesh = " ".join(f"{k}={v}" for k, v in r["mesh"].items())
    lines = [
        f"Plan for {r['config'] or 'config'} on {r['device']} ({r['accelerator']}, "
        f"{r['devices']} devices x {r['hbm_per_device'] / GIB:.1f} GiB), mesh {mesh}",
        f"Model: {m['source']}: {m['params']:,} params ({m['trainable_params']:,} trainable), "
        f"{m['dtype']} compute, {m['param_dtype']} params, remat {'on' if m['remat'] else 'off'}"
        + (f", LoRA r={m['lora_rank']}" if m["lora_rank"] else ""),
        f"Prompt {m['prompt_tokens']} tokens ({m['prompt_tokens_source']}), "
        f"{m['max_new_tokens']} new tokens; {pp['num_envs']} envs x {pp['num_steps']} steps, "
        f"{pp['epochs']} epochs x {pp['minibatches']} minibatches x {pp['micro_batches']} "
        f"micro-batches of {pp['micro_batch_size']}",
        "",
        "per device",
        f"  {'params':<46}{_gib(b['params'])}",
        f"  {'optimiser state':<46}{_gib(b['optimizer_state'])}",
        f"  {'KL reference params':<46}{_gib(b['reference_params'])}",
        f"  {'env state':<46}{_gib(b['env_state'])}",
        f"  {'KV cache (closed form)':<46}{_gib(b['kv_cache'])}",
        f"  {'rollout temporaries (XLA, incl. KV cache)':<46}{_gib(b['rollout_temporaries'])}",
        f"  {'trajectory buffer':<46}{_gib(b['trajectory'])}",
        f"  {'update temporaries (XLA)':<46}{_gib(b['update_temporaries'])}",
        f"  {'peak during rollout':<46}{_gib(b['rollout_phase_peak'])}",
        f"  {'peak during update':<46}{_gib(b['update_phase_peak'])}",
        f"  {'PEAK':<46}{_gib(b['peak'])}  of {r['hbm_per_device'] / GIB:.2f} GiB "
        f"({100 * r['peak_share_of_hbm']:.0f}%; budget {r['budget_per_device'] / GIB:.2f} with "
        f"{100 * r['headroom']:.0f}% headroom) -> {'FITS' if r['fits'] else 'DOES NOT FIT'}",
    ]
    if "flops" in r:
        f = r["flops"]
        lines += ["", "FLOPs per PPO iteration (XLA cost analysis x loop trip counts)",
                  f"  {'':<12}{'per device':>14}{'total':>14}"]
        for k in ("rollout", "update", "iteration"):
            lines.append(f"  {k:<12}{f['per_device'][k]:14.3e}{f['total'][k]:14.3e}")
        lines.append(f"  at the device's peak bf16 rate an iteration takes >= "
                     f"{f['seconds_at_peak']:.1f} s")
    for w in r.get("warnings", []):
        lines.append(f"warning: {w}")
    cs = r["compile_seconds"]
    lines.append(f"\nCompiled on {r['devices']} simulated CPU devices: rollout "
                 f"{cs['rollout']:.0f} s, update {cs['update']:.0f} s; planned in "
                 f"{r['wall_seconds']:.0f} s")
    ex = r.get("extrapolated")
    if ex:
        args = r["xla_memory_analysis"]["rollout"]["arguments"]
        lines.append(f"XLA's figures (temporaries, FLOPs) extrapolated linearly from "
                     f"{', '.join(map(str, ex['probe_layers']))} to {ex['full_layers']} decoder "
                     f"layers (largest fit residual {ex['largest_fit_residual_bytes'] / 2**20:.1f}"
                     f" MiB; rollout arguments {args / GIB:.3f} GiB extrapolated vs "
                     f"{ex['rollout_arguments_exact'] / GIB:.3f} exact)")
    if not r["fits"]:
        parts = ", ".join(f"{c['part']} {c['bytes'] / GIB:.2f} GiB" for c in r["contributors"])
        lines += ["", f"Does not fit: the {r['contributors'][0]['phase']} phase peaks at "
                      f"{b['peak'] / GIB:.2f} GiB: {parts}.", "Try (estimated savings; re-plan to "
                      "confirm):"]
        for s in r["suggestions"]:
            saving = f"-{s['saves_bytes'] / GIB:.2f} GiB"
            lines.append(f"  {s['change']:<50} {saving:>11} {s['estimate']:<8} {s['why']}")
    return "\n".join(lines)


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


def _missing_fields(argv: list[str]) -> list[str]:
    """`--config.a.b=v` overrides naming fields the config file does not have."""
    import importlib.util

    path = _flag_value(argv, "config")
    if not path:
        return []
    file, _, arg = path.partition(":")
    try:
        spec = importlib.util.spec_from_file_location("_plan_config", file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        config = module.get_config(arg) if arg else module.get_config()
    except Exception:  # noqa: BLE001 - the flags parser reports unreadable files itself
        return []
    missing = []
    for a in argv:
        if a.startswith("--config."):
            field = a[len("--config."):].split("=", 1)[0]
            node = config
            for part in field.split("."):
                if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                    missing.append(field)
                    break
                node = node[part]
    return missing


def main(argv: list[str]) -> int:
    fv = _define_flags(flags.FlagValues())
    if any(a in ("-h", "--help", "--helpfull") for a in argv[1:]):
        print(__doc__)
        print(fv.get_help())
        return 0
    try:
        fv(argv)
    except (flags.Error, KeyError, ValueError, AttributeError) as e:
        missing = _missing_fields(argv[1:])
        if missing:
            print(f"error: the config has no field {', '.join(missing)} (from "
                  f"{', '.join('--config.' + m for m in missing)})", file=sys.stderr)
        else:
            print(f"error: {e}", file=sys.stderr)
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
