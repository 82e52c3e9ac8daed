"""The one builder: everything a run needs, made from the experiment config, concretely or
shape-only.

`build(config, workdir)` is what `train`, `evaluate` and `plan` call. It reads the whole config
once, checks it, and hands each component the section it owns:

    tokenizer  <- config.tokenizer (or the checkpoint's)        text/tokenizer.py
    env        <- task, image_size                               envs/
    prompts    <- task, cot, template (PromptEncoder)            text/prompt_encoder.py
    policy     <- config.model (+ model.checkpoint)              rl/policy.py, models/
    optimisers <- config.sft, config.ppo                         rl/optimizer.py, rl/lora.py
    mesh       <- config.mesh (params by the rule table)         sharding.py
    compiled   <- SFT step and greedy answers, rollout, PPO      rl/sft.py, rl/rollout.py,
                  update, evaluation                             rl/ppo.py

With `abstract=True` nothing is allocated: params, optimiser state and env states are
`jax.ShapeDtypeStruct`s carrying the shardings the concrete run would have, so the planner
compiles exactly the functions training calls. `Run.restore_target(stage)` is the one checkpoint
template that training (resume) and evaluation restore into.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import serialization
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import rlvlm_jax.envs as envs
from rlvlm_jax.rl import lora as lora_lib
from rlvlm_jax.rl import optimizer as optim
from rlvlm_jax.rl import policy as policy_lib
from rlvlm_jax.rl import ppo as ppo_lib
from rlvlm_jax.rl import sft as sft_lib
from rlvlm_jax.rl.rollout import Actor, EnvCarry
from rlvlm_jax.sharding import BATCH, make_mesh, param_shardings
from rlvlm_jax.text.prompt_encoder import PromptEncoder
from rlvlm_jax.text.tokenizer import get_tokenizer

STAGES = ("sft", "ppo")


# ------------------------------------------------------------------------------------ checks
def validate_config(config) -> None:
    """Clear errors for values that cannot work, before anything is built or compiled."""
    p = config.ppo
    if config.task not in {n.removesuffix("-v0") for n in envs.GYMNAX_IDS.values()}:
        raise ValueError(f"config.task {config.task!r} is not one of {list(envs.GYMNAX_IDS)}")
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
    if p.lora_rank < 0 or (p.lora_rank > 0 and p.lora_alpha <= 0):
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
        """Fresh env states for the PPO environments, split over the mesh's batch axes."""
        n = self.config.ppo.num_envs
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

    # ------------------------------------------------------------------------ checkpoints
    def ppo_state(self, params, opt_state, carry: EnvCarry, rng, ref_params):
        state = {
            "params": params,
            "opt": opt_state,
            "env": {"state": serialization.to_state_dict(carry.state),
                    "ep_return": carry.ep_return, "ep_length": carry.ep_length},
            "rng": _key_data(rng),
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

    def restore_target(self, stage: str, params=None):
        """The checkpoint layout of a stage ("sft" or "ppo"), to restore into; `params`
        defaults to the freshly built ones. Training's resume and evaluation both use it."""
        params = self.init_params if params is None else params
        if stage == "sft":
            return {"params": params, "opt": self.init_opt_state(self.sft_tx, params)}
        if stage != "ppo":
            raise ValueError(f"unknown checkpoint stage {stage!r}; known: {STAGES}")
        params = self.with_lora(params)
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
    anything is compiled.

    `model`: (LlavaConfig, tokenizer) instead of the config's model section and tokenizer (the
    planner's presets); `prompt_tokens` (an int or a function of the PromptEncoder) overrides
    the padded prompt length (shape planning without the model's own tokenizer); `devices` for
    the mesh (default: all); `xla_options` replaces `compiler_options(config)`.
    """
    validate_config(config)
    c = config
    pretrained = None
    if model is not None:
        cfg, tokenizer = model
    else:
        tokenizer = get_tokenizer(c.tokenizer, workdir, c.model.checkpoint)
        if c.model.checkpoint and not abstract:
            cfg, pretrained = policy_lib.load_pretrained(c.model, c.image_size, tokenizer)
        elif c.model.checkpoint:
            from rlvlm_jax.models.conversion import load_hf_config

            cfg = load_hf_config(c.model.checkpoint)
        else:
            cfg = policy_lib.llava_config(c.model, c.image_size, tokenizer)
    bootstrap = not c.ppo.truncation_as_termination
    env, env_params = envs.make(c.task, image_size=c.image_size, final_observation=bootstrap)
    max_formula = getattr(env, "max_tokens", -1) + 1
    encoder = PromptEncoder(tokenizer, c.task, c.cot, c.template, cfg.num_image_tokens,
                            max_formula=max_formula)
    if prompt_tokens:  # an int, or a function of the encoder (the planner's estimate)
        encoder.length = int(prompt_tokens(encoder) if callable(prompt_tokens) else prompt_tokens)
    need = encoder.length + c.max_new_tokens
    if need > cfg.text.max_position_embeddings:
        raise ValueError(f"prompt ({encoder.length}) + max_new_tokens ({c.max_new_tokens}) = "
                         f"{need} exceeds the model's {cfg.text.max_position_embeddings} "
                         "positions (model.max_positions)")

    lora_scale = lora_lib.scale_of(c.ppo.lora_rank, c.ppo.lora_alpha)
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
    policy = holder["policy"]
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
    actor = Actor(env, env_params, policy, tokenizer, encoder, c.max_new_tokens,
                  c.ppo.thought_lambda, c.ppo.action_only, bootstrap)
    max_new = c.max_new_tokens
    return Run(
        config=c, abstract=abstract, tokenizer=tokenizer, cfg=cfg, env=env,
        env_params=env_params, encoder=encoder, policy=policy, init_params=params, mesh=mesh,
        keys=keys, compiler_options=xla, sft_schedule=sft_schedule, sft_tx=sft_tx,
        ppo_schedule=ppo_schedule, ppo_tx=ppo_tx, actor=actor,
        sft_step=sft_lib.make_sft_step(policy, sft_tx, compiler_options=xla),
        sft_answer=sft_lib.make_sft_eval(policy, tokenizer, c.task, max_new,
                                         compiler_options=xla),
        rollout=actor.make_rollout(c.ppo.num_steps, xla),
        update=ppo_lib.make_ppo_update(policy, ppo_tx, c.ppo, xla),
        rollout_metrics=jax.jit(lambda traj: {**ppo_lib.rollout_metrics(traj, max_new),
                                              "tokens": jnp.sum(traj.lengths)}),
        evaluate_fn=actor.make_evaluate(c.eval.episodes, c.eval.max_steps, xla),
    )
