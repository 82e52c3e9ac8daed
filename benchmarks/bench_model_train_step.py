"""Forward + backward throughput: our jitted loss/grad vs torch autograd, same weights.

The ~8.7M-parameter benchmark LLaVA (see bench_sampling.py) is built in transformers, saved and
converted. Both sides compute the teacher-forced mean negative log-likelihood of the completion
tokens (the PPO/SFT shape of work: one image, a 96-token prompt, a 128-token completion) and its
gradient with respect to every parameter, float32. Tokens/s counts all B x 224 sequence tokens.
Prints a table and a final JSON line with the ratio.

    python benchmarks/bench_model_train_step.py [--batch 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from bench_sampling import build_reference, make_batch, time_it  # noqa: E402
from flax import nnx  # noqa: E402

from rlvlm_jax.models import conversion  # noqa: E402
from rlvlm_jax.models.llava import abstract_model  # noqa: E402
from rlvlm_jax.models.scoring import token_logprobs  # noqa: E402

COMPLETION = 128


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        hf, n_params = build_reference(tmp)
        cfg, params = conversion.load_hf_checkpoint(tmp)
    params = jax.tree.map(jnp.asarray, params)
    graphdef, _ = abstract_model(cfg)
    ids, mask, images = make_batch(args.batch, cfg.num_image_tokens)
    rng = np.random.default_rng(1)
    completion = rng.integers(3, 2000, (args.batch, COMPLETION)).astype(np.int32)
    cmask = np.ones_like(completion)
    seq = ids.shape[1] + COMPLETION

    def loss_fn(params, ids, mask, images, completion, cmask):
        model = nnx.merge(graphdef, params)
        lp = token_logprobs(model, ids, mask, images, completion, cmask, 1.0).logprobs
        return -lp.sum() / cmask.sum()

    grad_fn = jax.jit(jax.value_and_grad(loss_fn))

    def ours():
        loss, grads = grad_fn(params, ids, mask, images, completion, cmask)
        jax.block_until_ready(grads)
        return float(loss)

    full_ids = torch.tensor(np.concatenate([ids, completion], 1), dtype=torch.long)
    full_mask = torch.tensor(np.concatenate([mask, cmask], 1), dtype=torch.long)
    positions = torch.clamp(full_mask.cumsum(-1) - 1, min=0)
    pixels = torch.tensor(images).permute(0, 3, 1, 2)
    target = torch.tensor(completion, dtype=torch.long)
    p = ids.shape[1]
    hf.train(False)  # no dropout; autograd still on

    def theirs():
        hf.zero_grad(set_to_none=True)
        logits = hf(input_ids=full_ids, pixel_values=pixels, attention_mask=full_mask,
                    position_ids=positions).logits[:, p - 1:-1]
        lp = torch.log_softmax(logits.float(), -1).gather(-1, target[..., None])[..., 0]
        loss = -lp.sum() / lp.numel()
        loss.backward()
        return float(loss)

    loss_ours, loss_theirs = ours(), theirs()
    assert abs(loss_ours - loss_theirs) < 1e-4 * abs(loss_theirs), (loss_ours, loss_theirs)
    t_ours = time_it(ours, args.repeats)
    t_hf = time_it(theirs, args.repeats)
    tokens = args.batch * seq
    ours_tps, hf_tps = tokens / t_ours, tokens / t_hf
    print(f"LLaVA {n_params / 1e6:.2f}M params, batch {args.batch} x {seq} tokens "
          f"(1 image, {COMPLETION}-token completion), forward+backward, best of {args.repeats}")
    print(f"{'':>6} | {'tokens/s':>9} | {'ms/step':>8}")
    print(f"{'ours':>6} | {ours_tps:>9.0f} | {1000 * t_ours:>8.1f}")
    print(f"{'torch':>6} | {hf_tps:>9.0f} | {1000 * t_hf:>8.1f}")
    print(json.dumps({"bench": "train_step", "params": n_params, "batch": args.batch,
                      "seq": seq, "torch_threads": torch.get_num_threads(),
                      "ours_tok_s": round(ours_tps, 1), "torch_tok_s": round(hf_tps, 1),
                      "ratio": round(ours_tps / hf_tps, 2)}))


if __name__ == "__main__":
    main()
