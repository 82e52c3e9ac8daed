"""Qwen2-VL / Qwen2.5-VL glue: vision tower -> patch merger -> `<|image_pad|>` tokens of the
Qwen2 decoder, with M-RoPE positions; the same interface as `llava.LlavaModel`.

Images have one fixed size (the config's), so every image gives the same number of tokens and
every shape is static: merged features replace the image pad tokens of each row in order (the
static gather of `llava.merge_image_features`), and the 3-D positions of `get_rope_index` are
computed on the device from the token ids (`qwen_text.mrope_positions`).

Images enter channels-last and normalised, (B, H, W, C) or (B, K, H, W, C) (see
`qwen_preprocess.resize_normalize`), or already patchified in transformers' `pixel_values`
layout, (B, N, C*T*P*P) or (B, K, N, C*T*P*P) (`qwen_preprocess.patchify`).

The forward, prefill and decode glue is `llava.ImageTextModel`'s and the decoder is
`llama.Decoder` with the Qwen2 flags (`qwen_text.QwenTextConfig`). Decoding needs each row's rope
delta (max prompt position + 1 - prompt tokens): the prefill caches it under "rope_delta" and
decoding adds it to the positions it is given, so `sampling.generate` runs this model unchanged.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlvlm_jax import sharding as _sharding
from rlvlm_jax.models.common import param
from rlvlm_jax.models.llava import ImageTextModel, positions_from_mask
from rlvlm_jax.models.llava import make_forward as make_forward  # the same for every model
from rlvlm_jax.models.qwen_preprocess import patchify
from rlvlm_jax.models.qwen_text import QwenTextConfig, mrope_positions
from rlvlm_jax.models.qwen_vision import QwenVisionConfig, QwenVisionTower, layer_norm, rms_norm

MODEL_TYPES = {"qwen2_vl": "Qwen2VLForConditionalGeneration",
               "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration"}

# The Qwen-only partition rules live in the project's one table (`sharding.PARAM_RULES`, first);
# every other Qwen param matches the CLIP/LLaVA/LLaMA rules there with the same shapes.
QWEN_PARAM_RULES = _sharding.QWEN_PARAM_RULES


@dataclasses.dataclass(frozen=True)
class QwenVLConfig:
    """The whole VLM. `vision.variant` is the transformers model_type (qwen2_vl, qwen2_5_vl)."""

    vision: QwenVisionConfig = dataclasses.field(default_factory=QwenVisionConfig)
    text: QwenTextConfig = dataclasses.field(default_factory=QwenTextConfig)
    image_token_id: int = 151655  # <|image_pad|>
    video_token_id: int = 151656  # <|video_pad|>: rejected (no video inputs)
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    pad_token_id: int = 151643  # <|endoftext|>
    eos_token_id: int = 151645  # <|im_end|>

    @property
    def model_type(self) -> str:
        return self.vision.variant

    @property
    def num_image_tokens(self) -> int:
        """`<|image_pad|>` tokens per image: patches after the spatial merge."""
        return self.vision.num_tokens

    @property
    def merged_hw(self) -> tuple[int, int]:
        return self.vision.merged_h, self.vision.merged_w

    def validate(self) -> None:
        self.vision.validate()
        self.text.validate()
        if self.vision.out_hidden_size != self.text.hidden_size:
            raise ValueError(f"QwenVLConfig: the merger's out_hidden_size "
                             f"{self.vision.out_hidden_size} must equal the text hidden_size "
                             f"{self.text.hidden_size}")
        for name in ("image_token_id", "video_token_id"):
            v = getattr(self, name)
            if not 0 <= v < self.text.vocab_size:
                raise ValueError(f"QwenVLConfig: {name} {v} must lie inside the vocabulary "
                                 f"(size {self.text.vocab_size})")


def check_inputs(input_ids, images, cfg: QwenVLConfig) -> None:
    """Host-side checks (before compiling): no video, images at the fixed grid, and exactly the
    image pad tokens the images fill in every row."""
    ids = np.asarray(input_ids)
    if np.any(ids == cfg.video_token_id):
        raise ValueError(f"video inputs are not supported: input_ids contain the video pad "
                         f"token {cfg.video_token_id} (<|video_pad|>)")
    n_img = 0 if images is None else num_images(images, cfg)
    counts = np.sum(ids == cfg.image_token_id, axis=-1)
    want = n_img * cfg.num_image_tokens
    bad = np.nonzero(counts != want)[0]
    if bad.size:
        raise ValueError(f"rows {bad.tolist()} have {counts[bad].tolist()} image pad tokens (id "
                         f"{cfg.image_token_id}); each row needs {want} ({n_img} image(s) x "
                         f"{cfg.num_image_tokens} for the fixed {cfg.vision.image_height}x"
                         f"{cfg.vision.image_width} px grid)")


def num_images(images, cfg: QwenVLConfig) -> int:
    """Images per row of an image batch in one of the accepted layouts, else a readable error
    (other sizes would need transformers' dynamic resolution, which has no static shape)."""
    v = cfg.vision
    shape = tuple(np.shape(images))
    pixels = (v.image_height, v.image_width, v.num_channels)
    patches = (v.num_patches, v.patch_dim)
    if len(shape) in (4, 5) and shape[-3:] == pixels:
        return 1 if len(shape) == 4 else shape[1]
    if len(shape) in (3, 4) and shape[-2:] == patches:
        return 1 if len(shape) == 3 else shape[1]
    raise ValueError(
        f"images of shape {shape} do not fit the fixed grid: expected channels-last pixels "
        f"(B[, K], {v.image_height}, {v.image_width}, {v.num_channels}) or patches (B[, K], "
        f"{v.num_patches}, {v.patch_dim}); other resolutions (transformers' dynamic "
        f"resolution) and videos are not supported")


class PatchMerger(nnx.Module):
    """Qwen's merger: per-patch norm (LayerNorm for Qwen2-VL, RMSNorm for Qwen2.5-VL), concat of
    each merge block's patches, Linear-GELU-Linear to the text width."""

    def __init__(self, cfg: QwenVisionConfig, *, param_dtype, dtype, rngs: nnx.Rngs):
        self.cfg, self.dtype = cfg, dtype
        d = cfg.hidden_size * cfg.spatial_merge_size ** 2
        p = lambda shape, kind="normal": param(rngs, shape, param_dtype, kind)
        self.norm_scale = p((cfg.hidden_size,), "ones")
        if cfg.variant == "qwen2_vl":
            self.norm_bias = p((cfg.hidden_size,), "zeros")
        self.linear_1, self.linear_1_bias = p((d, d)), p((d,), "zeros")
        self.linear_2, self.linear_2_bias = p((d, cfg.out_hidden_size)), p(
            (cfg.out_hidden_size,), "zeros")

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, N, Dv) patches in merge-block order -> (B, N / merge^2, D_text)."""
        cfg, dtype = self.cfg, self.dtype
        x = x.astype(dtype)
        if cfg.variant == "qwen2_vl":
            x = layer_norm(x, self.norm_scale[...], self.norm_bias[...], cfg.norm_eps)
        else:
            x = rms_norm(x, self.norm_scale[...], cfg.norm_eps)
        x = x.reshape(x.shape[0], cfg.num_tokens, -1)
        x = x @ self.linear_1[...].astype(dtype) + self.linear_1_bias[...].astype(dtype)
        x = jax.nn.gelu(x, approximate=False)
        return x @ self.linear_2[...].astype(dtype) + self.linear_2_bias[...].astype(dtype)


class QwenVLModel(ImageTextModel):
    """Vision tower + merger + Qwen2 decoder with M-RoPE."""

    def vision_side(self, cfg: QwenVLConfig, *, remat: bool, **kw):
        return QwenVisionTower(cfg.vision, remat=remat, **kw), PatchMerger(cfg.vision, **kw)

    # -- images ---------------------------------------------------------------------------------
    def _patches(self, images: jax.Array) -> jax.Array:
        """Any accepted image layout -> patches (B * K, N, C*T*P*P)."""
        v = self.cfg.vision
        k = num_images(images, self.cfg)
        b = images.shape[0]
        if images.shape[-1] == v.patch_dim and images.shape[-2] == v.num_patches:
            return images.reshape(b * k, v.num_patches, v.patch_dim)
        images = images.reshape(b * k, v.image_height, v.image_width, v.num_channels)
        return patchify(images, v.patch_size, v.temporal_patch_size, v.spatial_merge_size)

    def image_features(self, images: jax.Array) -> jax.Array:
        """Images -> merged features (B, K * num_image_tokens, D_text)."""
        b, k = images.shape[0], num_images(images, self.cfg)
        feats = self.projector(self.vision(self._patches(images)))
        return feats.reshape(b, k * feats.shape[1], feats.shape[-1])

    # -- positions ------------------------------------------------------------------------------
    def prompt_positions(self, input_ids: jax.Array, attention_mask: jax.Array,
                         with_images: bool, text_from: int | None = None
                         ) -> tuple[jax.Array, jax.Array]:
        """(3, B, S) M-RoPE positions and (B,) rope deltas; 1-D positions without images.
        Tokens from index `text_from` on are text whatever their ids (`mrope_positions`)."""
        if not with_images:
            pos = positions_from_mask(attention_mask)
            return (jnp.broadcast_to(pos[None], (3, *pos.shape)),
                    jnp.zeros(pos.shape[:1], jnp.int32))
        return mrope_positions(input_ids, attention_mask, self.cfg.image_token_id,
                               self.cfg.merged_hw, text_from)

    def score_positions(self, input_ids: jax.Array, attention_mask: jax.Array,
                        completion_mask: jax.Array, with_images: bool = True) -> jax.Array:
        """Positions (3, B, P + T) of a left-padded prompt (B, P) followed by its right-padded
        completion (B, T), whose tokens are text whatever their ids (teacher-forced scoring)."""
        p = input_ids.shape[1]
        mask = jnp.concatenate([attention_mask, completion_mask.astype(attention_mask.dtype)],
                               axis=1)
        ids = jnp.concatenate([input_ids, jnp.zeros(completion_mask.shape, input_ids.dtype)],
                              axis=1)
        pos, _ = self.prompt_positions(ids, mask, with_images, text_from=p)
        return pos

    # -- KV-cache sampling ----------------------------------------------------------------------
    def init_cache(self, batch: int, length: int, dtype=None) -> dict:
        """A zeroed cache with room for `length` slots, including the rope delta entry."""
        return {**super().init_cache(batch, length, dtype),
                "rope_delta": jnp.zeros((batch,), jnp.int32)}


def abstract_model(cfg: QwenVLConfig, **kwargs):
    """Graphdef and ShapeDtypeStruct params without allocating (conversion, AOT plans)."""
    return QwenVLModel.abstract(cfg, **kwargs)


def init_params(cfg: QwenVLConfig, seed: int = 0, **kwargs):
    """(graphdef, random params) from one compiled draw (`llava.ImageTextModel.random`)."""
    return QwenVLModel.random(cfg, seed, **kwargs)
