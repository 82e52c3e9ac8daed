"""Tiny random transformers LLaVA models (the reference) and matching inputs, built in-test; and
what the Qwen-VL tests share with them (left-padded prompts, the error measure, one converted
setup per spec)."""

from __future__ import annotations

import dataclasses

import numpy as np

IMAGE_TOKEN = 100
VOCAB = 128
IMAGE_SIZE = 28  # 2x2 patches of 14 px


@dataclasses.dataclass(frozen=True)
class Spec:
    """One reference architecture variant."""

    text: str = "llama"  # llama | mistral
    heads: int = 4
    kv_heads: int = 4
    feature_layer: int = -2
    strategy: str = "default"
    tie: bool = False
    sliding_window: int | None = None
    hidden: int = 32
    layers: int = 2
    rope_theta: float = 10000.0
    seed: int = 0

    @property
    def name(self) -> str:
        parts = [self.text, f"h{self.heads}kv{self.kv_heads}", f"fl{self.feature_layer}",
                 self.strategy]
        if self.tie:
            parts.append("tied")
        if self.sliding_window:
            parts.append(f"sw{self.sliding_window}")
        return "-".join(parts)


def build_hf(spec: Spec):
    """A random LlavaForConditionalGeneration in eval mode, float32."""
    import torch
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        MistralConfig,
    )

    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, image_size=IMAGE_SIZE, patch_size=14,
                              initializer_range=0.2, initializer_factor=2.0)
    common = dict(hidden_size=spec.hidden, intermediate_size=2 * spec.hidden,
                  num_hidden_layers=spec.layers, num_attention_heads=spec.heads,
                  num_key_value_heads=spec.kv_heads, vocab_size=VOCAB,
                  initializer_range=0.2, pad_token_id=0, eos_token_id=2, bos_token_id=1,
                  tie_word_embeddings=spec.tie, max_position_embeddings=256,
                  rope_theta=spec.rope_theta)
    if spec.text == "mistral":
        text = MistralConfig(sliding_window=spec.sliding_window, **common)
    else:
        text = LlamaConfig(**common)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN,
                      vision_feature_layer=spec.feature_layer,
                      vision_feature_select_strategy=spec.strategy,
                      tie_word_embeddings=spec.tie)
    torch.manual_seed(spec.seed)
    model = LlavaForConditionalGeneration(cfg).eval()
    # Non-trivial biases and norm scales, so that a transposed or skipped one shows up.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or "layrnorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def padded_prompts(rng: np.random.Generator, batch: int, length: int, pads, high: int):
    """Random token ids in [3, high) left-padded by pads[b % len(pads)] (id 0), and the mask;
    both int32. Row b's first real token is at index `pads[b % len(pads)]`."""
    ids = rng.integers(3, high, (batch, length)).astype(np.int32)
    mask = np.ones((batch, length), np.int32)
    for b in range(batch):
        pad = pads[b % len(pads)]
        mask[b, :pad] = 0
        ids[b, :pad] = 0
    return ids, mask


def make_inputs(num_image_tokens: int, batch: int = 3, length: int = 16, pads=(0, 3, 5),
                seed: int = 0, with_images: bool = True):
    """Left-padded prompts with one image's placeholders each: ids, mask (int32), images NHWC."""
    rng = np.random.default_rng(seed)
    ids, mask = padded_prompts(rng, batch, length, pads, IMAGE_TOKEN)
    if with_images:
        for b in range(batch):
            start = pads[b % len(pads)] + 1 + b % 2
            ids[b, start:start + num_image_tokens] = IMAGE_TOKEN
    images = rng.standard_normal((batch, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    return ids, mask, images


def positions(mask: np.ndarray) -> np.ndarray:
    return np.maximum(np.cumsum(mask, axis=-1) - 1, 0)


def hf_logits(model, ids, mask, images):
    """Reference logits with generate's position ids (cumsum of the mask)."""
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids, dtype=torch.long),
                    pixel_values=(None if images is None
                                  else torch.tensor(images).permute(0, 3, 1, 2)),
                    attention_mask=torch.tensor(mask, dtype=torch.long),
                    position_ids=torch.tensor(positions(mask), dtype=torch.long))
    return out.logits.float().numpy()


def rel_err(ours, ref, mask) -> float:
    """max |ours - ref| / max |ref| over real (unpadded) positions."""
    m = np.asarray(mask).astype(bool)
    ours, ref = np.asarray(ours)[m], np.asarray(ref)[m]
    return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


def setup_cache(make):
    """`get(spec, tmp_path_factory)`: `make(spec, path)` built once per spec name in a fresh
    directory, so that several module-scoped fixtures share one converted model."""
    built = {}

    def get(spec, tmp_path_factory):
        if spec.name not in built:
            built[spec.name] = make(spec, str(tmp_path_factory.mktemp(spec.name)))
        return built[spec.name]

    return get
