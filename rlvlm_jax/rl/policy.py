"""The policy: a VLM (LLaVA, Qwen2-VL or Qwen2.5-VL) + value head built from the model config,
its params drawn or loaded.

Params travel as one plain dict `{"vlm": ..., "value": ...}` (plus `"lora"` under LoRA) through
compiled functions; the `Policy` holds only the static graph definitions, so jitted functions
take params as arguments and never close over them.

The model family: `config.model.family` ("llava", "qwen2_vl", "qwen2_5_vl") for a model drawn
at random from the config's fields, else the checkpoint's config.json `model_type`. Qwen models
see square `config.image_size` pictures (one fixed grid: static shapes), read prompts in Qwen's
chat template (`envs.prompts.conversation`) and keep the merger under `projector/`: like
LLaVA's projector it stays trainable when `freeze_vision` freezes the tower.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlvlm_jax.envs.prompts import image_token
from rlvlm_jax.models.clip import VisionConfig
from rlvlm_jax.models.llama import TextConfig
from rlvlm_jax.models.llava import LlavaConfig, LlavaModel, draw_params
from rlvlm_jax.models.preprocess import clip_preprocess
from rlvlm_jax.models.qwen2_vl import MODEL_TYPES as QWEN_MODEL_TYPES
from rlvlm_jax.models.qwen2_vl import QwenVLConfig, QwenVLModel
from rlvlm_jax.models.qwen_preprocess import resize_normalize
from rlvlm_jax.models.qwen_text import QwenTextConfig
from rlvlm_jax.models.qwen_vision import QwenVisionConfig
from rlvlm_jax.models.value_head import ValueHead
from rlvlm_jax.rl import lora as lora_lib
from rlvlm_jax.text.tokenizer import model_token_ids

FAMILIES = ("llava",) + tuple(QWEN_MODEL_TYPES)  # config.model.family


def family(m) -> str:
    """The config's model section's family ("llava" when the config has no such field)."""
    return str(m.get("family", "llava")) if hasattr(m, "get") else "llava"


def chat_of(cfg) -> str:
    """The conversation style (`envs.prompts.CHATS`) a model config reads: "qwen" or "llava"."""
    return "qwen" if isinstance(cfg, QwenVLConfig) else "llava"


def checkpoint_model_type(path: str) -> str | None:
    """config.json's model_type of a transformers checkpoint directory (None: unreadable)."""
    try:
        with open(os.path.join(path, "config.json")) as f:
            return json.load(f).get("model_type")
    except (OSError, ValueError):
        return None


def load_config(path: str, image_size: int):
    """The architecture of a transformers checkpoint (LLaVA, or Qwen at image_size^2 px)."""
    from rlvlm_jax.models.conversion import load_hf_config

    qwen = checkpoint_model_type(path) in QWEN_MODEL_TYPES
    return load_hf_config(path, image_size=(image_size, image_size) if qwen else None)


def check_tokenizer(cfg, tokenizer) -> None:
    """The tokenizer must fit the model: vocabulary size and the image placeholder id."""
    if len(tokenizer) > cfg.text.vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens, more than the model's "
                         f"vocabulary of {cfg.text.vocab_size}")
    token = image_token(chat_of(cfg))
    image_id = tokenizer.convert_tokens_to_ids(token)
    if image_id != cfg.image_token_id:
        raise ValueError(f"tokenizer's {token} id {image_id} != the model's image token "
                         f"id {cfg.image_token_id}")


def load_pretrained(model, image_size: int, tokenizer):
    """(config, params) from `model.checkpoint` (the config's model section), a transformers
    LLaVA, Qwen2-VL or Qwen2.5-VL directory (by its config.json model_type; a Qwen tower runs
    at image_size x image_size px)."""
    from rlvlm_jax.models.conversion import load_hf_checkpoint

    qwen = checkpoint_model_type(model.checkpoint) in QWEN_MODEL_TYPES
    cfg, params = load_hf_checkpoint(model.checkpoint, model.param_dtype,
                                     image_size=(image_size, image_size) if qwen else None)
    if not qwen and cfg.vision.image_size != image_size:
        raise ValueError(f"the checkpoint's vision tower takes {cfg.vision.image_size} px; "
                         f"config.image_size is {image_size} (frames are resized only "
                         "by preprocessing: set image_size to the tower's size or render larger)")
    check_tokenizer(cfg, tokenizer)
    return cfg, params


def _qwen_defaults(m, fam: str) -> dict:
    """The Qwen-only fields of the model section, with defaults when the config has none:
    M-RoPE split of the head's rotation pairs in Qwen's 1 : 1.5 : 1.5 (16/24/24 of 64), windows
    of 2 x 2 merged units, full attention in the last vision block (Qwen2.5-VL)."""
    get = m.get if hasattr(m, "get") else (lambda k, d=None: getattr(m, k, d))
    pairs = m.text_hidden // m.text_heads // 2
    t = pairs // 4
    h = (pairs - t) // 2
    section = get("mrope_section", None) or (t, h, pairs - t - h)
    out = {"mrope_section": tuple(int(x) for x in section)}
    if fam == "qwen2_5_vl":
        window = get("window_size", 0) or 2 * 2 * m.patch_size
        full = get("fullatt_blocks", None)
        out.update(window_size=int(window),
                   fullatt_block_indexes=tuple(int(i) for i in (
                       (m.vision_layers - 1,) if full is None else full)))
    return out


def architecture(m, image_size: int, vocab_size: int):
    """The model config the config's model section `m` describes (special token ids left at
    their defaults); not validated. `m.family` picks LLaVA or a Qwen variant."""
    fam = family(m)
    text = dict(  # the decoder fields both families read from the same config fields
        vocab_size=vocab_size,
        hidden_size=m.text_hidden,
        intermediate_size=m.text_mlp,
        num_layers=m.text_layers,
        num_heads=m.text_heads,
        num_kv_heads=m.text_kv_heads,
        max_position_embeddings=m.max_positions,
    )
    vision = dict(  # the tower fields both families read from the same config fields
        hidden_size=m.vision_hidden,
        intermediate_size=m.vision_mlp,
        num_layers=m.vision_layers,
        num_heads=m.vision_heads,
        patch_size=m.patch_size,
    )
    if fam == "llava":
        return LlavaConfig(
            vision=VisionConfig(**vision, image_size=image_size),
            text=TextConfig(**text),
            vision_feature_layer=m.vision_feature_layer,
        )
    if fam not in FAMILIES:
        raise ValueError(f"config.model.family {fam!r} is not one of {FAMILIES}")
    extra = _qwen_defaults(m, fam)
    return QwenVLConfig(
        vision=QwenVisionConfig(
            **vision,
            variant=fam,
            out_hidden_size=m.text_hidden,
            hidden_act="quick_gelu" if fam == "qwen2_vl" else "silu",
            window_size=extra.get("window_size", 0),
            fullatt_block_indexes=extra.get("fullatt_block_indexes", ()),
            image_height=image_size,
            image_width=image_size,
        ),
        text=QwenTextConfig(**text, mrope_section=extra["mrope_section"]),
    )


def llava_config(m, image_size: int, tokenizer):
    """The model config (LlavaConfig or QwenVLConfig, by `m.family`) from the config's model
    section `m`, with the tokenizer's special ids; checks they match."""
    vocab = m.vocab_size or -(-len(tokenizer) // 64) * 64
    if len(tokenizer) > vocab:
        raise ValueError(
            f"tokenizer has {len(tokenizer)} tokens but config.model.vocab_size is {vocab}"
        )
    cfg = architecture(m, image_size, vocab)
    chat = chat_of(cfg)
    token = image_token(chat)
    if tokenizer.convert_tokens_to_ids(token) in (None, tokenizer.unk_token_id):
        raise ValueError(f"tokenizer has no {token} token")
    cfg = dataclasses.replace(cfg, **model_token_ids(tokenizer, chat))
    cfg.validate()
    return cfg


@dataclasses.dataclass(frozen=True)
class Policy:
    """Static halves of the policy: graph definitions and the model config (hashable)."""

    cfg: LlavaConfig | QwenVLConfig
    vlm_graph: nnx.GraphDef
    value_graph: nnx.GraphDef
    pixels: str = "clip"  # "clip": CLIP normalisation; "ink": (255 - x) / 255, blank = 0
    lora_scale: float = 0.0  # alpha / rank of the adapters in params["lora"], when present
    dtype: str = "float32"  # the model's compute dtype

    def model(self, params) -> LlavaModel | QwenVLModel:
        """The VLM module, with LoRA adapters merged in when params carry them.

        Weight matrices are cast to the compute dtype here, on their shards and once per
        compiled step, instead of at each use inside the decode loop and the layer loop;
        merged LoRA weights are then held in the compute dtype (half the bytes at bf16). The
        model casts every matrix to the compute dtype anyway, so the numerics are the same;
        vectors (norm scales, biases) stay as stored (LayerNorm reads them in float32).
        """
        vlm = lora_lib.merge(params["vlm"], params.get("lora"), self.lora_scale,
                             dtype=jnp.dtype(self.dtype))
        return nnx.merge(self.vlm_graph, vlm)

    def value(self, params, hidden: jax.Array) -> jax.Array:
        return nnx.merge(self.value_graph, params["value"])(hidden)

    def preprocess(self, frames: jax.Array) -> jax.Array:
        """uint8 env frames -> model pixels (resized only if sizes differ).

        "clip" is what pretrained towers expect. "ink" (for models trained from scratch) maps
        white to 0 and black to 1, so blank patches embed to nothing and a digit's patch differs
        from another digit's in every non-zero input, not by a few pixels on a large constant.
        """
        if isinstance(self.cfg, QwenVLConfig):  # Qwen's processor: resize, no crop
            h, w = self.cfg.vision.image_height, self.cfg.vision.image_width
            if self.pixels == "clip":
                return resize_normalize(frames, h, w)
            if self.pixels == "ink":
                return 1.0 - resize_normalize(frames, h, w, mean=(0.0,) * 3, std=(1.0,) * 3)
            raise ValueError(f"unknown pixel mode {self.pixels!r}; use 'clip' or 'ink'")
        size = self.cfg.vision.image_size
        if self.pixels == "clip":
            return clip_preprocess(frames, size=size, crop=size)
        if self.pixels == "ink":
            x = clip_preprocess(frames, size=size, crop=size, mean=(0.0,) * 3, std=(1.0,) * 3)
            return 1.0 - x
        raise ValueError(f"unknown pixel mode {self.pixels!r}; use 'clip' or 'ink'")


def init_policy(cfg: LlavaConfig, model, *, pretrained: dict | None = None,
                lora_scale: float = 0.0):
    """(Policy, params) with every weight from one compiled random draw per module.

    `model`: the config's model section (value_hidden, init_seed, init, pixels, dtype,
    param_dtype, remat). init: "normal" (the model package's N(0, 0.02)) or "fan_in" (see
    `fan_in_init`); `pretrained` (params from `conversion.load_hf_checkpoint`) replaces the LLaVA
    weights, the value head is always fresh. dtype is the compute dtype, param_dtype the stored
    one.
    """
    value_hidden, seed, init, pixels = model.value_hidden, model.init_seed, model.init, model.pixels
    dtype, param_dtype, remat = model.dtype, model.param_dtype, model.remat
    if init not in ("normal", "fan_in"):
        raise ValueError(f"model init must be 'normal' or 'fan_in', got {init!r}")
    kw = dict(dtype=jnp.dtype(dtype), param_dtype=jnp.dtype(param_dtype), remat=remat)
    cls = QwenVLModel if isinstance(cfg, QwenVLConfig) else LlavaModel
    vlm = nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(0), **kw))
    vlm_graph, vlm_state = nnx.split(vlm, nnx.Param)
    head = nnx.eval_shape(
        lambda: ValueHead(cfg.text.hidden_size, tuple(value_hidden), rngs=nnx.Rngs(0))
    )
    value_graph, value_state = nnx.split(head, nnx.Param)
    k_vlm, k_value = jax.random.split(jax.random.key(seed))
    params = {"vlm": draw_params(vlm_state, k_vlm), "value": draw_params(value_state, k_value)}
    if pretrained is not None:
        want = jax.tree.map(lambda x: (x.shape, x.dtype), params["vlm"])
        have = jax.tree.map(lambda x: (x.shape, jnp.dtype(param_dtype)), pretrained)
        if want != have:
            raise ValueError("pretrained params do not match the model config")
        params["vlm"] = jax.tree.map(lambda x: jnp.asarray(x, param_dtype), pretrained)
    elif init == "fan_in":
        params["vlm"] = jax.jit(fan_in_init)(params["vlm"])
    return Policy(cfg, vlm_graph, value_graph, pixels, lora_scale, jnp.dtype(dtype).name), params


_EMBEDDINGS = ("embed", "pos_embed", "class_embed")
_HEADS_IN = ("q_proj", "k_proj", "v_proj")  # (d, heads, head_dim): fan-in is d


def fan_in_init(vlm_params, embed_std: float = 1.0):
    """Rescale a freshly drawn N(0, 0.02) LLaVA to N(0, 1 / fan_in) matrices and N(0, embed_std)
    token embeddings (PyTorch-like scales).

    0.02 suits 4096-wide pretrained models; in a 64-128-wide model it shrinks every linear map
    ~4x at init, blocks barely contribute, and in our runs a tiny model then never learnt to read
    the picture within hundreds of SFT steps. Norm scales and biases are untouched.
    """

    def rescale(path, x):
        name = str(getattr(path[-1], "key", path[-1]))
        if x.ndim < 2 and name != "class_embed":
            return x
        if name in _EMBEDDINGS:
            return x * (embed_std / 0.02) if name == "embed" else x
        fan_in = x.shape[0] if name in _HEADS_IN else int(np.prod(x.shape[:-1]))
        return x * ((1.0 / np.sqrt(fan_in)) / 0.02)

    return jax.tree_util.tree_map_with_path(rescale, vlm_params)


def count_params(params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
