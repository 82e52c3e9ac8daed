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


# ---------------------------------------------------------------------------------------------
# Qwen2-VL / Qwen2.5-VL (rlvlm_jax.models.qwen2_vl). Architecture numbers from the public
# config.json files of the Qwen/*-Instruct checkpoints on the Hugging Face hub (text: hidden,
# intermediate, layers, heads, KV heads, vocab, theta 1e6, RMS eps 1e-6, M-RoPE sections
# 16/24/24 of 64 pairs; vision: depth 32, width 1280, 16 heads, patch 14, merge 2, temporal 2),
# cross-checked against transformers' Qwen2VLConfig / Qwen2_5_VLConfig defaults (the 7B values).
# The image size is ours: the models take any multiple of 28 px; 448 x 448 gives 256 tokens.
# Kept apart from PRESETS, whose entries are LlavaConfigs.
# ---------------------------------------------------------------------------------------------
def _qwen(variant: str, vision: dict, text_hidden: int, intermediate: int, layers: int,
          heads: int, kv_heads: int, vocab: int, tie: bool, max_positions: int,
          image_size: int = 448):
    """A Qwen-VL config: the 32-layer 1280-wide ViT (`vision`: what the variants set apart) and
    a Qwen2 decoder (`QwenTextConfig`'s defaults: theta 1e6, RMS eps 1e-6, M-RoPE 16/24/24)."""
    from rlvlm_jax.models.qwen2_vl import QwenVLConfig
    from rlvlm_jax.models.qwen_text import QwenTextConfig
    from rlvlm_jax.models.qwen_vision import QwenVisionConfig

    return QwenVLConfig(
        vision=QwenVisionConfig(variant=variant, hidden_size=1280, num_layers=32, num_heads=16,
                                out_hidden_size=text_hidden, image_height=image_size,
                                image_width=image_size, **vision),
        text=QwenTextConfig(vocab_size=vocab, hidden_size=text_hidden,
                            intermediate_size=intermediate, num_layers=layers, num_heads=heads,
                            num_kv_heads=kv_heads, tie_embeddings=tie,
                            max_position_embeddings=max_positions))


def _qwen2_vl(*text, tie: bool):
    vision = dict(intermediate_size=5120, hidden_act="quick_gelu")
    return _qwen("qwen2_vl", vision, *text, tie=tie, max_positions=32768)


def _qwen2_5_vl(*text, tie: bool):
    vision = dict(intermediate_size=3420, hidden_act="silu", window_size=112,
                  fullatt_block_indexes=(7, 15, 23, 31))
    return _qwen("qwen2_5_vl", vision, *text, tie=tie, max_positions=128000)


def qwen2_vl_2b():
    """Qwen/Qwen2-VL-2B-Instruct (2.2B): Qwen2-1.5B decoder (GQA 12/2, tied embeddings)."""
    return _qwen2_vl(1536, 8960, 28, 12, 2, 151936, tie=True)


def qwen2_vl_7b():
    """Qwen/Qwen2-VL-7B-Instruct (8.3B): Qwen2-7B decoder (GQA 28/4, untied)."""
    return _qwen2_vl(3584, 18944, 28, 28, 4, 152064, tie=False)


def qwen2_5_vl_3b():
    """Qwen/Qwen2.5-VL-3B-Instruct (3.8B): Qwen2.5-3B decoder (GQA 16/2, tied embeddings),
    window-attention ViT (112 px windows, full attention at blocks 7/15/23/31)."""
    return _qwen2_5_vl(2048, 11008, 36, 16, 2, 151936, tie=True)


def qwen2_5_vl_7b():
    """Qwen/Qwen2.5-VL-7B-Instruct (8.3B): Qwen2.5-7B decoder (GQA 28/4, untied)."""
    return _qwen2_5_vl(3584, 18944, 28, 28, 4, 152064, tie=False)


QWEN_PRESETS = {"qwen2-vl-2b": qwen2_vl_2b, "qwen2-vl-7b": qwen2_vl_7b,
                "qwen2.5-vl-3b": qwen2_5_vl_3b, "qwen2.5-vl-7b": qwen2_5_vl_7b}


def get_qwen(name: str):
    if name not in QWEN_PRESETS:
        raise KeyError(f"unknown Qwen-VL preset {name!r}; known: {sorted(QWEN_PRESETS)}")
    return QWEN_PRESETS[name]()
