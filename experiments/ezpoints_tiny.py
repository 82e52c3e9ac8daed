"""EZPoints on a CPU: the NumberLine tiny recipe (the shared reader, SFT, PPO), two cards, with the
current formula in the (short) prompt, rebuilt on the device every step.

python -m rlvlm_jax.train --config experiments/ezpoints_tiny.py --workdir outputs/ezp_tiny
python -m rlvlm_jax.train --config experiments/ezpoints_tiny.py:nocot ...  # no-CoT ablation

Rollout temperature (3 seeds each, 2026-11-29, commit 6cba579, 280-300 s per run): at 0.2 (this
config) SFT 4.0 / 7.2 / 5.4% -> PPO 97.4 / 95.4 / 96.4%; with `--config.ppo.temperature=1.0`
(NumberLine's choice) the same SFT policies -> 94.6 / 96.8 / 90.6%. Kept at 0.2.
"""

import ml_collections

from rlvlm_jax.config_files import load_sibling


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = load_sibling(__file__, "numberline_tiny.py").get_config(arg)
    c.task = "EZPoints"  # build a formula equal to 12 from two cards, then "="
    c.max_new_tokens = 112  # EZPoints chains of thought run to ~100 tokens
    c.sft.num_demos = 8192  # more distinct states than NumberLine
    c.sft.steps = 300  # card values and formulas take longer to learn
    c.ppo.temperature = 0.2  # rollouts: the table's rows were measured here (NumberLine: 1.0)
    c.ppo.num_steps = 4  # episodes last ~4 steps
    c.ppo.iterations = 60  # success levels off after ~30 iterations
    c.eval.every = 30  # PPO iterations between evaluations
    c.eval.max_steps = 12  # formulas are cut after a few tokens
    return c
