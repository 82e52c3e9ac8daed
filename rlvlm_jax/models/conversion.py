"""transformers checkpoints <-> our params, from and to safetensors files (no torch).

    python -m rlvlm_jax.models.conversion to-jax  HF_DIR  OUT_DIR [--dtype bfloat16]
                                                  [--image-size HxW]
    python -m rlvlm_jax.models.conversion to-hf   OUR_DIR OUT_DIR [--dtype float32]
    python -m rlvlm_jax.models.conversion inspect HF_DIR [--image-size HxW]

The model family follows the checkpoint's `model_type` (in config.json, and in our own
rlvlm_config.json): LLaVA (llava, llava_next; mapped here) or Qwen2-VL / Qwen2.5-VL (qwen2_vl,
qwen2_5_vl; mapped in `qwen_conversion`). Qwen configs carry no image size and our Qwen model runs
one fixed size (static shapes), so it is given at conversion (`--image-size 448x448`,
`image_size=(448, 448)`) and kept in our config; for LLaVA the tower's size is the only one.

Python: `load_hf_checkpoint(dir, dtype[, image_size=...]) -> (config, params)`,
`from_state_dict(config_dict, state_dict, ...)` for an in-memory transformers model,
`export_hf_checkpoint(params, cfg, dir)`, and our own format: `save_params` / `load_params`.
Everything but a family's name mapping and config translation (its `Family`) is shared: finding
and reading the tensors, the errors that name every missing, mis-shaped or unexpected tensor,
writing shards. LLaVA files on disk use several key layouts (hub: `language_model.model.*`,
`vision_tower.vision_model.*`; transformers 5 `save_pretrained`: `language_model.model.*`,
`vision_tower.*`; in-memory 5.x: `model.language_model.*`); all are accepted. LLaVA export writes
the llava-hf hub layout (tested: transformers 5.23 loads it).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import re
import sys
import warnings
from collections.abc import Callable

import jax
import numpy as np

from rlvlm_jax.models import llava
from rlvlm_jax.models.clip import VisionConfig
from rlvlm_jax.models.llama import TextConfig
from rlvlm_jax.models.llava import LlavaConfig

OUR_CONFIG = "rlvlm_config.json"
OUR_PARAMS = "params.safetensors"


class CheckpointError(ValueError):
    """A checkpoint directory or its tensors do not fit the expected model."""


# ---------------------------------------------------------------------------------------------
# What a model family supplies
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Row:
    """One of our params: where it lives in the HF checkpoint and how it maps.

    kind "copy": same numbers, reshaped; "linear": HF (out, in...) -> ours (in..., out...);
    "conv": HF (D, C, p, p) patch conv -> ours (p, p, C, D). `key` is canonical (see
    `Family.layouts`). `part` (i, n): ours is the i-th of n equal slices along the HF tensor's
    first axis (a fused qkv). `hf_shape` is the whole HF tensor's shape.
    """

    ours: str
    key: str
    kind: str
    hf_shape: tuple[int, ...]
    part: tuple[int, int] | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class Family:
    """A model family's side of conversion; the rest of this module serves every family."""

    model_types: tuple[str, ...]  # transformers' config.json model_type values read
    layouts: tuple[tuple[re.Pattern, str], ...]  # file key -> canonical prefix; first match wins
    export_prefix: dict[str, str]  # canonical prefix -> the key prefix export writes
    param_table: Callable[..., list[Row]]  # cfg -> every parameter's Row
    abstract_model: Callable  # cfg -> (graphdef, ShapeDtypeStruct params)
    config_from_hf: Callable  # (config.json dict, image_size or None) -> validated config
    config_to_hf: Callable[..., dict]  # (cfg, dtype name) -> config.json dict
    config_from_dict: Callable[[dict], object]  # inverse of `config_to_dict`
    check_dir: Callable[[str, object], None] | None = None  # more checks of a checkpoint dir
    ignored: re.Pattern | None = None  # file keys skipped without a word

    def canonical(self, key: str) -> str | None:
        for pattern, prefix in self.layouts:
            m = pattern.match(key)
            if m:
                return prefix + m.group(1)
        return None


def family_for(model_type, where: str = "config.json") -> Family:
    """The family that reads transformers' `model_type`."""
    if model_type in LLAVA.model_types:
        return LLAVA
    from rlvlm_jax.models.qwen_conversion import QWEN  # it imports this module

    if model_type in QWEN.model_types:
        return QWEN
    known = sorted(LLAVA.model_types + QWEN.model_types)
    raise CheckpointError(f"{where} model_type is {model_type!r}; expected one of {known}")


def family_of(cfg) -> Family:
    """The family of one of our configs (LlavaConfig, QwenVLConfig)."""
    return family_for(cfg.model_type, type(cfg).__name__)


def validated(cfg):
    """`cfg` after its own checks; their ValueError becomes a CheckpointError."""
    try:
        cfg.validate()
    except ValueError as e:
        raise CheckpointError(f"config.json describes an unsupported model: {e}") from e
    return cfg


def image_hw(image_size) -> tuple[int, int] | None:
    """An image size given as one int (square) or (H, W) -> (H, W); None stays None."""
    if image_size is None:
        return None
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = image_size
    return int(h), int(w)


# ---------------------------------------------------------------------------------------------
# LLaVA. One entry per parameter: (our path, canonical HF key, transform, number of our leading
# dims that form the HF "in" dim). Layer entries are repeated for every layer index.
#   copy:   same shape
#   vec:    HF 1-D bias -> our (heads, head_dim)
#   linear: HF (out, in) weight -> transposed -> reshaped to our (in..., out...) shape
#   conv:   HF (D, C, p, p) patch conv -> our (p, p, C, D)
# ---------------------------------------------------------------------------------------------
LLAVA_MODEL_TYPES = ("llava", "llava_next")

_VISION = [
    ("vision/patch_embed", "vision.embeddings.patch_embedding.weight", "conv", 0),
    ("vision/class_embed", "vision.embeddings.class_embedding", "copy", 0),
    ("vision/pos_embed", "vision.embeddings.position_embedding.weight", "copy", 0),
    ("vision/pre_norm_scale", "vision.pre_layrnorm.weight", "copy", 0),
    ("vision/pre_norm_bias", "vision.pre_layrnorm.bias", "copy", 0),
    ("vision/post_norm_scale", "vision.post_layernorm.weight", "copy", 0),
    ("vision/post_norm_bias", "vision.post_layernorm.bias", "copy", 0),
]
_VISION_LAYER = [
    ("norm1_scale", "layer_norm1.weight", "copy", 0),
    ("norm1_bias", "layer_norm1.bias", "copy", 0),
    ("q_proj", "self_attn.q_proj.weight", "linear", 1),
    ("q_bias", "self_attn.q_proj.bias", "vec", 0),
    ("k_proj", "self_attn.k_proj.weight", "linear", 1),
    ("k_bias", "self_attn.k_proj.bias", "vec", 0),
    ("v_proj", "self_attn.v_proj.weight", "linear", 1),
    ("v_bias", "self_attn.v_proj.bias", "vec", 0),
    ("o_proj", "self_attn.out_proj.weight", "linear", 2),
    ("o_bias", "self_attn.out_proj.bias", "copy", 0),
    ("norm2_scale", "layer_norm2.weight", "copy", 0),
    ("norm2_bias", "layer_norm2.bias", "copy", 0),
    ("fc1", "mlp.fc1.weight", "linear", 1),
    ("fc1_bias", "mlp.fc1.bias", "copy", 0),
    ("fc2", "mlp.fc2.weight", "linear", 1),
    ("fc2_bias", "mlp.fc2.bias", "copy", 0),
]
_TEXT = [
    ("text/embed", "text.embed_tokens.weight", "copy", 0),
    ("text/final_norm", "text.norm.weight", "copy", 0),
]
_TEXT_LAYER = [
    ("attn_norm", "input_layernorm.weight", "copy", 0),
    ("q_proj", "self_attn.q_proj.weight", "linear", 1),
    ("k_proj", "self_attn.k_proj.weight", "linear", 1),
    ("v_proj", "self_attn.v_proj.weight", "linear", 1),
    ("o_proj", "self_attn.o_proj.weight", "linear", 2),
    ("mlp_norm", "post_attention_layernorm.weight", "copy", 0),
    ("gate_proj", "mlp.gate_proj.weight", "linear", 1),
    ("up_proj", "mlp.up_proj.weight", "linear", 1),
    ("down_proj", "mlp.down_proj.weight", "linear", 1),
]

# Key layouts found in files -> canonical prefix. Order matters (first match wins).
_LLAVA_LAYOUTS = [
    (re.compile(r"^(?:model\.)?vision_tower\.(?:vision_model\.)?(.+)$"), "vision."),
    (re.compile(r"^(?:model\.)?multi_modal_projector\.(.+)$"), "projector."),
    (re.compile(r"^(?:model\.language_model\.|language_model\.model\.)(.+)$"), "text."),
    (re.compile(r"^(?:language_model\.)?(lm_head\.weight)$"), ""),
]
_LLAVA_IGNORED = re.compile(r"^(?:model\.)?image_newline$")  # NeXT tiles; unused with one crop
_LLAVA_EXPORT_PREFIX = {"vision.": "vision_tower.vision_model.",
                        "projector.": "multi_modal_projector.", "text.": "language_model.model.",
                        "lm_head.": "language_model.lm_head."}


def _hf_shape(our_shape: tuple[int, ...], kind: str, in_dims: int) -> tuple[int, ...]:
    if kind == "copy":
        return our_shape
    if kind == "vec":
        return (math.prod(our_shape),)
    if kind == "linear":
        return (math.prod(our_shape[in_dims:]), math.prod(our_shape[:in_dims]))
    if kind == "conv":
        p, q, c, d = our_shape
        return (d, c, p, q)
    raise AssertionError(kind)


def _llava_param_table(cfg: LlavaConfig) -> list[Row]:
    """Every LLaVA parameter as a Row (the HF shapes follow from ours)."""
    rows = list(_VISION)
    for i in range(cfg.vision.num_layers):
        rows += [(f"vision/layers/{i}/{p}", f"vision.encoder.layers.{i}.{k}", t, n)
                 for p, k, t, n in _VISION_LAYER]
    rows.append(("projector/linear_1", "projector.linear_1.weight", "linear", 1))
    if cfg.projector_bias:
        rows.append(("projector/linear_1_bias", "projector.linear_1.bias", "copy", 0))
    if cfg.projector == "mlp2x_gelu":
        rows.append(("projector/linear_2", "projector.linear_2.weight", "linear", 1))
        if cfg.projector_bias:
            rows.append(("projector/linear_2_bias", "projector.linear_2.bias", "copy", 0))
    rows += list(_TEXT)
    for i in range(cfg.text.num_layers):
        rows += [(f"text/layers/{i}/{p}", f"text.layers.{i}.{k}", t, n)
                 for p, k, t, n in _TEXT_LAYER]
    if not cfg.text.tie_embeddings:
        rows.append(("text/lm_head", "lm_head.weight", "linear", 1))
    shapes = param_shapes(cfg)
    return [Row(ours, key, "copy" if kind == "vec" else kind, _hf_shape(shapes[ours], kind, n))
            for ours, key, kind, n in rows]


def _llava_config_from_hf(hf: dict, image_size=None) -> LlavaConfig:
    """Our LlavaConfig from a transformers `config.json` dict (llava or llava_next); an
    `image_size`, if given, must be the vision tower's."""
    mt = hf.get("model_type")
    if mt not in LLAVA_MODEL_TYPES:
        raise CheckpointError(f"config.json model_type is {mt!r}; expected 'llava' or "
                              f"'llava_next'")
    if mt == "llava_next":
        warnings.warn("llava_next checkpoint: using one crop per image as RL4VLM did (no anyres "
                      "tiles, no image_newline)", stacklevel=2)
    tc, vc = hf.get("text_config") or {}, hf.get("vision_config") or {}
    family = tc.get("model_type", "llama")
    if family not in ("llama", "mistral"):
        raise CheckpointError(f"text model_type {family!r} is not supported (llama, mistral)")
    rope = tc.get("rope_parameters") or tc.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise CheckpointError(f"RoPE scaling {rope} is not supported")
    for flag in ("attention_bias", "mlp_bias"):
        if tc.get(flag):
            raise CheckpointError(f"text_config.{flag}=true is not supported")
    if tc.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"text hidden_act {tc.get('hidden_act')!r} is not supported (silu)")
    feature_layer = hf.get("vision_feature_layer", -2)
    if not isinstance(feature_layer, int):
        raise CheckpointError(f"vision_feature_layer {feature_layer!r}: only one layer supported")
    # transformers ties LLaVA's lm_head by the top-level flag; older files only set text_config's.
    tie = bool(hf.get("tie_word_embeddings", tc.get("tie_word_embeddings", False)))
    eos = tc.get("eos_token_id", hf.get("eos_token_id", 2))
    eos = eos[0] if isinstance(eos, list) else eos
    pad = hf.get("pad_token_id", tc.get("pad_token_id"))
    heads = tc.get("num_attention_heads", 32)
    text = TextConfig(
        vocab_size=tc.get("vocab_size", 32000),
        hidden_size=tc.get("hidden_size", 4096),
        intermediate_size=tc.get("intermediate_size", 11008),
        num_layers=tc.get("num_hidden_layers", 32),
        num_heads=heads,
        num_kv_heads=tc.get("num_key_value_heads") or heads,
        head_dim=tc.get("head_dim"),
        rope_theta=float(rope.get("rope_theta", tc.get("rope_theta", 10000.0))),
        rms_norm_eps=tc.get("rms_norm_eps", 1e-6),
        sliding_window=tc.get("sliding_window") if family == "mistral" else None,
        tie_embeddings=tie,
        max_position_embeddings=tc.get("max_position_embeddings", 4096),
        family=family,
    )
    vision = VisionConfig(
        hidden_size=vc.get("hidden_size", 768),
        intermediate_size=vc.get("intermediate_size", 3072),
        num_layers=vc.get("num_hidden_layers", 12),
        num_heads=vc.get("num_attention_heads", 12),
        image_size=vc.get("image_size", 224),
        patch_size=vc.get("patch_size", 32),
        num_channels=vc.get("num_channels", 3),
        layer_norm_eps=vc.get("layer_norm_eps", 1e-5),
        hidden_act=vc.get("hidden_act", "quick_gelu"),
    )
    cfg = LlavaConfig(
        vision=vision, text=text, projector="mlp2x_gelu",
        projector_bias=hf.get("multimodal_projector_bias", True),
        projector_act=hf.get("projector_hidden_act", "gelu"),
        vision_feature_layer=feature_layer,
        select_strategy=hf.get("vision_feature_select_strategy", "default"),
        image_token_id=hf.get("image_token_index", hf.get("image_token_id", 32000)),
        pad_token_id=pad if pad is not None else 0,
        eos_token_id=eos if eos is not None else 2,
    )
    size = vision.image_size
    if image_size is not None and image_hw(image_size) != (size, size):
        raise CheckpointError(f"image size {image_hw(image_size)} does not fit: this LLaVA "
                              f"checkpoint's vision tower takes {size}x{size} px")
    return validated(cfg)


def _llava_config_to_hf(cfg: LlavaConfig, dtype: str = "float32") -> dict:
    """A transformers LlavaConfig dict for `cfg`."""
    if cfg.projector != "mlp2x_gelu":
        raise CheckpointError("transformers' Llava only has the mlp2x_gelu projector; "
                              f"cannot export projector={cfg.projector!r}")
    t, v = cfg.text, cfg.vision
    text = {
        "model_type": t.family, "vocab_size": t.vocab_size, "hidden_size": t.hidden_size,
        "intermediate_size": t.intermediate_size, "num_hidden_layers": t.num_layers,
        "num_attention_heads": t.num_heads, "num_key_value_heads": t.num_kv_heads,
        "head_dim": t.dim_per_head, "hidden_act": "silu", "rms_norm_eps": t.rms_norm_eps,
        "rope_theta": t.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": t.rope_theta},
        "max_position_embeddings": t.max_position_embeddings,
        "tie_word_embeddings": t.tie_embeddings, "pad_token_id": cfg.pad_token_id,
        "eos_token_id": cfg.eos_token_id, "attention_bias": False, "mlp_bias": False,
    }
    if t.family == "mistral":
        text["sliding_window"] = t.sliding_window
    vision = {
        "model_type": "clip_vision_model", "hidden_size": v.hidden_size,
        "intermediate_size": v.intermediate_size, "num_hidden_layers": v.num_layers,
        "num_attention_heads": v.num_heads, "image_size": v.image_size,
        "patch_size": v.patch_size, "num_channels": v.num_channels,
        "layer_norm_eps": v.layer_norm_eps, "hidden_act": v.hidden_act,
    }
    return {
        "architectures": ["LlavaForConditionalGeneration"], "model_type": "llava",
        "text_config": text, "vision_config": vision,
        "image_token_index": cfg.image_token_id, "image_seq_length": cfg.num_image_tokens,
        "projector_hidden_act": cfg.projector_act,
        "multimodal_projector_bias": cfg.projector_bias,
        "vision_feature_layer": cfg.vision_feature_layer,
        "vision_feature_select_strategy": cfg.select_strategy,
        "tie_word_embeddings": t.tie_embeddings, "pad_token_id": cfg.pad_token_id,
        "dtype": dtype, "torch_dtype": dtype,
    }


def _llava_config_from_dict(d: dict) -> LlavaConfig:
    d = dict(d)
    d.pop("model_type", None)
    return LlavaConfig(vision=VisionConfig(**d.pop("vision")), text=TextConfig(**d.pop("text")),
                       **d)


LLAVA = Family(
    model_types=LLAVA_MODEL_TYPES, layouts=tuple(_LLAVA_LAYOUTS),
    export_prefix=_LLAVA_EXPORT_PREFIX, param_table=_llava_param_table,
    abstract_model=llava.abstract_model, config_from_hf=_llava_config_from_hf,
    config_to_hf=_llava_config_to_hf, config_from_dict=_llava_config_from_dict,
    ignored=_LLAVA_IGNORED)


# ---------------------------------------------------------------------------------------------
# Configs and tables of any family
# ---------------------------------------------------------------------------------------------
def config_from_hf(hf: dict, image_size=None):
    """Our config from a transformers `config.json` dict (`image_size` (H, W): Qwen's)."""
    return family_for(hf.get("model_type")).config_from_hf(hf, image_size)


def config_to_hf(cfg, dtype: str = "float32") -> dict:
    """A transformers `config.json` dict for `cfg`."""
    return family_of(cfg).config_to_hf(cfg, dtype)


def config_to_dict(cfg) -> dict:
    """Our config as JSON-ready dict, with its "model_type" (what `config_from_dict` reads)."""
    return {"model_type": cfg.model_type, **dataclasses.asdict(cfg)}


def config_from_dict(d: dict):
    """Inverse of `config_to_dict` (a dict without "model_type", as written before there were
    other families, is LLaVA's)."""
    return family_for(d.get("model_type", "llava"), OUR_CONFIG).config_from_dict(d)


def param_table(cfg) -> list[Row]:
    """Every parameter of `cfg`'s model as a Row."""
    return family_of(cfg).param_table(cfg)


@functools.lru_cache(maxsize=8)
def _param_shapes(cfg) -> tuple:
    _, params = family_of(cfg).abstract_model(cfg)
    return tuple(("/".join(map(str, path)), leaf.shape) for path, leaf in _flatten(params))


def param_shapes(cfg) -> dict[str, tuple[int, ...]]:
    """Our params' shapes by "/"-joined path, from the model itself (no allocation)."""
    return dict(_param_shapes(cfg))


def _flatten(tree: dict, prefix: tuple = ()):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _flatten(v, prefix + (k,))
        else:
            yield prefix + (k,), v


def _unflatten(flat: dict[str, object]) -> dict:
    """"/"-joined paths -> nested dict; numeric parts become int keys (nnx.List indices)."""
    out: dict = {}
    for path, v in flat.items():
        node = out
        *parents, leaf = (int(p) if p.isdigit() else p for p in path.split("/"))
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return out


def _to_ours(x: np.ndarray, row: Row, our_shape: tuple[int, ...]) -> np.ndarray:
    if row.part is not None:
        i, n = row.part
        size = x.shape[0] // n
        x = x[i * size:(i + 1) * size]
    if row.kind == "linear":
        x = x.reshape(x.shape[0], -1).T
    elif row.kind == "conv":
        x = x.transpose(2, 3, 1, 0)
    return x.reshape(our_shape)


def _to_hf(x: np.ndarray, row: Row) -> np.ndarray:
    """Our array -> its HF tensor (the part's rows for fused tensors)."""
    shape = row.hf_shape
    if row.part is not None:
        shape = (shape[0] // row.part[1], *shape[1:])
    if row.kind == "linear":
        x = x.reshape(math.prod(shape[1:]), shape[0]).T
    elif row.kind == "conv":
        x = x.transpose(3, 2, 0, 1)
    return np.ascontiguousarray(x.reshape(shape))


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------
def _read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _checkpoint_files(path: str) -> list[str]:
    if not os.path.isdir(path):
        raise CheckpointError(f"{path!r} is not a directory (expected a transformers checkpoint "
                              f"directory with config.json and *.safetensors)")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise CheckpointError(f"{path!r} has no config.json; is it a transformers checkpoint "
                              f"directory? (found: {sorted(os.listdir(path))[:10]})")
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        files = sorted(set(_read_json(index)["weight_map"].values()))
    else:
        files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    if not files:
        bins = [f for f in os.listdir(path) if f.endswith((".bin", ".pt", ".pth"))]
        hint = f" (found torch files {bins}: re-save with safe_serialization)" if bins else ""
        raise CheckpointError(f"{path!r} has no .safetensors files{hint}")
    missing = [f for f in files if not os.path.isfile(os.path.join(path, f))]
    if missing:
        raise CheckpointError(f"{path!r}: shard files listed in the index are missing: {missing}")
    return [os.path.join(path, f) for f in files]


def _convert(items: list[tuple[str, object]], get, cfg, dtype, strict: bool, where: str
             ) -> dict:
    """items: (file key, handle) pairs for `get(handle, key) -> array`; returns our nested
    params in `dtype`. Raises CheckpointError naming every missing, mis-shaped and (with strict)
    unexpected tensor."""
    family = family_of(cfg)
    table = family.param_table(cfg)
    wanted = dict.fromkeys(row.key for row in table)
    located, unexpected, duplicates = {}, [], []
    for key, handle in items:
        canon = family.canonical(key)
        if canon is None or canon not in wanted:
            tied_head = canon == "lm_head.weight" and cfg.text.tie_embeddings
            skipped = family.ignored is not None and family.ignored.match(key)
            if not (tied_head or skipped):  # a tied lm_head is ignored, as transformers does
                unexpected.append(key)
            continue
        if canon in located:
            duplicates.append(key)
        located[canon] = (handle, key)
    errors = []
    missing = [k for k in wanted if k not in located]
    if missing:
        errors.append(f"missing tensors ({len(missing)}): {missing[:20]}")
    if duplicates:
        errors.append(f"tensors present under two key layouts: {duplicates[:20]}")
    if unexpected and strict:
        errors.append(f"unexpected tensors ({len(unexpected)}): {sorted(unexpected)[:20]} "
                      f"(pass strict=False to ignore)")
    shapes = param_shapes(cfg)
    flat, loaded = {}, {}
    for row in table:
        if row.key not in located:
            continue
        if row.key not in loaded:
            handle, key = located[row.key]
            x = get(handle, key)
            if tuple(x.shape) != row.hf_shape:
                errors.append(f"tensor {key!r} has shape {tuple(x.shape)}, expected "
                              f"{row.hf_shape}")
                x = None
            loaded = {row.key: x}  # fused tensors' rows are consecutive: keep only the last
        x = loaded[row.key]
        if x is not None:
            flat[row.ours] = _to_ours(x, row, shapes[row.ours]).astype(dtype)
    if errors:
        raise CheckpointError(f"checkpoint {where} does not match its config:\n  "
                              + "\n  ".join(errors))
    return _unflatten(flat)


def load_hf_config(path: str, image_size=None):
    """The config of a transformers checkpoint directory, without reading its weights."""
    hf = _read_json(os.path.join(path, "config.json"))
    family = family_for(hf.get("model_type"))
    cfg = family.config_from_hf(hf, image_size)
    if family.check_dir is not None:
        family.check_dir(path, cfg)
    return cfg


def load_hf_checkpoint(path: str, dtype="float32", *, image_size=None, strict: bool = True):
    """Read a transformers checkpoint directory into (config, params as a nested dict of numpy
    arrays); `image_size` (H, W) pixels, or one int for squares, is required for Qwen.

    `dtype` is the params' dtype ("float32", "bfloat16", ...). Tensors are read one at a time
    with safetensors' numpy API and converted one by one, so peak host memory stays near the size
    of the result. Raises CheckpointError naming every missing, mis-shaped
    or (with strict) unexpected tensor.
    """
    from safetensors import safe_open

    files = _checkpoint_files(path)
    cfg = load_hf_config(path, image_size)
    items = []
    for f in files:
        with safe_open(f, framework="np") as st:
            items += [(key, f) for key in st.keys()]

    def get(f, key):
        with safe_open(f, framework="np") as st:
            return st.get_tensor(key)

    dtype = np.dtype(jax.numpy.dtype(dtype))
    return cfg, _convert(items, get, cfg, dtype, strict, repr(path))


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor: float32 on the host (bf16 has no numpy dtype)
        x = x.detach().cpu()
        if not x.dtype.is_floating_point:
            return x.numpy()
        return x.float().numpy()
    return np.asarray(x)


def from_state_dict(config: dict, state_dict, dtype="float32", *, image_size=None,
                    strict: bool = True):
    """(config, params) from an in-memory transformers model: `config` is
    `model.config.to_dict()`, the state dict maps keys to torch tensors or arrays
    (`model.state_dict()`)."""
    cfg = config_from_hf(config, image_size)
    items = [(k, k) for k in state_dict]
    dtype = np.dtype(jax.numpy.dtype(dtype))
    return cfg, _convert(items, lambda h, k: _numpy(state_dict[k]), cfg, dtype, strict,
                         "state dict")


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
def _as_numpy(params: dict) -> dict[str, np.ndarray]:
    return {"/".join(map(str, p)): np.asarray(jax.device_get(v)) for p, v in _flatten(params)}


def _check_params(flat: dict[str, np.ndarray], cfg) -> None:
    shapes = param_shapes(cfg)
    missing = sorted(set(shapes) - set(flat))
    extra = sorted(set(flat) - set(shapes))
    bad = [f"{p}: {flat[p].shape} != {s}" for p, s in shapes.items()
           if p in flat and tuple(flat[p].shape) != tuple(s)]
    if missing or extra or bad:
        raise CheckpointError(f"params do not match the config: missing {missing}, "
                              f"unexpected {extra}, mis-shaped {bad}")


def hf_state_dict(params: dict, cfg, dtype=None) -> dict[str, np.ndarray]:
    """Our params as numpy tensors under the key layout export writes."""
    flat = _as_numpy(params)
    _check_params(flat, cfg)
    family = family_of(cfg)
    out_dtype = np.dtype(jax.numpy.dtype(dtype)) if dtype else next(iter(flat.values())).dtype
    parts: dict[str, list] = {}
    for row in family.param_table(cfg):
        prefix = next(p for p in family.export_prefix if row.key.startswith(p))
        key = family.export_prefix[prefix] + row.key[len(prefix):]
        parts.setdefault(key, []).append(_to_hf(flat[row.ours], row).astype(out_dtype))
    return {k: (v[0] if len(v) == 1 else np.concatenate(v, axis=0)) for k, v in parts.items()}


def export_hf_checkpoint(params: dict, cfg, path: str, dtype=None,
                         max_shard_bytes: int = 4 << 30) -> None:
    """Write `params` as a transformers directory (config.json + safetensors shards)."""
    from safetensors.numpy import save_file

    tensors = hf_state_dict(params, cfg, dtype)
    hf_config = config_to_hf(cfg, next(iter(tensors.values())).dtype.name)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf_config, f, indent=2)
    shards, size = [{}], 0
    for key, x in tensors.items():
        if size + x.nbytes > max_shard_bytes and shards[-1]:
            shards.append({})
            size = 0
        shards[-1][key] = x
        size += x.nbytes
    if len(shards) == 1:
        save_file(shards[0], os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(path, name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
    total = sum(x.nbytes for x in tensors.values())
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


def save_params(params: dict, cfg, path: str) -> None:
    """Our own format: our config as JSON (with its model_type) + params as one safetensors
    file keyed by path."""
    from safetensors.numpy import save_file

    flat = _as_numpy(params)
    _check_params(flat, cfg)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, OUR_CONFIG), "w") as f:
        json.dump(config_to_dict(cfg), f, indent=2)
    save_file({k: np.ascontiguousarray(v) for k, v in flat.items()},
              os.path.join(path, OUR_PARAMS))


def load_params(path: str, dtype=None):
    """Inverse of `save_params`: (config, params)."""
    from safetensors.numpy import load_file

    cfg_path = os.path.join(path, OUR_CONFIG)
    if not os.path.isfile(cfg_path):
        raise CheckpointError(f"{path!r} has no {OUR_CONFIG}; not written by save_params")
    cfg = config_from_dict(_read_json(cfg_path))
    flat = load_file(os.path.join(path, OUR_PARAMS))
    _check_params(flat, cfg)
    if dtype is not None:
        flat = {k: v.astype(jax.numpy.dtype(dtype)) for k, v in flat.items()}
    return cfg, _unflatten(flat)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def _parse_size(s: str) -> tuple[int, int]:
    try:
        h, _, w = s.lower().partition("x")
        return int(h), int(w or h)
    except ValueError:
        raise argparse.ArgumentTypeError(f"image size {s!r}: expected HxW, e.g. 448x448") from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rlvlm_jax.models.conversion",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    size = dict(type=_parse_size, default=None,
                help="HxW pixels the model will run at (required for Qwen2-VL / Qwen2.5-VL)")
    a = sub.add_parser("to-jax", help="transformers dir -> our params dir")
    a.add_argument("src")
    a.add_argument("dst")
    a.add_argument("--dtype", default="float32", help="params dtype (float32, bfloat16)")
    a.add_argument("--no-strict", action="store_true", help="ignore unexpected tensors")
    a.add_argument("--image-size", **size)
    b = sub.add_parser("to-hf", help="our params dir -> transformers dir")
    b.add_argument("src")
    b.add_argument("dst")
    b.add_argument("--dtype", default=None, help="saved dtype (default: params' dtype)")
    c = sub.add_parser("inspect", help="validate a transformers dir and print its config")
    c.add_argument("src")
    c.add_argument("--image-size", **size)
    args = ap.parse_args(argv)
    try:
        if args.cmd == "to-jax":
            cfg, params = load_hf_checkpoint(args.src, args.dtype, image_size=args.image_size,
                                             strict=not args.no_strict)
            save_params(params, cfg, args.dst)
        elif args.cmd == "to-hf":
            cfg, params = load_params(args.src)
            export_hf_checkpoint(params, cfg, args.dst, args.dtype)
        else:
            cfg, params = load_hf_checkpoint(args.src, "float32", image_size=args.image_size,
                                             strict=False)
            n = sum(v.size for _, v in _flatten(params))
            print(json.dumps(config_to_dict(cfg), indent=2))
            print(f"parameters: {n:,}; image tokens per image: {cfg.num_image_tokens}")
            return 0
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.dst}")
    return 0


if __name__ == "__main__":
    # Run the importable module's main, not this __main__ copy's: the Qwen family imports
    # rlvlm_jax.models.conversion, and main must catch that module's CheckpointError.
    from rlvlm_jax.models import conversion

    sys.exit(conversion.main())
