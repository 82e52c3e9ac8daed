"""The original gym_cards picture style (`rlvlm_jax.envs.original_style`).

Always: the device pictures equal the host painter's (which follows the original's drawing code)
on card images made in the test, and bad card folders are refused by name. Where the original
gym_cards is installed: our pictures against the original's own renderer for the same logical
state (the issue's bound: mean absolute difference <= 2/255).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from rlvlm_jax import envs
from rlvlm_jax.envs import formula as F
from rlvlm_jax.envs import original_style as S

TASKS = ("NumberLine", "EZPoints", "Points24", "Blackjack")


@pytest.fixture(scope="module")
def fake_cards(tmp_path_factory):
    """A gym_cards-like package folder with img/: 53 RGBA PNGs of random colours and sizes."""
    root = tmp_path_factory.mktemp("gym_cards")
    img = root / "img"
    img.mkdir()
    rng = np.random.default_rng(0)
    for name in S.needed_images("Blackjack"):
        h, w = rng.integers(60, 120), rng.integers(40, 90)
        pixels = rng.integers(0, 256, size=(h, w, 4), dtype=np.uint8)
        pixels[:4, :4, 3] = 0  # transparent corners, as the real cards have
        Image.fromarray(pixels, "RGBA").save(img / f"{name}.png")
    return str(root)


def _roll(env, params, steps=14, batch=12, seed=0):
    """States and observations of a random-action rollout with auto-reset."""
    step = jax.jit(jax.vmap(env.step, in_axes=(0, 0, 0, None)))
    keys = jax.random.split(jax.random.key(seed), batch)
    obs, state = jax.vmap(env.reset, in_axes=(0, None))(keys, params)
    out = [(obs, state)]
    for t in range(steps):
        k_act, k_step = jax.random.split(jax.random.key(seed * 1000 + t))
        if env.task in ("EZPoints", "Points24"):  # mostly tokens, so formulas grow long
            action = jax.random.randint(k_act, (batch,), 0, env.num_actions - 1)
            action = jnp.where(jax.random.uniform(k_act, (batch,)) < 0.08, env.num_actions - 1,
                               action)
        else:
            action = jax.random.randint(k_act, (batch,), 0, env.num_actions)
        obs, state, *_ = step(jax.random.split(k_step, batch), state, action, params)
        out.append((obs, state))
    return out


def _rows(rollout):
    for obs, state in rollout:
        for i in range(obs.shape[0]):
            yield np.asarray(obs[i]), jax.tree.map(lambda x, i=i: x[i], state)


@pytest.mark.parametrize("task", [
    "NumberLine", "Points24",  # Points24 has the text run and every card region kind
    pytest.param("EZPoints", marks=pytest.mark.slow),
    pytest.param("Blackjack", marks=pytest.mark.slow),
])
def test_device_pictures_equal_the_painter(task, fake_cards):
    env, params = envs.make(task, style="original", card_images=fake_cards)
    assert env.obs_shape == (300, 300, 3)
    longest = 0
    # Points24 needs long episodes to reach long formulas; the others show all they draw sooner.
    size = dict(steps=14, batch=6) if task == "Points24" else dict(steps=6, batch=6)
    for obs, state in _rows(_roll(env, params, **size)):
        np.testing.assert_array_equal(obs, env.reference_picture(state))
        longest = max(longest, int(getattr(state, "length", 0)))
    if task == "Points24":
        assert longest >= 12  # the formula line was exercised well past its first tokens


def test_formula_line_follows_the_text_before_it(fake_cards):
    """A wide token moves every later one: "10 + 1" vs "1 + 1" differ right of the first token."""
    env, _ = envs.make("Points24", style="original", card_images=fake_cards)
    paint = env.picture.paint
    base = {f"card{i}": 0 for i in range(4)}
    wide = paint({**base, "formula": (10, F.PLUS, 1)})
    narrow = paint({**base, "formula": (1, F.PLUS, 1)})
    run = env.picture.runs[0]
    cols = np.nonzero((wide != narrow).any(axis=(0, 2)))[0]
    assert cols.size and cols.max() > 30  # the "+" and the last "1" moved, not just the first
    draw = jax.jit(lambda c, n: env.picture.draw(jnp.asarray(env.picture.background),
                                                 {**base, "formula": (c, n)}))
    codes = np.zeros(22, np.int32)
    codes[:3] = (10, F.PLUS, 1)
    np.testing.assert_array_equal(np.asarray(draw(codes, 3)), wide)
    assert run.y > 200  # the token line, below the cards


def test_bad_card_folders_are_refused_by_name(fake_cards, tmp_path):
    with pytest.raises(ValueError, match="card_images=<an RL4VLM checkout"):
        envs.make("EZPoints", style="original")
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        envs.make("EZPoints", style="original", card_images=str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match=r"no card images \(\*\.png\)"):
        envs.make("Points24", style="original", card_images=str(tmp_path))
    partial = tmp_path / "img"
    partial.mkdir()
    for name in S.needed_images("Blackjack"):
        if name not in ("HQ", "card"):
            src = os.path.join(fake_cards, "img", f"{name}.png")
            os.symlink(src, partial / f"{name}.png")
    with pytest.raises(FileNotFoundError, match=r"incomplete: missing HQ\.png \("):
        envs.make("EZPoints", style="original", card_images=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"missing HQ\.png, card\.png"):
        envs.make("Blackjack", style="original", card_images=str(tmp_path))
    envs.make("NumberLine", style="original")  # draws text only: no images needed
    with pytest.raises(ValueError, match="draws the original's 300 px pictures, not "
                                         "image_size=112"):
        envs.make("NumberLine", style="original", image_size=112)
    with pytest.raises(ValueError, match="style='gym'; choose one of"):
        envs.make("NumberLine", style="gym")


# ------------------------------------------------------------------ against the original
def _original_picture(task, orig_envs, env, state):
    """The original gym_cards renderer's picture of our logical state."""
    f = env.text_fields(state)
    if task == "NumberLine":
        e = orig_envs["NumberLine"]
        e.goal_position, e.position = f["goal"], f["position"]
        return e._get_observation()
    if task == "Blackjack":
        e = orig_envs["Blackjack"]
        name = S.card_name
        dealer = int(S.NUM_CARDS and (int(state.dealer_rank) - 1) * 4 + int(state.dealer_suit))
        e.dealer = [(0, name(dealer)[1:], name(dealer)[0]), (0, "2", "H")]
        n = int(state.num_player_cards)
        ids = (np.asarray(state.player_ranks)[:n] - 1) * 4 + np.asarray(state.player_suits)[:n]
        e.player = [(0, name(int(v))[1:], name(int(v))[0]) for v in ids]
        return e._get_obs()
    from gym_cards.envs.points import get_image

    e = orig_envs[task]
    ids = (np.asarray(state.ranks) - 1) * 4 + np.asarray(state.suits)
    e.cards = [S.card_name(int(v)) for v in ids]
    e.card_imgs = [get_image(c).resize((e.card_width, e.card_height)) for c in e.cards]
    e.formula = [int(t) if t.strip() and t.isdigit() else t for t in f["formula"]]
    return e._get_observation()


@pytest.mark.parametrize("task", TASKS)
def test_pictures_match_the_original_renderer(task):
    gym_cards = pytest.importorskip(
        "gym_cards", reason="the original gym_cards is not installed (pip install -e "
        "<RL4VLM>/gym-cards); the comparison with its renderer runs only where it is")
    import gymnasium

    orig_envs = {t: gymnasium.make(f"gym_cards/{t}-v0").unwrapped for t in TASKS}
    for e in orig_envs.values():
        e.reset(seed=0)
    folder = os.path.dirname(gym_cards.__file__)
    env, params = envs.make(task, style="original", card_images=folder)
    diffs, shown = [], set()
    for obs, state in _rows(_roll(env, params, steps=8, batch=4, seed=1)):
        ref = _original_picture(task, orig_envs, env, state)
        diffs.append(np.abs(obs.astype(np.int32) - ref.astype(np.int32)).mean())
        shown.add(ref.tobytes())
    assert len(shown) >= 8  # the states drew different pictures (not a vacuous match)
    print(f"{task}: mean |ours - original| = {np.mean(diffs):.4f}/255 (max over "
          f"{len(diffs)} states {np.max(diffs):.4f}/255)")
    assert np.max(diffs) <= 2.0


# ------------------------------------------------------------------ through the builder
@pytest.mark.parametrize("compile_rollout", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_a_run_with_the_original_style(fake_cards, tmp_path, compile_rollout):
    """config.env.style="original": the env draws 300 px, the tower keeps config.image_size
    (preprocessing resizes rollout frames; SFT demonstrations are resized once), and a missing
    card folder is refused by validate_config before anything is built."""
    import ml_collections

    from rlvlm_jax.build import build, validate_config
    from tests.rl.test_sft import load_config

    c = load_config()
    c.task = "EZPoints"
    c.max_new_tokens = 4
    c.ppo.num_envs, c.ppo.num_steps, c.ppo.minibatches, c.ppo.micro_batches = 2, 1, 1, 1
    c.fast_compile = True
    c.env = ml_collections.ConfigDict({"style": "original", "card_images": str(tmp_path)})
    with pytest.raises(FileNotFoundError, match=r"EZPoints: no card images"):
        validate_config(c)
    c.env.card_images = fake_cards
    run = build(c, str(tmp_path / "run"))
    assert run.env.style == "original" and run.env.image_size == 300 != c.image_size
    demos, _ = run.demonstrations(4, jax.random.key(0), 0.0)
    assert demos.images.shape == (4, c.image_size, c.image_size, 3)
    assert run.reset_envs(jax.random.key(1)).state.canvas.shape == (2, 300, 300, 3)
    if compile_rollout:  # the tower's input differs from the frames: preprocessing resizes
        carry = run.reset_envs(jax.random.key(1))
        _, traj, _ = run.rollout(run.init_params, carry, jax.random.key(2), jnp.float32(1.0))
        assert traj.frames.shape == (1, 2, 300, 300, 3)
