"""NumberLine with Qwen2.5-VL-7B-Instruct (MAYE's model) on a TPU/GPU pod: the LLaVA-7B run's
PPO settings (llava_mistral_7b_numberline.py) with the Qwen model.

python -m rlvlm_jax.train --config experiments/qwen25_vl_7b_numberline.py \
    --workdir gs://... --config.model.checkpoint=/path/to/Qwen2.5-VL-7B-Instruct

The checkpoint's config.json model_type (qwen2_5_vl) picks the model; its own tokenizer and
chat template are used. Pictures are drawn at 336 px, which the tower runs as one fixed 24 x 24
patch grid (a multiple of 28 px: 144 image tokens after the 2 x 2 merge; transformers' dynamic
resolution would give the same grid for 336 px pictures). `python -m rlvlm_jax.plan` plans it
from the qwen2.5-vl-7b preset (the file name names it); --config.ppo.lora_rank=0 fine-tunes
fully. Its 4 KV heads allow tensor parallelism up to 4 (e.g. --mesh 1,8,4 on v5e-32; the README
has the planner's figures: as configured it does not fit there or on one H100).
"""

import ml_collections

from rlvlm_jax.config_files import load_sibling


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = load_sibling(__file__, "llava_mistral_7b_numberline.py").get_config(arg)
    c.model.family = "qwen2_5_vl"  # (a checkpoint's own model_type decides)
    c.model.max_positions = 128000  # Qwen2.5-VL's context
    c.model.value_hidden = (1024, 512)  # as the LLaVA run (RL4VLM's head)
    c.model.checkpoint = ""  # REQUIRED: a transformers Qwen2.5-VL-7B(-Instruct) directory
    return c
