"""Parameter creation shared by the model modules."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def param(rngs: nnx.Rngs, shape: tuple[int, ...], dtype, kind: str = "normal",
          std: float = 0.02) -> nnx.Param:
    """A fresh parameter: N(0, std) weights, ones for norm scales, zeros for biases.

    The kind and std are kept as metadata so `llava.init_params` can redraw every weight from
    one compiled random draw. Real weights come from checkpoints; this only has to give random
    models sane activations (tests, benchmarks) and shapes for abstract compilation.
    """
    if kind == "normal":
        value = (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
    elif kind == "ones":
        value = jnp.ones(shape, dtype)
    elif kind == "zeros":
        value = jnp.zeros(shape, dtype)
    else:
        raise ValueError(f"unknown init kind {kind!r}")
    return nnx.Param(value, init=kind, std=std)
