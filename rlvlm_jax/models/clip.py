"""CLIP vision tower (pre-LayerNorm ViT with class token, learned positions, quick-GELU).

LLaVA reads the hidden state after a chosen layer, so `__call__` runs only as many layers as that
feature needs.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec as P

from rlvlm_jax.models.common import param
from rlvlm_jax.sharding import BATCH, constrain

_RESIDUAL = P(BATCH, None, None)


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """CLIP ViT shape; defaults are ViT-L/14 at 336 px as used by LLaVA-1.5/1.6."""

    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_layers: int = 24
    num_heads: int = 16
    image_size: int = 336
    patch_size: int = 14
    num_channels: int = 3
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def validate(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"VisionConfig: hidden_size {self.hidden_size} is not divisible by "
                             f"num_heads {self.num_heads}")
        if self.image_size % self.patch_size:
            raise ValueError(f"VisionConfig: image_size {self.image_size} is not a multiple of "
                             f"patch_size {self.patch_size}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"VisionConfig: unsupported hidden_act {self.hidden_act!r}; "
                             f"known: {sorted(ACTIVATIONS)}")


ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
}


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
    """LayerNorm computed in float32, returned in the input dtype."""
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + eps)
    return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)


class VisionLayer(nnx.Module):
    """One pre-LayerNorm encoder block with biased projections and a (quick-)GELU MLP."""

    NAMES = ("norm1_scale", "norm1_bias", "q_proj", "q_bias", "k_proj", "k_bias", "v_proj",
             "v_bias", "o_proj", "o_bias", "norm2_scale", "norm2_bias", "fc1", "fc1_bias", "fc2",
             "fc2_bias")

    def __init__(self, cfg: VisionConfig, *, param_dtype, rngs: nnx.Rngs):
        d, f, h, hd = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.head_dim
        p = lambda shape, kind="normal": param(rngs, shape, param_dtype, kind)
        self.norm1_scale, self.norm1_bias = p((d,), "ones"), p((d,), "zeros")
        self.q_proj, self.q_bias = p((d, h, hd)), p((h, hd), "zeros")
        self.k_proj, self.k_bias = p((d, h, hd)), p((h, hd), "zeros")
        self.v_proj, self.v_bias = p((d, h, hd)), p((h, hd), "zeros")
        self.o_proj, self.o_bias = p((h, hd, d)), p((d,), "zeros")
        self.norm2_scale, self.norm2_bias = p((d,), "ones"), p((d,), "zeros")
        self.fc1, self.fc1_bias = p((d, f)), p((f,), "zeros")
        self.fc2, self.fc2_bias = p((f, d)), p((d,), "zeros")

    def weights(self, dtype) -> dict[str, jax.Array]:
        return {name: getattr(self, name)[...].astype(dtype) for name in self.NAMES}


def encoder_block(cfg: VisionConfig, w: dict, x: jax.Array) -> jax.Array:
    """One CLIP encoder layer (no mask: every patch sees every patch)."""
    eps, act = cfg.layer_norm_eps, ACTIVATIONS[cfg.hidden_act]
    hs = layer_norm(x, w["norm1_scale"], w["norm1_bias"], eps)
    q = jnp.einsum("bsd,dhk->bshk", hs, w["q_proj"]) + w["q_bias"]
    k = jnp.einsum("bsd,dhk->bshk", hs, w["k_proj"]) + w["k_bias"]
    v = jnp.einsum("bsd,dhk->bshk", hs, w["v_proj"]) + w["v_bias"]
    scores = jnp.einsum("bqhk,bshk->bhqs", q, k, preferred_element_type=jnp.float32)
    probs = jax.nn.softmax(scores * cfg.head_dim ** -0.5, axis=-1).astype(x.dtype)
    attn = jnp.einsum("bhqs,bshk->bqhk", probs, v)
    x = x + jnp.einsum("bshk,hkd->bsd", attn, w["o_proj"]) + w["o_bias"]
    hs = layer_norm(x, w["norm2_scale"], w["norm2_bias"], eps)
    hs = constrain(act(hs @ w["fc1"] + w["fc1_bias"]), P(BATCH, None, "tensor"))
    return constrain(x + hs @ w["fc2"] + w["fc2_bias"], _RESIDUAL)


class VisionTower(nnx.Module):
    """CLIP vision transformer. Input: images (B, H, W, C) already normalised, channels last."""

    def __init__(self, cfg: VisionConfig, *, param_dtype=jnp.float32, dtype=jnp.float32,
                 remat: bool = False, rngs: nnx.Rngs):
        cfg.validate()
        self.cfg = cfg
        self.dtype = dtype
        self.remat = remat
        d, ps = cfg.hidden_size, cfg.patch_size
        p = lambda shape, kind="normal": param(rngs, shape, param_dtype, kind)
        self.patch_embed = p((ps, ps, cfg.num_channels, d))
        self.class_embed = p((d,))
        self.pos_embed = p((cfg.num_patches + 1, d))
        self.pre_norm_scale, self.pre_norm_bias = p((d,), "ones"), p((d,), "zeros")
        self.layers = nnx.List([VisionLayer(cfg, param_dtype=param_dtype, rngs=rngs)
                                for _ in range(cfg.num_layers)])
        # Unused by LLaVA (it reads per-layer hidden states); kept so checkpoints round-trip.
        self.post_norm_scale, self.post_norm_bias = p((d,), "ones"), p((d,), "zeros")

    def hidden_index(self, feature_layer: int) -> int:
        """transformers' `hidden_states[feature_layer]` as a count of layers to run."""
        n = self.cfg.num_layers
        idx = feature_layer if feature_layer >= 0 else n + 1 + feature_layer
        if not 0 <= idx <= n:
            raise ValueError(f"vision feature layer {feature_layer} out of range for a "
                             f"{n}-layer tower")
        return idx

    def __call__(self, images: jax.Array, feature_layer: int = -1) -> jax.Array:
        """Hidden states (B, 1 + patches, D) after `hidden_index(feature_layer)` layers."""
        cfg, dtype = self.cfg, self.dtype
        b, hgt, wid, c = images.shape
        if (hgt, wid, c) != (cfg.image_size, cfg.image_size, cfg.num_channels):
            raise ValueError(f"images must be (B, {cfg.image_size}, {cfg.image_size}, "
                             f"{cfg.num_channels}) channels-last, got {images.shape}")
        ps, g = cfg.patch_size, cfg.image_size // cfg.patch_size
        patches = images.astype(dtype).reshape(b, g, ps, g, ps, c).transpose(0, 1, 3, 2, 4, 5)
        x = jnp.einsum("bijpqc,pqcd->bijd", patches, self.patch_embed[...].astype(dtype))
        x = x.reshape(b, g * g, -1)
        cls = jnp.broadcast_to(self.class_embed[...].astype(dtype), (b, 1, x.shape[-1]))
        x = jnp.concatenate([cls, x], axis=1) + self.pos_embed[...].astype(dtype)[None]
        x = layer_norm(x, self.pre_norm_scale[...], self.pre_norm_bias[...], cfg.layer_norm_eps)
        x = constrain(x, _RESIDUAL)

        run = functools.partial(encoder_block, cfg)
        if self.remat:
            run = jax.checkpoint(run)
        for i in range(self.hidden_index(feature_layer)):
            x = run(self.layers[i].weights(dtype), x)
        return x
