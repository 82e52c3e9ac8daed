"""RL4VLM's value head: an MLP on the final hidden state at the last prompt token."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rlvlm_jax.models.common import param


class ValueHead(nnx.Module):
    """hidden -> 1024 -> ReLU -> 512 -> ReLU -> 1 (sizes configurable), computed in float32.

    Kept float32 because it is small and trained from scratch next to a bf16 backbone.
    """

    def __init__(self, in_dim: int, hidden: tuple[int, ...] = (1024, 512), *,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        sizes = (in_dim, *hidden, 1)
        self.num_layers = len(sizes) - 1
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            std = (1.0 / a) ** 0.5
            setattr(self, f"kernel_{i}", param(rngs, (a, b), param_dtype, std=std))
            setattr(self, f"bias_{i}", param(rngs, (b,), param_dtype, "zeros"))

    def __call__(self, hidden: jax.Array) -> jax.Array:
        """(..., D) -> (...,) float32 values."""
        x = hidden.astype(jnp.float32)
        for i in range(self.num_layers):
            x = x @ getattr(self, f"kernel_{i}")[...].astype(jnp.float32)
            x = x + getattr(self, f"bias_{i}")[...].astype(jnp.float32)
            if i < self.num_layers - 1:
                x = jax.nn.relu(x)
        return x[..., 0]


def last_prompt_hidden(hidden: jax.Array, prompt_mask: jax.Array) -> jax.Array:
    """Hidden state (B, D) at each row's last real prompt token (works for left or right pad)."""
    s = prompt_mask.shape[-1]
    last = s - 1 - jnp.argmax(prompt_mask[:, ::-1].astype(jnp.int32), axis=-1)
    return jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
