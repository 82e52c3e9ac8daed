"""A tour of the card environments: oracle and random play on every task, pictures, text episodes.

python -m rlvlm_jax.tour --config experiments/tour.py --workdir outputs/tour
python -m rlvlm_jax.tour --config experiments/tour.py:Points24 --config.num_envs=256 ...
"""

import ml_collections

from rlvlm_jax.envs.tasks import TASK_NAMES

ALL_TASKS = ",".join(TASK_NAMES)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.tasks = arg or ALL_TASKS  # comma-separated task names
    config.num_envs = 2048  # environments per policy and task, stepped together in one scan
    config.steps = 24  # steps each environment plays (first-episode success is reported)
    config.image_size = 300  # picture side in pixels (the original's 300x300)
    config.seed = 0  # every random draw comes from this key
    return config
