"""EZPoints from nothing on a CPU: the NumberLine tiny recipe on 76 px pictures of two cards,
with the current formula in the (short) prompt, rebuilt on the device every step.

python -m rlvlm_jax.train --config experiments/ezpoints_tiny.py --workdir outputs/ezp_tiny

Untuned: see the issue's closing notes for measured figures.
"""

import ml_collections

from rlvlm_jax.config_files import load_sibling


def _base():
    return load_sibling(__file__, "numberline_tiny.py")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = _base().get_config(arg)
    c.task = "EZPoints"  # build a formula equal to 12 from two cards, then "="
    c.image_size = 76  # EZPoints' smallest legible picture
    c.model.patch_size = 19  # 4 x 4 = 16 image tokens
    c.max_new_tokens = 112  # EZPoints chains of thought run to ~100 tokens
    c.sft.num_demos = 8192  # more distinct states than NumberLine
    c.sft.steps = 300  # card values and formulas take longer to learn
    c.ppo.num_steps = 4  # episodes last ~4 steps
    c.ppo.truncation_as_termination = False  # the formula-length cut is bootstrapped
    c.eval.max_steps = 12  # formulas are cut after a few tokens
    return c
