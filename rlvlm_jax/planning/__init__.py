"""The planner's accounting (`accounting.py`) and verdict (`report.py`); the command is
`python -m rlvlm_jax.plan`.

Model config: from the experiment's fields like training does when it starts from scratch; for a
config that starts from a pretrained checkpoint, from `config.model.checkpoint`'s config.json
when that directory exists, else from `--preset` (default: chosen from the config's file name,
e.g. llava_mistral_7b_* -> llava-v1.6-mistral-7b; `--preset=none` forces the config's fields).
Tokenizer: the config's (`tokenizer.path`, or the checkpoint's) when it exists; otherwise the card
tokenizer stands in, which gives exact shapes for configs trained with it (the tiny ones) but not
the prompt length of another vocabulary: for a preset the prompt length is then estimated as
image tokens + BOS + ceil(template characters / 3.5) (+ formula slots), a little above what
LLaMA/Mistral tokenizers give on this English/JSON text (~4 characters per token). Override it
with `--prompt_tokens`. The ids' contents are irrelevant to shapes and FLOPs.

Limits: the temporaries are those of XLA:CPU's compilation of the partitioned program; the TPU
and GPU compilers fuse and lay out differently (and keep bf16 where the CPU may widen to f32), so
treat them as an estimate; params, optimiser state and the KV cache are exact. The planner
compiles with XLA:CPU's backend optimisation level 0 (`--fast_compile`; identical buffer sizes
on the tiny config) and without two passes (`--disable_passes`, see DISABLED_PASSES): constant
folding (hours on the 7B's frozen tower, 0.01% on the tiny config) and while-loop invariant code
motion (which on CPU, with no memory limit, hoists every layer's FSDP all-gather out of the
decode loop). Neither changes what the programs compute. Two CPU effects remain in the 7B's
temporaries and inflate them: XLA:CPU has no bf16 matmul, so bf16 operands are widened to f32
copies, and FSDP gathers the f32 master weights (the model casts after reading the sharded
param), so a tensor axis (1,4,8 on v5e-32) shrinks them far more than fsdp alone. For a
model too big to compile here, `--probe_layers 2,4` compiles two shallow copies and
extrapolates (checked on the tiny config: within 0.5% of the direct compile). The SFT stage
and the evaluation loop are not planned.
"""
