"""LoRA adapters as extra params, merged into the frozen weights inside each compiled step.

RL4VLM fine-tuned with LoRA (r=128, alpha=256) on the language model and projector, the vision
tower frozen and the value head trained fully. Here an adapted weight W (any rank: q_proj is
(D, H, hd), o_proj is (H, hd, D)) is viewed as a (fan_in, fan_out) matrix and used as
W + (alpha / r) * A @ B, with A ~ N(0, 1/fan_in) and B = 0, so a fresh adapter changes nothing.
The model code stays unaware: `Policy.model(params)` merges, and gradients reach only A, B (and
the value head) because the base weights are stopped and get no optimiser update.

Adapters live in `params["lora"]` as a flat dict keyed by the dotted weight path
("text.layers.0.q_proj") holding {"lora_a", "lora_b"}; the sharding table places them.
Deliberate difference: no LoRA dropout (the original used 0.05), so the PPO ratio of an
unchanged policy is exactly 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rlvlm_jax.sharding import constrain, spec_for

# The language model's linear maps and the projector (PEFT-style target names).
DEFAULT_TARGETS = ("q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,"
                   "linear_1,linear_2")
_SCOPES = ("text/layers/", "projector/")  # never the vision tower, embeddings or lm_head
_IN_IS_FIRST = ("q_proj", "k_proj", "v_proj")  # (D, heads, head_dim): fan-in is D


def _path(path) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in path)


def _split(name: str, shape) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight viewed as a matrix."""
    k = 1 if name.rsplit("/", 1)[-1] in _IN_IS_FIRST else len(shape) - 1
    return int(np.prod(shape[:k])), int(np.prod(shape[k:]))


def target_paths(vlm_params, targets: str = DEFAULT_TARGETS) -> list[str]:
    """The "/"-joined paths of the weights that get adapters."""
    names = [t.strip() for t in targets.split(",") if t.strip()]
    if not names:
        raise ValueError("ppo.lora_targets names no weights; e.g. "
                         f"{DEFAULT_TARGETS!r}")
    found = []
    for path, x in jax.tree_util.tree_flatten_with_path(vlm_params)[0]:
        p = _path(path)
        leaf = p.rsplit("/", 1)[-1]
        if np.ndim(x) >= 2 and p.startswith(_SCOPES) and leaf in names:
            found.append(p)
    missing = [n for n in names if not any(p.endswith("/" + n) for p in found)]
    if missing:
        raise ValueError(f"ppo.lora_targets {missing} match no weight of the language model or "
                         f"projector; valid names: {DEFAULT_TARGETS}")
    return found


def init_lora(vlm_params, rank: int, key, targets: str = DEFAULT_TARGETS,
              dtype=jnp.float32) -> dict:
    """Fresh adapters (B = 0) for every target weight."""
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    flat = {_path(p): x for p, x in jax.tree_util.tree_flatten_with_path(vlm_params)[0]}
    out = {}
    for i, p in enumerate(target_paths(vlm_params, targets)):
        fan_in, fan_out = _split(p, flat[p].shape)
        a = jax.random.normal(jax.random.fold_in(key, i), (fan_in, rank), dtype)
        out[p.replace("/", ".")] = {"lora_a": a / np.sqrt(fan_in),
                                    "lora_b": jnp.zeros((rank, fan_out), dtype)}
    return out


def merge(vlm_params, lora: dict | None, scale: float, dtype=None):
    """vlm params with every adapted weight replaced by W + scale * A @ B.

    `dtype` (the compute dtype): matrices, adapted or not, come out in it; the sum is taken in
    float32 and rounded once, which is what the model's own cast of the merged weight did.
    Without it, adapted weights keep W's dtype. Cast matrices are held to the rule table's
    sharding, so the cast and merge happen on each device's shard before any FSDP gather.
    """
    cast = dtype is not None and jnp.dtype(dtype) != jnp.float32
    if not lora and not cast:
        return vlm_params
    lora = lora or {}

    def one(path, w):
        name = _path(path)
        ab = lora.get(name.replace("/", "."))
        out_dtype = dtype if cast and w.ndim >= 2 else w.dtype
        if ab is None and out_dtype == w.dtype:
            return w
        if ab is None:
            out = w.astype(out_dtype)
        else:
            delta = (ab["lora_a"] @ ab["lora_b"]).reshape(w.shape)
            out = (w.astype(jnp.float32) + scale * delta).astype(out_dtype)
        return constrain(out, spec_for(name))

    return jax.tree_util.tree_map_with_path(one, vlm_params)


def scale_of(rank: int, alpha: float) -> float:
    return float(alpha) / float(rank) if rank else 0.0


def add_lora(params, ppo, key):
    """params with fresh adapters when `ppo.lora_rank` > 0 (else unchanged); `ppo` is the
    config section holding lora_rank and lora_targets."""
    if ppo.lora_rank <= 0:
        return params
    return {**params, "lora": init_lora(params["vlm"], int(ppo.lora_rank), key,
                                        ppo.lora_targets)}


def base_params(params):
    """params without adapters: the policy LoRA started from (the KL reference under LoRA)."""
    return {k: v for k, v in params.items() if k != "lora"}
