"""Qwen2-VL and Qwen2.5-VL vision towers at one fixed image size (static shapes).

An image of `image_height x image_width` pixels is cut into `grid_h x grid_w` patches of
`patch_size` pixels; each patch is repeated over `temporal_patch_size` frames (a still image, as
transformers' processor does) and flattened channel-major, (C, T, P, P), into one vector. Patches
come in *merge-block order*: the `spatial_merge_size`^2 patches that the merger folds into one
language token are consecutive (transformers' `pixel_values` layout for one image).

The tower embeds patches by one linear map (transformers' Conv3d with stride = kernel), adds 2-D
rotary positions (row, column) in every attention, and runs pre-norm blocks:

- Qwen2-VL (`variant="qwen2_vl"`): LayerNorm, full attention, fc1-act-fc2 MLP (quick-GELU).
- Qwen2.5-VL (`variant="qwen2_5_vl"`): RMSNorm, SwiGLU MLP with biases, and window attention
  (windows of `window_size` pixels) except at `fullatt_block_indexes`.

transformers permutes the sequence into window order (`window_index`), runs every block on the
permuted sequence and un-permutes the merger's output by `argsort(window_index)`. Attention and
the per-token layers commute with that permutation, so here the residual stream stays in patch
order and only the windowed attention gathers each window's tokens (in transformers' window order,
padded to the largest window) and scatters the result back: both are static gathers built with
NumPy at trace time. The merger (the "projector": norm, 2x2 concat, Linear-GELU-Linear to the text
width) lives in qwen2_vl.py.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec as P

from rlvlm_jax.models.clip import ACTIVATIONS as _CLIP_ACTIVATIONS
from rlvlm_jax.models.clip import layer_norm
from rlvlm_jax.models.common import param
from rlvlm_jax.models.llama import rms_norm
from rlvlm_jax.sharding import BATCH, constrain

_RESIDUAL = P(BATCH, None, None)
_HIDDEN = P(BATCH, None, "tensor")
ACTIVATIONS = {**_CLIP_ACTIVATIONS, "silu": jax.nn.silu}
VARIANTS = ("qwen2_vl", "qwen2_5_vl")


@dataclasses.dataclass(frozen=True)
class QwenVisionConfig:
    """Vision tower shape; defaults are Qwen2-VL's 675M-parameter ViT at 448 x 448 px.

    `out_hidden_size` is the merger's output width (the text model's hidden size). The image size
    is fixed: it sets the patch grid and hence the number of image tokens per image.
    """

    variant: str = "qwen2_vl"
    hidden_size: int = 1280
    intermediate_size: int = 5120
    num_layers: int = 32
    num_heads: int = 16
    out_hidden_size: int = 3584
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    num_channels: int = 3
    hidden_act: str = "quick_gelu"
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    window_size: int = 0  # Qwen2.5-VL: window side in pixels (112); 0: no window attention
    fullatt_block_indexes: tuple[int, ...] = ()
    image_height: int = 448
    image_width: int = 448

    @property
    def grid_h(self) -> int:
        return self.image_height // self.patch_size

    @property
    def grid_w(self) -> int:
        return self.image_width // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_h * self.grid_w

    @property
    def merged_h(self) -> int:
        return self.grid_h // self.spatial_merge_size

    @property
    def merged_w(self) -> int:
        return self.grid_w // self.spatial_merge_size

    @property
    def num_tokens(self) -> int:
        """Language tokens per image (patches after the spatial merge)."""
        return self.merged_h * self.merged_w

    @property
    def patch_dim(self) -> int:
        return self.num_channels * self.temporal_patch_size * self.patch_size ** 2

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def windowed(self) -> bool:
        return self.variant == "qwen2_5_vl" and self.window_size > 0

    def validate(self) -> None:
        """Readable errors for shapes that cannot work (before anything is compiled)."""
        name = "QwenVisionConfig"
        if self.variant not in VARIANTS:
            raise ValueError(f"{name}: unknown variant {self.variant!r}; known: {VARIANTS}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"{name}: hidden_size {self.hidden_size} is not divisible by "
                             f"num_heads {self.num_heads}")
        if self.head_dim % 4:
            raise ValueError(f"{name}: head dim {self.head_dim} must be a multiple of 4 for the "
                             f"2-D rotary embedding (rows and columns each rotate a quarter pair)")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"{name}: unsupported hidden_act {self.hidden_act!r}; known: "
                             f"{sorted(ACTIVATIONS)}")
        unit = self.patch_size * self.spatial_merge_size
        for side, size in (("image_height", self.image_height), ("image_width", self.image_width)):
            if size <= 0 or size % unit:
                raise ValueError(
                    f"{name}: {side} {size} px gives a grid that does not divide the merge size: "
                    f"it must be a positive multiple of patch_size x spatial_merge_size = "
                    f"{self.patch_size} x {self.spatial_merge_size} = {unit} px")
        if self.variant == "qwen2_5_vl":
            if self.window_size <= 0 or self.window_size % unit:
                raise ValueError(f"{name}: window_size {self.window_size} px must be a positive "
                                 f"multiple of {unit} px (patch x merge)")
            bad = [i for i in self.fullatt_block_indexes if not 0 <= i < self.num_layers]
            if bad:
                raise ValueError(f"{name}: fullatt_block_indexes {bad} out of range for "
                                 f"{self.num_layers} layers")
        elif self.window_size or self.fullatt_block_indexes:
            raise ValueError(f"{name}: window attention is a Qwen2.5-VL feature; variant "
                             f"{self.variant!r} must have window_size 0 and no "
                             f"fullatt_block_indexes")


# ---------------------------------------------------------------------------------------------
# Static layout: patch positions and windows (NumPy, at trace time)
# ---------------------------------------------------------------------------------------------
def patch_rows_cols(cfg: QwenVisionConfig) -> tuple[np.ndarray, np.ndarray]:
    """Row and column (in patches) of every patch, in merge-block order. Shapes (N,)."""
    m = cfg.spatial_merge_size
    rows, cols = np.meshgrid(np.arange(cfg.grid_h), np.arange(cfg.grid_w), indexing="ij")
    shape = (cfg.merged_h, m, cfg.merged_w, m)
    order = lambda a: a.reshape(shape).transpose(0, 2, 1, 3).reshape(-1)
    return order(rows), order(cols)


def window_index(cfg: QwenVisionConfig) -> tuple[np.ndarray, np.ndarray]:
    """transformers' window order of merged units and each window's length in units.

    Windows are `window_size / patch / merge` merged units on a side, tiled row-major from the
    top-left; those at the right and bottom edges are cut short. Inside a window, units are
    row-major. Returns (window_index (num_tokens,), unit counts per window).
    """
    side = cfg.window_size // cfg.spatial_merge_size // cfg.patch_size
    units = np.arange(cfg.num_tokens).reshape(cfg.merged_h, cfg.merged_w)
    order, sizes = [], []
    for r in range(0, cfg.merged_h, side):
        for c in range(0, cfg.merged_w, side):
            block = units[r:r + side, c:c + side].reshape(-1)
            order.append(block)
            sizes.append(block.size)
    return np.concatenate(order), np.asarray(sizes)


@functools.lru_cache(maxsize=32)
def window_gathers(cfg: QwenVisionConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Static gathers for window attention over patches in merge-block order.

    Returns `take` (W, L): patch index of slot l of window w (0 where padding), `valid` (W, L):
    slot holds a patch, and `back` (N,): each patch's flat slot w * L + l.
    """
    unit = cfg.spatial_merge_size ** 2
    order, sizes = window_index(cfg)
    longest = int(sizes.max()) * unit
    take = np.zeros((sizes.size, longest), np.int32)
    valid = np.zeros((sizes.size, longest), bool)
    back = np.zeros(cfg.num_patches, np.int32)
    start = 0
    for w, n in enumerate(sizes):
        patches = (order[start:start + n, None] * unit + np.arange(unit)).reshape(-1)
        take[w, :patches.size] = patches
        valid[w, :patches.size] = True
        back[patches] = w * longest + np.arange(patches.size)
        start += n
    return take, valid, back


@functools.lru_cache(maxsize=32)
def rotary_tables(cfg: QwenVisionConfig) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin (N, head_dim) of the 2-D rotary embedding: the first half of each rotation
    pair's frequencies turns with the patch row, the second with the column (float32)."""
    quarter = cfg.head_dim // 2
    inv_freq = 1.0 / (np.float32(cfg.rope_theta) ** (
        np.arange(0, quarter, 2, dtype=np.float32) / np.float32(quarter)))
    rows, cols = patch_rows_cols(cfg)
    freqs = np.concatenate([rows[:, None].astype(np.float32) * inv_freq,
                            cols[:, None].astype(np.float32) * inv_freq], axis=-1)
    emb = np.concatenate([freqs, freqs], axis=-1).astype(np.float32)
    return np.cos(emb), np.sin(emb)


def rotate(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotary embedding (half-split layout) in float32, returned in x's dtype. x (B, N, H, D),
    cos/sin (N, D)."""
    xf = x.astype(jnp.float32)
    x1, x2 = jnp.split(xf, 2, axis=-1)
    out = xf * cos[:, None] + jnp.concatenate([-x2, x1], axis=-1) * sin[:, None]
    return out.astype(x.dtype)


def _softmax_attention(q, k, v, scale, mask=None):
    """q, k, v (..., S, H, D) -> (..., S, H, D); float32 scores and softmax."""
    scores = jnp.einsum("...qhd,...shd->...hqs", q, k, preferred_element_type=jnp.float32)
    scores = scores * scale
    if mask is not None:
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("...hqs,...shd->...qhd", probs, v)


def window_attention(cfg: QwenVisionConfig, q, k, v):
    """Attention inside each window only. q, k, v (B, N, H, D) in merge-block order."""
    take, valid, back = window_gathers(cfg)
    b, n, h, d = q.shape
    gather = lambda x: jnp.take(x, jnp.asarray(take), axis=1)  # (B, W, L, H, D)
    mask = jnp.asarray(valid)[:, None, None, :]  # (W, 1, 1, L): keys that hold a patch
    out = _softmax_attention(gather(q), gather(k), gather(v), cfg.head_dim ** -0.5, mask)
    return jnp.take(out.reshape(b, -1, h, d), jnp.asarray(back), axis=1)


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------
def _mlp_names(cfg: QwenVisionConfig) -> tuple[str, ...]:
    if cfg.variant == "qwen2_vl":
        return ("fc1", "fc1_bias", "fc2", "fc2_bias")
    return ("gate_proj", "gate_bias", "up_proj", "up_bias", "down_proj", "down_bias")


def _norm_names(cfg: QwenVisionConfig, i: int) -> tuple[str, ...]:
    """LayerNorm (Qwen2-VL) has a bias; RMSNorm (Qwen2.5-VL) has only a scale."""
    if cfg.variant == "qwen2_vl":
        return (f"norm{i}_scale", f"norm{i}_bias")
    return (f"norm{i}_scale",)


def norm(cfg: QwenVisionConfig, x: jax.Array, scale: jax.Array, bias: jax.Array | None):
    if cfg.variant == "qwen2_vl":
        return layer_norm(x, scale, bias, cfg.norm_eps)
    return rms_norm(x, scale, cfg.norm_eps)


class QwenVisionLayer(nnx.Module):
    """One pre-norm block: norm, attention with 2-D RoPE, norm, MLP (all projections biased)."""

    def __init__(self, cfg: QwenVisionConfig, *, param_dtype, rngs: nnx.Rngs):
        d, f, h, hd = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.head_dim
        p = lambda shape, kind="normal": param(rngs, shape, param_dtype, kind)
        self.norm1_scale = p((d,), "ones")
        if cfg.variant == "qwen2_vl":
            self.norm1_bias = p((d,), "zeros")
        self.q_proj, self.q_bias = p((d, h, hd)), p((h, hd), "zeros")
        self.k_proj, self.k_bias = p((d, h, hd)), p((h, hd), "zeros")
        self.v_proj, self.v_bias = p((d, h, hd)), p((h, hd), "zeros")
        self.o_proj, self.o_bias = p((h, hd, d)), p((d,), "zeros")
        self.norm2_scale = p((d,), "ones")
        if cfg.variant == "qwen2_vl":
            self.norm2_bias = p((d,), "zeros")
            self.fc1, self.fc1_bias = p((d, f)), p((f,), "zeros")
            self.fc2, self.fc2_bias = p((f, d)), p((d,), "zeros")
        else:
            self.gate_proj, self.gate_bias = p((d, f)), p((f,), "zeros")
            self.up_proj, self.up_bias = p((d, f)), p((f,), "zeros")
            self.down_proj, self.down_bias = p((f, d)), p((d,), "zeros")
        self.names = (*_norm_names(cfg, 1), "q_proj", "q_bias", "k_proj", "k_bias", "v_proj",
                      "v_bias", "o_proj", "o_bias", *_norm_names(cfg, 2), *_mlp_names(cfg))

    def weights(self, dtype) -> dict[str, jax.Array]:
        return {name: getattr(self, name)[...].astype(dtype) for name in self.names}


def vision_block(cfg: QwenVisionConfig, windowed: bool, w: dict, x: jax.Array,
                 cos: jax.Array, sin: jax.Array) -> jax.Array:
    """One block over (B, N, D) patches; `windowed` picks window or full attention."""
    hs = norm(cfg, x, w["norm1_scale"], w.get("norm1_bias"))
    q = rotate(jnp.einsum("bsd,dhk->bshk", hs, w["q_proj"]) + w["q_bias"], cos, sin)
    k = rotate(jnp.einsum("bsd,dhk->bshk", hs, w["k_proj"]) + w["k_bias"], cos, sin)
    v = jnp.einsum("bsd,dhk->bshk", hs, w["v_proj"]) + w["v_bias"]
    if windowed:
        attn = window_attention(cfg, q, k, v)
    else:
        attn = _softmax_attention(q, k, v, cfg.head_dim ** -0.5)
    x = x + jnp.einsum("bshk,hkd->bsd", attn, w["o_proj"]) + w["o_bias"]
    hs = norm(cfg, x, w["norm2_scale"], w.get("norm2_bias"))
    act = ACTIVATIONS[cfg.hidden_act]
    if cfg.variant == "qwen2_vl":
        hs = constrain(act(hs @ w["fc1"] + w["fc1_bias"]), _HIDDEN)
        out = hs @ w["fc2"] + w["fc2_bias"]
    else:
        gate = act(hs @ w["gate_proj"] + w["gate_bias"])
        hs = constrain(gate * (hs @ w["up_proj"] + w["up_bias"]), _HIDDEN)
        out = hs @ w["down_proj"] + w["down_bias"]
    return constrain(x + out, _RESIDUAL)


class QwenVisionTower(nnx.Module):
    """Patch embedding + blocks. Input: patches (B, N, C*T*P*P) in merge-block order (see
    `rlvlm_jax.models.qwen_preprocess.patchify`); output: (B, N, hidden_size)."""

    def __init__(self, cfg: QwenVisionConfig, *, param_dtype=jnp.float32, dtype=jnp.float32,
                 remat: bool = False, rngs: nnx.Rngs):
        cfg.validate()
        self.cfg = cfg
        self.dtype = dtype
        self.remat = remat
        self.patch_proj = param(rngs, (cfg.patch_dim, cfg.hidden_size), param_dtype)
        self.layers = nnx.List([QwenVisionLayer(cfg, param_dtype=param_dtype, rngs=rngs)
                                for _ in range(cfg.num_layers)])

    def __call__(self, patches: jax.Array) -> jax.Array:
        cfg, dtype = self.cfg, self.dtype
        if patches.shape[1:] != (cfg.num_patches, cfg.patch_dim):
            raise ValueError(f"patches must be (B, {cfg.num_patches}, {cfg.patch_dim}) for the "
                             f"fixed {cfg.image_height}x{cfg.image_width} px grid, got "
                             f"{patches.shape}")
        x = constrain(patches.astype(dtype) @ self.patch_proj[...].astype(dtype), _RESIDUAL)
        cos, sin = (jnp.asarray(t) for t in rotary_tables(cfg))
        full = set(cfg.fullatt_block_indexes)
        for i, layer in enumerate(self.layers):
            run = functools.partial(vision_block, cfg, cfg.windowed and i not in full)
            if self.remat:
                run = jax.checkpoint(run)
            x = run(layer.weights(dtype), x, cos, sin)
        return x
