"""Named model configs: tiny (tests), bench (~8.7M, benchmarks), and the two RL4VLM backbones."""

from __future__ import annotations

from rlvlm_jax.models.clip import VisionConfig
from rlvlm_jax.models.llama import TextConfig
from rlvlm_jax.models.llava import LlavaConfig

# CLIP ViT-L/14 at 336 px, the tower of LLaVA-1.5 and LLaVA-1.6 (576 patches).
CLIP_VIT_L_336 = VisionConfig(hidden_size=1024, intermediate_size=4096, num_layers=24,
                              num_heads=16, image_size=336, patch_size=14)


def tiny() -> LlavaConfig:
    """A 133k-parameter LLaVA for CPU tests: 28 px images (4 patches), GQA decoder."""
    return LlavaConfig(
        vision=VisionConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                            image_size=28, patch_size=14),
        text=TextConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=2,
                        num_heads=8, num_kv_heads=4, rope_theta=10000.0, rms_norm_eps=1e-6,
                        max_position_embeddings=512),
        image_token_id=127, pad_token_id=0, eos_token_id=2)


def bench() -> LlavaConfig:
    """~8.7M params: CLIP 4x256 on 112 px, LLaMA 4x256, vocab 2048 (the benchmark model)."""
    return LlavaConfig(
        vision=VisionConfig(hidden_size=256, intermediate_size=1024, num_layers=4, num_heads=4,
                            image_size=112, patch_size=14),
        text=TextConfig(vocab_size=2048, hidden_size=256, intermediate_size=1024, num_layers=4,
                        num_heads=4, num_kv_heads=4, max_position_embeddings=2048),
        image_token_id=2047, pad_token_id=0, eos_token_id=2)


def llava_15_7b() -> LlavaConfig:
    """llava-hf/llava-1.5-7b-hf: CLIP-L/336 (layer -2, class token dropped) + Vicuna-7B."""
    return LlavaConfig(
        vision=CLIP_VIT_L_336,
        text=TextConfig(vocab_size=32064, hidden_size=4096, intermediate_size=11008,
                        num_layers=32, num_heads=32, num_kv_heads=32, rope_theta=10000.0,
                        rms_norm_eps=1e-5, max_position_embeddings=4096, family="llama"),
        image_token_id=32000, pad_token_id=32001, eos_token_id=2)


def llava_16_mistral_7b() -> LlavaConfig:
    """llava-hf/llava-v1.6-mistral-7b-hf as RL4VLM used it: one 336 crop (576 image tokens, no
    anyres tiles or image_newline) + Mistral-7B-Instruct-v0.2 (GQA 32/8, theta 1e6)."""
    return LlavaConfig(
        vision=CLIP_VIT_L_336,
        text=TextConfig(vocab_size=32064, hidden_size=4096, intermediate_size=14336,
                        num_layers=32, num_heads=32, num_kv_heads=8, rope_theta=1000000.0,
                        rms_norm_eps=1e-5, sliding_window=None, max_position_embeddings=32768,
                        family="mistral"),
        image_token_id=32000, pad_token_id=0, eos_token_id=2)


PRESETS = {"tiny": tiny, "bench": bench, "llava-1.5-7b": llava_15_7b,
           "llava-v1.6-mistral-7b": llava_16_mistral_7b}


def get(name: str) -> LlavaConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name]()
