"""Blackjack on a CPU: the NumberLine tiny recipe (the shared 112 px reader, SFT, PPO).

python -m rlvlm_jax.train --config experiments/blackjack_tiny.py --workdir outputs/bj_tiny
python -m rlvlm_jax.train --config experiments/blackjack_tiny.py:nocot ...  # no-CoT ablation

Blackjack is stochastic: basic strategy wins ~43% (README), so success is judged against that
ceiling, not against 90%.
"""

import ml_collections

from rlvlm_jax.config_files import load_sibling


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = load_sibling(__file__, "numberline_tiny.py").get_config(arg)
    c.task = "Blackjack"  # stand / hit against the dealer's up card
    c.max_new_tokens = 96  # Blackjack chains of thought run to ~85 tokens
    c.ppo.num_steps = 2  # episodes last ~1.5 steps
    c.ppo.num_envs = 64  # buffer of 128 env steps per update
    c.eval.max_steps = 10  # first episodes always end within a few hits
    return c
