"""LLaVA glue: CLIP features -> projector -> placeholder tokens of the LLaMA/Mistral decoder.

Image features replace the `<image>` placeholder tokens of each row in order, with static shapes
(a gather by running placeholder count), so one compiled function serves any prompt layout.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlvlm_jax.models.clip import ACTIVATIONS, VisionConfig, VisionTower
from rlvlm_jax.models.common import param
from rlvlm_jax.models.llama import Decoder, TextConfig, init_cache

PROJECTORS = ("mlp2x_gelu", "linear")
SELECT_STRATEGIES = ("default", "full")  # default: drop CLIP's class token; full: keep it


@dataclasses.dataclass(frozen=True)
class LlavaConfig:
    """The whole VLM. `vision_feature_layer` indexes transformers' hidden_states tuple."""

    vision: VisionConfig = dataclasses.field(default_factory=VisionConfig)
    text: TextConfig = dataclasses.field(default_factory=TextConfig)
    projector: str = "mlp2x_gelu"
    projector_bias: bool = True
    projector_act: str = "gelu"
    vision_feature_layer: int = -2
    select_strategy: str = "default"
    image_token_id: int = 32000
    pad_token_id: int = 0
    eos_token_id: int = 2

    @property
    def model_type(self) -> str:
        """transformers' name of the architecture (conversion dispatches on it)."""
        return "llava"

    @property
    def num_image_tokens(self) -> int:
        """Placeholder tokens per image: patches, plus the class token under 'full'."""
        return self.vision.num_patches + (1 if self.select_strategy == "full" else 0)

    def validate(self) -> None:
        self.vision.validate()
        self.text.validate()
        if self.projector not in PROJECTORS:
            raise ValueError(f"LlavaConfig: projector {self.projector!r} not in {PROJECTORS}")
        if self.projector_act not in ACTIVATIONS:
            raise ValueError(f"LlavaConfig: projector_act {self.projector_act!r} unsupported")
        if self.select_strategy not in SELECT_STRATEGIES:
            raise ValueError(f"LlavaConfig: select_strategy {self.select_strategy!r} not in "
                             f"{SELECT_STRATEGIES}")
        if not 0 <= self.image_token_id < self.text.vocab_size:
            raise ValueError(f"LlavaConfig: image_token_id {self.image_token_id} must lie inside "
                             f"the vocabulary (size {self.text.vocab_size})")
        n = self.vision.num_layers
        if not -(n + 1) <= self.vision_feature_layer <= n:
            raise ValueError(f"LlavaConfig: vision_feature_layer {self.vision_feature_layer} out "
                             f"of range for a {n}-layer vision tower")


def positions_from_mask(mask: jax.Array) -> jax.Array:
    """RoPE positions for left-padded rows: 0.. over real tokens, 0 on padding (as generate)."""
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


def merge_image_features(embeds: jax.Array, input_ids: jax.Array, features: jax.Array,
                         image_token_id: int) -> jax.Array:
    """Put row b's k-th image feature at row b's k-th placeholder. features (B, N, D)."""
    is_image = input_ids == image_token_id
    idx = jnp.clip(jnp.cumsum(is_image, axis=1) - 1, 0, features.shape[1] - 1)
    gathered = jnp.take_along_axis(features.astype(embeds.dtype), idx[..., None], axis=1)
    return jnp.where(is_image[..., None], gathered, embeds)


def check_image_tokens(input_ids, num_images: int, cfg: LlavaConfig) -> None:
    """Host-side check (before compiling) that each row has exactly the placeholders it needs."""
    counts = np.sum(np.asarray(input_ids) == cfg.image_token_id, axis=-1)
    want = num_images * cfg.num_image_tokens
    bad = np.nonzero(counts != want)[0]
    if bad.size:
        raise ValueError(f"rows {bad.tolist()} have {counts[bad].tolist()} image placeholder "
                         f"tokens (id {cfg.image_token_id}); each row needs {want} "
                         f"({num_images} image(s) x {cfg.num_image_tokens})")


class Projector(nnx.Module):
    """LLaVA's multimodal projector: Linear-GELU-Linear (mlp2x_gelu) or one Linear."""

    def __init__(self, cfg: LlavaConfig, *, param_dtype, dtype, rngs: nnx.Rngs):
        self.cfg, self.dtype = cfg, dtype
        dv, dt = cfg.vision.hidden_size, cfg.text.hidden_size
        p = lambda shape, kind="normal": param(rngs, shape, param_dtype, kind)
        self.linear_1 = p((dv, dt))
        if cfg.projector_bias:
            self.linear_1_bias = p((dt,), "zeros")
        if cfg.projector == "mlp2x_gelu":
            self.linear_2 = p((dt, dt))
            if cfg.projector_bias:
                self.linear_2_bias = p((dt,), "zeros")

    def __call__(self, x: jax.Array) -> jax.Array:
        cfg, dtype = self.cfg, self.dtype
        x = x.astype(dtype) @ self.linear_1[...].astype(dtype)
        if cfg.projector_bias:
            x = x + self.linear_1_bias[...].astype(dtype)
        if cfg.projector == "mlp2x_gelu":
            x = ACTIVATIONS[cfg.projector_act](x) @ self.linear_2[...].astype(dtype)
            if cfg.projector_bias:
                x = x + self.linear_2_bias[...].astype(dtype)
        return x


class ImageTextModel(nnx.Module):
    """What the VLMs share (LlavaModel here, qwen2_vl.QwenVLModel): a `vision` tower and a
    `projector` whose `image_features` replace the image placeholder tokens' embeddings, and a
    `llama.Decoder` `text`. Subclasses build the vision side and say how it makes features and
    how a prompt is positioned (`prompt_positions`).

    Decoding: a prefill caches each row's rope delta under "rope_delta" when the model has one
    (M-RoPE), and `decode` adds it to the positions it is given (the sampler's count of real
    tokens), so `sampling.generate` drives every model the same way.
    """

    def __init__(self, cfg, *, param_dtype=jnp.float32, dtype=jnp.float32, remat: bool = False,
                 rngs: nnx.Rngs):
        cfg.validate()
        self.cfg = cfg
        self.dtype = dtype
        kw = dict(param_dtype=param_dtype, dtype=dtype, rngs=rngs)
        self.vision, self.projector = self.vision_side(cfg, remat=remat, **kw)
        self.text = Decoder(cfg.text, remat=remat, **kw)

    def vision_side(self, cfg, *, remat: bool, **kw) -> tuple[nnx.Module, nnx.Module]:
        """The vision tower and the projector to the text width (built by `__init__`)."""
        raise NotImplementedError

    def image_features(self, images: jax.Array) -> jax.Array:
        """Images -> features (B, K * num_image_tokens, D_text)."""
        raise NotImplementedError

    def prompt_positions(self, input_ids: jax.Array, attention_mask: jax.Array,
                         with_images: bool) -> tuple[jax.Array, jax.Array | None]:
        """Positions of a left-padded prompt for the decoder, and the rope delta (B,) that
        decoding adds to later positions (None: no delta)."""
        raise NotImplementedError

    def score_positions(self, input_ids: jax.Array, attention_mask: jax.Array,
                        completion_mask: jax.Array, with_images: bool = True) -> jax.Array:
        """Decoder positions of a left-padded prompt (B, P) followed by its right-padded
        completion (B, T), as the sampler gave them (`scoring.token_logprobs`): here the count of
        real tokens before each slot; M-RoPE models override it."""
        mask = jnp.concatenate([attention_mask, completion_mask.astype(attention_mask.dtype)],
                               axis=1)
        return positions_from_mask(mask)

    def init_cache(self, batch: int, length: int, dtype=None) -> dict:
        """A zeroed decoding cache with room for `length` slots (`sampling.new_cache`)."""
        return init_cache(self.cfg.text, batch, length, dtype or self.dtype)

    def embed(self, input_ids: jax.Array, images: jax.Array | None) -> jax.Array:
        embeds = self.text.embed_tokens(input_ids)
        if images is not None:
            embeds = merge_image_features(embeds, input_ids, self.image_features(images),
                                          self.cfg.image_token_id)
        return embeds

    def hidden_states(self, input_ids: jax.Array, images: jax.Array | None,
                      attention_mask: jax.Array, positions: jax.Array | None = None) -> jax.Array:
        """Final (post-norm) hidden states (B, S, D) in the compute dtype (the value head's
        input)."""
        if positions is None:
            positions, _ = self.prompt_positions(input_ids, attention_mask, images is not None)
        hidden, _ = self.text.forward(self.embed(input_ids, images), positions, attention_mask)
        return hidden

    def __call__(self, input_ids: jax.Array, images: jax.Array | None, attention_mask: jax.Array,
                 positions: jax.Array | None = None) -> jax.Array:
        """Float32 logits (B, S, V)."""
        return self.text.logits(self.hidden_states(input_ids, images, attention_mask, positions))

    def prefill(self, input_ids: jax.Array, images: jax.Array | None, attention_mask: jax.Array,
                cache: dict) -> tuple[jax.Array, dict]:
        """Run the left-padded prompt, fill cache slots [0, S) (and the rope delta); return the
        last slot's hidden state (B, D)."""
        positions, delta = self.prompt_positions(input_ids, attention_mask, images is not None)
        hidden, cache = self.text.forward(self.embed(input_ids, images), positions,
                                          attention_mask, cache)
        if delta is not None:
            cache = {**cache, "rope_delta": delta}
        return hidden[:, -1], cache

    def decode(self, tokens: jax.Array, positions: jax.Array, kv_mask: jax.Array, cache: dict,
               index: jax.Array) -> tuple[jax.Array, dict]:
        """One token per row (B,) at slot `index`; `positions` (B,) counts the row's real tokens
        before it, to which a cached rope delta is added. Returns float32 logits (B, V) and the
        new cache."""
        delta = cache.get("rope_delta")
        if delta is not None:
            positions = positions + delta
        x = self.text.embed_tokens(tokens[:, None])
        hidden, cache = self.text.decode(x, positions[:, None], kv_mask, cache, index)
        return self.text.logits(hidden[:, 0]), cache

    @classmethod
    def abstract(cls, cfg, **kwargs):
        """Graphdef and ShapeDtypeStruct params without allocating (conversion, AOT plans)."""
        return split_params(nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(0), **kwargs)))

    @classmethod
    def random(cls, cfg, seed: int = 0, **kwargs):
        """(graphdef, random params), all weights from one compiled random draw.

        Eager NNX construction compiles every random op separately, and even under jit forty
        separate threefry draws take XLA many seconds to compile on CPU; one flat draw sliced
        into the weights compiles in well under a second. kwargs: param_dtype, dtype, remat.
        """
        model = nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(0), **kwargs))
        graphdef, state = nnx.split(model, nnx.Param)
        return graphdef, draw_params(state, jax.random.key(seed))


class LlavaModel(ImageTextModel):
    """CLIP tower + projector + decoder. Images are channels-last (B, H, W, C) or (B, K, H, W, C),
    already CLIP-normalised (see rlvlm_jax.models.preprocess)."""

    def vision_side(self, cfg: LlavaConfig, *, remat: bool, **kw):
        return VisionTower(cfg.vision, remat=remat, **kw), Projector(cfg, **kw)

    def image_features(self, images: jax.Array) -> jax.Array:
        """(B, H, W, C) or (B, K, H, W, C) -> projected features (B, K * tokens, D_text)."""
        if images.ndim == 4:
            images = images[:, None]
        b, k = images.shape[:2]
        feats = self.vision(images.reshape(b * k, *images.shape[2:]), self.cfg.vision_feature_layer)
        if self.cfg.select_strategy == "default":
            feats = feats[:, 1:]
        feats = self.projector(feats)
        return feats.reshape(b, k * feats.shape[1], feats.shape[-1])

    def prompt_positions(self, input_ids: jax.Array, attention_mask: jax.Array,
                         with_images: bool) -> tuple[jax.Array, None]:
        """RoPE positions over the real tokens, whatever they are; no rope delta."""
        return positions_from_mask(attention_mask), None


def split_params(model: nnx.Module):
    """(graphdef, params as a plain nested dict): the pure-function form used under jit."""
    graphdef, state = nnx.split(model, nnx.Param)
    return graphdef, nnx.to_pure_dict(state)


def abstract_model(cfg: LlavaConfig, **kwargs):
    """Graphdef and ShapeDtypeStruct params without allocating (for conversion and AOT plans)."""
    return LlavaModel.abstract(cfg, **kwargs)


def init_params(cfg: LlavaConfig, seed: int = 0, **kwargs):
    """(graphdef, random params) from one compiled draw (`ImageTextModel.random`)."""
    return LlavaModel.random(cfg, seed, **kwargs)


def draw_params(state, key: jax.Array) -> dict:
    """Fill an abstract nnx.State of Params (made by `common.param`) from their init metadata."""
    flat = list(nnx.to_flat_state(state))
    meta = [v.get_metadata() for _, v in flat]
    sizes = [int(np.prod(v.shape)) if m["init"] == "normal" else 0
             for (_, v), m in zip(flat, meta, strict=True)]

    def make(key):
        draws = jax.random.normal(key, (max(sum(sizes), 1),), jnp.float32)
        out, start = {}, 0
        for (path, v), m, n in zip(flat, meta, sizes, strict=True):
            if m["init"] == "normal":
                x = m["std"] * draws[start:start + n].reshape(v.shape)
                start += n
            else:
                x = jnp.full(v.shape, 1.0 if m["init"] == "ones" else 0.0)
            node = out
            for k in path[:-1]:
                node = node.setdefault(k, {})
            node[path[-1]] = x.astype(v.dtype)
        return out

    return jax.jit(make)(key)


def make_forward(graphdef, **jit_kwargs):
    """A jitted `(params, input_ids, images, attention_mask) -> float32 logits`; create once."""

    def forward(params, input_ids, images, attention_mask):
        return nnx.merge(graphdef, params)(input_ids, images, attention_mask)

    return jax.jit(forward, **jit_kwargs)
