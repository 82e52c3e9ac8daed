"""The main job's recipe (experiments/numberline_tiny.py) on the original gym_cards NumberLine
(RL4VLM's gymnasium env, `gym_cards/NumberLine-v0`), stepped on the host through the adapter
(`rlvlm_jax.envs.host`, `rlvlm_jax.rl.host_rollout`) instead of the jitted NumberLine.

python -m rlvlm_jax.train --config experiments/host_numberline.py --workdir outputs/host_nl

Needs the original gym_cards: `pip install -e <RL4VLM>/gym-cards`. Everything but the
environment is numberline_tiny's: the same reader, prompt ("short" template), SFT (the jitted
task's visited states, answers and wrong share, painted by the original env: 300 px pictures with
its own layout, resized to 112 px on the host) and PPO. The generation, scoring and update stay
compiled; each env step is one compiled policy call, then `SyncVectorEnv.step` on the host. Unlike
the jitted task, the original draws its episodes from Python's global `random` (unseeded), so
runs are not bit-reproducible, and a resumed run starts from freshly reset environments.
"""

import ml_collections

from rlvlm_jax.config_files import load_sibling


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = load_sibling(__file__, "numberline_tiny.py").get_config(arg)
    c.env.kind = "host"  # "gymnax": the jitted card task; "host": a gymnasium env on the host
    c.env.host = "rlvlm_jax.envs.host:gym_cards"  # the task spec (a function of this config)
    return c
