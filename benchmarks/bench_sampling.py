"""Sampling throughput: our compiled sampler vs transformers `generate`, same weights.

The ~8.7M-parameter LLaVA (CLIP 4x256 on 112 px, LLaMA 4x256, vocab 2048) is built randomly in
transformers, saved, converted with our converter, and both sides sample 128 new tokens per row
(temperature 1, no top-k/top-p, EOS disabled so every row generates all 128) from the same
left-padded prompts with one image each, at batch 1 and 8. Prefill is included on both sides.
Prints a table and a final JSON line with the ratios.

It also times, on the same weights, a loop that does nothing but the decoder's weight matmuls for
one token per row (q, k, v, o, gate, up, down per layer, then the LM head: no attention, norms or
sampling) and reports the ratio a sampler would reach if its decode step cost only that
("ceiling"). On a CPU those matrix-vector products read every weight once per token, so that
loop bounds what any XLA:CPU decoder of this model can do here.

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
from rlvlm_jax.models.sampling import Sampler, SamplingConfig, make_knobs  # noqa: E402

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


def time_prefill(sampler, params, ids, mask, images, repeats: int) -> float:
    """Our prefill alone (prompt pass and first token), to split the total into its parts."""
    knobs = make_knobs(1.0, 0, 1.0, (-1,))
    state = {"cache": sampler.init_cache(params, *ids.shape)}

    def run():
        out, state["cache"] = sampler._prefill(params, ids, mask, images, state["cache"],
                                               jax.random.key(0), knobs)
        jax.block_until_ready(out.tokens)

    return time_it(run, repeats)


def matmul_floor(params, batch: int, steps: int):
    """A jitted loop of `steps` decode-shaped passes through the text weights' matmuls only."""
    text = params["text"]
    mats = []
    for layer in text["layers"].values():
        for name in ("q_proj", "k_proj", "v_proj"):
            mats.append(layer[name].reshape(layer[name].shape[0], -1))
        mats.append(layer["o_proj"].reshape(-1, layer["o_proj"].shape[-1]))
        mats += [layer["gate_proj"], layer["up_proj"], layer["down_proj"]]
    head = text["lm_head"] if "lm_head" in text else text["embed"].T
    d = head.shape[0]

    def fit(x, n):  # the previous product, cut or repeated to the next matrix's input width
        return x[:, :n] if x.shape[1] >= n else jnp.tile(x, (1, -(-n // x.shape[1])))[:, :n]

    def body(_, x):
        for w in mats:  # chained like the model: each product feeds the next
            x = fit(x, w.shape[0]) @ w
        x = fit(x, d)
        return x + 1e-3 * fit(x @ head, d)

    loop = jax.jit(lambda x: jax.lax.fori_loop(0, steps, body, x))
    x = jnp.ones((batch, d), jnp.float32)
    return lambda: jax.block_until_ready(loop(x))


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
        t_pre = time_prefill(sampler, params, ids, mask, images, args.repeats)
        t_floor = time_it(matmul_floor(params, batch, t_new - 1), args.repeats)
        ours_tps, hf_tps = batch * t_new / t_ours, batch * t_new / t_hf
        step_ms = 1e3 * max(t_ours - t_pre, 0.0) / (t_new - 1)
        floor_ms = 1e3 * t_floor / (t_new - 1)
        ceiling = batch * t_new / (t_pre + t_floor) / hf_tps
        rows.append((batch, ours_tps, hf_tps, ours_tps / hf_tps, 1e3 * t_pre, step_ms, floor_ms,
                     ceiling))
        result.update({f"ours_tok_s_b{batch}": round(ours_tps, 1),
                       f"hf_tok_s_b{batch}": round(hf_tps, 1),
                       f"ratio_b{batch}": round(ours_tps / hf_tps, 2),
                       f"prefill_ms_b{batch}": round(1e3 * t_pre, 2),
                       f"decode_step_ms_b{batch}": round(step_ms, 3),
                       f"matmul_floor_step_ms_b{batch}": round(floor_ms, 3),
                       f"ceiling_ratio_b{batch}": round(ceiling, 2)})

    print(f"LLaVA {n_params / 1e6:.2f}M params, {t_new} new tokens, prompt "
          f"{TEXT_TOKENS + cfg.num_image_tokens} tokens, best of {args.repeats}")
    print(f"{'batch':>5} | {'ours tok/s':>11} | {'generate tok/s':>14} | {'ratio':>6} | "
          f"{'prefill ms':>10} | {'step ms':>7} | {'matmul floor ms':>15} | {'ceiling':>7}")
    for batch, o, h, r, pre, step, floor, ceil in rows:
        print(f"{batch:>5} | {o:>11.1f} | {h:>14.1f} | {r:>5.2f}x | {pre:>10.2f} | "
              f"{step:>7.3f} | {floor:>15.3f} | {ceil:>6.2f}x")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
