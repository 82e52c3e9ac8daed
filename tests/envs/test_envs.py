"""The gymnax contract, compiled use, invariants over 10^5 random steps, pictures and oracles."""

import os

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import rlvlm_jax.envs as envs
from rlvlm_jax.envs.play import make_play, oracle_policy, random_policy, summarize
from rlvlm_jax.envs.render import font

TASKS = list(envs.TASKS)
REWARDS = {
    "NumberLine": {-1.0, 0.0, 1.0},
    "EZPoints": {-1.0, 0.0, 10.0},
    "Points24": {-1.0, 0.0, 10.0},
    "Blackjack": {-1.0, 0.0, 1.0},
}
MAX_EPISODE = {"NumberLine": 10, "EZPoints": 7, "Points24": 22, "Blackjack": 23}


@pytest.fixture(scope="module", params=TASKS)
def env(request):
    return envs.make(request.param)[0]


# ----------------------------------------------------------------------------- construction
def test_created_by_name_through_gymnax_and_make():
    for task in TASKS:
        env, params = gymnax.make(f"{task}-v0")
        assert isinstance(env, envs.TASKS[task]) and params == env.default_params
        env2, _ = envs.make(task, image_size=128)
        assert env2.image_size == 128 and env2.observation_space(params).shape == (128, 128, 3)
        assert env2.action_space(params).n == len(env2.action_strings)


def test_bad_construction_errors():
    with pytest.raises(ValueError, match="unknown task 'Poker'.*NumberLine"):
        envs.make("Poker")
    with pytest.raises(ValueError, match="too small to draw Points24 legibly.*image_size >= "):
        envs.make("Points24", image_size=64)
    with pytest.raises(TypeError, match="image_size must be an int"):
        envs.make("NumberLine", image_size=128.0)
    envs.make("NumberLine", image_size=56)  # the smallest legible NumberLine picture


def test_action_outside_the_space(env):
    _, state = env.reset(jax.random.key(0))
    with pytest.raises(ValueError, match="outside the action space"):
        env.step(jax.random.key(1), state, env.num_actions)
    with pytest.raises(ValueError, match="outside the action space"):
        env.step(jax.random.key(1), state, -1)
    # Inside jit it cannot raise: the state is kept and the reward is NaN.
    step = jax.jit(env.step)
    _, nxt, reward, terminated, truncated, info = step(jax.random.key(1), state, env.num_actions)
    assert np.isnan(float(reward)) and bool(info["bad_action"])
    assert not bool(terminated) and not bool(truncated)
    assert int(nxt.time) == int(state.time)


# ------------------------------------------------------------------------- compiled behaviour
def test_jit_vmap_scan_determinism_and_auto_reset(env):
    params = env.default_params
    n, steps = 16, 30
    reset = jax.vmap(env.reset, in_axes=(0, None))
    step = jax.vmap(env.step, in_axes=(0, 0, 0, None))

    @jax.jit
    def run(key):
        _, state = reset(jax.random.split(key, n), params)

        def body(state, k):
            ka, ks = jax.random.split(k)
            action = jax.random.randint(ka, (n,), 0, env.num_actions)
            obs, nxt, reward, terminated, truncated, _ = step(
                jax.random.split(ks, n), state, action, params
            )
            return nxt, (obs, nxt.time, reward, terminated | truncated, nxt.canvas)

        return jax.lax.scan(body, state, jax.random.split(key, steps))

    final1, (obs1, time1, rew1, done1, canvas1) = run(jax.random.key(7))
    final2, (obs2, *_rest) = run(jax.random.key(7))
    _, (obs3, *_rest) = run(jax.random.key(8))
    np.testing.assert_array_equal(obs1, obs2)  # deterministic per key
    assert not np.array_equal(obs1, obs3)
    np.testing.assert_array_equal(obs1, canvas1)  # the observation is the carried picture
    done1, time1 = np.asarray(done1), np.asarray(time1)
    assert done1.any()
    assert np.all(time1[done1] == 0)  # auto-reset: a fresh episode starts at time 0
    assert np.all(time1[1:][~done1[1:]] == time1[:-1][~done1[1:]] + 1)


def test_auto_reset_state_is_a_reset_state(env):
    """After `done` the state equals `reset` under the step's reset key (gymnax's key split)."""
    params = env.default_params
    _, state = env.reset(jax.random.key(0))
    policy = jax.jit(env.oracle_action)
    for i in range(40):
        key = jax.random.key(100 + i)
        obs, nxt, _, terminated, truncated, _ = env.step(key, state, policy(key, state))
        if bool(terminated | truncated):
            _, key_reset = jax.random.split(key)
            expect_obs, expect = env.reset(key_reset, params)
            np.testing.assert_array_equal(obs, expect_obs)
            for a, b in zip(jax.tree.leaves(nxt), jax.tree.leaves(expect), strict=True):
                np.testing.assert_array_equal(a, b)
            return
        state = nxt
    pytest.fail("no episode ended in 40 oracle steps")


def test_log_wrapper_and_final_observation(env):
    from gymnax.wrappers.purerl import LogWrapper

    wrapped = LogWrapper(type(env)(final_observation=True))
    _, state = wrapped.reset(jax.random.key(0))
    step = jax.jit(wrapped.step)
    policy = jax.jit(env.oracle_action)
    for i in range(40):
        key = jax.random.key(i)
        action = policy(key, state.env_state)
        obs, nxt, _, terminated, truncated, info = step(key, state, action)
        if bool(terminated | truncated):
            assert bool(info["returned_episode"])
            final = np.asarray(info["final_observation"])
            assert not np.array_equal(final, np.asarray(obs))
            return
        np.testing.assert_array_equal(info["final_observation"], obs)
        state = nxt
    pytest.fail("no episode ended in 40 oracle steps")


# ------------------------------------------------ invariants (10^6 steps: test_env_scale, slow)
def test_random_play_invariants(env):
    """256 environments x 100 steps: rewards, lengths, states and pictures stay valid.

    Half the actions are uniformly random, half the oracle's, so that every outcome occurs."""
    rand, oracle = random_policy(env), oracle_policy(env)

    def policy(key, state):
        k_coin, k_act = jax.random.split(key)
        return jnp.where(jax.random.bernoulli(k_coin), rand(k_act, state), oracle(k_act, state))

    play = make_play(env, policy, num_envs=256, num_steps=100)
    stats, rewards, final = play(jax.random.key(11))
    rewards = np.asarray(rewards)
    assert set(np.unique(rewards).tolist()) <= REWARDS[env.task]
    assert set(np.unique(rewards).tolist()) == REWARDS[env.task]  # every outcome occurs
    assert int(stats["episodes"]) > 256
    assert 1 <= int(stats["max_length"]) <= MAX_EPISODE[env.task]
    state = jax.device_get(final)
    assert np.all(state.time >= 0) and np.all(state.time < MAX_EPISODE[env.task])
    if env.task == "NumberLine":
        assert np.all((0 <= state.position) & (state.position <= 5))
        assert np.all(state.position != state.goal)
    elif env.task in ("EZPoints", "Points24"):
        assert np.all((1 <= state.ranks) & (state.ranks <= 13))
        assert np.all(state.length <= env.max_tokens + 1)
        slots = np.arange(env.max_tokens + 1)
        assert np.all(state.formula[slots[None] >= state.length[:, None]] == 0)
        assert np.all(state.formula[slots[None] < state.length[:, None]] > 0)
    else:
        value = state.player_sum + 10 * (state.player_ace & (state.player_sum + 10 <= 21))
        assert np.all(value <= 21) and np.all(state.num_player_cards >= 2)
        assert np.all((state.player_ranks > 0).sum(1) == np.minimum(state.num_player_cards, 10))
    # Incremental pictures equal the host painter's pictures of the same states.
    for i in range(0, 256, 32):
        one = jax.tree.map(lambda x, i=i: x[i], final)
        np.testing.assert_array_equal(one.canvas, env.reference_picture(one))


# ----------------------------------------------------------------------------------- pictures
@pytest.mark.parametrize("size", [300, 160])
def test_pictures_equal_the_painter_and_differ_between_states(env, size):
    env = type(env)(image_size=size)
    keys = jax.random.split(jax.random.key(3), 6)
    obs, states = jax.vmap(env.reset)(keys)
    assert obs.shape == (6, size, size, 3) and obs.dtype == jnp.uint8
    pictures = []
    for i in range(6):
        one = jax.tree.map(lambda x, i=i: x[i], states)
        np.testing.assert_array_equal(obs[i], env.reference_picture(one))
        pictures.append(np.asarray(obs[i]))
    for i in range(6):
        for j in range(i):
            same_state = all(
                np.array_equal(a[i], a[j])
                for k, a in vars(jax.device_get(states)).items()
                if k not in ("canvas", "time")
            )
            assert same_state or not np.array_equal(pictures[i], pictures[j])


def test_numberline_digits_are_the_font_glyphs():
    """The drawn digit is DejaVu Sans Bold's glyph, pixel for pixel (black on white)."""
    env = envs.make("NumberLine")[0]
    _, state = env.reset(jax.random.key(0))
    draw = jax.jit(lambda s: env.picture.draw(s.canvas, env.region_variants(s)))
    region = {r.name: r for r in env.picture.regions}["current"]
    _, h, w, _ = region.tiles.shape
    fnt = font(36)
    for position in range(6):
        canvas = np.asarray(draw(state.replace(position=jnp.int32(position))))
        ink = 255 - canvas[region.y : region.y + h, region.x : region.x + w, 0].astype(int)
        mask = fnt.getmask(str(position))
        glyph = np.asarray(mask, np.uint8).reshape(mask.size[1], mask.size[0]).astype(int)
        ys, xs = np.nonzero(glyph.any(1))[0], np.nonzero(glyph.any(0))[0]
        glyph = glyph[ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1]  # the mask has blank margins
        gh, gw = glyph.shape
        found = [
            (dy, dx)
            for dy in range(h - gh + 1)
            for dx in range(w - gw + 1)
            if np.array_equal(ink[dy : dy + gh, dx : dx + gw], glyph)
        ]
        assert found and ink.sum() == glyph.sum(), f"digit {position} is not the font's glyph"


@pytest.mark.slow  # ~5 s; writes PNGs for a person to look at
def test_write_sample_pictures(tmp_path):
    """Writes PNGs a person can open (set RLVLM_SAMPLES_DIR to keep them)."""
    out = os.environ.get("RLVLM_SAMPLES_DIR") or str(tmp_path)
    os.makedirs(out, exist_ok=True)
    for task in TASKS:
        env = envs.make(task)[0]
        _, state = env.reset(jax.random.key(5))
        policy = jax.jit(env.oracle_action)
        step = jax.jit(env.step)
        for t in range(3):
            path = os.path.join(out, f"{task}_{t}.png")
            Image.fromarray(np.asarray(state.canvas)).save(path)
            with Image.open(path) as img:
                assert img.size == (300, 300) and img.mode == "RGB"
            _, state, *_ = step(jax.random.key(t), state, policy(jax.random.key(t), state))
    assert len([f for f in os.listdir(out) if f.endswith(".png")]) >= 12


# ------------------------------------------------------------------------------------ oracles
@pytest.mark.parametrize(
    "task,num_envs,steps,expected,tolerance",
    [
        ("NumberLine", 512, 12, 1.0, 0.0),
        ("EZPoints", 512, 6, 1.0, 0.0),
        ("Points24", 2048, 14, 20876 / 28561, 0.035),  # the share of solvable hands
        ("Blackjack", 4096, 10, 0.4295, 0.025),  # basic strategy's exact win rate
    ],
)
def test_oracle_success_rates(task, num_envs, steps, expected, tolerance):
    env = envs.make(task, image_size=envs.TASKS[task].min_image_size())[0]
    stats, _, _ = make_play(env, oracle_policy(env), num_envs, steps)(jax.random.key(1))
    summary = summarize(stats)
    assert summary["first_episodes"] == num_envs
    assert summary["first_episode_success_rate"] == pytest.approx(expected, abs=tolerance)
    if task in ("NumberLine", "EZPoints"):
        assert summary["success_rate"] == 1.0
