"""Sampling throughput: our compiled sampler vs transformers `generate`, same weights.

The ~8.7M-parameter LLaVA (CLIP 4x256 on 112 px, LLaMA 4x256, vocab 2048) is built randomly in
transformers, saved, converted with our converter, and both sides sample 128 new tokens per row
(temperature 1, no top-k/top-p, EOS disabled so every row generates all 128) from the same
left-padded prompts with one image each, at batch 1 and 8. Prefill is included on both sides.
Prints a table and a final JSON line with the ratios.

    python benchmarks/bench_sampling.py [--repeats 3] [--new-tokens 128] [--batches 1 8]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from rlvlm_jax.models import conversion  # noqa: E402
from rlvlm_jax.models.llava import abstract_model  # noqa: E402
from rlvlm_jax.models.sampling import Sampler, SamplingConfig  # noqa: E402

TEXT_TOKENS = 32  # prompt text around the image's 64 placeholders


def build_reference(path: str):
    """The benchmark LLaVA in transformers (float32, eval), saved to `path`."""
    import torch
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    vision = CLIPVisionConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                              num_attention_heads=4, image_size=112, patch_size=14)
    text = LlamaConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=4, vocab_size=2048,
                       max_position_embeddings=2048, pad_token_id=0, eos_token_id=2,
                       bos_token_id=1)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=2047)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(cfg).eval()
    model.save_pretrained(path)
    n = sum(p.numel() for p in model.parameters())
    return model, n


def make_batch(batch: int, num_image_tokens: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    length = TEXT_TOKENS + num_image_tokens
    ids = rng.integers(3, 2000, (batch, length)).astype(np.int32)
    mask = np.ones((batch, length), np.int32)
    for b in range(batch):
        pad = (3 * b) % 7
        ids[b, :pad], mask[b, :pad] = 0, 0
        ids[b, pad + 2:pad + 2 + num_image_tokens] = 2047
    images = rng.standard_normal((batch, 112, 112, 3)).astype(np.float32)
    return ids, mask, images


def time_it(fn, repeats: int) -> float:
    """Best of `repeats` after a warm-up call (compilation, allocator): the least disturbed run
    on a shared machine."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def time_ours(sampler, params, ids, mask, images, t_new: int, repeats: int) -> float:
    state = {"cache": sampler.init_cache(params, *ids.shape), "key": jax.random.key(0)}

    def run():
        state["key"], sub = jax.random.split(state["key"])
        out, state["cache"] = sampler(params, ids, mask, images, sub, temperature=1.0,
                                      cache=state["cache"])
        jax.block_until_ready(out.tokens)
        assert int(out.lengths.min()) == t_new

    return time_it(run, repeats)


def time_hf(hf, ids, mask, images, t_new: int, repeats: int) -> float:
    import torch

    inputs = dict(input_ids=torch.tensor(ids, dtype=torch.long),
                  pixel_values=torch.tensor(images).permute(0, 3, 1, 2),
                  attention_mask=torch.tensor(mask, dtype=torch.long))

    def run():
        with torch.no_grad():
            out = hf.generate(**inputs, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                              max_new_tokens=t_new, min_new_tokens=t_new, pad_token_id=0)
        assert out.shape[1] == ids.shape[1] + t_new

    return time_it(run, repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    args = ap.parse_args()

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        hf, n_params = build_reference(tmp)
        cfg, params = conversion.load_hf_checkpoint(tmp)
    params = jax.tree.map(jnp.asarray, params)
    graphdef, _ = abstract_model(cfg)
    t_new = args.new_tokens
    sampler = Sampler(graphdef, cfg, SamplingConfig(max_new_tokens=t_new, eos_ids=(-1,)))

    rows, result = [], {"bench": "sampling", "params": n_params, "new_tokens": t_new,
                        "torch_threads": torch.get_num_threads()}
    for batch in args.batches:
        ids, mask, images = make_batch(batch, cfg.num_image_tokens)
        t_ours = time_ours(sampler, params, ids, mask, images, t_new, args.repeats)
        t_hf = time_hf(hf, ids, mask, images, t_new, args.repeats)
        ours_tps, hf_tps = batch * t_new / t_ours, batch * t_new / t_hf
        rows.append((batch, ours_tps, hf_tps, ours_tps / hf_tps))
        result.update({f"ours_tok_s_b{batch}": round(ours_tps, 1),
                       f"hf_tok_s_b{batch}": round(hf_tps, 1),
                       f"ratio_b{batch}": round(ours_tps / hf_tps, 2)})

    print(f"LLaVA {n_params / 1e6:.2f}M params, {t_new} new tokens, prompt "
          f"{TEXT_TOKENS + cfg.num_image_tokens} tokens, best of {args.repeats}")
    print(f"{'batch':>5} | {'ours tok/s':>11} | {'generate tok/s':>14} | {'ratio':>6}")
    for batch, o, h, r in rows:
        print(f"{batch:>5} | {o:>11.1f} | {h:>14.1f} | {r:>5.2f}x")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
