"""The four gym_cards tasks as jittable gymnax environments that draw their own pictures.

Create them by name through gymnax (`gymnax.make("NumberLine-v0")`, once this package is imported)
or through `rlvlm_jax.envs.make("NumberLine")`.
"""

from __future__ import annotations

import gymnax

from rlvlm_jax.envs.base import CardEnv
from rlvlm_jax.envs.blackjack import Blackjack
from rlvlm_jax.envs.ezpoints import EZPoints
from rlvlm_jax.envs.numberline import NumberLine
from rlvlm_jax.envs.points24 import Points24

TASKS: dict[str, type[CardEnv]] = {
    "NumberLine": NumberLine,
    "EZPoints": EZPoints,
    "Points24": Points24,
    "Blackjack": Blackjack,
}
GYMNAX_IDS = {name: f"{name}-v0" for name in TASKS}


def make(task: str, **kwargs):
    """(env, default params) for a task name ("NumberLine", ...) or its gymnax id ("...-v0")."""
    name = task[: -len("-v0")] if task.endswith("-v0") else task
    if name not in TASKS:
        raise ValueError(
            f"unknown task {task!r}; choose one of {', '.join(TASKS)} (or their gymnax ids "
            f"{', '.join(GYMNAX_IDS.values())})"
        )
    env = TASKS[name](**kwargs)
    return env, env.default_params


for _name, _cls in TASKS.items():
    if GYMNAX_IDS[_name] not in gymnax.registered_envs:
        gymnax.register(GYMNAX_IDS[_name], _cls)

__all__ = [
    "TASKS",
    "GYMNAX_IDS",
    "make",
    "CardEnv",
    "NumberLine",
    "EZPoints",
    "Points24",
    "Blackjack",
]
