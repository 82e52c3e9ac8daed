"""The four gym_cards tasks as jittable gymnax environments that draw their own pictures.

Create them by name through gymnax (`gymnax.make("NumberLine-v0")`, once this package is imported)
or through `rlvlm_jax.envs.make("NumberLine")`. The original gym_cards ids
("gym_cards/NumberLine-v0", ...) are accepted as aliases everywhere a task name is: by `make`,
`tasks.get_task` and `gymnax.make`; the env they give is the same class (its `name` is ours). The
facts about each task (ids, action strings, target, ...) are in one table, `rlvlm_jax.envs.tasks`.
The original's `info` keys come from `rlvlm_jax.envs.original_info`.
"""

from __future__ import annotations

import gymnax

from rlvlm_jax.envs import tasks
from rlvlm_jax.envs.base import STYLES, CardEnv
from rlvlm_jax.envs.blackjack import Blackjack
from rlvlm_jax.envs.ezpoints import EZPoints
from rlvlm_jax.envs.formula_env import BLANK_RULES, FormulaEnv
from rlvlm_jax.envs.numberline import NumberLine
from rlvlm_jax.envs.points24 import Points24

# The class registry: task name -> env class, in the table's order. It holds no facts about a
# task: those are the class's row of the table (`TASKS[name].task_spec`, `tasks.get_task(name)`).
_CLASSES = {cls.task: cls for cls in (NumberLine, EZPoints, Points24, Blackjack)}
TASKS: dict[str, type[CardEnv]] = {name: _CLASSES[name] for name in tasks.TASK_NAMES}
GYMNAX_IDS = {name: tasks.TASKS[name].gymnax_id for name in TASKS}
GYM_IDS = {name: tasks.TASKS[name].gym_id for name in TASKS}  # the original's, as aliases


def make(task: str, blanks: str = "skip", **kwargs):
    """(env, default params) for a task name ("NumberLine", ...), its gymnax id ("...-v0") or its
    original gym id ("gym_cards/...-v0"). `kwargs` go to the env class (`CardEnv`: image_size,
    final_observation, style, card_images); `blanks` to the formula tasks only (`FormulaEnv`)."""
    try:
        name = tasks.get_task(task).name
    except KeyError:
        raise ValueError(f"unknown task {task!r}; choose one of {tasks.known_names()}") from None
    cls = TASKS[name]
    if issubclass(cls, FormulaEnv):
        kwargs["blanks"] = blanks
    elif blanks not in BLANK_RULES:
        raise ValueError(f"blanks={blanks!r}; choose one of {BLANK_RULES}")
    env = cls(**kwargs)
    return env, env.default_params


for _name, _cls in TASKS.items():
    for _id in (GYMNAX_IDS[_name], GYM_IDS[_name]):  # ours, then the original's as an alias
        if _id not in gymnax.registered_envs:
            gymnax.register(_id, _cls)

__all__ = [
    "BLANK_RULES",
    "STYLES",
    "TASKS",
    "GYMNAX_IDS",
    "GYM_IDS",
    "make",
    "tasks",
    "CardEnv",
    "NumberLine",
    "EZPoints",
    "Points24",
    "Blackjack",
]
