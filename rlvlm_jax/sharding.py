"""The device mesh and THE table of partition rules.

One mesh with three named axes:
    data    pure data parallelism (params replicated along it)
    fsdp    data parallelism with params (and optimizer state) sharded along it (ZeRO-3 style)
    tensor  Megatron-style tensor parallelism: attention heads, MLP hidden units, vocabulary
The batch is split over (data, fsdp). Every parameter path must match a rule in PARAM_RULES;
a parameter no rule covers is an error, so a new parameter cannot silently end up replicated.

Compiled functions get explicit in/out shardings from `Shardings`; inside them the model
constrains activations through `constrain`, which is a no-op when no mesh is set (single device).
Mixed precision: build the graph with `dtype=jnp.bfloat16` and keep float32 params (the master
copy); weights are cast per use, gradients come back in float32.
"""

from __future__ import annotations

import math
import re

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("data", "fsdp", "tensor")
BATCH = ("data", "fsdp")  # the batch dimension is split over both data-parallel axes

# Qwen2-VL / Qwen2.5-VL params the rules below do not cover (or cover only by the replicated
# catch-all); every other Qwen param (vision q/k/v/o and fc1/fc2, the merger as projector/linear_*,
# the decoder) matches the CLIP/LLaVA/LLaMA rules with the same shapes. Shapes: qwen_vision.py.
QWEN_PARAM_RULES: tuple[tuple[str, P], ...] = (
    (r"^vision/patch_proj$", P(None, "fsdp")),  # (C*T*P*P, Dv)
    (r"^vision/layers/\d+/(gate|up)_proj$", P("fsdp", "tensor")),  # (Dv, F) Qwen2.5 SwiGLU
    (r"^vision/layers/\d+/(gate|up)_bias$", P("tensor")),  # (F,)
    (r"^vision/layers/\d+/down_proj$", P("tensor", "fsdp")),  # (F, Dv)
    (r"^text/layers/\d+/[qkv]_bias$", P("tensor", None)),  # (H or K, hd), like the projections
)

# (regex searched in the "/"-joined param path, PartitionSpec). First match wins. Per-layer
# weights live at vision/layers/<i>/... and text/layers/<i>/... . Shapes: clip.py, llama.py.
PARAM_RULES: tuple[tuple[str, P], ...] = QWEN_PARAM_RULES + (
    # CLIP vision tower
    (r"^vision/patch_embed$", P(None, None, None, "fsdp")),  # (p, p, C, D)
    (r"^vision/pos_embed$", P(None, "fsdp")),  # (N + 1, D)
    (r"^vision/layers/\d+/[qkv]_proj$", P("fsdp", "tensor", None)),  # (D, H, hd)
    (r"^vision/layers/\d+/[qkv]_bias$", P("tensor", None)),  # (H, hd)
    (r"^vision/layers/\d+/o_proj$", P("tensor", None, "fsdp")),  # (H, hd, D)
    (r"^vision/layers/\d+/fc1$", P("fsdp", "tensor")),  # (D, F)
    (r"^vision/layers/\d+/fc1_bias$", P("tensor")),  # (F,)
    (r"^vision/layers/\d+/fc2$", P("tensor", "fsdp")),  # (F, D)
    # projector
    (r"^projector/linear_1$", P("fsdp", "tensor")),  # (Dv, Dt)
    (r"^projector/linear_1_bias$", P("tensor")),  # (Dt,)
    (r"^projector/linear_2$", P("tensor", "fsdp")),  # (Dt, Dt)
    # LLaMA / Mistral decoder
    (r"^text/embed$", P("tensor", "fsdp")),  # (V, D)
    (r"^text/lm_head$", P("fsdp", "tensor")),  # (D, V)
    (r"^text/layers/\d+/[qkv]_proj$", P("fsdp", "tensor", None)),  # (D, H or K, hd)
    (r"^text/layers/\d+/o_proj$", P("tensor", None, "fsdp")),  # (H, hd, D)
    (r"^text/layers/\d+/(gate|up)_proj$", P("fsdp", "tensor")),  # (D, F)
    (r"^text/layers/\d+/down_proj$", P("tensor", "fsdp")),  # (F, D)
    # LoRA adapters (rl/lora.py), keyed "text.layers.0.q_proj/lora_a": A (fan_in, r), B (r, fan_out)
    (r"/lora_a$", P("fsdp", None)),
    (r"/lora_b$", P(None, "fsdp")),
    # value head (small MLP): replicated
    (r"(^|/)(kernel|bias)_\d+$", P()),
    # norm scales, biases of width D, the class token: small vectors, replicated
    (r"(norm\w*|_bias|class_embed)$", P()),
)

CACHE_SPEC = P(BATCH, "tensor", None, None)  # each layer's K or V cache (B, K, C, hd)
ROPE_DELTA_SPEC = P(BATCH)  # the (B,) rope delta an M-RoPE model (Qwen2-VL) keeps in its cache


def cache_specs(rope_delta: bool = False):
    """PartitionSpecs of a decoding cache, as a prefix of its pytree: CACHE_SPEC for every K
    and V, and with `rope_delta` the M-RoPE models' extra (B,) entry split over the batch."""
    if not rope_delta:
        return CACHE_SPEC
    return {"k": CACHE_SPEC, "v": CACHE_SPEC, "rope_delta": ROPE_DELTA_SPEC}


class ShardingError(ValueError):
    """A mesh that does not fit the devices, the params or the batch."""


def make_mesh(shape: tuple[int, int, int] | None = None, devices=None) -> Mesh:
    """A (data, fsdp, tensor) mesh with Auto axes (classic GSPMD propagation).

    `jax.make_mesh` now defaults to Explicit axes, which changes how every jitted function
    types its values; we build `Mesh` directly with AxisType.Auto instead.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = (len(devices), 1, 1) if shape is None else tuple(shape)
    if len(shape) != len(AXES) or any(int(s) < 1 for s in shape):
        raise ShardingError(f"mesh shape must be 3 positive sizes for {AXES}, got {shape}")
    if math.prod(shape) != len(devices):
        raise ShardingError(f"mesh {dict(zip(AXES, shape, strict=True))} needs "
                            f"{math.prod(shape)} devices, but {len(devices)} are available")
    return Mesh(np.asarray(devices).reshape(shape), AXES, axis_types=(AxisType.Auto,) * 3)


def _path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def spec_for(path: str) -> P:
    for pattern, spec in PARAM_RULES:
        if re.search(pattern, path):
            return spec
    raise ShardingError(f"parameter {path!r} matches no rule in rlvlm_jax.sharding.PARAM_RULES")


def param_specs(params) -> dict:
    """The PartitionSpec of every parameter, by the rule table."""
    return jax.tree_util.tree_map_with_path(lambda p, _: spec_for(_path_str(p)), params)


def _check_divides(name: str, shape, spec: P, mesh: Mesh) -> None:
    for dim, axes in enumerate(spec):
        if axes is None:
            continue
        axes = (axes,) if isinstance(axes, str) else axes
        n = math.prod(mesh.shape[a] for a in axes)
        if dim >= len(shape) or shape[dim] % n:
            size = shape[dim] if dim < len(shape) else "missing"
            raise ShardingError(f"{name}: dimension {dim} (size {size}) of shape {tuple(shape)} "
                                f"is not divisible by mesh axes {axes} (size {n}); choose a mesh "
                                f"that divides it")


def param_shardings(params, mesh: Mesh) -> dict:
    """NamedSharding per parameter; raises ShardingError if the mesh does not divide a dim."""

    def one(path, leaf):
        name = _path_str(path)
        spec = spec_for(name)
        _check_divides(f"parameter {name!r}", np.shape(leaf), spec, mesh)
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(one, params)


def shard_params(params, mesh: Mesh):
    """Place params on the mesh as the rule table says."""
    return jax.device_put(params, param_shardings(params, mesh))


def constrain(x: jax.Array, spec: P) -> jax.Array:
    """with_sharding_constraint when a mesh is set (jax.set_mesh) and it divides x; else x."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    for dim, axes in enumerate(spec):
        if axes is None:
            continue
        axes = (axes,) if isinstance(axes, str) else axes
        if x.shape[dim] % math.prod(mesh.shape[a] for a in axes):
            return x  # e.g. a batch of 1 on a data-parallel mesh: let the compiler decide
    return jax.lax.with_sharding_constraint(x, spec)


class Shardings:
    """Shardings of everything the compiled model functions take and return, for one mesh."""

    def __init__(self, mesh: Mesh, params):
        self.mesh = mesh
        self.params = param_shardings(params, mesh)
        self.replicated = NamedSharding(mesh, P())
        self.batch = NamedSharding(mesh, P(BATCH))  # leading batch dim; any rank

    @property
    def batch_divisor(self) -> int:
        return self.mesh.shape["data"] * self.mesh.shape["fsdp"]

    def check_batch(self, batch: int) -> None:
        if batch % self.batch_divisor:
            raise ShardingError(f"batch {batch} is not divisible by data x fsdp = "
                                f"{self.batch_divisor} on mesh {dict(self.mesh.shape)}")

    def cache_sharding(self, cache):
        def one(path, x):
            delta = _path_str(path[:1]) == "rope_delta"
            spec = ROPE_DELTA_SPEC if delta else CACHE_SPEC
            _check_divides("rope delta" if delta else "KV cache", x.shape, spec, self.mesh)
            return NamedSharding(self.mesh, spec)

        return jax.tree_util.tree_map_with_path(one, cache)

    def cache_prefix(self, rope_delta: bool = False):
        """NamedShardings of a decoding cache as a pytree prefix (`cache_specs`), for jit."""
        return jax.tree.map(lambda s: NamedSharding(self.mesh, s), cache_specs(rope_delta),
                            is_leaf=lambda x: isinstance(x, P))

    def jit(self, fn, args: str, out_shardings=None, **kwargs):
        """jax.jit with explicit shardings, called under this mesh (so `constrain` applies).

        `args` has one letter per positional argument of `fn`: "p" params (by the rule table),
        "b" split on its leading batch dim, "r" replicated. `out_shardings` defaults to letting
        the compiler choose. The jitted function is `wrapper.jitted`.
        """
        table = {"p": self.params, "b": self.batch, "r": self.replicated}
        jitted = jax.jit(fn, in_shardings=tuple(table[c] for c in args),
                         out_shardings=out_shardings, **kwargs)
        mesh = self.mesh

        def call(*a):
            with jax.set_mesh(mesh):
                return jitted(*a)

        call.jitted = jitted
        return call
