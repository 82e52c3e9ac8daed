"""The Qwen2 decoder of Qwen2-VL / Qwen2.5-VL: its config and its multimodal rotary positions.

The decoder itself is `llama.Decoder` (RMSNorm, grouped-query attention, SwiGLU): the Qwen2
config only turns on the biases of the q, k and v projections and M-RoPE, whose rotary embedding
takes three position ids per token, (temporal, height, width): the head's rotation pairs are
split by `mrope_section` (e.g. 16 + 24 + 24 of 64 pairs) and each part turns with one of the
three (`llama.rope_tables`). Text tokens have three equal ids; image tokens get their grid cell
(`mrope_positions`). With (B, S) positions everything reduces to plain RoPE.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from rlvlm_jax.models.llama import TextConfig


@dataclasses.dataclass(frozen=True)
class QwenTextConfig(TextConfig):
    """`llama.TextConfig` of the Qwen2 decoder, with Qwen2-VL-7B's shape as defaults."""

    vocab_size: int = 152064
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_layers: int = 28
    num_heads: int = 28
    num_kv_heads: int = 4
    rope_theta: float = 1000000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 32768
    family: str = "qwen2"
    attention_bias: bool = True
    mrope_section: tuple[int, ...] | None = (16, 24, 24)

    def validate(self) -> None:
        super().validate()
        name = type(self).__name__
        if self.family != "qwen2" or not self.attention_bias or self.mrope_section is None:
            raise ValueError(f"{name}: the Qwen2 decoder has family 'qwen2', attention_bias and "
                             f"an mrope_section")
        if self.head_dim not in (None, self.hidden_size // self.num_heads):
            raise ValueError(f"{name}: head_dim {self.head_dim} must be hidden_size / num_heads")
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

