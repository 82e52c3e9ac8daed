"""NumberLine: move the current number to the target by adding or subtracting one."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from gymnax.environments import environment

from rlvlm_jax.envs.base import CardEnv, CardEnvState
from rlvlm_jax.envs.render import BLACK, WHITE, Layout, Picture, new_canvas

MAX_POSITION = 5  # positions are 0..5


@struct.dataclass
class NumberLineState(CardEnvState):
    position: jax.Array
    goal: jax.Array


@struct.dataclass
class NumberLineParams(environment.EnvParams):
    max_steps_in_episode: int = 10  # truncated when not done after this many steps


class NumberLine(CardEnv, task="NumberLine"):
    """Actions: 0 = "-", 1 = "+". Rewards: +1 on reaching the goal (terminated), -1 when the
    distance did not shrink (including a move into a wall), else 0."""

    smallest_font = 36.0

    @property
    def default_params(self) -> NumberLineParams:
        return NumberLineParams()

    def _build_picture(self, size: int) -> Picture:
        lay = Layout(size, self.task, self.smallest_font)
        fnt = lay.font(36)

        def paint(v):
            img, draw = new_canvas(size, WHITE)
            draw.text((lay.px(60), lay.px(80)), f"Target: {v['target']}", font=fnt, fill=BLACK)
            draw.text((lay.px(60), lay.px(160)), f"Current: {v['current']}", font=fnt, fill=BLACK)
            return np.asarray(img)

        return Picture(size, paint, {"target": MAX_POSITION + 1, "current": MAX_POSITION + 1})

    def region_variants(self, state):
        return {"target": state.goal, "current": state.position}

    def _reset_logic(self, key, params, canvas):
        k_start, k_goal = jax.random.split(key)
        start = jax.random.randint(k_start, (), 0, MAX_POSITION + 1)
        goal = jax.random.randint(k_goal, (), 0, MAX_POSITION + 1)
        # The original's law, kept exactly: a clash moves the goal to (goal + 1) mod 5, not mod 6.
        goal = jnp.where(goal == start, (goal + 1) % 5, goal)
        return NumberLineState(time=jnp.int32(0), canvas=canvas, position=start, goal=goal)

    def _step_logic(self, key, state, action, params):
        pos = jnp.where(
            action == 1,
            jnp.minimum(state.position + 1, MAX_POSITION),
            jnp.maximum(state.position - 1, 0),
        )
        time = state.time + 1
        old_dist = jnp.abs(state.position - state.goal)
        new_dist = jnp.abs(pos - state.goal)
        terminated = new_dist == 0
        reward = jnp.where(terminated, 1.0, jnp.where(new_dist >= old_dist, -1.0, 0.0))
        truncated = ~terminated & (time >= params.max_steps_in_episode)
        return state.replace(time=time, position=pos), reward, terminated, truncated

    def text_fields(self, state):
        return {"position": int(state.position), "goal": int(state.goal)}

    def oracle_action(self, key, state, params=None):
        return (state.goal > state.position).astype(jnp.int32)
