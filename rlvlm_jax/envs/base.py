"""The gymnax contract shared by the card tasks, with one picture update per step.

gymnax 1.0's `Environment.step` renders a reset observation on every step for auto-reset and then
selects between two pictures. Our `step` keeps the gymnax signature and return values but selects
between the two *logical* states (a few integers) and then updates the carried picture once, from
the state that will actually be shown. The picture lives in the state (`state.canvas`), so only the
regions that can change are rewritten and, inside a `lax.scan`, they are written in place.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from gymnax.environments import environment, spaces

from rlvlm_jax.envs import original_style
from rlvlm_jax.envs.render import Picture, min_image_size
from rlvlm_jax.envs.tasks import Task, get_task


@struct.dataclass
class CardEnvState(environment.EnvState):
    """Common fields: `time` (steps in this episode, as gymnax requires) and the current picture."""

    canvas: jax.Array


def select_logic(pred: jax.Array, on_true, on_false):
    """Field-wise select of two states, except the picture, which is taken from `on_false`."""
    values = {}
    for f in dataclasses.fields(on_false):
        a, b = getattr(on_true, f.name), getattr(on_false, f.name)
        values[f.name] = b if f.name == "canvas" else jnp.where(pred, a, b)
    return on_false.replace(**values)


_PICTURES: dict[tuple, Picture] = {}
STYLES = ("default", "original")


class CardEnv(environment.Environment):
    """Base class: subclasses define the rules (`_reset_logic`, `_step_logic`) and the picture.

    A task's class names its row of the task table, `class NumberLine(CardEnv, task="NumberLine")`,
    which sets `task_spec` and, from it, `task` (the name) and `action_strings`.

    Args:
      image_size: side of the square RGB uint8 picture (default: the table's, 300, the original's
        size).
      final_observation: declares that the caller reads `info["final_observation"]` (the
        truncation-bootstrapping rollouts check this flag). The key itself is always returned, as
        gymnax's own environments do, so gymnax's wrappers work on every card env: it holds the
        picture of the state the step reached before any auto-reset. It costs a second picture
        update only where it is used: inside an enclosing `jit` (a rollout `scan`) XLA drops it
        when nothing reads it; a top-level `env.step` call returns it, at the cost of one more
        picture per environment.
      style: "default" (our drawing, at any legible `image_size`) or "original" (gym_cards' own
        300 px pictures painted from its card images, `rlvlm_jax.envs.original_style`).
      card_images: with style="original", the original gym_cards checkout, package or `img`
        folder (NumberLine needs none).
    """

    task_spec: ClassVar[Task | None] = None  # this task's row of `rlvlm_jax.envs.tasks.TASKS`
    task: str = ""
    action_strings: tuple[str, ...] = ()
    smallest_font: float = 0.0  # smallest design-size font of the layout (for the legibility check)

    def __init_subclass__(cls, task: str | None = None, **kwargs):
        super().__init_subclass__(**kwargs)
        if task is not None:
            cls.task_spec = get_task(task)
            cls.task = cls.task_spec.name
            cls.action_strings = cls.task_spec.action_strings

    def __init__(self, image_size: int | None = None, final_observation: bool = False,
                 style: str = "default", card_images: str | None = None):
        if style not in STYLES:
            raise ValueError(f"{self.task}: style={style!r}; choose one of {STYLES}")
        if image_size is None and self.task_spec is not None:
            image_size = self.task_spec.image_size
        if not isinstance(image_size, int | np.integer) or isinstance(image_size, bool):
            raise TypeError(f"image_size must be an int, got {image_size!r}")
        folder = None
        if style == "original":
            if image_size != original_style.SIZE:
                raise ValueError(
                    f"{self.task}: style='original' draws the original's {original_style.SIZE} px "
                    f"pictures, not image_size={image_size}; leave image_size unset (the model's "
                    "preprocessing resizes frames to its input, as RL4VLM's CLIP processor did)")
            folder = original_style.find_card_images(card_images, self.task)
        key = (type(self), int(image_size), style, folder)
        if key not in _PICTURES:  # painting every variant takes a moment: once per task and size
            _PICTURES[key] = (self._build_picture(int(image_size)) if style == "default" else
                              original_style.build_picture(self.task, folder))
        self.picture = _PICTURES[key]
        self.style = style
        self.image_size = self.picture.size
        self.final_observation = bool(final_observation)

    @classmethod
    def min_image_size(cls) -> int:
        """The smallest `image_size` at which this task's text stays legible."""
        return min_image_size(cls.smallest_font)

    # ------------------------------------------------------------------------- subclass hooks
    def _build_picture(self, size: int) -> Picture:
        raise NotImplementedError

    def _reset_logic(self, key: jax.Array, params, canvas: jax.Array) -> CardEnvState:
        raise NotImplementedError

    def _step_logic(self, key, state, action, params):
        """Returns (next_state, reward, terminated, truncated) without touching the picture."""
        raise NotImplementedError

    def region_variants(self, state) -> dict[str, jax.Array]:
        """Which variant each picture region shows in `state` (jittable)."""
        raise NotImplementedError

    def text_fields(self, state) -> dict:
        """Host-side description of one (unbatched) state for prompts and demonstrations
        (`rlvlm_jax.envs.prompts`, `rlvlm_jax.envs.demonstrations`)."""
        raise NotImplementedError

    def text_fields_batch(self, states) -> list[dict]:
        """`text_fields` of every row of states with one leading batch axis (device or host).

        One device->host transfer of the logical fields (never the pictures), then numpy-only work
        per row, so a batch costs no per-row device calls; row i equals `text_fields(states[i])`.
        """
        names = [f.name for f in dataclasses.fields(states) if f.name != "canvas"]
        host = jax.device_get({name: getattr(states, name) for name in names})
        time = np.asarray(host["time"])
        if time.ndim != 1:
            raise ValueError(
                f"{self.task}: text_fields_batch needs states with exactly one leading batch axis "
                f"(state.time has shape {time.shape}); use text_fields for a single state, or "
                "reshape the batch to one axis first"
            )
        host = {name: np.asarray(value) for name, value in host.items()}
        cls = type(states)
        return [
            self.text_fields(cls(canvas=None, **{name: host[name][i] for name in names}))
            for i in range(time.shape[0])
        ]

    def oracle_action(self, key: jax.Array, state, params=None) -> jax.Array:
        """A strong (for NumberLine/EZPoints optimal) policy, jittable and vmappable."""
        raise NotImplementedError

    # ------------------------------------------------------------------------- picture
    def reference_picture(self, state) -> np.ndarray:
        """The host painter's picture of a (single, unbatched) state: what the device must draw."""
        return self.picture.paint_state(self.region_variants(state))

    # ------------------------------------------------------------------------- gymnax API
    @property
    def name(self) -> str:
        return self.task

    @property
    def num_actions(self) -> int:
        return len(self.action_strings)

    def action_space(self, params=None) -> spaces.Discrete:
        return spaces.Discrete(self.num_actions)

    @property
    def obs_shape(self) -> tuple[int, int, int]:
        """The picture's shape; gymnax's pixel envs carry it and its EvoJAX wrapper reads it."""
        return (self.image_size, self.image_size, 3)

    def observation_space(self, params=None) -> spaces.Box:
        return spaces.Box(0, 255, self.obs_shape, jnp.uint8)

    def reset_env(self, key, params):
        state = self._reset_logic(key, params, jnp.asarray(self.picture.background))
        state = state.replace(canvas=self.picture.draw(state.canvas, self.region_variants(state)))
        return state.canvas, state

    def step_env(self, key, state, action, params):
        """One transition without auto-reset (the gymnax hook; `step` below is what users call)."""
        nxt, reward, terminated, truncated = self._step_logic(key, state, action, params)
        nxt = nxt.replace(canvas=self.picture.draw(state.canvas, self.region_variants(nxt)))
        return nxt.canvas, nxt, reward, terminated, {"truncated": truncated}

    def get_obs(self, state, params=None, key=None):
        return state.canvas

    def is_terminated(self, state, params) -> jax.Array:
        raise NotImplementedError(f"{self.task} reports termination from step only")

    def step(self, key, state, action, params=None):
        """gymnax `step` (auto-reset; returns obs, state, reward, terminated, truncated, info).

        `info` holds `terminated`, `truncated`, `bad_action` and `final_observation` (the picture
        of the state the step reached, before any auto-reset).

        Concrete actions outside the action space raise ValueError here. Inside `jit`/`vmap` an
        out-of-range action cannot raise: that environment keeps its state, gets a NaN reward
        (which poisons any return or loss computed from it) and `info["bad_action"]` is True.
        """
        self.check_action(action)
        return self._step(key, state, action, params)

    def check_action(self, action) -> None:
        """Raise ValueError for a concrete action outside the action space (tracers pass)."""
        if isinstance(action, jax.core.Tracer):
            return
        a = np.asarray(action)
        if not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{self.task}: actions must be integers, got dtype {a.dtype}")
        if a.size and (a.min() < 0 or a.max() >= self.num_actions):
            raise ValueError(
                f"{self.task}: action {a.tolist()} is outside the action space "
                f"0..{self.num_actions - 1} ({', '.join(self.action_strings)})"
            )

    @functools.partial(jax.jit, static_argnames=("self",))
    def _step(self, key, state, action, params=None):
        return self.transition(key, state, action, params)[:6]

    def transition(self, key, state, action, params=None):
        """`step`'s body (traceable, no action check), also returning the state the step reached
        before any auto-reset (its `canvas` is stale: the picture of the state stepped from).

        Returns (obs, state, reward, terminated, truncated, info, reached). Wrappers that report
        on the finished episode (`rlvlm_jax.envs.original_info`) read `reached`.
        """
        if params is None:
            params = self.default_params
        key_step, key_reset = jax.random.split(key)
        action = jnp.asarray(action)
        bad = (action < 0) | (action >= self.num_actions)
        action = jnp.clip(action, 0, self.num_actions - 1).astype(jnp.int32)
        stepped, reward, terminated, truncated = self._step_logic(key_step, state, action, params)
        stepped = select_logic(bad, state, stepped)
        reward = jnp.where(bad, jnp.nan, reward).astype(jnp.float32)
        terminated = terminated & ~bad
        truncated = truncated & ~terminated & ~bad
        done = terminated | truncated
        fresh = self._reset_logic(key_reset, params, state.canvas)
        nxt = select_logic(done, fresh, stepped)
        info: dict[str, Any] = {
            "terminated": terminated,
            "truncated": truncated,
            "bad_action": bad,
            # Always present (gymnax's wrappers read it); XLA drops it when unused under jit.
            "final_observation": self.picture.draw(state.canvas, self.region_variants(stepped)),
        }
        canvas = self.picture.draw(state.canvas, self.region_variants(nxt))
        nxt = nxt.replace(canvas=canvas)
        return canvas, nxt, reward, terminated, truncated, info, stepped
