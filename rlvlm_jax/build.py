"""The one builder: everything a run needs, made from the experiment config, concretely or
shape-only.

`build(config, workdir)` is what `train`, `evaluate` and `plan` call. It reads the whole config
once, checks it, and hands each component the section it owns:

    tokenizer  <- config.tokenizer (or the checkpoint's)        text/tokenizer.py
    env        <- task, image_size (env.kind "gymnax"), or the      envs/
                  host task spec env.host (env.kind "host")      envs/host.py
    prompts    <- task, cot, template (PromptEncoder)            text/prompt_encoder.py
    policy     <- config.model (+ model.checkpoint)              rl/policy.py, models/
    optimisers <- config.sft, config.ppo                         rl/optimizer.py, rl/lora.py
    mesh       <- config.mesh (params by the rule table)         sharding.py
    compiled   <- SFT step and greedy answers, rollout, PPO      rl/sft.py, rl/rollout.py,
                  update, evaluation                             rl/ppo.py

`config.env.kind` (default "gymnax") picks the environment: the jitted card tasks, stepped inside
the compiled rollout, or "host": a gymnasium environment named by the task spec `config.env.host`
("package.module:name", see `envs.host`), stepped on the host between compiled policy steps
(`rl.host_rollout.HostActor`); everything else (SFT, the PPO update, evaluation, checkpoints) is
the same `Run`.

With `abstract=True` nothing is allocated: params, optimiser state and env states are
`jax.ShapeDtypeStruct`s carrying the shardings the concrete run would have, so the planner
compiles exactly the functions training calls. `Run.restore_target(stage)` is the one checkpoint
template that training (resume) and evaluation restore into.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import numbers
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from etils import epath
from flax import serialization
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import rlvlm_jax.envs as envs
from rlvlm_jax import pretrain as pretrain_lib
from rlvlm_jax.config_files import field as _field
from rlvlm_jax.data import card_suite
from rlvlm_jax.envs import host as host_lib
from rlvlm_jax.envs import original_style
from rlvlm_jax.rl import advantages as adv_lib
from rlvlm_jax.rl import lora as lora_lib
from rlvlm_jax.rl import losses, sft_data, single_turn
from rlvlm_jax.rl import optimizer as optim
from rlvlm_jax.rl import policy as policy_lib
from rlvlm_jax.rl import ppo as ppo_lib
from rlvlm_jax.rl import rewards as rewards_lib
from rlvlm_jax.rl import sft as sft_lib
from rlvlm_jax.rl.host_rollout import HostActor
from rlvlm_jax.rl.rollout import Actor, EnvCarry
from rlvlm_jax.sharding import BATCH, make_mesh, param_shardings
from rlvlm_jax.text.prompt_encoder import TEMPLATES, PromptEncoder
from rlvlm_jax.text.tokenizer import get_tokenizer

STAGES = ("sft", "ppo")


# ------------------------------------------------------------------------------------ checks
# The names each config field may take: the registries the components look them up in.
DTYPES = ("float32", "bfloat16", "float16")  # model.dtype, model.param_dtype
INITS = ("normal", "fan_in")  # model.init (rl/policy.py: init_policy)
PIXELS = ("clip", "ink")  # model.pixels (rl/policy.py: Policy.preprocess)
ENV_KINDS = ("gymnax", "host")  # env.kind: jitted card tasks, or gymnasium envs on the host
NAMED = {  # field -> the names it may take
    "env.kind": ENV_KINDS,
    "env.style": envs.STYLES,  # the card tasks' pictures: ours, or gym_cards' own (300 px)
    "env.blanks": envs.BLANK_RULES,  # how "=" reads a blank token (EZPoints, Points24)
    "template": TEMPLATES,
    "model.family": policy_lib.FAMILIES,  # random-init architecture (a checkpoint says its own)
    "model.init": INITS,
    "model.pixels": PIXELS,
    "model.dtype": DTYPES,
    "model.param_dtype": DTYPES,
    "ppo.policy_loss": tuple(losses.POLICY_LOSSES),
    "ppo.value_loss": tuple(losses.VALUE_LOSSES),
    "ppo.kl_estimator": tuple(losses.KL_ESTIMATORS),
    "ppo.token_reduction": tuple(losses.TOKEN_REDUCTIONS),
    "sft.text_corpus": sft_lib.TEXT_CORPORA,  # text-only records mixed into SFT ("": none)
}
# The largest picture side. Every environment carries its uint8 [S, S, 3] picture in its state
# and every rollout step stores one per environment (the trajectory's `frames`): 3 MiB each at
# 1024 px, so 1.5 GiB for the 7B config's 512-step buffer and 1.5 GiB for 500 evaluation
# environments, before any model memory. The largest tower this project loads (CLIP-L/336)
# takes 336 px, and a tower trained from scratch has (S / patch)^2 image tokens per prompt.
MAX_IMAGE_SIZE = 1024
# Fields that count something and the least each may be (0 allowed: "none" / "off").
AT_LEAST = {
    "max_new_tokens": 1, "log_every": 1, "checkpoint_every": 0, "keep_checkpoints": 1,
    "tokenizer.vocab_size": 1,
    "model.vision_hidden": 1, "model.vision_mlp": 1, "model.vision_layers": 1,
    "model.vision_heads": 1, "model.patch_size": 1, "model.text_hidden": 1, "model.text_mlp": 1,
    "model.text_layers": 1, "model.text_heads": 1, "model.text_kv_heads": 1,
    "model.vocab_size": 0, "model.max_positions": 1,
    "sft.steps": 0, "sft.warmup": 0, "sft.eval_every": 0, "sft.checkpoint_every": 0,
    "sft.text_batch_size": 0,
    "ppo.iterations": 0, "ppo.num_envs": 1, "ppo.num_steps": 1, "ppo.epochs": 1,
    "ppo.minibatches": 1, "ppo.micro_batches": 1, "ppo.warmup": 0, "ppo.lora_rank": 0,
    "eval.episodes": 0, "eval.every": 0,
}
# Real-valued fields and their closed ranges (None: unbounded on that side).
RANGES = {
    "sft.lr": (0.0, None), "sft.weight_decay": (0.0, None), "sft.grad_clip": (0.0, None),
    "sft.wrong_share": (0.0, 1.0),
    "ppo.lr": (0.0, None), "ppo.lr_end": (0.0, None), "ppo.weight_decay": (0.0, None),
    "ppo.grad_clip": (0.0, None), "ppo.vf_coef": (0.0, None), "ppo.kl_coef": (0.0, None),
    "ppo.ent_coef": (None, None), "ppo.gamma": (0.0, 1.0), "ppo.gae_lambda": (0.0, 1.0),
    "ppo.thought_lambda": (0.0, 1.0), "eval.temperature": (None, None),
}
# A tokenizer directory holds one of these (transformers' AutoTokenizer reads them).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def validate_config(config, *, abstract: bool = False, model=None) -> None:
    """Clear one-line errors (ValueError) for values that cannot work, before anything is built,
    compiled or written; `build` calls it first. Where each input is checked: BUILD.md, "Bad
    input".

    `abstract` (the planner: shape-only, nothing loaded) skips what only a concrete run needs:
    files that must exist and `require_checkpoint`. `model` ((LlavaConfig, tokenizer), the
    planner's presets) replaces the config's model architecture fields, which are then not
    checked here (`policy.llava_config` checks them when the planner uses them).
    """
    c, p = config, config.ppo
    if not is_host(c) and c.task not in {n.removesuffix("-v0") for n in envs.GYMNAX_IDS.values()}:
        raise ValueError(f"config.task {c.task!r} is not one of {list(envs.GYMNAX_IDS)}")
    _check_fields(c)
    if not all(isinstance(h, numbers.Integral) and not isinstance(h, bool) and h >= 1
               for h in tuple(c.model.value_hidden)):
        raise ValueError(f"config.model.value_hidden must be positive widths, got "
                         f"{c.model.value_hidden!r}")
    _check_rest(c, p, abstract, model)
    if is_host(c):
        _validate_host(c, abstract)
    elif _field(c, "env.style") == "original":
        original_style.find_card_images(_field(c, "env.card_images"), c.task)


def env_options(config) -> dict:
    """`envs.make`'s picture and rule options from `config.env` (all optional): style
    "original" draws gym_cards' own 300 px pictures, which the policy's preprocessing resizes
    to config.image_size; otherwise the env draws at image_size."""
    style = _field(config, "env.style")
    out = {"blanks": _field(config, "env.blanks")}
    if style == "original":
        out.update(style=style, card_images=_field(config, "env.card_images"))
    else:
        out["image_size"] = config.image_size
    return out


def is_host(config) -> bool:
    """Whether the run's environment is a host (gymnasium) one, `config.env.kind == "host"`."""
    return _field(config, "env.kind") == "host"


def _validate_host(c, abstract: bool) -> None:
    """A host run: the task spec loads, names the run's task, and its env's spaces fit it (one
    env is made); SFT has demonstrations to learn from. Before anything is compiled."""
    if abstract:
        raise ValueError("the planner does not take host environments (config.env.kind="
                         "'host'): their steps run on the host between compiled calls; plan "
                         "the run with env.kind='gymnax' and a card task of the same picture and "
                         "prompt sizes")
    if jax.process_count() > 1:
        raise ValueError("host environments (config.env.kind='host') run in one process only; "
                         "multi-host runs need env.kind='gymnax'")
    spec = host_lib.load_spec(_field(c, "env.host"), c)
    if spec.name != c.task:
        raise ValueError(f"config.task {c.task!r} is not the host task's name {spec.name!r} "
                         f"(config.env.host = {c.env.host!r}); set --config.task={spec.name}")
    host_lib.check_env(spec)
    if c.sft.steps > 0 and not (_field(c, "sft.json") or "") and spec.demonstrations is None:
        raise ValueError(f"config.sft.steps = {c.sft.steps} would generate demonstrations from "
                         f"the env's oracle, and the host task {spec.name!r} has none (its spec "
                         "gives no demonstrations function): give LLaVA-format demonstrations "
                         "with --config.sft.json=FILE, or set --config.sft.steps=0")


def _check_fields(c, named=None, at_least=None, ranges=None, required: bool = False) -> None:
    """Named choices, counts and ranges (default: the tables above). A field the config lacks
    passes, or with `required` is an error naming it."""
    named, at_least = NAMED if named is None else named, AT_LEAST if at_least is None else at_least
    ranges = RANGES if ranges is None else ranges

    def get(name, default):
        value = _field(c, name, None if required else default)
        if required and value is None:
            raise ValueError(f"config.{name} is missing (see experiments/suite_tiny.py)")
        return value

    for name, known in named.items():
        value = get(name, known[0])
        if value not in known:
            raise ValueError(f"config.{name} {value!r} is not one of {list(known)}")
    for name, low in at_least.items():
        value = get(name, low)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            raise ValueError(f"config.{name} must be an integer >= {low}, got {value!r}")
    for name, (low, high) in ranges.items():
        value = get(name, low or 0.0)
        if not (isinstance(value, numbers.Real) and math.isfinite(value)
                and (low is None or value >= low) and (high is None or value <= high)):
            bound = {(True, True): "a finite number", (False, True): f">= {low}",
                     (True, False): f"<= {high}"}.get((low is None, high is None),
                                                     f"in [{low}, {high}]")
            raise ValueError(f"config.{name} must be {bound}, got {value!r}")


def _check_rest(c, p, abstract: bool, model) -> None:
    # Pictures: the env draws them at image_size; legible text needs a least size per task
    # (a host env's pictures are resized to image_size: only the card tasks' sizes are known).
    # With env.style "original" the env always draws 300 px and image_size is the tower's input.
    drawn_here = c.task in envs.TASKS and _field(c, "env.style") == "default"
    smallest = envs.TASKS[c.task].min_image_size() if drawn_here else 1
    if isinstance(c.image_size, bool) or not isinstance(c.image_size, numbers.Integral) \
            or not smallest <= c.image_size <= MAX_IMAGE_SIZE:
        raise ValueError(f"config.image_size must be in [{smallest}, {MAX_IMAGE_SIZE}] for "
                         f"{c.task} (its smallest text needs {smallest} px; the bound above is "
                         f"the memory of the carried pictures), got {c.image_size!r}")

    # Sampling and PPO.
    if p.iterations > 0:
        buffer = p.num_envs * p.num_steps
        if buffer % p.minibatches:
            raise ValueError(f"ppo buffer num_envs*num_steps = {buffer} does not split into "
                             f"ppo.minibatches = {p.minibatches}")
        if (buffer // p.minibatches) % p.micro_batches:
            raise ValueError(f"ppo minibatch of {buffer // p.minibatches} does not split into "
                             f"ppo.micro_batches = {p.micro_batches}")
        if not (math.isfinite(p.temperature) and p.temperature > 0):
            raise ValueError("ppo.temperature must be > 0 (log-probs are taken at it)")
    if _field(c, "ppo.policy_loss") == "ppo_clip" and not p.clip_eps > 0:
        raise ValueError(f"ppo.clip_eps must be > 0 with the ppo_clip loss, got {p.clip_eps}")
    if _field(c, "ppo.value_loss") == "clipped" and not p.value_clip_eps > 0:
        raise ValueError(f"ppo.value_clip_eps must be > 0 with the clipped value loss, got "
                         f"{p.value_clip_eps}")
    if p.lora_rank > 0:
        if not (math.isfinite(p.lora_alpha) and p.lora_alpha > 0):
            raise ValueError("ppo.lora_rank must be >= 0 (0: full fine-tuning) and ppo.lora_alpha "
                             "> 0 with adapters")
        if not [t for t in str(p.lora_targets).split(",") if t.strip()]:
            raise ValueError("ppo.lora_targets names no weights (ppo.lora_rank > 0)")
    if c.eval.episodes > 0 and c.eval.max_steps < 1:
        raise ValueError(f"config.eval.max_steps must be >= 1, got {c.eval.max_steps}")

    # SFT.
    sft_json = _field(c, "sft.json") or ""
    if c.sft.steps > 0:
        if c.sft.batch_size < 1 or c.sft.eval_samples < 1:
            raise ValueError(f"sft.batch_size and sft.eval_samples must be >= 1, got "
                             f"{c.sft.batch_size} and {c.sft.eval_samples}")
        if not sft_json and c.sft.num_demos < 1:
            raise ValueError(f"sft.num_demos must be >= 1, got {c.sft.num_demos}")
        if not sft_json and c.sft.batch_size > c.sft.num_demos:
            raise ValueError("sft.batch_size is larger than sft.num_demos")
    corpus, text_batch = _field(c, "sft.text_corpus"), _field(c, "sft.text_batch_size")
    if bool(corpus) != bool(text_batch):
        raise ValueError(f"config.sft.text_corpus = {corpus!r} and sft.text_batch_size = "
                         f"{text_batch}: set both (text-only records per SFT step) or neither")
    if (corpus or _field(c, "sft.sort_values")) and c.task != "Points24":
        raise ValueError(f"config.sft.text_corpus and sft.sort_values are for Points24, not "
                         f"{c.task}; set them to '' and False")

    # Devices.
    shape = mesh_shape(c)
    if shape is not None:
        per = shape[0] * shape[1]
        for name, n in (("ppo.num_envs", p.num_envs), ("eval.episodes", c.eval.episodes),
                        ("sft.batch_size", c.sft.batch_size),
                        ("sft.text_batch_size", _field(c, "sft.text_batch_size"))):
            if n and n % per:
                raise ValueError(f"{name} = {n} does not divide over the mesh's data x fsdp = "
                                 f"{per} devices")

    # The model from the config's fields (no checkpoint, no planner preset).
    checkpoint = c.model.checkpoint or ""
    _check_qwen_support(c, model)
    if model is None and not checkpoint:
        _validate_architecture(c)
        if starts_from_reader(c):
            _validate_recipe(c, None if c.task in envs.TASKS else ())

    # Files and what only a concrete run needs.
    if not abstract and c.require_checkpoint and not checkpoint:
        raise ValueError("this config needs a pretrained model (config.require_checkpoint): set "
                         "--config.model.checkpoint=DIR, a transformers LLaVA directory; a model "
                         "of its size drawn at random learns nothing and does not fit in memory")
    if model is None:
        _validate_files(c, abstract)
    if not abstract and c.sft.steps > 0 and sft_json and not os.path.isfile(sft_json):
        raise ValueError(f"config.sft.json {sft_json!r} is not a file")


def _validate_architecture(c) -> None:
    """The config's model section as an architecture, checked by the model configs' own
    `validate` before the tokenizer is built (the vocabulary is not known yet: any size fits)."""
    m = c.model
    try:
        cfg = policy_lib.architecture(m, c.image_size, max(int(m.vocab_size), 64))
        ids = {"image_token_id": 0}
        if policy_lib.chat_of(cfg) == "qwen":
            ids["video_token_id"] = 0
        cfg = dataclasses.replace(cfg, **ids)
        cfg.validate()
    except ValueError as e:
        raise ValueError(f"config.model and config.image_size do not describe a model: {e}"
                         ) from None
    image_tokens = cfg.num_image_tokens
    if image_tokens + 1 + c.max_new_tokens > m.max_positions:
        raise ValueError(f"{image_tokens} image tokens + max_new_tokens ({c.max_new_tokens}) "
                         f"exceed the model's {m.max_positions} positions "
                         "(config.model.max_positions) before any prompt text")


def is_qwen(config, model=None) -> bool:
    """Whether the run's model is a Qwen2-VL / Qwen2.5-VL (the planner's preset, the checkpoint's
    model_type, else config.model.family)."""
    if model is not None:
        return policy_lib.chat_of(model[0]) == "qwen"
    checkpoint = config.model.checkpoint or ""
    if checkpoint:
        return policy_lib.checkpoint_model_type(checkpoint) in policy_lib.QWEN_MODEL_TYPES
    return policy_lib.family(config.model) != "llava"


def _check_qwen_support(c, model) -> None:
    """What does not run a Qwen model yet, refused by name before anything is built."""
    if not is_qwen(c, model):
        return
    if is_host(c):
        raise ValueError("env.kind 'host' runs LLaVA models only (its prompts use <image>); use "
                         "the jitted card tasks (env.kind 'gymnax') with a Qwen model")
    if c.sft.steps > 0 and (_field(c, "sft.json") or ""):
        raise ValueError("config.sft.json holds LLaVA conversations (<image>): it does not feed "
                         "a Qwen model; use the generated demonstrations (sft.json '')")
    if starts_from_reader(c):
        raise ValueError("config.pretrain builds a LLaVA reader; with a Qwen model "
                         "(model.family) set config.pretrain.enabled=False or give "
                         "model.checkpoint")


def starts_from_reader(config) -> bool:
    """Whether a run starts from the reader its `pretrain` recipe makes (no model.checkpoint)."""
    return not config.model.checkpoint and "pretrain" in config and bool(config.pretrain.enabled)


def _validate_recipe(c, tasks: tuple[str, ...] | None = None) -> None:
    """The reader's recipe, before minutes of pretraining: its tasks, picture size and patches
    (`pretrain.task_list`), and that it reads this run's task (or `tasks`)."""
    names = pretrain_lib.task_list(pretrain_lib.reader_config(c))
    for task in (c.task,) if tasks is None else tasks:
        if task not in names:
            raise ValueError(f"config.pretrain.tasks {c.pretrain.tasks!r} does not include "
                             f"{task}: the reader would not have seen its pictures; add it, "
                             "or set config.pretrain.enabled=False to start from random weights")


def _validate_files(c, abstract: bool) -> None:
    """The tokenizer and checkpoint directories the build reads (local paths)."""
    checkpoint = c.model.checkpoint or ""
    tok_path = c.tokenizer.path or ""
    if tok_path and not os.path.isdir(tok_path):
        raise ValueError(f"config.tokenizer.path {tok_path!r} is not a directory")
    if tok_path and not any(os.path.isfile(os.path.join(tok_path, f)) for f in TOKENIZER_FILES):
        raise ValueError(f"config.tokenizer.path {tok_path!r} holds no tokenizer (none of "
                         f"{', '.join(TOKENIZER_FILES)})")
    if not checkpoint:
        return
    if not os.path.isdir(checkpoint):
        raise ValueError(f"config.model.checkpoint {checkpoint!r} is not a directory")
    from rlvlm_jax.models import conversion

    if abstract:
        if not os.path.isfile(os.path.join(checkpoint, "config.json")):
            raise ValueError(f"config.model.checkpoint {checkpoint!r} has no config.json")
    else:
        conversion._checkpoint_files(checkpoint)  # config.json and every safetensors shard
    has_tokenizer = any(os.path.isfile(os.path.join(checkpoint, f)) for f in TOKENIZER_FILES)
    if not tok_path and not has_tokenizer:
        raise ValueError(f"config.model.checkpoint {checkpoint!r} holds no tokenizer; set "
                         "config.tokenizer.path")
    cfg = policy_lib.load_config(checkpoint, c.image_size)
    if policy_lib.chat_of(cfg) == "llava" and cfg.vision.image_size != c.image_size:
        raise ValueError(f"the checkpoint's vision tower takes {cfg.vision.image_size} px; "
                         f"config.image_size is {c.image_size}")
    if tok_path and has_tokenizer and not abstract:
        from rlvlm_jax.text.tokenizer import load_tokenizer

        ours, theirs = load_tokenizer(tok_path), load_tokenizer(checkpoint)
        if ours.get_vocab() != theirs.get_vocab():
            raise ValueError(f"config.tokenizer.path {tok_path!r} is not the tokenizer of "
                             f"config.model.checkpoint {checkpoint!r} ({len(ours)} vs "
                             f"{len(theirs)} tokens, or other ids): the checkpoint's embeddings "
                             "belong to its own; leave tokenizer.path empty to use it")


def mesh_shape(config) -> tuple[int, int, int] | None:
    """config.mesh as (data, fsdp, tensor); with several processes and no mesh, data-parallel
    over every device of every process; None: one device, no mesh."""
    if config.mesh:
        try:
            shape = tuple(int(x) for x in str(config.mesh).split(","))
        except ValueError:
            shape = ()
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"config.mesh must be 'data,fsdp,tensor' sizes, got {config.mesh!r}")
        return shape
    if jax.process_count() > 1:
        return (jax.device_count(), 1, 1)
    return None


def compiler_options(config) -> dict | None:
    """XLA options of every compiled function of a run (`fast_compile`: optimisation level 0)."""
    return {"xla_backend_optimization_level": 0} if config.fast_compile else None


# ------------------------------------------------------------------------------------ the run
class Keys(NamedTuple):
    """The run's random streams, all from `config.seed`."""

    data: jax.Array  # SFT demonstrations
    held: jax.Array  # held-out SFT demonstrations
    sft: jax.Array  # SFT batches
    ppo: jax.Array  # PPO: adapters (fold 2), env reset (fold 1), rollouts/updates (fold 0)
    eval: jax.Array  # evaluation episodes


@dataclasses.dataclass
class Run:
    """Everything built once for a run. Arrays are concrete, or ShapeDtypeStructs with
    shardings when `abstract`; the compiled functions are jitted, not yet compiled."""

    config: Any
    abstract: bool
    tokenizer: Any
    cfg: Any  # LlavaConfig
    env: Any
    env_params: Any
    encoder: PromptEncoder
    policy: policy_lib.Policy
    init_params: dict
    mesh: Any  # jax Mesh or None (one device)
    keys: Keys
    compiler_options: dict | None
    sft_schedule: Any
    sft_tx: Any
    ppo_schedule: Any
    ppo_tx: Any
    actor: Actor
    sft_step: Any  # (params, opt, data, idx) -> (params, opt, metrics)
    sft_answer: Any  # greedy (params, frames, ids, mask) -> (tokens, lengths, action)
    rollout: Any  # (params, carry, key, temperature) -> (carry, traj, last_value)
    update: Any  # (params, opt, traj, last_value, key, ref) -> (params, opt, metrics)
    rollout_metrics: Any  # traj -> scalars
    evaluate_fn: Any  # (params, key, temperature) -> first-episode statistics
    host: host_lib.HostTaskSpec | None = None  # the task spec of a host env (env.kind "host")

    # --------------------------------------------------------------------------------- parts
    @property
    def num_params(self) -> int:
        return policy_lib.count_params(self.init_params)

    @property
    def lora(self) -> bool:
        return self.config.ppo.lora_rank > 0

    @property
    def keeps_reference(self) -> bool:
        """A frozen copy of the PPO start policy is kept for the KL term (under LoRA the
        frozen base weights are that policy, so no copy)."""
        return self.config.ppo.kl_coef > 0 and not self.lora

    def mesh_context(self):
        """The mesh for every compiled call (activations constrained), or nothing."""
        return contextlib.nullcontext() if self.mesh is None else jax.set_mesh(self.mesh)

    def with_lora(self, params):
        """params plus fresh LoRA adapters (the same draw on every call) when ppo.lora_rank > 0,
        placed by the rule table on a mesh."""
        if not self.lora:
            return params
        key = jax.random.fold_in(self.keys.ppo, 2)
        if self.abstract:
            shapes = jax.eval_shape(lambda p: lora_lib.add_lora(p, self.config.ppo, key),
                                    params)
            return {**params, "lora": self._place_shapes(shapes["lora"])}
        params = lora_lib.add_lora(params, self.config.ppo, key)
        if self.mesh is not None:
            params = {**params, "lora": jax.device_put(
                params["lora"], param_shardings(params["lora"], self.mesh))}
        return params

    def reset_envs(self, key) -> EnvCarry:
        """Fresh env states for the PPO environments, split over the mesh's batch axes (host
        envs: reset on the host, a `HostCarry` of host arrays)."""
        n = self.config.ppo.num_envs
        if self.host is not None:
            return self.actor.reset(key, n)
        if self.abstract:
            shapes = jax.eval_shape(lambda k: self.actor.reset(k, n), key)
            batch = None if self.mesh is None else NamedSharding(self.mesh, P(BATCH))
            return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=batch),
                                shapes)
        carry = self.actor.reset(key, n)
        if self.mesh is None:
            return carry
        batch = NamedSharding(self.mesh, P(BATCH))
        return jax.tree.map(lambda x: jax.device_put(x, batch), carry)

    def init_opt_state(self, tx, params):
        """`tx.init(params)`; shape-only, with each moment placed like its parameter."""
        if not self.abstract:
            return tx.init(params)
        shapes = jax.eval_shape(tx.init, params)
        return _follow_params(shapes, params, self._replicated())

    def key_struct(self):
        """A PRNG key (concrete: seed 0) or its ShapeDtypeStruct (replicated)."""
        if not self.abstract:
            return jax.random.key(0)
        s = jax.eval_shape(lambda: jax.random.key(0))
        return jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self._replicated())

    def demonstrations(self, num: int, key, wrong_share: float):
        """(SFT demonstrations, whether to encode their own prompt texts) generated for the
        run's task: the card env's oracle, or a host task spec's `demonstrations` (pictures
        resized to image_size; None when it has none)."""
        c = self.config
        if self.host is None:
            demos = sft_data.make_demonstrations(self.env, num, key, wrong_share, c.cot,
                                                 sort_values=_field(c, "sft.sort_values"))
            if self.env.image_size != c.image_size:  # the original style's 300 px pictures
                demos.images = host_lib.frames_of(demos.images, c.image_size)
            return demos, False
        if self.host.demonstrations is None:
            return None, True
        demos = self.host.demonstrations(num, key, wrong_share)
        demos.images = host_lib.frames_of(demos.images, c.image_size)
        return demos, True

    # ------------------------------------------------------------------------ checkpoints
    def ppo_state(self, params, opt_state, carry: EnvCarry, rng, ref_params):
        """The PPO checkpoint. A host env's state lives in the env and is not saved (only the
        running episode sums, for a fixed layout); resuming resets the envs."""
        if self.host is not None:
            env = {"ep_return": jnp.asarray(carry.ep_return),
                   "ep_length": jnp.asarray(carry.ep_length)}
        else:
            env = {"state": serialization.to_state_dict(carry.state),
                   "ep_return": carry.ep_return, "ep_length": carry.ep_length}
        state = {
            "params": params,
            "opt": opt_state,
            "env": env,
            "rng": _key_data(rng),
        }
        if self.keeps_reference:
            state["ref_params"] = ref_params
        return state

    def unpack_ppo_state(self, state, template_carry: EnvCarry):
        """(params, opt, carry, rng, ref_params) of a PPO checkpoint; `template_carry` is a
        fresh `reset_envs` carry. Host envs cannot be restored: the fresh carry goes on (new
        episodes; the saved episode sums are dropped)."""
        env = state["env"]
        if self.host is not None:
            carry = template_carry
        else:
            carry = EnvCarry(serialization.from_state_dict(template_carry.state, env["state"]),
                             env["ep_return"], env["ep_length"])
        return (state["params"], state["opt"], carry, jax.random.wrap_key_data(state["rng"]),
                state.get("ref_params"))

    def restore_target(self, stage: str, params=None):
        """The checkpoint layout of a stage ("sft" or "ppo"), to restore into; `params`
        defaults to the freshly built ones. Training's resume and evaluation both use it."""
        params = self.init_params if params is None else params
        if stage == "sft":
            return {"params": params, "opt": self.init_opt_state(self.sft_tx, params)}
        if stage != "ppo":
            raise ValueError(f"unknown checkpoint stage {stage!r}; known: {STAGES}")
        params = self.with_lora(params)
        if self.host is not None:  # the layout only: the envs are not touched
            carry = self.actor.placeholder(self.config.ppo.num_envs)
        else:
            carry = self.reset_envs(jax.random.fold_in(self.keys.ppo, 1))
        ref = params if self.keeps_reference else None
        return self.ppo_state(params, self.init_opt_state(self.ppo_tx, params), carry,
                              jax.random.fold_in(self.keys.ppo, 0), ref)

    # ------------------------------------------------------------------------ helpers
    def _replicated(self):
        return None if self.mesh is None else NamedSharding(self.mesh, P())

    def _place_shapes(self, shapes):
        if self.mesh is None:
            return shapes
        return with_shardings(shapes, param_shardings(shapes, self.mesh))


def _key_data(rng):
    if isinstance(rng, jax.ShapeDtypeStruct):
        return jax.eval_shape(jax.random.key_data, rng)
    return jax.random.key_data(rng)


def with_shardings(shapes, shardings):
    """ShapeDtypeStructs of `shapes` carrying `shardings` (a matching tree)."""
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, shardings)


def _path_keys(path) -> tuple:
    return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _follow_params(tree, params, fallback):
    """Shape-only optimiser state placed as `tx.init` on placed params places it: a leaf whose
    path ends with a param's path and has its shape gets that param's sharding (zeros_like keeps
    the placement); anything else (step counts) the fallback."""
    index = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        index[_path_keys(path)] = (tuple(leaf.shape), leaf.sharding)

    def one(path, leaf):
        ks = _path_keys(path)
        for i in range(len(ks)):
            hit = index.get(ks[i:])
            if hit is not None and hit[0] == tuple(leaf.shape):
                return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=hit[1])
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=fallback)

    return jax.tree_util.tree_map_with_path(one, tree)


# ------------------------------------------------------------------------------------ build
def build(config, workdir: str | None = None, *, abstract: bool = False, model=None,
          prompt_tokens: int | None = None, devices=None,
          xla_options: dict | None = None) -> Run:
    """Everything a run needs (see the module docstring). Raises ValueError on bad input before
    anything is compiled, and before anything is written when `validate_config` can tell;
    whatever it wrote into `workdir` (the card tokenizer, the directory itself) is removed again
    when it fails.

    `model`: (LlavaConfig, tokenizer) instead of the config's model section and tokenizer (the
    planner's presets); `prompt_tokens` (an int or a function of the PromptEncoder) overrides
    the padded prompt length (shape planning without the model's own tokenizer); `devices` for
    the mesh (default: all); `xla_options` replaces `compiler_options(config)`.
    """
    validate_config(config, abstract=abstract, model=model)
    shape = mesh_shape(config)
    if shape is not None:
        n, have = math.prod(shape), len(jax.devices() if devices is None else devices)
        if have < n:
            raise ValueError(f"the mesh {config.mesh} needs {n} devices but this process has "
                             f"{have}")
    with undo_on_error(workdir if model is None else None):
        return _build(config, workdir, abstract=abstract, model=model,
                      prompt_tokens=prompt_tokens, devices=devices, xla_options=xla_options)


@contextlib.contextmanager
def undo_on_error(workdir: str | None):
    """Removes what the block created in `workdir` when it raises: the directory itself (and the
    parents it needed) when it did not exist, else the entries that are new. A run that fails
    on its input leaves nothing behind (a half-made workdir would be taken for a run on the next
    start). Only process 0 removes (the only writer)."""
    if workdir is None:
        yield
        return
    root = epath.Path(workdir)
    existed = root.is_dir()
    before = {e.name for e in root.iterdir()} if existed else set()
    top = root  # the outermost directory the block may create (mkdir with parents)
    while not existed and top.parent != top and not top.parent.exists():
        top = top.parent
    try:
        yield
    except Exception:
        if jax.process_index() == 0 and top.is_dir():
            for entry in ([top] if not existed else
                          [e for e in root.iterdir() if e.name not in before]):
                if entry.is_dir():
                    entry.rmtree(missing_ok=True)
                else:
                    entry.unlink(missing_ok=True)
        raise


def _tokenizer_and_architecture(c, workdir, model):
    """(LlavaConfig, tokenizer): the planner's preset, the checkpoint's architecture (weights
    are loaded once the prompt is known to fit), or the config's model section."""
    if model is not None:
        cfg, tokenizer = model
        return cfg, tokenizer
    chat = "qwen" if is_qwen(c) else "llava"
    tokenizer = get_tokenizer(c.tokenizer, workdir, c.model.checkpoint, chat)
    if c.model.checkpoint:
        return policy_lib.load_config(c.model.checkpoint, c.image_size), tokenizer
    return policy_lib.llava_config(c.model, c.image_size, tokenizer), tokenizer


def check_positions(cfg, prompt_length: int, max_new_tokens: int) -> None:
    need = prompt_length + max_new_tokens
    if need > cfg.text.max_position_embeddings:
        raise ValueError(f"prompt ({prompt_length}) + max_new_tokens ({max_new_tokens}) = "
                         f"{need} exceeds the model's {cfg.text.max_position_embeddings} "
                         "positions (model.max_positions)")


def _policy_on_mesh(c, cfg, tokenizer, *, abstract, model, devices, lora_scale):
    """(cfg, Policy, params, shapes, mesh): weights loaded or drawn, placed by the rule table."""
    pretrained = None
    if model is None and c.model.checkpoint and not abstract:
        cfg, pretrained = policy_lib.load_pretrained(c.model, c.image_size, tokenizer)
    holder = {}

    def init():
        holder["policy"], params = policy_lib.init_policy(cfg, c.model, pretrained=pretrained,
                                                          lora_scale=lora_scale)
        return params

    if abstract:
        shapes = jax.eval_shape(init)
    else:
        params = init()
        shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    shape = mesh_shape(c)
    mesh = None
    if shape is not None:
        n = shape[0] * shape[1] * shape[2]
        devs = list(jax.devices() if devices is None else devices)
        if len(devs) < n:
            raise ValueError(f"the mesh {c.mesh} needs {n} devices but this process has "
                             f"{len(devs)}")
        mesh = make_mesh(shape, devs[:n])
    if abstract:
        params = shapes if mesh is None else with_shardings(
            shapes, {k: param_shardings(v, mesh) for k, v in shapes.items()})
    elif mesh is not None:
        params = {k: jax.device_put(v, param_shardings(v, mesh)) for k, v in params.items()}
    return cfg, holder["policy"], params, shapes, mesh


def _build(config, workdir, *, abstract, model, prompt_tokens, devices, xla_options) -> Run:
    c = config
    cfg, tokenizer = _tokenizer_and_architecture(c, workdir, model)
    bootstrap = not c.ppo.truncation_as_termination
    spec = host_lib.load_spec(c.env.host, c) if is_host(c) else None
    if spec is not None:  # a gymnasium env on the host (checked by validate_config)
        env, env_params, task = spec, None, spec.task
        encoder = host_lib.HostPrompts(spec, tokenizer, cfg.num_image_tokens)
    else:
        env, env_params = envs.make(c.task, final_observation=bootstrap, **env_options(c))
        task = c.task
        max_formula = getattr(env, "max_tokens", -1) + 1
        encoder = PromptEncoder(tokenizer, c.task, c.cot, c.template, cfg.num_image_tokens,
                                max_formula=max_formula, chat=policy_lib.chat_of(cfg))
    if prompt_tokens:  # an int, or a function of the encoder (the planner's estimate)
        encoder.length = int(prompt_tokens(encoder) if callable(prompt_tokens) else prompt_tokens)
    check_positions(cfg, encoder.length, c.max_new_tokens)
    cfg, policy, params, shapes, mesh = _policy_on_mesh(
        c, cfg, tokenizer, abstract=abstract, model=model, devices=devices,
        lora_scale=lora_lib.scale_of(c.ppo.lora_rank, c.ppo.lora_alpha))

    xla = compiler_options(c) if xla_options is None else xla_options
    keys = Keys(*jax.random.split(jax.random.key(c.seed), 5))
    sft_schedule = optim.warmup_cosine(c.sft.lr, c.sft.steps, c.sft.warmup)
    sft_tx = optim.make_optimizer(sft_schedule, c.sft.weight_decay, c.sft.grad_clip, shapes)
    updates = max(1, c.ppo.iterations * c.ppo.epochs * c.ppo.minibatches)
    ppo_schedule = optim.warmup_cosine(c.ppo.lr, updates, c.ppo.warmup, c.ppo.lr_end)
    ppo_shapes = shapes
    if c.ppo.lora_rank > 0:
        ppo_shapes = jax.eval_shape(lambda p: lora_lib.add_lora(p, c.ppo, keys.ppo), shapes)
    ppo_tx = optim.make_optimizer(ppo_schedule, c.ppo.weight_decay, c.ppo.grad_clip,
                                  ppo_shapes, c.ppo.freeze_vision)
    if spec is not None:
        actor = HostActor(spec, policy, tokenizer, encoder, c.image_size, c.max_new_tokens,
                          c.ppo.thought_lambda, c.ppo.action_only, bootstrap, mesh)
    else:
        actor = Actor(env, env_params, policy, tokenizer, encoder, c.max_new_tokens,
                      c.ppo.thought_lambda, c.ppo.action_only, bootstrap)
    max_new = c.max_new_tokens
    return Run(
        config=c, abstract=abstract, tokenizer=tokenizer, cfg=cfg, env=env,
        env_params=env_params, encoder=encoder, policy=policy, init_params=params, mesh=mesh,
        keys=keys, compiler_options=xla, sft_schedule=sft_schedule, sft_tx=sft_tx,
        ppo_schedule=ppo_schedule, ppo_tx=ppo_tx, actor=actor,
        sft_step=sft_lib.make_sft_step(policy, sft_tx, compiler_options=xla),
        sft_answer=sft_lib.make_sft_eval(policy, tokenizer, task, max_new,
                                         compiler_options=xla),
        rollout=actor.make_rollout(c.ppo.num_steps, xla),
        update=ppo_lib.make_ppo_update(policy, ppo_tx, c.ppo, xla),
        rollout_metrics=jax.jit(lambda traj: {**ppo_lib.rollout_metrics(traj, max_new),
                                              "tokens": jnp.sum(traj.lengths)}),
        evaluate_fn=actor.make_evaluate(c.eval.episodes, c.eval.max_steps, xla),
        host=spec,
    )


# ------------------------------------------------------------------------ the single-turn run
# MAYE's setting (rl/single_turn.py): the same tokenizer, policy, mesh and optimiser code as the
# card-task run above, with problems instead of an environment and no critic.
SINGLE_TURN_NAMED = {
    "rl.algorithm": tuple(adv_lib.ADVANTAGE_ESTIMATORS),
    "rl.policy_loss": tuple(losses.POLICY_LOSSES),
    "rl.kl_estimator": tuple(losses.KL_ESTIMATORS),
    "data.reward": tuple(rewards_lib.REWARD_CHECKERS),
}
SINGLE_TURN_AT_LEAST = {
    "rl.epochs": 0, "rl.iterations_per_epoch": 1, "rl.prompts_per_batch": 1, "rl.group_size": 1,
    "rl.minibatches": 1, "rl.update_epochs": 1, "rl.warmup": 0, "data.train_size": 1,
    "data.eval_size": 1, "eval.pass_k": 1, "eval.batch_size": 1, "prompt_length": 0,
}
SINGLE_TURN_RANGES = {
    "rl.lr": (0.0, None), "rl.lr_end": (0.0, None), "rl.weight_decay": (0.0, None),
    "rl.grad_clip": (0.0, None), "rl.clip_eps": (0.0, None), "rl.kl_loss_coef": (0.0, None),
    "rl.kl_reward_coef": (0.0, None), "rl.ent_coef": (None, None), "rl.temperature": (0.0, None),
    "rl.no_eos_penalty": (None, None),
}


def validate_single_turn(config) -> None:
    """Clear one-line errors for a single-turn config, before anything is built or written."""
    c, r = config, config.rl
    _check_fields(c)
    _check_fields(c, SINGLE_TURN_NAMED, SINGLE_TURN_AT_LEAST, SINGLE_TURN_RANGES, required=True)
    adv_lib.check_groups(r.prompts_per_batch * r.group_size, r.group_size)
    batch = r.prompts_per_batch * r.group_size
    if batch % r.minibatches:
        raise ValueError(f"rl.prompts_per_batch * rl.group_size = {batch} responses do not "
                         f"split into rl.minibatches = {r.minibatches}")
    if r.algorithm in ("grpo", "rloo") and r.group_size < 2:
        raise ValueError(f"rl.algorithm {r.algorithm!r} compares samples of one prompt: "
                         f"rl.group_size must be >= 2, got {r.group_size}")
    if not r.temperature > 0:
        raise ValueError("rl.temperature must be > 0 (log-probs are taken at 1.0)")
    shape = mesh_shape(c)
    if shape is not None:  # batches split over data x fsdp
        per = shape[0] * shape[1]
        for name, n in (("rl.prompts_per_batch", r.prompts_per_batch),
                        ("responses per minibatch", batch // r.minibatches),
                        ("eval.batch_size", c.eval.batch_size),
                        ("sft.batch_size", c.sft.batch_size)):
            if n % per:
                raise ValueError(f"{name} = {n} does not divide over the mesh's data x fsdp = "
                                 f"{per} devices")
    for split in ("train", "validation", "test"):
        source = str(c.data[split])
        if source != "suite" and not os.path.isfile(source):
            raise ValueError(f"config.data.{split} {source!r} is neither 'suite' (the generated "
                             "card suite) nor a JSONL file")
    kinds = suite_kinds(c)
    if any(str(c.data[s]) == "suite" for s in ("train", "validation", "test")):
        unknown = [k for k in kinds if k not in card_suite.KINDS]
        if not kinds or unknown:
            raise ValueError(f"config.data.suite_kinds {c.data.suite_kinds!r}: unknown "
                             f"{unknown or 'none given'}; known: {list(card_suite.KINDS)}")
        for k in kinds:
            judges = card_suite.KINDS[k].checkers
            if judges is not None and c.data.reward not in judges:
                raise ValueError(f"config.data.suite_kinds has {k}, which config.data.reward "
                                 f"{c.data.reward!r} cannot judge: use one of "
                                 f"{list(judges)}")
    checkpoint = c.model.checkpoint or ""
    _check_qwen_support(c, None)
    if not checkpoint:
        _validate_architecture(c)
        if starts_from_reader(c):
            _validate_recipe(c, tuple(sorted({card_suite.KINDS[k].task for k in kinds})))
    _validate_files(c, abstract=False)


def suite_kinds(config) -> list[str]:
    """config.data.suite_kinds ("a,b") as a list."""
    return [k.strip() for k in str(config.data.suite_kinds).split(",") if k.strip()]


@dataclasses.dataclass
class SingleTurnRun:
    """Everything built once for a single-turn run (see `rl.single_turn`)."""

    config: Any
    tokenizer: Any
    cfg: Any  # LlavaConfig
    policy: policy_lib.Policy
    init_params: dict
    mesh: Any
    keys: Keys
    sft_tx: Any
    sft_step: Any  # (params, opt, data, idx) -> (params, opt, metrics)
    rl_tx: Any
    stages: Any  # rl.single_turn.SingleTurn: collect, trajectory, update

    @property
    def num_params(self) -> int:
        return policy_lib.count_params(self.init_params)

    @property
    def keeps_reference(self) -> bool:
        return self.config.rl.kl_loss_coef > 0 or self.config.rl.kl_reward_coef > 0

    def mesh_context(self):
        return contextlib.nullcontext() if self.mesh is None else jax.set_mesh(self.mesh)

    def restore_target(self, stage: str, params=None):
        params = self.init_params if params is None else params
        if stage == "sft":
            return {"params": params, "opt": self.sft_tx.init(params)}
        if stage != "rl":
            raise ValueError(f"unknown checkpoint stage {stage!r}; known: sft, rl")
        state = {"params": params, "opt": self.rl_tx.init(params)}
        if self.keeps_reference:
            state["ref_params"] = params
        return state


def build_single_turn(config, workdir: str | None = None) -> SingleTurnRun:
    """The single-turn run: tokenizer, policy (no value head is trained), optimisers and the
    four compiled stages. Raises ValueError on bad input before anything is compiled."""
    validate_single_turn(config)
    with undo_on_error(workdir):
        c = config
        cfg, tokenizer = _tokenizer_and_architecture(c, workdir, None)
        if c.prompt_length:  # else the data's longest prompt, checked by train_single.load_data
            check_positions(cfg, c.prompt_length, c.max_new_tokens)
        cfg, policy, params, shapes, mesh = _policy_on_mesh(
            c, cfg, tokenizer, abstract=False, model=None, devices=None, lora_scale=0.0)
        xla = compiler_options(c)
        keys = Keys(*jax.random.split(jax.random.key(c.seed), 5))
        sft_tx = optim.make_optimizer(optim.warmup_cosine(c.sft.lr, c.sft.steps, c.sft.warmup),
                                      c.sft.weight_decay, c.sft.grad_clip, shapes)
        r = c.rl
        updates = max(1, r.epochs * r.iterations_per_epoch * r.update_epochs * r.minibatches)
        rl_tx = optim.make_optimizer(optim.warmup_cosine(r.lr, updates, r.warmup, r.lr_end),
                                     r.weight_decay, r.grad_clip, shapes, r.freeze_vision)
        pad = tokenizer.pad_token_id or 0
        return SingleTurnRun(
            config=c, tokenizer=tokenizer, cfg=cfg, policy=policy, init_params=params,
            mesh=mesh, keys=keys, sft_tx=sft_tx,
            sft_step=sft_lib.make_sft_step(policy, sft_tx, compiler_options=xla),
            rl_tx=rl_tx,
            stages=single_turn.SingleTurn(policy, rl_tx, r, c.max_new_tokens, pad, xla))
