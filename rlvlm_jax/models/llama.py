"""LLaMA-family decoder (LLaMA/Vicuna, Mistral, Qwen2) with a KV cache.

Each layer keeps its own weights and its own cache arrays, and layers run in a Python loop. (A
stacked `lax.scan` over layers compiles faster, but every step then slices each layer's weights
out of the stack, and XLA materialises those slices: on CPU that copy tripled the decode step.)
Three modes share one layer function: `forward` (training/scoring, no cache), `forward` with a
cache (prefill: also fills the cache) and `decode` (one new token per row against the cache).

The families differ only in config flags: Mistral's sliding window, Qwen2's biases on the q, k and
v projections, and Qwen2-VL's multimodal rotary positions (M-RoPE, `mrope_section`): three
position ids per token (temporal, height, width), the head's rotation pairs split into three
parts that each turn with one of them. The rotary tables are computed once per pass
(`rope_tables`) and every layer rotates with them.
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
from rlvlm_jax.sharding import BATCH, constrain

_RESIDUAL = P(BATCH, None, None)  # (B, S, D): batch split, width whole
_HEADS = P(BATCH, None, "tensor", None)  # (B, S, H, hd): heads on the tensor axis
_KV = P(BATCH, "tensor", None, None)  # (B, K, S, hd): keys/values, heads-major
_HIDDEN = P(BATCH, None, "tensor")  # (B, S, F) MLP hidden / (B, S, V) logits

_MASKED = float(jnp.finfo(jnp.float32).min)


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """Shape and numerics of the decoder; field names follow our code, not transformers'."""

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    head_dim: int | None = None  # None: hidden_size // num_heads
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    sliding_window: int | None = None  # Mistral: attend to at most this many most recent slots
    tie_embeddings: bool = False
    max_position_embeddings: int = 4096
    family: str = "llama"  # "llama", "mistral" or "qwen2": names the architecture on export
    attention_bias: bool = False  # biases on the q, k and v projections (Qwen2)
    mrope_section: tuple[int, ...] | None = None  # M-RoPE rotation pairs per (t, h, w) axis

    @property
    def dim_per_head(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_heads

    def validate(self) -> None:
        """Raise a readable error for shapes that cannot work (before anything is compiled)."""
        name = type(self).__name__
        if self.num_heads <= 0 or self.num_kv_heads <= 0:
            raise ValueError(f"{name}: heads must be positive, got {self.num_heads}, "
                             f"{self.num_kv_heads}")
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise ValueError(f"{name}: hidden_size {self.hidden_size} is not divisible by "
                             f"num_heads {self.num_heads} (set head_dim explicitly)")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"{name}: num_heads {self.num_heads} is not divisible by "
                             f"num_kv_heads {self.num_kv_heads} (grouped-query attention)")
        if self.dim_per_head % 2:
            raise ValueError(f"{name}: head dim {self.dim_per_head} must be even for RoPE")
        if self.family not in ("llama", "mistral", "qwen2"):
            raise ValueError(f"{name}: unknown family {self.family!r}")
        section = self.mrope_section
        if section is not None and (len(section) != 3 or sum(section) != self.dim_per_head // 2):
            raise ValueError(f"{name}: mrope_section {section} must be three numbers summing to "
                             f"head_dim / 2 = {self.dim_per_head // 2}")


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """RMSNorm as LLaMA does it: normalise in float32, cast back, then scale."""
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return scale.astype(x.dtype) * xf.astype(x.dtype)


@functools.lru_cache(maxsize=32)
def _section_axis(section: tuple[int, ...]) -> np.ndarray:
    """Which of (t, h, w) drives each rotation pair: part i of `section` uses axis i % 3."""
    return np.concatenate([np.full(s, i % 3, np.int32) for i, s in enumerate(section)])


def rope_tables(positions: jax.Array, head_dim: int, theta: float, dtype,
                section: tuple[int, ...] | None = None) -> tuple[jax.Array, jax.Array]:
    """Rotary cos and sin (B, S, 1, head_dim) in `dtype`, half-split layout (transformers'
    `rotate_half`), for positions (B, S).

    With an M-RoPE `section` positions may also be (3, B, S), one id per (t, h, w) axis; (B, S)
    positions then count as three equal ids, which is plain RoPE.
    """
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    if section is not None and positions.ndim == 2:
        positions = jnp.broadcast_to(positions[None], (3, *positions.shape))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # ([3,] B, S, D/2)
    if section is not None:
        axis = _section_axis(tuple(section))
        freqs = jnp.where(axis == 0, freqs[0], jnp.where(axis == 1, freqs[1], freqs[2]))
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate x (B, S, H, D) by the tables of `rope_tables`."""
    x1, x2 = jnp.split(x, 2, axis=-1)
    return x * cos + jnp.concatenate([-x2, x1], axis=-1) * sin


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Grouped-query attention. q (B,S,H,D), k/v (B,K,C,D), mask (B,S,C) bool -> (B,S,H,D).

    Keys and values are heads-major, the KV cache's layout, so that decoding reads the cache in
    place (with (B,C,K,D) XLA transposed every layer's cache at every step). Scores and softmax
    are float32 whatever the compute dtype; fully masked rows (left padding) get a finite minimum
    instead of -inf so they stay NaN-free.
    """
    b, s, h, d = q.shape
    kh = k.shape[1]
    q = q.reshape(b, s, kh, h // kh, d)
    scores = jnp.einsum("bskgd,bkcd->bkgsc", q, k, preferred_element_type=jnp.float32)
    scores = scores * (d ** -0.5)
    scores = jnp.where(mask[:, None, None], scores, _MASKED)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgsc,bkcd->bskgd", probs, v)
    return out.reshape(b, s, h, d)


def causal_mask(pad_mask: jax.Array, query_slots: jax.Array, window: int | None) -> jax.Array:
    """Attention mask (B, S, C): key slot is a real token, not in the future, inside the window.

    `pad_mask` (B, C) marks real tokens among key slots; `query_slots` (S,) are the slot indices
    of the queries. Windows count slots, exactly as transformers' sliding-window mask does.
    """
    key_slots = jnp.arange(pad_mask.shape[1])
    allowed = key_slots[None, :] <= query_slots[:, None]
    if window is not None:
        allowed &= key_slots[None, :] > query_slots[:, None] - window
    return allowed[None] & pad_mask[:, None, :].astype(bool)


class DecoderLayer(nnx.Module):
    """One pre-norm block: RMSNorm, GQA attention with RoPE (q/k/v biases with
    `attention_bias`), RMSNorm, SwiGLU MLP."""

    def __init__(self, cfg: TextConfig, *, param_dtype, rngs: nnx.Rngs):
        d, f = cfg.hidden_size, cfg.intermediate_size
        h, k, hd = cfg.num_heads, cfg.num_kv_heads, cfg.dim_per_head
        p = lambda shape, kind="normal": param(rngs, shape, param_dtype, kind)
        self.attn_norm = p((d,), "ones")
        for name, heads in (("q", h), ("k", k), ("v", k)):
            setattr(self, f"{name}_proj", p((d, heads, hd)))
            if cfg.attention_bias:
                setattr(self, f"{name}_bias", p((heads, hd), "zeros"))
        self.o_proj = p((h, hd, d))
        self.mlp_norm = p((d,), "ones")
        self.gate_proj = p((d, f))
        self.up_proj = p((d, f))
        self.down_proj = p((f, d))

    NAMES = ("attn_norm", "q_proj", "q_bias", "k_proj", "k_bias", "v_proj", "v_bias", "o_proj",
             "mlp_norm", "gate_proj", "up_proj", "down_proj")

    def weights(self, dtype) -> dict[str, jax.Array]:
        """This layer's weights as plain arrays in the compute dtype (cast per use)."""
        return {name: getattr(self, name)[...].astype(dtype) for name in self.NAMES
                if hasattr(self, name)}


def qkv(cfg: TextConfig, w: dict, x: jax.Array, rope: tuple[jax.Array, jax.Array]):
    """Pre-norm attention projections of one layer, rotated by the `rope_tables` (cos, sin):
    q (B,S,H,D), k and v heads-major (B,K,S,D) like the cache."""
    hs = rms_norm(x, w["attn_norm"], cfg.rms_norm_eps)
    q = jnp.einsum("bsd,dhk->bshk", hs, w["q_proj"])
    k = jnp.einsum("bsd,dhk->bshk", hs, w["k_proj"])
    v = jnp.einsum("bsd,dhk->bshk", hs, w["v_proj"])
    if cfg.attention_bias:
        q, k, v = q + w["q_bias"], k + w["k_bias"], v + w["v_bias"]
    q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    return (constrain(q, _HEADS), constrain(k.transpose(0, 2, 1, 3), _KV),
            constrain(v.transpose(0, 2, 1, 3), _KV))


def finish(cfg: TextConfig, w: dict, x: jax.Array, attn: jax.Array) -> jax.Array:
    """Attention output projection, residual, SwiGLU MLP, residual."""
    x = constrain(x + jnp.einsum("bshk,hkd->bsd", attn, w["o_proj"]), _RESIDUAL)
    hs = rms_norm(x, w["mlp_norm"], cfg.rms_norm_eps)
    mlp = constrain(jax.nn.silu(hs @ w["gate_proj"]) * (hs @ w["up_proj"]), _HIDDEN)
    return constrain(x + mlp @ w["down_proj"], _RESIDUAL)


def block(cfg: TextConfig, w: dict, x: jax.Array, rope: tuple[jax.Array, jax.Array],
          mask: jax.Array):
    """A whole layer over a full sequence; returns (x, k, v) so a prefill can cache k and v."""
    q, k, v = qkv(cfg, w, x, rope)
    return finish(cfg, w, x, attention(q, k, v, mask)), k, v


class Decoder(nnx.Module):
    """Token embedding, decoder layers, final RMSNorm and LM head (or tied embedding)."""

    def __init__(self, cfg: TextConfig, *, param_dtype=jnp.float32, dtype=jnp.float32,
                 remat: bool = False, rngs: nnx.Rngs):
        cfg.validate()
        self.cfg = cfg
        self.dtype = dtype
        self.remat = remat
        self.embed = param(rngs, (cfg.vocab_size, cfg.hidden_size), param_dtype)
        self.layers = nnx.List([DecoderLayer(cfg, param_dtype=param_dtype, rngs=rngs)
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

    def rope(self, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The rotary (cos, sin) tables of positions (B,S), or (3,B,S) under M-RoPE."""
        cfg = self.cfg
        return rope_tables(positions, cfg.dim_per_head, cfg.rope_theta, self.dtype,
                           cfg.mrope_section)

    def forward(self, x: jax.Array, positions: jax.Array, pad_mask: jax.Array,
                cache: dict | None = None) -> tuple[jax.Array, dict | None]:
        """Full-sequence pass. x (B,S,D) embeddings, positions (B,S) (or (3,B,S) under M-RoPE),
        pad_mask (B,S).

        With `cache` (dict k, v: lists of (B,K,C,D) per layer), also writes this sequence's keys
        and values into slots [0, S) of the cache (prefill) and returns the updated cache (other
        entries of the dict pass through).
        """
        cfg, dtype = self.cfg, self.dtype
        mask = causal_mask(pad_mask, jnp.arange(x.shape[1]), cfg.sliding_window)
        rope = self.rope(positions)
        run = functools.partial(block, cfg)
        if self.remat:
            run = jax.checkpoint(run)
        x = x.astype(dtype)
        ks, vs = [], []
        for i, layer in enumerate(self.layers):
            x, k, v = run(layer.weights(dtype), x, rope, mask)
            if cache is not None:
                ks.append(jax.lax.dynamic_update_slice(cache["k"][i], k.astype(
                    cache["k"][i].dtype), (0, 0, 0, 0)))
                vs.append(jax.lax.dynamic_update_slice(cache["v"][i], v.astype(
                    cache["v"][i].dtype), (0, 0, 0, 0)))
        x = rms_norm(x, self.final_norm[...].astype(dtype), cfg.rms_norm_eps)
        return x, (None if cache is None else {**cache, "k": ks, "v": vs})

    def decode(self, x: jax.Array, positions: jax.Array, kv_mask: jax.Array, cache: dict,
               index: jax.Array) -> tuple[jax.Array, dict]:
        """One new token per row at cache slot `index`. x (B,1,D), positions (B,1) (or (3,B,1)
        under M-RoPE), kv_mask (B,C) marks filled slots (the new slot included)."""
        cfg, dtype = self.cfg, self.dtype
        mask = causal_mask(kv_mask, index[None], cfg.sliding_window)
        rope = self.rope(positions)
        x = x.astype(dtype)
        ks, vs = list(cache["k"]), list(cache["v"])
        for i, layer in enumerate(self.layers):
            w = layer.weights(dtype)
            q, k, v = qkv(cfg, w, x, rope)
            ks[i] = jax.lax.dynamic_update_slice(ks[i], k.astype(ks[i].dtype), (0, 0, index, 0))
            vs[i] = jax.lax.dynamic_update_slice(vs[i], v.astype(vs[i].dtype), (0, 0, index, 0))
            x = finish(cfg, w, x, attention(q, ks[i].astype(dtype), vs[i].astype(dtype), mask))
        x = rms_norm(x, self.final_norm[...].astype(dtype), cfg.rms_norm_eps)
        return x, {**cache, "k": ks, "v": vs}


def init_cache(cfg: TextConfig, batch: int, length: int, dtype=jnp.float32) -> dict:
    """Zeroed KV cache: k and v, each a list over layers of (batch, kv_heads, length, head_dim)."""
    shape = (batch, cfg.num_kv_heads, length, cfg.dim_per_head)
    return {"k": [jnp.zeros(shape, dtype) for _ in range(cfg.num_layers)],
            "v": [jnp.zeros(shape, dtype) for _ in range(cfg.num_layers)]}
