"""The host-environment adapter (`envs.host`, `rl.host_rollout`): gymnasium environments train
with the same PPO loop as the jitted card tasks.

- bad input (a non-picture observation, an action space that does not fit the task spec, an
  over-long prompt, SFT without demonstrations) is refused before anything compiles;
- a toy gymnasium env written here (a red or blue square; naming its colour pays) improves its
  reward in a seconds-scale training run through `build` and `train`;
- on NumberLine the adapter's batches equal the jitted env's: a gymnasium NumberLine written here
  (the original's rules, our pictures) gives the same whole trajectories as the jitted
  `rollout.Actor` for the same policy and keys, and the original gym_cards NumberLine (when
  installed) the same rewards, terminations, truncations and states for the same actions;
- a resumed host run resets its environments and goes on.
"""

import contextlib
import io
import os

import gymnasium
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from gymnasium import spaces

import rlvlm_jax.envs as envs
from rlvlm_jax import train as train_lib
from rlvlm_jax.build import build, validate_config
from rlvlm_jax.envs import host as host_lib
from rlvlm_jax.rl import policy as policy_lib
from rlvlm_jax.rl import sft_data
from rlvlm_jax.rl.host_rollout import HostActor
from rlvlm_jax.rl.rollout import Actor
from rlvlm_jax.text import tokenizer as tokenizer_lib
from rlvlm_jax.text.prompt_encoder import PromptEncoder, prompt_text
from rlvlm_jax.text.tokenizer import encode_prompts
from tests.rl.test_sft import init_policy, load_config

HERE = "tests.envs.test_host_adapter"
FAST = {"xla_backend_optimization_level": 0}  # compile time dominates these tests
SIZE = 56  # picture side (the test config's)
COLOURS = ("red", "blue")
ACTIONS = ("r", "b")  # the answer is the colour's first letter (a two-token answer with EOS)
RGB = {"red": (220, 30, 30), "blue": (30, 30, 220)}
PROMPT = "USER: <image>\nWhich colour? ASSISTANT:"


# ------------------------------------------------------------------------------- the toy env
def paint(colour: str, size: int = SIZE) -> np.ndarray:
    img = np.full((size, size, 3), 255, np.uint8)
    q = size // 4
    img[q : size - q, q : size - q] = RGB[colour]
    return img


class ColourEnv(gymnasium.Env):
    """A red or blue square; action 0 ("r", red) or 1 ("b", blue): +1 for naming the colour,
    then the episode ends. With `text`, a Dict observation whose text counts the episodes."""

    def __init__(self, text: bool = False, size: int = SIZE):
        self.text, self.size = text, size
        picture = spaces.Box(0, 255, (size, size, 3), np.uint8)
        charset = "abcdefghijklmnopqrstuvwxyz0123456789 "
        self.observation_space = (
            spaces.Dict({"image": picture, "text": spaces.Text(40, charset=charset)})
            if text
            else picture
        )
        self.action_space = spaces.Discrete(2)
        self.colour, self.episodes = 0, 0

    def _obs(self):
        image = paint(COLOURS[self.colour], self.size)
        return {"image": image, "text": f"episode {self.episodes}"} if self.text else image

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.colour = int(self.np_random.integers(2))
        self.episodes += 1
        return self._obs(), {}

    def step(self, action):
        reward = float(int(action) == self.colour)
        return self._obs(), reward, True, False, {}


def colour_demonstrations(num, key, wrong_share):
    """SFT records: the colour's picture and an answer naming it, or the other colour."""
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())
    colours = rng.integers(0, 2, num)
    wrong = rng.random(num) < wrong_share
    actions = np.where(wrong, 1 - colours, colours).astype(np.int32)
    return sft_data.Demonstrations(
        images=np.stack([paint(COLOURS[c]) for c in colours]),
        prompts=[PROMPT] * num,
        responses=[ACTIONS[a] for a in actions],
        actions=actions,
        oracle_actions=colours.astype(np.int32),
    )


def colour_spec(config=None):
    return host_lib.HostTaskSpec(
        name="ColourToy",
        make_env=ColourEnv,
        action_strings=ACTIONS,
        prompt=PROMPT,
        demonstrations=colour_demonstrations,
    )


def text_colour_spec(config=None):
    return host_lib.HostTaskSpec(
        name="ColourToy",
        make_env=lambda: ColourEnv(text=True),
        action_strings=ACTIONS,
        prompt=lambda text: f"USER: <image>\n{text}: which colour? ASSISTANT:",
        image_key="image",
        text_key="text",
        max_prompt_tokens=24,
    )


class VectorObsEnv(ColourEnv):
    def __init__(self):
        super().__init__()
        self.observation_space = spaces.Box(-1.0, 1.0, (4,), np.float32)


class ThreeActionEnv(ColourEnv):
    def __init__(self):
        super().__init__()
        self.action_space = spaces.Discrete(3)


def vector_obs_spec(config=None):
    return host_lib.HostTaskSpec("ColourToy", VectorObsEnv, ACTIONS, PROMPT, demonstrations=None)


def three_action_spec(config=None):
    return host_lib.HostTaskSpec("ColourToy", ThreeActionEnv, ACTIONS, PROMPT)


def toy_config(tok_dir: str, spec: str = "colour_spec") -> ml_collections.ConfigDict:
    c = load_config()
    c.task = "ColourToy"
    c.env = ml_collections.ConfigDict({"kind": "host", "host": f"{HERE}:{spec}"})
    c.tokenizer.path = tok_dir
    c.cot = False
    c.max_new_tokens = 2  # a letter and EOS
    c.sft.steps = 60
    c.sft.lr = 1e-2
    c.sft.batch_size = 16
    c.sft.num_demos = 256
    c.sft.eval_every = 0  # no greedy SFT evaluation (saves a compilation)
    c.sft.wrong_share = 0.5  # the SFT policy names either colour: PPO has to learn which
    c.ppo.iterations = 12
    c.ppo.num_envs = 32
    c.ppo.num_steps = 1  # one-step episodes
    c.ppo.epochs = 2
    c.ppo.minibatches = 2
    c.ppo.micro_batches = 1
    c.ppo.lr = 3e-3
    c.ppo.lr_end = 1e-3
    c.ppo.freeze_vision = False  # SFT on coin-flip answers taught the tower nothing to keep
    c.ppo.thought_lambda = 1.0
    c.ppo.action_only = True
    c.eval.episodes = 32  # = num_envs: the evaluation reuses the rollout's compiled step
    c.eval.max_steps = 1
    c.checkpoint_every = 6  # the resume test stops at 6 and goes on from there
    c.log_every = 4
    return c


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tok"))
    tokenizer_lib.get_tokenizer(load_config().tokenizer, path).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tok(tok_dir):
    return tokenizer_lib.load_tokenizer(tok_dir)


# ------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "spec, message",
    [
        ("vector_obs_spec", "is not a uint8 picture of shape \\(H, W, 3\\).*ObservationWrapper"),
        ("three_action_spec", "Discrete\\(3\\) does not match the task spec.*need Discrete\\(2\\)"),
        ("no_such_spec", "has no 'no_such_spec'"),
    ],
)
def test_bad_envs_are_refused_before_anything_compiles(tok_dir, spec, message):
    c = toy_config(tok_dir, spec)
    c.sft.steps = 0
    with pytest.raises(ValueError, match=message):
        validate_config(c)


def test_dict_observations_need_the_picture_key():
    spec = host_lib.HostTaskSpec("T", lambda: ColourEnv(text=True), ACTIONS, PROMPT)
    with pytest.raises(ValueError, match="Dict \\['image', 'text'\\]; set the spec's image_key"):
        host_lib.check_env(spec)
    spec = host_lib.HostTaskSpec(
        "T", lambda: ColourEnv(text=True), ACTIONS, PROMPT, image_key="text"
    )
    with pytest.raises(ValueError, match="observation\\['text'\\] = Text.* is not a Box"):
        host_lib.check_env(spec)
    host_lib.check_env(text_colour_spec())  # the right keys pass


@pytest.mark.parametrize(
    "actions, message",
    [
        (("Red", "blue"), "lower-case ASCII"),
        (("go 1", "go 10"), "'go 1' occurs inside 'go 10'"),
        (("red", "red"), "repeat"),
    ],
)
def test_bad_action_strings(actions, message):
    with pytest.raises(ValueError, match=message):
        host_lib.HostTaskSpec("T", ColourEnv, actions, PROMPT)


def test_a_prompt_function_needs_a_length():
    with pytest.raises(ValueError, match="needs max_prompt_tokens"):
        host_lib.HostTaskSpec("T", ColourEnv, ACTIONS, lambda text: PROMPT)


def test_task_name_and_sft_data_are_checked(tok_dir):
    c = toy_config(tok_dir)
    c.task = "NumberLine"
    with pytest.raises(ValueError, match="not the host task's name 'ColourToy'"):
        validate_config(c)
    c = toy_config(tok_dir, "text_colour_spec")  # its spec has no demonstrations
    with pytest.raises(ValueError, match="--config.sft.json=FILE, or set --config.sft.steps=0"):
        validate_config(c)
    c.sft.steps = 0
    validate_config(c)
    with pytest.raises(ValueError, match="planner does not take host environments"):
        validate_config(c, abstract=True)


def test_over_long_prompts_are_refused(tok_dir, tok):
    c = toy_config(tok_dir)
    c.model.max_positions = 24  # 16 image tokens + 2 new tokens leave 6 for the prompt's text
    with pytest.raises(ValueError, match="exceeds the model's 24 positions"):
        build(c)
    prompts = host_lib.HostPrompts(text_colour_spec(), tok, num_image_tokens=16)
    ids, mask = prompts.encode(prompts.prompt_texts(["episode 1", "episode 22"]))
    assert ids.shape == mask.shape == (2, prompts.length) and prompts.length == 24 - 1 + 16
    with pytest.raises(ValueError, match="longer than the spec's max_prompt_tokens = 24"):
        prompts.encode(prompts.prompt_texts(["a much longer text " * 4]))
    with pytest.raises(ValueError, match="exactly one <image>"):
        prompts.encode(["USER: no picture ASSISTANT:"])


# ------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def toy_run(tok_dir):
    c = toy_config(tok_dir)
    run = build(c)
    yield c, run
    run.actor.close()


@pytest.fixture(scope="module")
def toy_training(toy_run, tmp_path_factory):
    """One training run through `train`, stopped after 6 PPO iterations (as a crash would) and
    resumed from that iteration's checkpoint."""
    c, run = toy_run
    workdir = str(tmp_path_factory.mktemp("toy") / "run")
    stopped = train_lib.train(c, workdir, run=run, interrupt_after=6)
    resets = run.actor.resets
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        out = train_lib.train(c, workdir, run=run)
    return workdir, stopped, resets, out, printed.getvalue()


@pytest.mark.slow  # a training run (~13 s quiet, ~45 s on a loaded 2-core machine)
def test_host_training_improves_reward(toy_run, toy_training):
    """SFT on half-wrong answers, then PPO on the gymnasium env: success rises well above the
    SFT policy's coin flip."""
    workdir, _, _, out, _ = toy_training
    before, after = out["sft_eval"]["success_rate"], out["ppo_eval"]["success_rate"]
    assert out["sft_eval"]["invalid_action_rate"] < 0.2  # SFT taught the answer's format
    assert after >= 0.85 and after >= before + 0.25, (before, after)
    history = [h["success_rate"] for h in out["history"]]
    assert np.mean(history[-3:]) > np.mean(history[:3]) + 0.2, history
    assert os.path.isfile(os.path.join(workdir, "results.json"))


@pytest.mark.slow  # a training run (~13 s quiet, ~45 s on a loaded 2-core machine)
def test_resume_resets_the_host_envs(toy_run, toy_training):
    """A host env's state cannot be saved: the resumed run restores params, optimiser and RNG
    from its checkpoint, resets its environments and finishes."""
    c, run = toy_run
    _, stopped, resets, out, printed = toy_training
    assert stopped == {"interrupted": True}
    last = c.sft.steps + 6
    assert (
        f"[resume] checkpoint {last}: stage ppo, sft step {c.sft.steps}, ppo iteration 6" in printed
    )
    assert run.actor.resets == resets + 1  # the resumed run reset the training envs once
    assert [h["iteration"] for h in out["history"]] == list(range(1, c.ppo.iterations + 1))
    assert out["ppo_eval"]["episodes"] == c.eval.episodes
    with pytest.raises(ValueError, match="does not continue the host environments"):
        run.rollout(run.init_params, run.actor.placeholder(c.ppo.num_envs), jax.random.key(0), 1.0)


def test_text_observations_change_the_prompts(toy_run, tok):
    """Dict observations with a text: each step's prompt is tokenised from its own text."""
    c, run = toy_run
    spec = text_colour_spec()
    prompts = host_lib.HostPrompts(spec, tok, run.cfg.num_image_tokens)
    actor = HostActor(spec, run.policy, tok, prompts, SIZE, c.max_new_tokens, 1.0, True)
    try:
        carry = actor.reset(jax.random.key(0), 4)
        rollout = actor.make_rollout(2, FAST)
        _, traj, _ = rollout(run.init_params, carry, jax.random.key(1), jnp.float32(1.0))
        for t, episode in enumerate((1, 2)):  # one-step episodes: a new episode every step
            texts = [spec.prompt(f"episode {episode}")] * 4
            want, _ = encode_prompts(tok, texts, run.cfg.num_image_tokens, prompts.length)
            np.testing.assert_array_equal(traj.prompt_ids[t], want)
        with pytest.raises(ValueError, match="does not continue"):  # an older carry
            rollout(run.init_params, carry, jax.random.key(1), jnp.float32(1.0))
    finally:
        actor.close()


# ------------------------------------------------------------------------------- NumberLine
class GymNumberLine(gymnasium.Env):
    """NumberLine under gymnasium with the original gym_cards rules (positions 0..5, +1 on
    reaching the target, -1 when the distance does not shrink, truncated after `max_steps`),
    painted with our NumberLine's pictures. Resets draw start and goal by the original's law
    from the env's RNG, unless a plan is given: `plan[0]` for the first reset, `plan[t + 1]` for
    the reset that follows this env's step t."""

    def __init__(self, size: int = SIZE, max_steps: int = 10, plan=None):
        self.picture = envs.make("NumberLine", image_size=size)[0].picture
        self.max_steps, self.plan = max_steps, plan
        self.observation_space = spaces.Box(0, 255, (size, size, 3), np.uint8)
        self.action_space = spaces.Discrete(2)
        self.position = self.goal = self.steps = self.t = 0

    def _obs(self):
        return self.picture.paint({"target": self.goal, "current": self.position})

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        if self.plan is not None:
            self.position, self.goal = self.plan[self.t]
        else:
            self.position, self.goal = (int(x) for x in self.np_random.integers(0, 6, 2))
            if self.position == self.goal:
                self.goal = (self.goal + 1) % 5
        self.steps = 0
        return self._obs(), {}

    def step(self, action):
        self.steps += 1
        self.t += 1
        before = abs(self.position - self.goal)
        self.position = min(self.position + 1, 5) if action == 1 else max(self.position - 1, 0)
        after = abs(self.position - self.goal)
        terminated = after == 0
        reward = 1.0 if terminated else (-1.0 if after >= before else 0.0)
        truncated = not terminated and self.steps >= self.max_steps
        return self._obs(), reward, terminated, truncated, {}


@pytest.fixture(scope="module")
def numberline_pair(tok):
    """A tiny random policy, the jitted NumberLine's rollout (T steps of B envs, episodes
    truncated after `limit` steps) and, per env, the states it reset to (replayed with its keys
    and actions): what a gymnasium NumberLine needs to reach the same states."""
    b, t_steps, limit = 8, 5, 3
    c = load_config()
    c.max_new_tokens = 12
    cfg = policy_lib.llava_config(c.model, SIZE, tok)
    policy, params = init_policy(cfg, c.model.value_hidden)
    env, env_params = envs.make("NumberLine", image_size=SIZE, final_observation=True)
    env_params = env_params.replace(max_steps_in_episode=limit)
    encoder = PromptEncoder(tok, "NumberLine", True, "short", cfg.num_image_tokens)
    actor = Actor(env, env_params, policy, tok, encoder, c.max_new_tokens, 0.5)
    carry0 = actor.reset(jax.random.key(0), b)
    key = jax.random.key(1)
    _, want, want_last = actor.make_rollout(t_steps, FAST)(params, carry0, key, jnp.float32(1.0))

    state = carry0.state
    plans = [[(int(p), int(g))] for p, g in zip(state.position, state.goal, strict=True)]
    step = jax.jit(jax.vmap(env.step, in_axes=(0, 0, 0, None)))
    for t, k in enumerate(jax.random.split(key, t_steps)):
        k_env = jax.random.split(k, 3)[2]  # Actor.step's env key
        _, state, *_ = step(jax.random.split(k_env, b), state, want.action[t], env_params)
        for i in range(b):
            plans[i].append((int(state.position[i]), int(state.goal[i])))

    prompt = prompt_text("NumberLine", None, True, "short")

    def host_actor(mesh=None):
        makers = iter([lambda p=p: GymNumberLine(SIZE, limit, p) for p in plans])
        spec = host_lib.HostTaskSpec("NumberLine", lambda: next(makers)(), ("-", "+"), prompt)
        prompts = host_lib.HostPrompts(spec, tok, cfg.num_image_tokens)
        assert prompts.length == encoder.length
        return HostActor(spec, policy, tok, prompts, SIZE, c.max_new_tokens, 0.5, mesh=mesh)

    return params, key, t_steps, want, want_last, host_actor


def test_host_rollout_equals_the_jitted_rollout_on_numberline(numberline_pair):
    """The same policy, keys and states: the host adapter over a gymnasium NumberLine gives the
    jitted Actor's trajectory, field by field (truncations and their bootstrap values included)."""
    params, key, t_steps, want, want_last, host_actor = numberline_pair
    host = host_actor()
    try:
        carry = host.reset(jax.random.key(0), want.action.shape[1])
        _, got, got_last = host.make_rollout(t_steps, FAST)(params, carry, key, jnp.float32(1.0))
    finally:
        host.close()
    assert np.any(want.truncated) and np.any(want.terminated)  # both kinds of episode end
    assert np.any(want.final_value != 0)
    for name in want._fields:
        w, g = np.asarray(getattr(want, name)), np.asarray(getattr(got, name))
        assert w.shape == g.shape and w.dtype == g.dtype, name
        if np.issubdtype(w.dtype, np.floating):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5, err_msg=name)
        else:
            np.testing.assert_array_equal(g, w, err_msg=name)
    np.testing.assert_allclose(got_last, want_last, rtol=1e-5, atol=1e-5)


def test_host_rollout_on_a_mesh(numberline_pair):
    """On a (data 4, fsdp 2) mesh of 8 simulated devices the host rollout splits the batch over
    the data axes, as the jitted rollout's carry is, and gives the single-device trajectory."""
    from rlvlm_jax.sharding import make_mesh, shard_params

    if len(jax.devices()) < 8:
        pytest.skip("needs 8 (simulated) devices")
    params, key, t_steps, want, want_last, host_actor = numberline_pair
    mesh = make_mesh((4, 2, 1))
    host = host_actor(mesh)
    try:
        with jax.set_mesh(mesh):
            sharded = {k: shard_params(v, mesh) for k, v in params.items()}
            carry = host.reset(jax.random.key(0), want.action.shape[1])
            _, got, got_last = host.make_rollout(t_steps, FAST)(
                sharded, carry, key, jnp.float32(1.0)
            )
    finally:
        host.close()
    for leaf in jax.tree.leaves(got):
        assert len(leaf.sharding.device_set) == 8
        assert leaf.sharding.spec[:2] in ((None, ("data", "fsdp")),), leaf.sharding
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_array_equal(got.reward, want.reward)
    np.testing.assert_allclose(got.logp, want.logp, atol=1e-4)
    np.testing.assert_allclose(got_last, want_last, atol=1e-4)


def _compare_with_jitted(adapter, fields, actions, truncate: int) -> int:
    """Steps the adapter's vector env (its NumberLine states read by `fields(raw env) ->
    (position, goal)`) and the jitted NumberLine, from the same states, with the same actions;
    after an episode ends the jitted env is set to the state the vector env reset to. Returns
    the number of episode ends seen."""
    env, params = envs.make("NumberLine", image_size=SIZE)
    params = params.replace(max_steps_in_episode=truncate)
    b = adapter.num_envs
    raw = [e.unwrapped for e in adapter.venv.envs]

    def states():
        pos, goal = zip(*(fields(r) for r in raw), strict=True)
        return np.asarray(pos, np.int32), np.asarray(goal, np.int32)

    _, state = jax.vmap(env.reset, in_axes=(0, None))(
        jax.random.split(jax.random.key(0), b), params
    )
    pos, goal = states()
    state = state.replace(position=jnp.asarray(pos), goal=jnp.asarray(goal))
    step = jax.jit(jax.vmap(env.step, in_axes=(0, 0, 0, None)))
    ends = 0
    for t, a in enumerate(actions):
        tr = adapter.step(a)
        keys = jax.random.split(jax.random.key(t), b)
        _, nxt, reward, term, trunc, _ = step(keys, state, jnp.asarray(a), params)
        np.testing.assert_array_equal(tr.reward, np.asarray(reward))
        np.testing.assert_array_equal(tr.terminated, np.asarray(term))
        np.testing.assert_array_equal(tr.truncated, np.asarray(trunc))
        assert tr.obs.frames.shape == (b, SIZE, SIZE, 3) and tr.obs.frames.dtype == np.uint8
        done = tr.terminated | tr.truncated
        ends += int(done.sum())
        pos, goal = states()  # where an episode ended: the vector env's next episode's start
        np.testing.assert_array_equal(pos[~done], np.asarray(nxt.position)[~done])
        np.testing.assert_array_equal(goal[~done], np.asarray(nxt.goal)[~done])
        time = np.where(done, 0, np.asarray(nxt.time)).astype(np.int32)
        state = nxt.replace(
            position=jnp.asarray(pos), goal=jnp.asarray(goal), time=jnp.asarray(time)
        )
    return ends


def test_gymnasium_numberline_steps_like_the_jitted_env():
    """Our gymnasium NumberLine in the adapter's vector env = the jitted env, step by step."""
    spec = host_lib.HostTaskSpec(
        "NumberLine", lambda: GymNumberLine(SIZE, 10), ("-", "+"), "<image>"
    )
    adapter = host_lib.HostEnvs(spec, 8, SIZE)
    try:
        adapter.reset(seed=0)
        actions = np.random.default_rng(0).integers(0, 2, (40, 8))
        ends = _compare_with_jitted(adapter, lambda r: (r.position, r.goal), actions, 10)
    finally:
        adapter.close()
    assert ends > 20


def test_original_gym_cards_numberline_steps_like_the_jitted_env():
    """The original gym_cards NumberLine through the adapter = the jitted env, step by step
    (rewards, terminations, truncations, positions); its pictures (another layout, 300 px)
    come resized to the run's size."""
    pytest.importorskip("gym_cards", reason="the original gym_cards (RL4VLM) is not installed")
    cfg = ml_collections.ConfigDict({"task": "NumberLine", "cot": True, "template": "short"})
    spec = host_lib.gym_cards(cfg)
    host_lib.check_env(spec)
    assert spec.prompt == prompt_text("NumberLine", None, True, "short")
    adapter = host_lib.HostEnvs(spec, 8, SIZE)
    try:
        obs = adapter.reset(seed=0)
        assert obs.frames.shape == (8, SIZE, SIZE, 3)
        rng = np.random.default_rng(1)
        for e in adapter.venv.envs:  # the original draws from Python's global random: set them
            r = e.unwrapped
            r.position, r.goal_position = (int(x) for x in rng.choice(6, 2, replace=False))
            r.start_position = r.position  # its step reads the start (a clash rule)
        actions = rng.integers(0, 2, (40, 8))
        ends = _compare_with_jitted(adapter, lambda r: (r.position, r.goal_position), actions, 10)
    finally:
        adapter.close()
    assert ends > 20
    demos = spec.demonstrations(8, jax.random.key(0), 0.5)
    assert demos.images.shape == (8, 300, 300, 3) and demos.prompts == [spec.prompt] * 8


def test_host_numberline_config_is_the_main_jobs_recipe():
    """experiments/host_numberline.py = numberline_tiny.py with the env switched to the host
    adapter over the original gym_cards NumberLine."""
    from rlvlm_jax.config_files import flatten

    host = flatten(load_config("host_numberline").to_dict())
    tiny = flatten(load_config("numberline_tiny").to_dict())
    switched = ("env.kind", "env.host")
    assert {k: v for k, v in host.items() if k not in switched} == \
        {k: v for k, v in tiny.items() if k not in switched}
    assert host["env.kind"] == "host" and host["env.host"] == host_lib.EXAMPLE
    pytest.importorskip("gym_cards", reason="the original gym_cards (RL4VLM) is not installed")
    validate_config(load_config("host_numberline"))
