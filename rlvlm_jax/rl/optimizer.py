"""The optimiser: warm-up + cosine schedule, clipped AdamW, frozen parts (vision tower; all of
LLaVA under LoRA) that get no update, no optimiser state and no gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def warmup_cosine(lr: float, steps: int, warmup: int = 0, end: float | None = None):
    """Linear warm-up to `lr`, then cosine to `end` (lr / 10 by default) at `steps`."""
    end = lr / 10 if end is None else end
    steps = max(int(steps), 1)
    warmup = min(int(warmup), steps - 1)
    if warmup <= 0:
        return optax.cosine_decay_schedule(lr, steps, alpha=end / lr if lr else 0.0)
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, steps, end)


def _frozen_base(params) -> bool:
    """With LoRA adapters, the whole LLaVA is frozen: only adapters and value head train."""
    return "lora" in params


def trainable_labels(params, freeze_vision: bool):
    """'frozen' for the vision tower's leaves when `freeze_vision` and for every LLaVA weight
    when params carry LoRA adapters; else 'train'."""
    base = _frozen_base(params)

    def label(path, _):
        keys = [getattr(k, "key", None) for k in path[:2]]
        if keys[0] == "vlm" and (base or (freeze_vision and keys[1] == "vision")):
            return "frozen"
        return "train"

    return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(schedule, weight_decay: float, grad_clip: float, params,
                   freeze_vision: bool = False) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW (decay on matrices only); frozen leaves get no update
    and no optimiser state (optax.set_to_zero keeps none)."""
    def decay_mask(tree):
        return jax.tree.map(lambda p: p.ndim >= 2, tree)

    inner = optax.chain(
        optax.clip_by_global_norm(grad_clip) if grad_clip > 0 else optax.identity(),
        optax.adamw(schedule, weight_decay=weight_decay, mask=decay_mask),
    )
    if not (freeze_vision or _frozen_base(params)):
        return inner
    labels = trainable_labels(params, freeze_vision)
    return optax.multi_transform({"train": inner, "frozen": optax.set_to_zero()}, labels)


def stop_frozen(params, freeze_vision: bool):
    """Stop gradients into frozen weights (the vision tower; all of LLaVA under LoRA), so the
    backward pass skips them entirely."""
    if _frozen_base(params):
        return {**params, "vlm": jax.lax.stop_gradient(params["vlm"])}
    if not freeze_vision:
        return params
    vlm = dict(params["vlm"])
    vlm["vision"] = jax.lax.stop_gradient(vlm["vision"])
    return {**params, "vlm": vlm}


def trainable_part(tree, freeze_vision: bool) -> list:
    """The leaves of a params-shaped tree (e.g. gradients) that train.

    Frozen leaves' gradients are constant zeros: checking or norming them is wasted work, and
    XLA's constant folding evaluates such checks on the host at compile time (for CLIP-L's
    ~300M frozen weights that stalled a 7B compile)."""
    labels = jax.tree.leaves(trainable_labels(tree, freeze_vision))
    return [x for x, label in zip(jax.tree.leaves(tree), labels, strict=True)
            if label == "train"]


def tree_finite(tree) -> jax.Array:
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))
