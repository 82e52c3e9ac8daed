"""Blackjack from nothing on a CPU: the NumberLine tiny recipe at 112 px (Blackjack's cards need
>= 101 px to stay legible; 112 = 8 patches of 14 -> 64 image tokens).

python -m rlvlm_jax.train --config experiments/blackjack_tiny.py --workdir outputs/bj_tiny

Blackjack is stochastic: basic strategy wins ~43% (README), so success is judged against that
ceiling, not against 90%. Untuned: see the issue's closing notes for measured figures.
"""

import ml_collections

from rlvlm_jax.config_files import load_sibling


def _base():
    return load_sibling(__file__, "numberline_tiny.py")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = _base().get_config(arg)
    c.task = "Blackjack"  # stand / hit against the dealer's up card
    c.image_size = 112  # smallest patch-14 multiple above Blackjack's legibility limit (101)
    c.model.patch_size = 14  # 8 x 8 = 64 image tokens
    c.max_new_tokens = 96  # Blackjack chains of thought run to ~85 tokens
    c.model.max_positions = 512  # prompt (~82) + 96 fits
    c.ppo.num_steps = 2  # episodes last ~1.5 steps
    c.ppo.num_envs = 64  # buffer of 128 env steps per update
    c.eval.max_steps = 10  # first episodes always end within a few hits
    return c
