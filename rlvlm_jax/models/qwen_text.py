"""Qwen2 decoder with multimodal rotary positions (M-RoPE), as in Qwen2-VL and Qwen2.5-VL.

The decoder is LLaMA's (RMSNorm, grouped-query attention, SwiGLU) with biases on the q, k and v
projections, and its rotary embedding takes three position ids per token, (temporal, height,
width): the head's rotation pairs are split by `mrope_section` (e.g. 16 + 24 + 24 of 64 pairs)
and each part turns with one of the three. Text tokens have three equal ids; image tokens get
their grid cell (`mrope_positions`). With (B, S) positions everything reduces to plain RoPE.

The module mirrors `llama.Decoder` (same `forward` / `decode` / `logits` / `embed_tokens`
signatures and the same KV-cache layout, from `llama.init_cache`), so the sampler and the scorer
drive it the same way; positions may be (B, S) or (3, B, S).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec as P

from rlvlm_jax.models.common import param
from rlvlm_jax.models.llama import attention, causal_mask, finish, rms_norm
from rlvlm_jax.sharding import BATCH, constrain

_RESIDUAL = P(BATCH, None, None)
_HEADS = P(BATCH, None, "tensor", None)
_KV = P(BATCH, "tensor", None, None)


@dataclasses.dataclass(frozen=True)
class QwenTextConfig:
    """Shape and numerics of the Qwen2 decoder (defaults: Qwen2-VL-7B). Field names follow
    `llama.TextConfig` so the shared cache and sampling code read both."""

    vocab_size: int = 152064
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_layers: int = 28
    num_heads: int = 28
    num_kv_heads: int = 4
    rope_theta: float = 1000000.0
    rms_norm_eps: float = 1e-6
    mrope_section: tuple[int, ...] = (16, 24, 24)
    tie_embeddings: bool = False
    max_position_embeddings: int = 32768
    sliding_window: None = None  # every released checkpoint attends fully (use_sliding_window off)

    @property
    def dim_per_head(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def head_dim(self) -> int:
        return self.dim_per_head

    def validate(self) -> None:
        name = "QwenTextConfig"
        if self.num_heads <= 0 or self.num_kv_heads <= 0:
            raise ValueError(f"{name}: heads must be positive, got {self.num_heads}, "
                             f"{self.num_kv_heads}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"{name}: hidden_size {self.hidden_size} is not divisible by "
                             f"num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"{name}: num_heads {self.num_heads} is not divisible by "
                             f"num_kv_heads {self.num_kv_heads} (grouped-query attention)")
        if self.dim_per_head % 2:
            raise ValueError(f"{name}: head dim {self.dim_per_head} must be even for RoPE")
        if len(self.mrope_section) != 3 or sum(self.mrope_section) != self.dim_per_head // 2:
            raise ValueError(f"{name}: mrope_section {self.mrope_section} must be three numbers "
                             f"summing to head_dim / 2 = {self.dim_per_head // 2}")
        if self.sliding_window is not None:
            raise ValueError(f"{name}: sliding-window attention is not supported")


# ---------------------------------------------------------------------------------------------
# Positions
# ---------------------------------------------------------------------------------------------
def mrope_positions(input_ids: jax.Array, attention_mask: jax.Array, image_token_id: int,
                    merged_hw: tuple[int, int], text_from: int | None = None
                    ) -> tuple[jax.Array, jax.Array]:
    """transformers' `get_rope_index` for images of one fixed grid, with static shapes.

    Real tokens (mask 1) are numbered in order; each run of `merged_h * merged_w` image tokens
    is one image whose token (r, c) gets (s, s + r, s + c), s being the next free position, and
    the image then advances the position by max(merged_h, merged_w). Text tokens take the next
    position on all three axes. Padding gets 0. Tokens at index >= `text_from` count as text even
    if they equal the image id (generated tokens). Images must be separated by text (as the chat
    template's vision start/end tokens do), and each run must be whole (`check_inputs`).

    Returns positions (3, B, S) int32 and the rope delta (B,) int32: max position + 1 - real
    tokens, so that token i (counting real tokens from 0) after the prompt sits at i + delta.
    """
    mh, mw = merged_hw
    n, span = mh * mw, max(mh, mw)
    real = attention_mask.astype(bool)
    is_img = (input_ids == image_token_id) & real
    if text_from is not None:
        is_img &= jnp.arange(input_ids.shape[1]) < text_from
    is_txt = real & ~is_img
    txt_before = jnp.cumsum(is_txt, axis=1, dtype=jnp.int32) - is_txt
    img_before = jnp.cumsum(is_img, axis=1, dtype=jnp.int32) - is_img
    base = txt_before + (img_before // n) * span
    cell = img_before % n
    h = base + jnp.where(is_img, cell // mw, 0)
    w = base + jnp.where(is_img, cell % mw, 0)
    pos = jnp.where(real[None], jnp.stack([base, h, w]), 0)
    delta = jnp.max(pos, axis=(0, 2)) + 1 - jnp.sum(real, axis=1, dtype=jnp.int32)
    return pos.astype(jnp.int32), delta.astype(jnp.int32)


def text_positions(attention_mask: jax.Array) -> jax.Array:
    """1-D positions for left-padded rows: 0.. over real tokens, 0 on padding (as generate)."""
    return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1, 0)


@functools.lru_cache(maxsize=32)
def _section_axis(section: tuple[int, ...]) -> np.ndarray:
    """Which of (t, h, w) drives each rotation pair: part i of `section` uses axis i % 3."""
    return np.concatenate([np.full(s, i % 3, np.int32) for i, s in enumerate(section)])


def mrope_tables(positions: jax.Array, head_dim: int, theta: float,
                 section: tuple[int, ...], dtype) -> tuple[jax.Array, jax.Array]:
    """cos and sin (B, S, 1, head_dim) in `dtype` for positions (3, B, S) or (B, S)."""
    if positions.ndim == 2:
        positions = jnp.broadcast_to(positions[None], (3, *positions.shape))
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # (3, B, S, D/2)
    axis = _section_axis(tuple(section))
    freqs = jnp.where(axis == 0, freqs[0], jnp.where(axis == 1, freqs[1], freqs[2]))
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    x1, x2 = jnp.split(x, 2, axis=-1)
    return x * cos + jnp.concatenate([-x2, x1], axis=-1) * sin


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------
class QwenDecoderLayer(nnx.Module):
    """One pre-norm block: RMSNorm, GQA attention (biased q/k/v) with M-RoPE, RMSNorm, SwiGLU."""

    NAMES = ("attn_norm", "q_proj", "q_bias", "k_proj", "k_bias", "v_proj", "v_bias", "o_proj",
             "mlp_norm", "gate_proj", "up_proj", "down_proj")

    def __init__(self, cfg: QwenTextConfig, *, param_dtype, rngs: nnx.Rngs):
        d, f = cfg.hidden_size, cfg.intermediate_size
        h, k, hd = cfg.num_heads, cfg.num_kv_heads, cfg.dim_per_head
        p = lambda shape, kind="normal": param(rngs, shape, param_dtype, kind)
        self.attn_norm = p((d,), "ones")
        self.q_proj, self.q_bias = p((d, h, hd)), p((h, hd), "zeros")
        self.k_proj, self.k_bias = p((d, k, hd)), p((k, hd), "zeros")
        self.v_proj, self.v_bias = p((d, k, hd)), p((k, hd), "zeros")
        self.o_proj = p((h, hd, d))
        self.mlp_norm = p((d,), "ones")
        self.gate_proj = p((d, f))
        self.up_proj = p((d, f))
        self.down_proj = p((f, d))

    def weights(self, dtype) -> dict[str, jax.Array]:
        return {name: getattr(self, name)[...].astype(dtype) for name in self.NAMES}


def qkv(cfg: QwenTextConfig, w: dict, x: jax.Array, cos: jax.Array, sin: jax.Array):
    """Pre-norm projections with biases and M-RoPE: q (B,S,H,D), k and v heads-major (B,K,S,D)."""
    hs = rms_norm(x, w["attn_norm"], cfg.rms_norm_eps)
    q = apply_rope(jnp.einsum("bsd,dhk->bshk", hs, w["q_proj"]) + w["q_bias"], cos, sin)
    k = apply_rope(jnp.einsum("bsd,dhk->bshk", hs, w["k_proj"]) + w["k_bias"], cos, sin)
    v = jnp.einsum("bsd,dhk->bshk", hs, w["v_proj"]) + w["v_bias"]
    return (constrain(q, _HEADS), constrain(k.transpose(0, 2, 1, 3), _KV),
            constrain(v.transpose(0, 2, 1, 3), _KV))


def block(cfg: QwenTextConfig, w: dict, x: jax.Array, cos: jax.Array, sin: jax.Array,
          mask: jax.Array):
    """A whole layer over a full sequence; returns (x, k, v) so a prefill can cache k and v."""
    q, k, v = qkv(cfg, w, x, cos, sin)
    return finish(cfg, w, x, attention(q, k, v, mask)), k, v


class QwenDecoder(nnx.Module):
    """Token embedding, decoder layers, final RMSNorm and LM head (or tied embedding)."""

    def __init__(self, cfg: QwenTextConfig, *, param_dtype=jnp.float32, dtype=jnp.float32,
                 remat: bool = False, rngs: nnx.Rngs):
        cfg.validate()
        self.cfg = cfg
        self.dtype = dtype
        self.remat = remat
        self.embed = param(rngs, (cfg.vocab_size, cfg.hidden_size), param_dtype)
        self.layers = nnx.List([QwenDecoderLayer(cfg, param_dtype=param_dtype, rngs=rngs)
                                for _ in range(cfg.num_layers)])
        self.final_norm = param(rngs, (cfg.hidden_size,), param_dtype, "ones")
        if not cfg.tie_embeddings:
            self.lm_head = param(rngs, (cfg.hidden_size, cfg.vocab_size), param_dtype)

    def embed_tokens(self, tokens: jax.Array) -> jax.Array:
        return constrain(jnp.take(self.embed[...], tokens, axis=0).astype(self.dtype),
                         _RESIDUAL)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """Final-normed hidden -> float32 logits (matmul in compute dtype, f32 accumulation)."""
        if self.cfg.tie_embeddings:
            w = self.embed[...].astype(self.dtype).T
        else:
            w = self.lm_head[...].astype(self.dtype)
        logits = jnp.matmul(hidden, w, preferred_element_type=jnp.float32)
        return constrain(logits, P(BATCH, *[None] * (logits.ndim - 2), "tensor"))

    def _tables(self, positions: jax.Array):
        cfg = self.cfg
        return mrope_tables(positions, cfg.dim_per_head, cfg.rope_theta, cfg.mrope_section,
                            self.dtype)

    def forward(self, x: jax.Array, positions: jax.Array, pad_mask: jax.Array,
                cache: dict | None = None) -> tuple[jax.Array, dict | None]:
        """Full-sequence pass. x (B,S,D), positions (3,B,S) or (B,S), pad_mask (B,S).

        With `cache` (dict k, v: lists of (B,K,C,D) per layer), also writes this sequence's keys
        and values into slots [0, S) (prefill); other cache entries pass through unchanged.
        """
        cfg, dtype = self.cfg, self.dtype
        mask = causal_mask(pad_mask, jnp.arange(x.shape[1]), None)
        cos, sin = self._tables(positions)
        run = functools.partial(block, cfg)
        if self.remat:
            run = jax.checkpoint(run)
        x = x.astype(dtype)
        ks, vs = [], []
        for i, layer in enumerate(self.layers):
            x, k, v = run(layer.weights(dtype), x, cos, sin, mask)
            if cache is not None:
                ks.append(jax.lax.dynamic_update_slice(cache["k"][i], k.astype(
                    cache["k"][i].dtype), (0, 0, 0, 0)))
                vs.append(jax.lax.dynamic_update_slice(cache["v"][i], v.astype(
                    cache["v"][i].dtype), (0, 0, 0, 0)))
        x = rms_norm(x, self.final_norm[...].astype(dtype), cfg.rms_norm_eps)
        if cache is None:
            return x, None
        return x, {**cache, "k": ks, "v": vs}

    def decode(self, x: jax.Array, positions: jax.Array, kv_mask: jax.Array, cache: dict,
               index: jax.Array) -> tuple[jax.Array, dict]:
        """One new token per row at cache slot `index`. x (B,1,D), positions (B,1) or (3,B,1)
        (M-RoPE positions: the caller adds the rope delta), kv_mask (B,C) marks filled slots."""
        cfg, dtype = self.cfg, self.dtype
        mask = causal_mask(kv_mask, index[None], None)
        cos, sin = self._tables(positions)
        x = x.astype(dtype)
        ks, vs = list(cache["k"]), list(cache["v"])
        for i, layer in enumerate(self.layers):
            w = layer.weights(dtype)
            q, k, v = qkv(cfg, w, x, cos, sin)
            ks[i] = jax.lax.dynamic_update_slice(ks[i], k.astype(ks[i].dtype), (0, 0, index, 0))
            vs[i] = jax.lax.dynamic_update_slice(vs[i], v.astype(vs[i].dtype), (0, 0, index, 0))
            x = finish(cfg, w, x, attention(q, ks[i].astype(dtype), vs[i].astype(dtype), mask))
        x = rms_norm(x, self.final_norm[...].astype(dtype), cfg.rms_norm_eps)
        return x, {**cache, "k": ks, "v": vs}
