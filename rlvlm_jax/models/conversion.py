"""transformers LLaVA checkpoints <-> our params, from and to safetensors files (no torch).

    python -m rlvlm_jax.models.conversion to-jax  HF_DIR  OUT_DIR [--dtype bfloat16]
    python -m rlvlm_jax.models.conversion to-hf   OUR_DIR OUT_DIR [--dtype float32]
    python -m rlvlm_jax.models.conversion inspect DIR

Python: `load_hf_checkpoint(dir, dtype) -> (LlavaConfig, params)` and
`export_hf_checkpoint(params, cfg, dir)`. Files on disk use several key layouts
(hub: `language_model.model.*`, `vision_tower.vision_model.*`; transformers 5 `save_pretrained`:
`language_model.model.*`, `vision_tower.*`; in-memory 5.x: `model.language_model.*`); all are
accepted. Export writes the llava-hf hub layout (tested: transformers 5.23 loads it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
import warnings

import jax
import numpy as np

from rlvlm_jax.models.clip import VisionConfig
from rlvlm_jax.models.llama import TextConfig
from rlvlm_jax.models.llava import LlavaConfig

OUR_CONFIG = "rlvlm_config.json"
OUR_PARAMS = "params.safetensors"

# ---------------------------------------------------------------------------------------------
# The mapping. One row per parameter: (our path, canonical HF key, transform, number of our
# leading dims that form the HF "in" dim). Layer rows are repeated for every layer index.
#   copy:   same shape
#   vec:    HF 1-D bias -> our (heads, head_dim)
#   linear: HF (out, in) weight -> transposed -> reshaped to our (in..., out...) shape
#   conv:   HF (D, C, p, p) patch conv -> our (p, p, C, D)
# ---------------------------------------------------------------------------------------------
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
_LAYOUTS = [
    (re.compile(r"^(?:model\.)?vision_tower\.(?:vision_model\.)?(.+)$"), "vision."),
    (re.compile(r"^(?:model\.)?multi_modal_projector\.(.+)$"), "projector."),
    (re.compile(r"^(?:model\.language_model\.|language_model\.model\.)(.+)$"), "text."),
    (re.compile(r"^(?:language_model\.)?(lm_head\.weight)$"), ""),
]
_IGNORED = re.compile(r"^(?:model\.)?image_newline$")  # LLaVA-NeXT tiles; unused with one crop
_EXPORT_PREFIX = {"vision.": "vision_tower.vision_model.", "projector.": "multi_modal_projector.",
                  "text.": "language_model.model.", "lm_head.": "language_model.lm_head."}


class CheckpointError(ValueError):
    """A checkpoint directory or its tensors do not fit the expected model."""


def param_table(cfg: LlavaConfig) -> list[tuple[str, str, str, int]]:
    """Every parameter: (our "/"-joined path, canonical HF key, transform, in-dims)."""
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
    return rows


def param_shapes(cfg: LlavaConfig) -> dict[str, tuple[int, ...]]:
    """Our params' shapes by path, from the model itself (no allocation)."""
    from rlvlm_jax.models.llava import abstract_model

    _, params = abstract_model(cfg)
    return {"/".join(map(str, path)): leaf.shape
            for path, leaf in _flatten(params)}


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


def _to_ours(x: np.ndarray, kind: str, our_shape: tuple[int, ...]) -> np.ndarray:
    if kind == "linear":
        x = x.T
    elif kind == "conv":
        x = x.transpose(2, 3, 1, 0)
    return x.reshape(our_shape)


def _to_hf(x: np.ndarray, kind: str, in_dims: int) -> np.ndarray:
    if kind == "linear":
        return np.ascontiguousarray(x.reshape(math.prod(x.shape[:in_dims]), -1).T)
    if kind == "conv":
        return np.ascontiguousarray(x.transpose(3, 2, 0, 1))
    if kind == "vec":
        return np.ascontiguousarray(x.reshape(-1))
    return np.ascontiguousarray(x)


# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------
def config_from_hf(hf: dict) -> LlavaConfig:
    """Our LlavaConfig from a transformers `config.json` dict (llava or llava_next)."""
    mt = hf.get("model_type")
    if mt not in ("llava", "llava_next"):
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
    try:
        cfg.validate()
    except ValueError as e:
        raise CheckpointError(f"config.json describes an unsupported model: {e}") from e
    return cfg


def config_to_hf(cfg: LlavaConfig, dtype: str = "float32") -> dict:
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


def config_to_dict(cfg: LlavaConfig) -> dict:
    return dataclasses.asdict(cfg)


def config_from_dict(d: dict) -> LlavaConfig:
    d = dict(d)
    return LlavaConfig(vision=VisionConfig(**d.pop("vision")), text=TextConfig(**d.pop("text")),
                       **d)


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


def _canonical(key: str) -> str | None:
    for pattern, prefix in _LAYOUTS:
        m = pattern.match(key)
        if m:
            return prefix + m.group(1)
    return None


def load_hf_config(path: str) -> LlavaConfig:
    """The LlavaConfig of a transformers LLaVA directory, without reading its weights."""
    return config_from_hf(_read_json(os.path.join(path, "config.json")))


def load_hf_checkpoint(path: str, dtype="float32", *, strict: bool = True
                       ) -> tuple[LlavaConfig, dict]:
    """Read a transformers LLaVA directory into (config, params as nested dict of numpy arrays).

    `dtype` is the params' dtype ("float32", "bfloat16", ...). Tensors are read one at a time
    with safetensors' numpy API and converted one by one, so peak host memory stays near the size
    of the result. Raises CheckpointError naming every missing, mis-shaped
    or (with strict) unexpected tensor.
    """
    from safetensors import safe_open

    files = _checkpoint_files(path)
    cfg = config_from_hf(_read_json(os.path.join(path, "config.json")))
    dtype = np.dtype(jax.numpy.dtype(dtype))
    shapes = param_shapes(cfg)
    table = param_table(cfg)
    by_key = {key: (ours, kind, in_dims) for ours, key, kind, in_dims in table}

    # Where every canonical key lives.
    located: dict[str, tuple[str, str]] = {}
    unexpected, duplicates = [], []
    for f in files:
        with safe_open(f, framework="np") as st:
            for key in st.keys():
                canon = _canonical(key)
                if canon is None or canon not in by_key:
                    if not _IGNORED.match(key):
                        unexpected.append(key)
                    continue
                if canon in located:
                    duplicates.append(key)
                located[canon] = (f, key)
    if cfg.text.tie_embeddings and "lm_head.weight" in located:
        located.pop("lm_head.weight")  # tied: transformers ignores the stored copy too
        unexpected = [k for k in unexpected if not k.endswith("lm_head.weight")]
    missing = [k for k in by_key if k not in located]
    errors = []
    if missing:
        errors.append(f"missing tensors ({len(missing)}): {missing[:20]}")
    if duplicates:
        errors.append(f"tensors present under two key layouts: {duplicates[:20]}")
    if unexpected and strict:
        errors.append(f"unexpected tensors ({len(unexpected)}): {unexpected[:20]} "
                      f"(pass strict=False to ignore)")

    flat = {p: np.empty(s, dtype) for p, s in shapes.items()}
    for canon, (ours, kind, in_dims) in by_key.items():
        if canon not in located:
            continue
        f, key = located[canon]
        our_shape = shapes[ours]
        want = _hf_shape(our_shape, kind, in_dims)
        with safe_open(f, framework="np") as st:
            got = tuple(st.get_slice(key).get_shape())
            if got != want:
                errors.append(f"tensor {key!r} has shape {got}, expected {want}")
                continue
            x = _to_ours(st.get_tensor(key), kind, our_shape).astype(dtype)
        flat[ours][...] = x
    if errors:
        raise CheckpointError(f"checkpoint {path!r} does not match its config:\n  "
                              + "\n  ".join(errors))
    return cfg, _unflatten(flat)


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
def _as_numpy(params: dict) -> dict[str, np.ndarray]:
    return {"/".join(map(str, p)): np.asarray(jax.device_get(v)) for p, v in _flatten(params)}


def _check_params(flat: dict[str, np.ndarray], cfg: LlavaConfig) -> None:
    shapes = param_shapes(cfg)
    missing = sorted(set(shapes) - set(flat))
    extra = sorted(set(flat) - set(shapes))
    bad = [f"{p}: {flat[p].shape} != {s}" for p, s in shapes.items()
           if p in flat and tuple(flat[p].shape) != tuple(s)]
    if missing or extra or bad:
        raise CheckpointError(f"params do not match the config: missing {missing}, "
                              f"unexpected {extra}, mis-shaped {bad}")


def export_hf_checkpoint(params: dict, cfg: LlavaConfig, path: str, dtype=None,
                         max_shard_bytes: int = 4 << 30) -> None:
    """Write `params` as a transformers LLaVA directory (config.json + safetensors shards)."""
    from safetensors.numpy import save_file

    flat = _as_numpy(params)
    _check_params(flat, cfg)
    out_dtype = np.dtype(jax.numpy.dtype(dtype)) if dtype else next(iter(flat.values())).dtype
    tensors = {}
    for ours, canon, kind, in_dims in param_table(cfg):
        x = flat[ours]
        prefix = next(p for p in _EXPORT_PREFIX if canon.startswith(p))
        key = _EXPORT_PREFIX[prefix] + canon[len(prefix):]
        tensors[key] = _to_hf(np.asarray(x), kind, in_dims).astype(out_dtype)
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


def save_params(params: dict, cfg: LlavaConfig, path: str) -> None:
    """Our own format: our config as JSON + params as one safetensors file keyed by path."""
    from safetensors.numpy import save_file

    flat = _as_numpy(params)
    _check_params(flat, cfg)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, OUR_CONFIG), "w") as f:
        json.dump(config_to_dict(cfg), f, indent=2)
    save_file({k: np.ascontiguousarray(v) for k, v in flat.items()},
              os.path.join(path, OUR_PARAMS))


def load_params(path: str, dtype=None) -> tuple[LlavaConfig, dict]:
    """Inverse of `save_params`."""
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rlvlm_jax.models.conversion",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("to-jax", help="transformers LLaVA dir -> our params dir")
    a.add_argument("src")
    a.add_argument("dst")
    a.add_argument("--dtype", default="float32", help="params dtype (float32, bfloat16)")
    a.add_argument("--no-strict", action="store_true", help="ignore unexpected tensors")
    b = sub.add_parser("to-hf", help="our params dir -> transformers LLaVA dir")
    b.add_argument("src")
    b.add_argument("dst")
    b.add_argument("--dtype", default=None, help="saved dtype (default: params' dtype)")
    c = sub.add_parser("inspect", help="validate a transformers LLaVA dir and print its config")
    c.add_argument("src")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "to-jax":
            cfg, params = load_hf_checkpoint(args.src, args.dtype, strict=not args.no_strict)
            save_params(params, cfg, args.dst)
        elif args.cmd == "to-hf":
            cfg, params = load_params(args.src)
            export_hf_checkpoint(params, cfg, args.dst, args.dtype)
        else:
            cfg, params = load_hf_checkpoint(args.src, "float32", strict=False)
            n = sum(v.size for _, v in _flatten(params))
            print(json.dumps(config_to_dict(cfg), indent=2))
            print(f"parameters: {n:,}")
            return 0
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
