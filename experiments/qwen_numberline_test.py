"""A seconds-scale NumberLine config with a tiny random Qwen2-VL policy (tests and smoke runs;
learns nothing useful): numberline_test.py with `model.family` switched.

python -m rlvlm_jax.train --config experiments/qwen_numberline_test.py --workdir /tmp/qwen_nl
python -m rlvlm_jax.train --config experiments/qwen_numberline_test.py \
    --config.model.family=qwen2_5_vl --workdir /tmp/qwen25_nl

The card tokenizer gets Qwen's special tokens (`text.tokenizer.build_card_tokenizer`), prompts
use Qwen's chat template and image span (<|vision_start|> + 4 x <|image_pad|> + <|vision_end|>
for 56 px pictures: a 4 x 4 patch grid merged 2 x 2). A pretrained Qwen checkpoint instead:
--config.model.checkpoint=DIR (its config.json model_type picks the family; image_size is the
fixed grid its tower runs at, a multiple of 28).
"""

import ml_collections

from rlvlm_jax.config_files import load_sibling


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = load_sibling(__file__, "numberline_test.py").get_config(arg)
    c.model.family = "qwen2_vl"  # "qwen2_vl" or "qwen2_5_vl" (random init from these fields)
    # numberline_test's shapes: ViT head dim 32 / 2 = 16 (a multiple of 4 for the 2-D rotary),
    # 56 / 14 = 4 patches a side, merged 2 x 2 -> 4 image tokens; decoder heads of 16 dims
    c.model.mrope_section = (2, 3, 3)  # M-RoPE rotation pairs (t, h, w) of the 16-dim heads
    c.model.window_size = 56  # Qwen2.5-VL window side in px (multiple of 28)
    c.model.fullatt_blocks = (0,)  # Qwen2.5-VL vision blocks with full attention
    return c
