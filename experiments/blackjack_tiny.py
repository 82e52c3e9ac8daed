"""Blackjack on a CPU: the NumberLine tiny recipe (the shared 112 px reader, SFT, PPO).

python -m rlvlm_jax.train --config experiments/blackjack_tiny.py --workdir outputs/bj_tiny
python -m rlvlm_jax.train --config experiments/blackjack_tiny.py:nocot ...  # no-CoT ablation

Blackjack is stochastic: basic strategy wins ~43-45% (README), so success is judged against
that ceiling, not against 90%. Measured (seed 0, one run each, 500 episodes at T = 0.2): with 150
SFT steps the SFT policy stated its cards and total right in 5% of held-out answers and PPO took it
from 30.4% to 37.6%; with 600 steps, 73% right facts, 20.8% -> 38.4% (100 iterations; 38.2% at
30), and with ppo.lr 1e-4 at rollout temperature 0.5, 20.8% -> 37.0%.
"""

import ml_collections

from rlvlm_jax.config_files import load_sibling


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = load_sibling(__file__, "numberline_tiny.py").get_config(arg)
    c.task = "Blackjack"  # stand / hit against the dealer's up card
    c.max_new_tokens = 96  # Blackjack chains of thought run to ~85 tokens
    c.sft.steps = 1000  # totals of 2-5 cards: 150 steps gave 5% right facts, 600 gave 73%
    c.ppo.temperature = 0.2  # rollouts: the table's rows were measured here (NumberLine: 1.0)
    c.ppo.num_steps = 2  # episodes last ~1.5 steps
    c.ppo.num_envs = 64  # buffer of 128 env steps per update
    c.ppo.iterations = 60  # success levels off after ~30 iterations
    c.eval.every = 30  # PPO iterations between evaluations
    c.eval.max_steps = 10  # first episodes always end within a few hits
    return c
