"""Points24 on a CPU: the EZPoints tiny recipe with four cards and target 24.

python -m rlvlm_jax.train --config experiments/points24_tiny.py --workdir outputs/p24_tiny
python -m rlvlm_jax.train --config experiments/points24_tiny.py:nocot ...  # no-CoT ablation

Episodes are long (a solution takes 7-11 tokens, then "="), so a per-step error compounds: with
EZPoints' half-wrong demonstrations the SFT policy would almost never finish a formula; a quarter
keeps its SFT level low (the paper's LLaVA-sft: 2.6%) without leaving PPO no success to learn
from. There are only 715 distinct hands (values 1..10, faces 10), so the demonstrations cover
their solutions many times over.
"""

import ml_collections

from rlvlm_jax.config_files import load_sibling


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = load_sibling(__file__, "ezpoints_tiny.py").get_config(arg)
    c.task = "Points24"  # build a formula equal to 24 from four cards, then "="
    c.max_new_tokens = 128  # Points24 chains of thought run to ~110 tokens
    c.sft.num_demos = 16384  # four-card hands and their formulas
    c.sft.steps = 600  # solutions to memorise
    c.sft.wrong_share = 0.25  # long episodes: see the docstring
    c.ppo.num_steps = 8  # episodes last ~9 steps
    c.eval.max_steps = 24  # a formula is cut after 21 tokens
    return c
