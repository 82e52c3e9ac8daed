"""The policy (LLaVA + value head) built from a config, and the optimiser around it.

Params travel as one plain dict `{"vlm": ..., "value": ...}` through compiled functions; the
`Policy` holds only the static graph definitions, so jitted functions take params as arguments
and never close over them.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath
from flax import nnx

from rlvlm_jax.models.clip import VisionConfig
from rlvlm_jax.models.llama import TextConfig
from rlvlm_jax.models.llava import LlavaConfig, LlavaModel, draw_params
from rlvlm_jax.models.preprocess import clip_preprocess
from rlvlm_jax.models.value_head import ValueHead
from rlvlm_jax.rl import lora as lora_lib
from rlvlm_jax.text.tokenizer import (
    IMAGE_TOKEN,
    build_card_tokenizer,
    load_tokenizer,
    model_token_ids,
)


def get_tokenizer(config, workdir: str | None):
    """The configured tokenizer directory, else the pretrained checkpoint's, else the card
    tokenizer, built once and kept in `<workdir>/tokenizer`.

    Multi-host: every process builds the card tokenizer into a local temporary directory (the
    build is deterministic) and only process 0 copies it into the workdir, atomically for a
    local path; a gs:// workdir is never read by transformers, only compared on resume.
    """
    path = config.tokenizer.path or config.model.get("checkpoint", "")
    if path:
        return load_tokenizer(path)
    if workdir is None:
        raise ValueError("config.tokenizer.path is empty and there is no workdir to build in")
    saved = epath.Path(workdir) / "tokenizer"
    remote = "://" in str(workdir)
    if not remote and (saved / "tokenizer.json").exists():
        return load_tokenizer(str(saved))
    with tempfile.TemporaryDirectory(prefix="card_tokenizer_") as tmpdir:
        local = epath.Path(tmpdir)
        build_card_tokenizer(str(local), config.tokenizer.vocab_size)
        if (saved / "tokenizer.json").exists():
            if (saved / "tokenizer.json").read_text() != (local / "tokenizer.json").read_text():
                raise ValueError(f"{saved} differs from the card tokenizer this version builds; "
                                 "resume with the version that started the run or a new "
                                 "--workdir")
        elif jax.process_index() == 0:
            tmp = epath.Path(f"{saved}.tmp{os.getpid()}")
            tmp.mkdir(parents=True, exist_ok=True)
            for f in local.iterdir():
                f.copy(tmp / f.name, overwrite=True)
            tmp.rename(saved)
        return load_tokenizer(str(local))  # read into memory: the directory may go


def check_tokenizer(cfg: LlavaConfig, tokenizer) -> None:
    """The tokenizer must fit the model: vocabulary size and the image placeholder id."""
    if len(tokenizer) > cfg.text.vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens, more than the model's "
                         f"vocabulary of {cfg.text.vocab_size}")
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if image_id != cfg.image_token_id:
        raise ValueError(f"tokenizer's {IMAGE_TOKEN} id {image_id} != the model's image token "
                         f"id {cfg.image_token_id}")


def load_pretrained(config, tokenizer):
    """(LlavaConfig, params) from `config.model.checkpoint`, a transformers LLaVA directory."""
    from rlvlm_jax.models.conversion import load_hf_checkpoint

    cfg, params = load_hf_checkpoint(config.model.checkpoint, config.model.param_dtype)
    if cfg.vision.image_size != config.image_size:
        raise ValueError(f"the checkpoint's vision tower takes {cfg.vision.image_size} px; "
                         f"config.image_size is {config.image_size} (frames are resized only "
                         "by preprocessing: set image_size to the tower's size or render larger)")
    check_tokenizer(cfg, tokenizer)
    return cfg, params


def llava_config(config, tokenizer) -> LlavaConfig:
    """LlavaConfig from `config.model`, with the tokenizer's special ids; checks they match."""
    m = config.model
    vocab = m.vocab_size or -(-len(tokenizer) // 64) * 64
    if len(tokenizer) > vocab:
        raise ValueError(
            f"tokenizer has {len(tokenizer)} tokens but config.model.vocab_size is {vocab}"
        )
    if tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) in (None, tokenizer.unk_token_id):
        raise ValueError(f"tokenizer has no {IMAGE_TOKEN} token")
    cfg = LlavaConfig(
        vision=VisionConfig(
            hidden_size=m.vision_hidden,
            intermediate_size=m.vision_mlp,
            num_layers=m.vision_layers,
            num_heads=m.vision_heads,
            image_size=config.image_size,
            patch_size=m.patch_size,
        ),
        text=TextConfig(
            vocab_size=vocab,
            hidden_size=m.text_hidden,
            intermediate_size=m.text_mlp,
            num_layers=m.text_layers,
            num_heads=m.text_heads,
            num_kv_heads=m.text_kv_heads,
            max_position_embeddings=m.max_positions,
        ),
        vision_feature_layer=m.vision_feature_layer,
    )
    cfg = dataclasses.replace(cfg, **model_token_ids(tokenizer))
    cfg.validate()
    return cfg


@dataclasses.dataclass(frozen=True)
class Policy:
    """Static halves of the policy: graph definitions and the model config (hashable)."""

    cfg: LlavaConfig
    vlm_graph: nnx.GraphDef
    value_graph: nnx.GraphDef
    pixels: str = "clip"  # "clip": CLIP normalisation; "ink": (255 - x) / 255, blank = 0
    lora_scale: float = 0.0  # alpha / rank of the adapters in params["lora"], when present
    dtype: str = "float32"  # the model's compute dtype

    def model(self, params) -> LlavaModel:
        """The LLaVA module, with LoRA adapters merged in when params carry them.

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
        size = self.cfg.vision.image_size
        if self.pixels == "clip":
            return clip_preprocess(frames, size=size, crop=size)
        if self.pixels == "ink":
            x = clip_preprocess(frames, size=size, crop=size, mean=(0.0,) * 3, std=(1.0,) * 3)
            return 1.0 - x
        raise ValueError(f"unknown pixel mode {self.pixels!r}; use 'clip' or 'ink'")


def init_policy(cfg: LlavaConfig, value_hidden=(1024, 512), seed: int = 0, init: str = "normal",
                pixels: str = "clip", *, dtype="float32", param_dtype="float32",
                pretrained: dict | None = None, remat: bool = False, lora_scale: float = 0.0):
    """(Policy, params) with every weight from one compiled random draw per module.

    init: "normal" (the model package's N(0, 0.02)) or "fan_in" (see `fan_in_init`);
    `pretrained` (params from `conversion.load_hf_checkpoint`) replaces the LLaVA weights, the
    value head is always fresh. dtype is the compute dtype, param_dtype the stored one.
    """
    if init not in ("normal", "fan_in"):
        raise ValueError(f"model init must be 'normal' or 'fan_in', got {init!r}")
    kw = dict(dtype=jnp.dtype(dtype), param_dtype=jnp.dtype(param_dtype), remat=remat)
    vlm = nnx.eval_shape(lambda: LlavaModel(cfg, rngs=nnx.Rngs(0), **kw))
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


def warmup_cosine(lr: float, steps: int, warmup: int = 0, end: float | None = None):
    """Linear warm-up to `lr`, then cosine to `end` (lr / 10 by default) at `steps`."""
    end = lr / 10 if end is None else end
    steps = max(int(steps), 1)
    warmup = min(int(warmup), steps - 1)
    if warmup <= 0:
        return optax.cosine_decay_schedule(lr, steps, alpha=end / lr if lr else 0.0)
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, steps, end)


def _frozen_base(params) -> bool:
    """With LoRA adapters, the whole LLaVA is frozen: only adapters and value head train."""
    return "lora" in params


def trainable_labels(params, freeze_vision: bool):
    """'frozen' for the vision tower's leaves when `freeze_vision` and for every LLaVA weight
    when params carry LoRA adapters; else 'train'."""
    base = _frozen_base(params)

    def label(path, _):
        keys = [getattr(k, "key", None) for k in path[:2]]
        if keys[0] == "vlm" and (base or (freeze_vision and keys[1] == "vision")):
            return "frozen"
        return "train"

    return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(schedule, weight_decay: float, grad_clip: float, params,
                   freeze_vision: bool = False) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW (decay on matrices only); frozen leaves get no update
    and no optimiser state (optax.set_to_zero keeps none)."""
    def decay_mask(tree):
        return jax.tree.map(lambda p: p.ndim >= 2, tree)

    inner = optax.chain(
        optax.clip_by_global_norm(grad_clip) if grad_clip > 0 else optax.identity(),
        optax.adamw(schedule, weight_decay=weight_decay, mask=decay_mask),
    )
    if not (freeze_vision or _frozen_base(params)):
        return inner
    labels = trainable_labels(params, freeze_vision)
    return optax.multi_transform({"train": inner, "frozen": optax.set_to_zero()}, labels)


def stop_frozen(params, freeze_vision: bool):
    """Stop gradients into frozen weights (the vision tower; all of LLaVA under LoRA), so the
    backward pass skips them entirely."""
    if _frozen_base(params):
        return {**params, "vlm": jax.lax.stop_gradient(params["vlm"])}
    if not freeze_vision:
        return params
    vlm = dict(params["vlm"])
    vlm["vision"] = jax.lax.stop_gradient(vlm["vision"])
    return {**params, "vlm": vlm}


def add_lora(params, ppo, key):
    """params with fresh adapters when `ppo.lora_rank` > 0 (else unchanged)."""
    rank = int(ppo.get("lora_rank", 0))
    if rank <= 0:
        return params
    lora = lora_lib.init_lora(params["vlm"], rank, key, ppo.get("lora_targets",
                                                                 lora_lib.DEFAULT_TARGETS))
    return {**params, "lora": lora}


def base_params(params):
    """params without adapters: the policy LoRA started from (the KL reference under LoRA)."""
    return {k: v for k, v in params.items() if k != "lora"}


def trainable_part(tree, freeze_vision: bool) -> list:
    """The leaves of a params-shaped tree (e.g. gradients) that train.

    Frozen leaves' gradients are constant zeros: checking or norming them is wasted work, and
    XLA's constant folding evaluates such checks on the host at compile time (for CLIP-L's
    ~300M frozen weights that stalled a 7B compile)."""
    labels = jax.tree.leaves(trainable_labels(tree, freeze_vision))
    return [x for x, label in zip(jax.tree.leaves(tree), labels, strict=True)
            if label == "train"]


def tree_finite(tree) -> jax.Array:
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))
