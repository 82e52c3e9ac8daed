"""Every wrapper gymnax 1.0.1 ships works on the card envs made with default arguments.

gymnax's wrappers assume its envs' info, which always carries "final_observation"; ours now does
too. Each wrapper gets a reset and a few jitted, vmapped steps (the OOP gym wrappers: their own
loop) in which episodes end, so the auto-reset and the pre-reset picture are exercised. The default
run stacks the four gymnax-API wrappers (flatten, sticky, log, dm_env) on every env and runs the
others on NumberLine (each wrapper is one more compile of an env step, about a second);
`-m slow` runs every wrapper on every env on its own.
"""

import ast
import dataclasses
import functools
import importlib.util
import os
import sys
import types
from typing import Any

import gymnax
import gymnax.wrappers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct
from gymnax.wrappers.compat import LegacyStepAPIWrapper
from gymnax.wrappers.dm_env import GymnaxToDmEnvWrapper
from gymnax.wrappers.gym import GymnaxToGymWrapper, GymnaxToVectorGymWrapper
from gymnax.wrappers.purerl import FlattenObservationWrapper, LogWrapper, StickyActionWrapper

import rlvlm_jax.envs as envs

FAST_COMPILE = {"xla_backend_optimization_level": 0}  # integer games: same results, faster compile
B, STEPS = 4, 3
# The last step's action ends every episode still running (NumberLine: its params truncate at 2).
ENDING = {"NumberLine": 1, "EZPoints": 12, "Points24": 16, "Blackjack": 0}
WRAPPER_DIR = os.path.dirname(gymnax.wrappers.__file__)


def small_env(task):
    return envs.make(task, image_size=envs.TASKS[task].min_image_size())


def params_of(task, env_params):
    """NumberLine truncates after 2 steps so that its episodes end within the few steps."""
    return env_params.replace(max_steps_in_episode=2) if task == "NumberLine" else env_params


def actions(task, num_actions, i):
    if i == STEPS - 1:
        return np.full((B,), ENDING[task], np.int32)
    return np.random.default_rng(100 + i).integers(0, num_actions, B).astype(np.int32)


def keys(i):
    return jax.random.split(jax.random.key(i), B)


def gymnax_api_run(task, wrapped, params):
    """Reset and STEPS jitted vmapped steps of a wrapper with gymnax's (obs, state, ...) API."""
    reset = jax.jit(jax.vmap(wrapped.reset, in_axes=(0, None)), compiler_options=FAST_COMPILE)
    step = jax.jit(jax.vmap(wrapped.step, in_axes=(0, 0, 0, None)), compiler_options=FAST_COMPILE)
    obs, state = reset(keys(0), params)
    outs = [obs]
    for i in range(STEPS):
        out = step(keys(i + 1), state, actions(task, wrapped.num_actions, i), params)
        state = out[1]
        outs.append(out)
    return jax.device_get(outs)


def check_final_observation(obs, final, done):
    """The pre-reset picture: the observation while an episode runs, another one after it ends."""
    np.testing.assert_array_equal(final[~done], obs[~done])
    assert done.any() and not np.array_equal(final[done], obs[done])


# ---------------------------------------------------------------------------- the runners
def run_flatten(task, env, params):
    out = gymnax_api_run(task, FlattenObservationWrapper(env), params)
    size = int(np.prod(env.obs_shape))
    assert out[0].shape == (B, size)
    done = np.zeros(B, bool)
    for obs, _, _, terminated, truncated, info in out[1:]:
        assert obs.shape == info["final_observation"].shape == (B, size)
        if (terminated | truncated).any():
            check_final_observation(obs, info["final_observation"], terminated | truncated)
        done |= terminated | truncated
    assert done.all()


def run_log(task, env, params):
    out = gymnax_api_run(task, LogWrapper(env), params)
    total = np.zeros(B)
    for _, _, reward, terminated, truncated, info in out[1:]:
        total += reward
        done = terminated | truncated
        np.testing.assert_array_equal(info["returned_episode"], done)
        np.testing.assert_allclose(info["returned_episode_returns"][done], total[done])
        total[done] = 0.0
    assert out[-1][5]["returned_episode_valid"].all()


def run_sticky(task, env, params):
    out = gymnax_api_run(task, StickyActionWrapper(env, sticky_action_prob=0.5), params)
    for _, state, reward, *_ in out[1:]:
        assert state.last_action.dtype == np.int32 and np.isfinite(reward).all()
        assert np.all((state.last_action >= 0) & (state.last_action < env.num_actions))


def run_legacy(task, env, params):
    out = gymnax_api_run(task, LegacyStepAPIWrapper(env), params)
    for step in out[1:]:
        assert len(step) == 5  # obs, state, reward, done, info
        np.testing.assert_array_equal(
            step[3], step[4]["terminated"] | step[4]["truncated"]
        )


def run_dm_env(task, env, params):
    wrapped = GymnaxToDmEnvWrapper(env)
    reset = jax.jit(jax.vmap(wrapped.reset, in_axes=(0, None)), compiler_options=FAST_COMPILE)
    step = jax.jit(jax.vmap(wrapped.step, in_axes=(0, 0, 0, None)), compiler_options=FAST_COMPILE)
    timestep = reset(keys(0), params)
    ended = np.zeros(B, bool)
    for i in range(STEPS):
        timestep = step(keys(i + 1), timestep, actions(task, env.num_actions, i), params)
        ts = jax.device_get(timestep)
        assert ts.observation.shape == ts.final_observation.shape == (B,) + env.obs_shape
        done = ts.state.time == 0  # a fresh episode started: the previous one ended
        if done.any():
            check_final_observation(ts.observation, ts.final_observation, done)
        ended |= done
    assert ended.all()


def run_brax(task, env, params):
    module = wrapper_module("brax")
    wrapped = module.GymnaxToBraxWrapper(env)
    reset = jax.jit(jax.vmap(wrapped.reset, in_axes=(0, None)), compiler_options=FAST_COMPILE)
    step = jax.jit(jax.vmap(wrapped.step, in_axes=(0, 0, None)), compiler_options=FAST_COMPILE)
    state = reset(keys(0), params)
    ended = np.zeros(B, bool)
    for i in range(STEPS):
        state = step(state, actions(task, env.num_actions, i), params)
        s = jax.device_get(state)
        assert s.obs.shape == s.info["final_observation"].shape == (B,) + env.obs_shape
        if s.done.any():
            check_final_observation(s.obs, s.info["final_observation"], s.done)
        ended |= s.done
    assert ended.all()


def run_gym(task, env, params):
    wrapped = GymnaxToGymWrapper(env, params=params, seed=0)
    obs, _ = wrapped.reset(seed=1)
    assert wrapped.observation_space.shape == obs.shape == env.obs_shape
    ended = False
    for i in range(STEPS):
        obs, reward, terminated, truncated, info = wrapped.step(
            int(actions(task, env.num_actions, i)[0])
        )
        assert np.isfinite(float(reward)) and info["final_observation"].shape == env.obs_shape
        if bool(terminated | truncated):
            ended = True
            assert not np.array_equal(np.asarray(info["final_observation"]), np.asarray(obs))
    assert ended


def run_vector_gym(task, env, params):
    wrapped = GymnaxToVectorGymWrapper(env, num_envs=B, params=params, seed=0)
    obs, _ = wrapped.reset(seed=1)
    assert obs.shape == wrapped.observation_space.shape == (B,) + env.obs_shape
    ended = np.zeros(B, bool)
    for i in range(STEPS):
        obs, reward, terminated, truncated, info = jax.device_get(
            wrapped.step(actions(task, env.num_actions, i))
        )
        done = terminated | truncated
        if done.any():
            check_final_observation(obs, info["final_observation"], done)
        ended |= done
    assert ended.all()


def run_evojax(task, env, params):
    module = wrapper_module("evojax")
    max_steps = params.max_steps_in_episode if task == "NumberLine" else 1000
    wrapped = module.GymnaxToEvoJaxTask(envs.GYMNAX_IDS[task], max_steps=max_steps)
    assert wrapped.obs_shape == (300, 300, 3) and wrapped.num_actions == env.num_actions
    state = wrapped.reset(keys(0))
    ended = np.zeros(B, bool)
    for i in range(STEPS):
        state, reward, done = wrapped.step(state, jnp.asarray(actions(task, env.num_actions, i)))
        assert state.obs.shape == (B, 300, 300, 3) and np.isfinite(np.asarray(reward)).all()
        ended |= np.asarray(done)
    assert ended.all()


RUNNERS = {
    "FlattenObservationWrapper": run_flatten,
    "LogWrapper": run_log,
    "StickyActionWrapper": run_sticky,
    "LegacyStepAPIWrapper": run_legacy,
    "GymnaxToDmEnvWrapper": run_dm_env,
    "GymnaxToBraxWrapper": run_brax,
    "GymnaxToGymWrapper": run_gym,
    "GymnaxToVectorGymWrapper": run_vector_gym,
    "GymnaxToEvoJaxTask": run_evojax,
}


# ------------------------------------------- brax and evojax: the real ones or stand-ins
@struct.dataclass
class _BraxState:  # brax.envs.State's fields
    pipeline_state: Any
    obs: jax.Array
    reward: jax.Array
    done: jax.Array
    metrics: dict = dataclasses.field(default_factory=dict)
    info: dict = dataclasses.field(default_factory=dict)


@struct.dataclass
class _TaskState:  # evojax.task.base.TaskState
    obs: jax.Array


def _stand_ins() -> dict[str, types.ModuleType]:
    modules = {n: types.ModuleType(n) for n in ("brax", "brax.envs", "evojax", "evojax.task",
                                                "evojax.task.base")}
    modules["brax.envs"].Env = type("Env", (), {})
    modules["brax.envs"].State = _BraxState
    modules["brax"].envs = modules["brax.envs"]
    modules["evojax.task.base"].TaskState = _TaskState
    modules["evojax.task.base"].VectorizedTask = type("VectorizedTask", (), {})
    modules["evojax"].task = modules["evojax.task"]
    modules["evojax.task"].base = modules["evojax.task.base"]
    return modules


@functools.cache
def wrapper_module(name: str) -> types.ModuleType:
    """gymnax.wrappers.brax / .evojax. When brax / evojax is not installed (neither is a
    dependency: brax alone is hundreds of MB) the module's two imported base classes are stand-ins
    with the real ones' fields, so the wrapper's own code still runs on our envs."""
    real = {"brax": "brax", "evojax": "evojax"}[name]
    if importlib.util.find_spec(real) is not None:
        return importlib.import_module(f"gymnax.wrappers.{name}")
    spec = importlib.util.spec_from_file_location(
        f"_gymnax_wrappers_{name}", os.path.join(WRAPPER_DIR, f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    stand_ins = _stand_ins()
    saved = {n: sys.modules.get(n) for n in stand_ins}
    sys.modules.update(stand_ins)
    try:
        spec.loader.exec_module(module)
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m
    return module


# ------------------------------------------------------------------------------------- tests
def test_every_wrapper_gymnax_ships_is_tested():
    shipped = set()
    for file in sorted(os.listdir(WRAPPER_DIR)):
        if file.endswith(".py"):
            tree = ast.parse(open(os.path.join(WRAPPER_DIR, file)).read())
            shipped |= {
                n.name
                for n in tree.body
                if isinstance(n, ast.ClassDef)
                and n.name.endswith(("Wrapper", "Task"))
                and n.name != "GymnaxWrapper"  # the base class
            }
    assert shipped == set(RUNNERS)


def test_default_envs_always_return_the_final_observation():
    """The key is there without `final_observation=True`, with the same pictures as with it."""
    plain, params = envs.make("NumberLine", image_size=56)
    flagged, _ = envs.make("NumberLine", image_size=56, final_observation=True)
    params = params_of("NumberLine", params)
    _, state = plain.reset(jax.random.key(0), params)
    for i in range(2):
        a = plain.step(jax.random.key(i), state, 1, params)
        b = flagged.step(jax.random.key(i), state, 1, params)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            np.testing.assert_array_equal(x, y)
        state = a[1]
    assert bool(a[3] | a[4])  # params end the episode by step 2
    assert not np.array_equal(a[5]["final_observation"], a[0])


STACKED = ("FlattenObservationWrapper", "StickyActionWrapper", "LogWrapper", "GymnaxToDmEnvWrapper")


@pytest.mark.parametrize("task", list(envs.TASKS))
def test_gymnax_api_wrappers_stacked_on_every_env(task):
    """Flatten, sticky actions, logging and dm_env in one stack: one compile per env. (A sticky
    replay may skip the ending action, so not every env need end here.)"""
    env, params = small_env(task)
    stack = GymnaxToDmEnvWrapper(
        LogWrapper(StickyActionWrapper(FlattenObservationWrapper(env), sticky_action_prob=0.25))
    )
    run_dm_env_flat(task, stack, env, params_of(task, params))


@pytest.mark.parametrize("wrapper", [w for w in RUNNERS if w not in STACKED])
def test_other_wrappers_on_numberline(wrapper):
    env, params = small_env("NumberLine")
    RUNNERS[wrapper]("NumberLine", env, params_of("NumberLine", params))


def run_dm_env_flat(task, stack, env, params):
    reset = jax.jit(jax.vmap(stack.reset, in_axes=(0, None)), compiler_options=FAST_COMPILE)
    step = jax.jit(jax.vmap(stack.step, in_axes=(0, 0, 0, None)), compiler_options=FAST_COMPILE)
    timestep = reset(keys(0), params)
    ended = np.zeros(B, bool)
    size = int(np.prod(env.obs_shape))
    for i in range(STEPS):
        timestep = step(keys(i + 1), timestep, actions(task, env.num_actions, i), params)
        ts = jax.device_get(timestep)
        assert ts.observation.shape == ts.final_observation.shape == (B, size)
        done = ts.state.env_state.env_state.time == 0  # Log(Sticky(...)) states inside
        if done.any():
            check_final_observation(ts.observation, ts.final_observation, done)
            assert np.all(ts.state.returned_episode_valid[done])
        ended |= done
    assert ended.any()


@pytest.mark.slow
@pytest.mark.parametrize("wrapper", list(RUNNERS))
@pytest.mark.parametrize("task", list(envs.TASKS))
def test_every_wrapper_on_every_env(task, wrapper):
    env, params = small_env(task)
    RUNNERS[wrapper](task, env, params_of(task, params))
