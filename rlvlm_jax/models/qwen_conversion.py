"""Qwen2-VL / Qwen2.5-VL's side of checkpoint conversion: the name and shape mapping of every
parameter and the config translation (the `Family` that `conversion` reads and writes with).

    python -m rlvlm_jax.models.conversion to-jax HF_DIR OUT_DIR --image-size 448x448

transformers configs carry no image size; our model runs one fixed size (static shapes), so it is
given at conversion and kept in our config. Key layouts accepted: the hub's (`visual.*`,
`model.*`, `lm_head.weight`, which transformers 5 `save_pretrained` also writes) and
transformers 5's in-memory one (`model.visual.*`, `model.language_model.*`). Export writes the
hub layout and a nested transformers-5 config.json. The fused vision `attn.qkv` becomes our
separate q/k/v projections and back.
"""

from __future__ import annotations

import os
import re

from rlvlm_jax.models import qwen2_vl
from rlvlm_jax.models.conversion import (
    CheckpointError,
    Family,
    Row,
    _read_json,
    image_hw,
    validated,
)
from rlvlm_jax.models.qwen2_vl import MODEL_TYPES, QwenVLConfig
from rlvlm_jax.models.qwen_preprocess import ProcessorConfig, check_processor
from rlvlm_jax.models.qwen_text import QwenTextConfig
from rlvlm_jax.models.qwen_vision import QwenVisionConfig

PROCESSOR_CONFIG = "preprocessor_config.json"

# File key layouts -> canonical prefix; first match wins.
_LAYOUTS = (
    (re.compile(r"^(?:model\.)?visual\.(.+)$"), "vision."),
    (re.compile(r"^model\.language_model\.(.+)$"), "text."),
    (re.compile(r"^model\.(.+)$"), "text."),
    (re.compile(r"^(lm_head\.weight)$"), ""),
)
_EXPORT_PREFIX = {"vision.": "visual.", "text.": "model.", "lm_head.": "lm_head."}


def param_table(cfg: QwenVLConfig) -> list[Row]:
    v, t = cfg.vision, cfg.text
    dv, fv, dt = v.hidden_size, v.intermediate_size, t.hidden_size
    rows = [Row("vision/patch_proj", "vision.patch_embed.proj.weight", "linear",
                (dv, v.num_channels, v.temporal_patch_size, v.patch_size, v.patch_size))]
    layer_norm = v.variant == "qwen2_vl"
    for i in range(v.num_layers):
        o, k = f"vision/layers/{i}/", f"vision.blocks.{i}."
        rows.append(Row(o + "norm1_scale", k + "norm1.weight", "copy", (dv,)))
        if layer_norm:
            rows.append(Row(o + "norm1_bias", k + "norm1.bias", "copy", (dv,)))
        for j, name in enumerate("qkv"):
            rows.append(Row(o + f"{name}_proj", k + "attn.qkv.weight", "linear", (3 * dv, dv),
                            (j, 3)))
            rows.append(Row(o + f"{name}_bias", k + "attn.qkv.bias", "copy", (3 * dv,), (j, 3)))
        rows += [Row(o + "o_proj", k + "attn.proj.weight", "linear", (dv, dv)),
                 Row(o + "o_bias", k + "attn.proj.bias", "copy", (dv,)),
                 Row(o + "norm2_scale", k + "norm2.weight", "copy", (dv,))]
        if layer_norm:
            rows += [Row(o + "norm2_bias", k + "norm2.bias", "copy", (dv,)),
                     Row(o + "fc1", k + "mlp.fc1.weight", "linear", (fv, dv)),
                     Row(o + "fc1_bias", k + "mlp.fc1.bias", "copy", (fv,)),
                     Row(o + "fc2", k + "mlp.fc2.weight", "linear", (dv, fv)),
                     Row(o + "fc2_bias", k + "mlp.fc2.bias", "copy", (dv,))]
        else:
            for name in ("gate", "up"):
                rows += [Row(o + f"{name}_proj", k + f"mlp.{name}_proj.weight", "linear",
                             (fv, dv)),
                         Row(o + f"{name}_bias", k + f"mlp.{name}_proj.bias", "copy", (fv,))]
            rows += [Row(o + "down_proj", k + "mlp.down_proj.weight", "linear", (dv, fv)),
                     Row(o + "down_bias", k + "mlp.down_proj.bias", "copy", (dv,))]
    dm = dv * v.spatial_merge_size ** 2
    rows.append(Row("projector/norm_scale", "vision.merger.ln_q.weight", "copy", (dv,)))
    if layer_norm:
        rows.append(Row("projector/norm_bias", "vision.merger.ln_q.bias", "copy", (dv,)))
    rows += [Row("projector/linear_1", "vision.merger.mlp.0.weight", "linear", (dm, dm)),
             Row("projector/linear_1_bias", "vision.merger.mlp.0.bias", "copy", (dm,)),
             Row("projector/linear_2", "vision.merger.mlp.2.weight", "linear", (dt, dm)),
             Row("projector/linear_2_bias", "vision.merger.mlp.2.bias", "copy", (dt,))]

    hq, hk, ft = t.num_heads * t.dim_per_head, t.num_kv_heads * t.dim_per_head, t.intermediate_size
    rows += [Row("text/embed", "text.embed_tokens.weight", "copy", (t.vocab_size, dt)),
             Row("text/final_norm", "text.norm.weight", "copy", (dt,))]
    for i in range(t.num_layers):
        o, k = f"text/layers/{i}/", f"text.layers.{i}."
        rows.append(Row(o + "attn_norm", k + "input_layernorm.weight", "copy", (dt,)))
        for name, width in (("q", hq), ("k", hk), ("v", hk)):
            rows += [Row(o + f"{name}_proj", k + f"self_attn.{name}_proj.weight", "linear",
                         (width, dt)),
                     Row(o + f"{name}_bias", k + f"self_attn.{name}_proj.bias", "copy",
                         (width,))]
        rows += [Row(o + "o_proj", k + "self_attn.o_proj.weight", "linear", (dt, hq)),
                 Row(o + "mlp_norm", k + "post_attention_layernorm.weight", "copy", (dt,)),
                 Row(o + "gate_proj", k + "mlp.gate_proj.weight", "linear", (ft, dt)),
                 Row(o + "up_proj", k + "mlp.up_proj.weight", "linear", (ft, dt)),
                 Row(o + "down_proj", k + "mlp.down_proj.weight", "linear", (dt, ft))]
    if not t.tie_embeddings:
        rows.append(Row("text/lm_head", "lm_head.weight", "linear", (t.vocab_size, dt)))
    return rows


# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------
def config_from_hf(hf: dict, image_size) -> QwenVLConfig:
    """Our QwenVLConfig from a transformers `config.json` dict (nested transformers-5 layout or
    the hub's flat one) and the fixed image size (H, W) in pixels."""
    mt = hf.get("model_type")
    if mt not in MODEL_TYPES:
        raise CheckpointError(f"config.json model_type is {mt!r}; expected one of "
                              f"{sorted(MODEL_TYPES)}")
    if image_size is None:
        raise CheckpointError("image_size is required: transformers configs carry none and our "
                              "model runs one fixed grid (e.g. image_size=(448, 448), "
                              "--image-size 448x448)")
    height, width = image_hw(image_size)
    tc = dict(hf.get("text_config") or hf)
    vc = hf.get("vision_config") or {}
    rope = tc.get("rope_parameters") or tc.get("rope_scaling") or hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "mrope"):
        raise CheckpointError(f"text RoPE type {rope_type!r} is not supported (default M-RoPE)")
    if tc.get("use_sliding_window"):
        raise CheckpointError("text_config.use_sliding_window=true is not supported")
    if tc.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"text hidden_act {tc.get('hidden_act')!r} is not supported (silu)")
    heads = tc.get("num_attention_heads", 28)
    hidden = tc.get("hidden_size", 3584)
    if tc.get("head_dim") not in (None, hidden // heads):
        raise CheckpointError(f"text head_dim {tc['head_dim']} != hidden_size / heads "
                              f"(transformers' Qwen2-VL ignores head_dim)")
    theta = rope.get("rope_theta", tc.get("rope_theta", hf.get("rope_theta", 1000000.0)))
    tie = bool(hf.get("tie_word_embeddings", False) or tc.get("tie_word_embeddings", False))
    text = QwenTextConfig(
        vocab_size=tc.get("vocab_size", 152064), hidden_size=hidden,
        intermediate_size=tc.get("intermediate_size", 18944),
        num_layers=tc.get("num_hidden_layers", 28), num_heads=heads,
        num_kv_heads=tc.get("num_key_value_heads") or heads, rope_theta=float(theta),
        rms_norm_eps=tc.get("rms_norm_eps", 1e-6),
        mrope_section=tuple(rope.get("mrope_section", (16, 24, 24))), tie_embeddings=tie,
        max_position_embeddings=tc.get("max_position_embeddings", 32768))

    patch = vc.get("patch_size", vc.get("spatial_patch_size", 14))
    temporal = vc.get("temporal_patch_size", 2)
    if not isinstance(patch, int) or not isinstance(temporal, int):
        raise CheckpointError(f"non-square patches (patch_size {patch}, temporal_patch_size "
                              f"{temporal}) are not supported")
    vrope = vc.get("rope_parameters") or {}
    common = dict(
        num_layers=vc.get("depth", vc.get("num_hidden_layers", 32)),
        num_heads=vc.get("num_heads", vc.get("num_attention_heads", 16)),
        patch_size=patch, temporal_patch_size=temporal,
        spatial_merge_size=vc.get("spatial_merge_size", 2),
        num_channels=vc.get("in_channels", vc.get("in_chans", 3)),
        rope_theta=float(vrope.get("rope_theta", 10000.0)),
        image_height=height, image_width=width)
    if mt == "qwen2_vl":
        dv = vc.get("embed_dim", 1280)
        vision = QwenVisionConfig(
            variant=mt, hidden_size=dv, intermediate_size=int(dv * vc.get("mlp_ratio", 4)),
            out_hidden_size=vc.get("hidden_size", text.hidden_size),
            hidden_act=vc.get("hidden_act", "quick_gelu"), **common)
    else:
        vision = QwenVisionConfig(
            variant=mt, hidden_size=vc.get("hidden_size", 1280),
            intermediate_size=vc.get("intermediate_size", 3420),
            out_hidden_size=vc.get("out_hidden_size", text.hidden_size),
            hidden_act=vc.get("hidden_act", "silu"), window_size=vc.get("window_size", 112),
            fullatt_block_indexes=tuple(vc.get("fullatt_block_indexes", (7, 15, 23, 31))),
            **common)
    eos = tc.get("eos_token_id", hf.get("eos_token_id", 151645))
    eos = eos[0] if isinstance(eos, list) else eos
    pad = hf.get("pad_token_id", tc.get("pad_token_id"))
    cfg = QwenVLConfig(
        vision=vision, text=text,
        image_token_id=hf.get("image_token_id", 151655),
        video_token_id=hf.get("video_token_id", 151656),
        vision_start_token_id=hf.get("vision_start_token_id", 151652),
        vision_end_token_id=hf.get("vision_end_token_id", 151653),
        pad_token_id=151643 if pad is None else pad,
        eos_token_id=151645 if eos is None else eos)
    return validated(cfg)


def config_to_hf(cfg: QwenVLConfig, dtype: str = "float32") -> dict:
    """A transformers (5.x, nested) config.json dict for `cfg`."""
    v, t = cfg.vision, cfg.text
    text = {
        "model_type": f"{cfg.model_type}_text", "vocab_size": t.vocab_size,
        "hidden_size": t.hidden_size, "intermediate_size": t.intermediate_size,
        "num_hidden_layers": t.num_layers, "num_attention_heads": t.num_heads,
        "num_key_value_heads": t.num_kv_heads, "hidden_act": "silu",
        "rms_norm_eps": t.rms_norm_eps, "max_position_embeddings": t.max_position_embeddings,
        "rope_parameters": {"rope_type": "default", "rope_theta": t.rope_theta,
                            "mrope_section": list(t.mrope_section)},
        "use_sliding_window": False, "tie_word_embeddings": t.tie_embeddings,
        "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id,
        "dtype": dtype,
    }
    vision = {
        "model_type": f"{cfg.model_type}_vision", "depth": v.num_layers,
        "num_heads": v.num_heads, "patch_size": v.patch_size,
        "temporal_patch_size": v.temporal_patch_size,
        "spatial_merge_size": v.spatial_merge_size, "in_channels": v.num_channels,
        "hidden_act": v.hidden_act,
        "rope_parameters": {"rope_type": "axial", "rope_theta": v.rope_theta},
    }
    if cfg.model_type == "qwen2_vl":
        if v.intermediate_size % v.hidden_size:
            raise CheckpointError(f"Qwen2-VL's vision MLP width is embed_dim x mlp_ratio; "
                                  f"{v.intermediate_size} is not a multiple of {v.hidden_size}")
        vision.update(embed_dim=v.hidden_size, hidden_size=v.out_hidden_size,
                      mlp_ratio=v.intermediate_size // v.hidden_size)
    else:
        vision.update(hidden_size=v.hidden_size, intermediate_size=v.intermediate_size,
                      out_hidden_size=v.out_hidden_size, window_size=v.window_size,
                      fullatt_block_indexes=list(v.fullatt_block_indexes))
    return {
        "architectures": [MODEL_TYPES[cfg.model_type]], "model_type": cfg.model_type,
        "text_config": text, "vision_config": vision,
        "image_token_id": cfg.image_token_id, "video_token_id": cfg.video_token_id,
        "vision_start_token_id": cfg.vision_start_token_id,
        "vision_end_token_id": cfg.vision_end_token_id,
        "tie_word_embeddings": t.tie_embeddings, "dtype": dtype,
    }


def config_from_dict(d: dict) -> QwenVLConfig:
    d = dict(d)
    d.pop("model_type", None)
    vision, text = dict(d.pop("vision")), dict(d.pop("text"))
    vision["fullatt_block_indexes"] = tuple(vision.get("fullatt_block_indexes", ()))
    text["mrope_section"] = tuple(text["mrope_section"])
    return QwenVLConfig(vision=QwenVisionConfig(**vision), text=QwenTextConfig(**text), **d)


def load_processor_config(path: str) -> ProcessorConfig | None:
    """The directory's `preprocessor_config.json` as a ProcessorConfig (None if absent)."""
    f = os.path.join(path, PROCESSOR_CONFIG)
    return ProcessorConfig.from_hf(_read_json(f)) if os.path.isfile(f) else None


def check_processor_config(path: str, cfg: QwenVLConfig) -> None:
    """The directory's processor config, if any, must make the pixels our model expects."""
    proc = load_processor_config(path)
    if proc is not None:
        try:
            check_processor(proc, cfg.vision)
        except ValueError as e:
            raise CheckpointError(f"{os.path.join(path, PROCESSOR_CONFIG)}: {e}") from e


QWEN = Family(
    model_types=tuple(MODEL_TYPES), layouts=_LAYOUTS,
    export_prefix=_EXPORT_PREFIX, param_table=param_table,
    abstract_model=qwen2_vl.abstract_model, config_from_hf=config_from_hf,
    config_to_hf=config_to_hf, config_from_dict=config_from_dict,
    check_dir=check_processor_config)
