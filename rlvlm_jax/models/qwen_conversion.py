"""transformers Qwen2-VL / Qwen2.5-VL checkpoints <-> our params (safetensors, no torch needed).

    python -m rlvlm_jax.models.qwen_conversion to-jax  HF_DIR  OUT_DIR --image-size 448x448
    python -m rlvlm_jax.models.qwen_conversion to-hf   OUR_DIR OUT_DIR [--dtype float32]
    python -m rlvlm_jax.models.qwen_conversion inspect HF_DIR --image-size 448x448

Python: `load_hf_checkpoint(dir, dtype, image_size=(H, W)) -> (QwenVLConfig, params)`,
`from_state_dict(config_dict, state_dict, image_size)` for an in-memory model, and
`export_hf_checkpoint(params, cfg, dir)`. transformers configs carry no image size; our model
runs one fixed size (static shapes), so it is given at conversion and kept in our config.

Key layouts accepted: the hub's (`visual.*`, `model.*`, `lm_head.weight`, which transformers 5
`save_pretrained` also writes) and transformers 5's in-memory one (`model.visual.*`,
`model.language_model.*`). Export writes the hub layout and a nested transformers-5 config.json.
The fused vision `attn.qkv` becomes our separate q/k/v projections and back.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys

import jax
import numpy as np

from rlvlm_jax.models.conversion import CheckpointError
from rlvlm_jax.models.qwen2_vl import MODEL_TYPES, QwenVLConfig
from rlvlm_jax.models.qwen_preprocess import ProcessorConfig, check_processor
from rlvlm_jax.models.qwen_text import QwenTextConfig
from rlvlm_jax.models.qwen_vision import QwenVisionConfig

OUR_CONFIG = "rlvlm_config.json"
OUR_PARAMS = "params.safetensors"
PROCESSOR_CONFIG = "preprocessor_config.json"

# File key layouts -> canonical prefix; first match wins.
_LAYOUTS = [
    (re.compile(r"^(?:model\.)?visual\.(.+)$"), "vision."),
    (re.compile(r"^model\.language_model\.(.+)$"), "text."),
    (re.compile(r"^model\.(.+)$"), "text."),
    (re.compile(r"^(lm_head\.weight)$"), ""),
]
_EXPORT_PREFIX = {"vision.": "visual.", "text.": "model.", "lm_head.": "lm_head."}


@dataclasses.dataclass(frozen=True)
class Row:
    """One of our params: where it lives in the HF checkpoint and how it maps.

    kind "copy": same numbers, reshaped; "linear": HF (out, in...) -> ours (in..., out...).
    `part` (i, n): ours is the i-th of n equal slices along the HF tensor's first axis (fused
    qkv). `hf_shape` is the whole HF tensor's shape.
    """

    ours: str
    key: str
    kind: str
    hf_shape: tuple[int, ...]
    part: tuple[int, int] | None = None


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


def param_shapes(cfg: QwenVLConfig) -> dict[str, tuple[int, ...]]:
    """Our params' shapes by "/"-joined path, from the model itself (no allocation)."""
    from rlvlm_jax.models.qwen2_vl import abstract_model

    _, params = abstract_model(cfg)
    return {"/".join(map(str, p)): leaf.shape for p, leaf in _flatten(params)}


def _flatten(tree: dict, prefix: tuple = ()):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _flatten(v, prefix + (k,))
        else:
            yield prefix + (k,), v


def _unflatten(flat: dict[str, object]) -> dict:
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
    return x.reshape(our_shape)


def _to_hf(x: np.ndarray, row: Row) -> np.ndarray:
    """Our array -> its HF slice (the part's rows for fused tensors)."""
    shape = row.hf_shape
    if row.part is not None:
        shape = (shape[0] // row.part[1], *shape[1:])
    if row.kind == "linear":
        x = x.reshape(math.prod(shape[1:]), shape[0]).T
    return np.ascontiguousarray(x.reshape(shape))


# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------
def _image_size(image_size) -> tuple[int, int]:
    if image_size is None:
        raise CheckpointError("image_size is required: transformers configs carry none and our "
                              "model runs one fixed grid (e.g. image_size=(448, 448))")
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = image_size
    return int(h), int(w)


def config_from_hf(hf: dict, image_size) -> QwenVLConfig:
    """Our QwenVLConfig from a transformers `config.json` dict (nested transformers-5 layout or
    the hub's flat one) and the fixed image size (H, W) in pixels."""
    mt = hf.get("model_type")
    if mt not in MODEL_TYPES:
        raise CheckpointError(f"config.json model_type is {mt!r}; expected one of "
                              f"{sorted(MODEL_TYPES)}")
    height, width = _image_size(image_size)
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
    try:
        cfg.validate()
    except ValueError as e:
        raise CheckpointError(f"config.json describes an unsupported model: {e}") from e
    return cfg


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


def config_to_dict(cfg: QwenVLConfig) -> dict:
    return {"model_type": cfg.model_type, **dataclasses.asdict(cfg)}


def config_from_dict(d: dict) -> QwenVLConfig:
    d = dict(d)
    d.pop("model_type", None)
    vision, text = dict(d.pop("vision")), dict(d.pop("text"))
    vision["fullatt_block_indexes"] = tuple(vision.get("fullatt_block_indexes", ()))
    text["mrope_section"] = tuple(text["mrope_section"])
    return QwenVLConfig(vision=QwenVisionConfig(**vision), text=QwenTextConfig(**text), **d)


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------
def _canonical(key: str) -> str | None:
    for pattern, prefix in _LAYOUTS:
        m = pattern.match(key)
        if m:
            return prefix + m.group(1)
    return None


def _convert(keys: dict[str, str], get, cfg: QwenVLConfig, dtype, strict: bool, where: str
             ) -> dict:
    """keys: file key -> its location handle for `get(handle, key) -> np.ndarray`; returns our
    nested params. Raises CheckpointError naming missing, mis-shaped and unexpected tensors."""
    table = param_table(cfg)
    wanted = {row.key for row in table}
    located, unexpected, duplicates = {}, [], []
    for key, handle in keys.items():
        canon = _canonical(key)
        if canon is None or canon not in wanted:
            if not (canon == "lm_head.weight" and cfg.text.tie_embeddings):
                unexpected.append(key)  # a tied model's stored lm_head is ignored, as HF does
            continue
        if canon in located:
            duplicates.append(key)
        located[canon] = (handle, key)
    errors = []
    missing = sorted(wanted - set(located))
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
            x = np.asarray(get(handle, key))
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
        raise CheckpointError(f"{path!r} has no .safetensors files")
    missing = [f for f in files if not os.path.isfile(os.path.join(path, f))]
    if missing:
        raise CheckpointError(f"{path!r}: shard files listed in the index are missing: {missing}")
    return [os.path.join(path, f) for f in files]


def load_processor_config(path: str) -> ProcessorConfig | None:
    """The directory's `preprocessor_config.json` as a ProcessorConfig (None if absent)."""
    f = os.path.join(path, PROCESSOR_CONFIG)
    return ProcessorConfig.from_hf(_read_json(f)) if os.path.isfile(f) else None


def load_hf_config(path: str, image_size) -> QwenVLConfig:
    """The QwenVLConfig of a transformers directory, checked against its processor config."""
    cfg = config_from_hf(_read_json(os.path.join(path, "config.json")), image_size)
    proc = load_processor_config(path)
    if proc is not None:
        try:
            check_processor(proc, cfg.vision)
        except ValueError as e:
            raise CheckpointError(f"{os.path.join(path, PROCESSOR_CONFIG)}: {e}") from e
    return cfg


def load_hf_checkpoint(path: str, dtype="float32", *, image_size, strict: bool = True
                       ) -> tuple[QwenVLConfig, dict]:
    """Read a transformers Qwen2-VL / Qwen2.5-VL directory into (config, nested numpy params)
    for images of `image_size` (H, W) pixels (or one int for squares)."""
    from safetensors import safe_open

    files = _checkpoint_files(path)
    cfg = load_hf_config(path, image_size)
    keys = {}
    for f in files:
        with safe_open(f, framework="np") as st:
            keys.update({k: f for k in st.keys()})

    def get(f, key):
        with safe_open(f, framework="np") as st:
            return st.get_tensor(key)

    dtype = np.dtype(jax.numpy.dtype(dtype))
    return cfg, _convert(keys, get, cfg, dtype, strict, repr(path))


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor: float32 on the host (bf16 has no numpy dtype)
        x = x.detach().cpu()
        if not x.dtype.is_floating_point:
            return x.numpy()
        return x.float().numpy()
    return np.asarray(x)


def from_state_dict(config: dict, state_dict, image_size, dtype="float32", *,
                    strict: bool = True) -> tuple[QwenVLConfig, dict]:
    """(config, params) from an in-memory model: `config` is `model.config.to_dict()`, the
    state dict maps keys to torch tensors or arrays (`model.state_dict()`)."""
    cfg = config_from_hf(config, image_size)
    keys = {k: k for k in state_dict}
    dtype = np.dtype(jax.numpy.dtype(dtype))
    return cfg, _convert(keys, lambda h, k: _numpy(state_dict[k]), cfg, dtype, strict,
                         "state dict")


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
def _as_numpy(params: dict) -> dict[str, np.ndarray]:
    return {"/".join(map(str, p)): np.asarray(jax.device_get(v)) for p, v in _flatten(params)}


def _check_params(flat: dict[str, np.ndarray], cfg: QwenVLConfig) -> None:
    shapes = param_shapes(cfg)
    missing = sorted(set(shapes) - set(flat))
    extra = sorted(set(flat) - set(shapes))
    bad = [f"{p}: {flat[p].shape} != {s}" for p, s in shapes.items()
           if p in flat and tuple(flat[p].shape) != tuple(s)]
    if missing or extra or bad:
        raise CheckpointError(f"params do not match the config: missing {missing}, "
                              f"unexpected {extra}, mis-shaped {bad}")


def hf_state_dict(params: dict, cfg: QwenVLConfig, dtype=None) -> dict[str, np.ndarray]:
    """Our params as numpy tensors under the hub's key layout."""
    flat = _as_numpy(params)
    _check_params(flat, cfg)
    out_dtype = np.dtype(jax.numpy.dtype(dtype)) if dtype else next(iter(flat.values())).dtype
    parts: dict[str, list] = {}
    for row in param_table(cfg):
        prefix = next(p for p in _EXPORT_PREFIX if row.key.startswith(p))
        key = _EXPORT_PREFIX[prefix] + row.key[len(prefix):]
        parts.setdefault(key, []).append(_to_hf(flat[row.ours], row).astype(out_dtype))
    return {k: (v[0] if len(v) == 1 else np.concatenate(v, axis=0)) for k, v in parts.items()}


def export_hf_checkpoint(params: dict, cfg: QwenVLConfig, path: str, dtype=None,
                         max_shard_bytes: int = 4 << 30) -> None:
    """Write `params` as a transformers directory (config.json + safetensors shards)."""
    from safetensors.numpy import save_file

    tensors = hf_state_dict(params, cfg, dtype)
    out_dtype = next(iter(tensors.values())).dtype
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config_to_hf(cfg, out_dtype.name), f, indent=2)
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


def save_params(params: dict, cfg: QwenVLConfig, path: str) -> None:
    """Our own format: config JSON (with "model_type") + params as one safetensors file."""
    from safetensors.numpy import save_file

    flat = _as_numpy(params)
    _check_params(flat, cfg)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, OUR_CONFIG), "w") as f:
        json.dump(config_to_dict(cfg), f, indent=2)
    save_file({k: np.ascontiguousarray(v) for k, v in flat.items()},
              os.path.join(path, OUR_PARAMS))


def load_params(path: str, dtype=None) -> tuple[QwenVLConfig, dict]:
    """Inverse of `save_params`."""
    from safetensors.numpy import load_file

    cfg_path = os.path.join(path, OUR_CONFIG)
    if not os.path.isfile(cfg_path):
        raise CheckpointError(f"{path!r} has no {OUR_CONFIG}; not written by save_params")
    d = _read_json(cfg_path)
    if d.get("model_type") not in MODEL_TYPES:
        raise CheckpointError(f"{cfg_path}: model_type {d.get('model_type')!r} is not a Qwen-VL "
                              f"model ({sorted(MODEL_TYPES)})")
    cfg = config_from_dict(d)
    flat = load_file(os.path.join(path, OUR_PARAMS))
    _check_params(flat, cfg)
    if dtype is not None:
        flat = {k: v.astype(jax.numpy.dtype(dtype)) for k, v in flat.items()}
    return cfg, _unflatten(flat)


def _parse_size(s: str) -> tuple[int, int]:
    try:
        h, _, w = s.lower().partition("x")
        return int(h), int(w or h)
    except ValueError:
        raise argparse.ArgumentTypeError(f"image size {s!r}: expected HxW, e.g. 448x448") from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rlvlm_jax.models.qwen_conversion",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("to-jax", help="transformers Qwen-VL dir -> our params dir")
    a.add_argument("src")
    a.add_argument("dst")
    a.add_argument("--image-size", type=_parse_size, required=True, help="HxW pixels")
    a.add_argument("--dtype", default="float32", help="params dtype (float32, bfloat16)")
    a.add_argument("--no-strict", action="store_true", help="ignore unexpected tensors")
    b = sub.add_parser("to-hf", help="our params dir -> transformers Qwen-VL dir")
    b.add_argument("src")
    b.add_argument("dst")
    b.add_argument("--dtype", default=None, help="saved dtype (default: params' dtype)")
    c = sub.add_parser("inspect", help="validate a transformers Qwen-VL dir, print its config")
    c.add_argument("src")
    c.add_argument("--image-size", type=_parse_size, required=True, help="HxW pixels")
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
    sys.exit(main())
