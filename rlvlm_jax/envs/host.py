"""Host environments: any gymnasium environment whose observation is a picture (and optionally a
text) trains with the same PPO loop as the jitted card tasks.

Three parts, used by `build` when `config.env.kind == "host"` (the compiled side is
`rl.host_rollout.HostActor`):

- `HostTaskSpec`, the small task spec: the environment factory, the action strings (the parser's
  vocabulary, in action-id order), the prompt (a fixed string, or a function of the text
  observation), where the picture and the text are in a Dict observation, and optionally a
  demonstrations function for SFT. `config.env.host = "package.module:name"` names a function of
  the run's config returning a spec (or a spec itself); `load_spec` loads it.
- `check_spaces` / `check_env`: the environment's spaces against the spec, with errors that say
  what is wrong and what to do, before anything is compiled.
- `HostEnvs`: a gymnasium vector environment of the spec (`SyncVectorEnv`, or `AsyncVectorEnv`
  with `spec.vector = "async"`), seen as batches of pictures resized to the run's image size and
  prompt texts, and `HostPrompts`, which tokenises those prompts on the host to the fixed padded
  length the compiled step takes.

Auto-reset: the vector env is made with gymnasium's `AutoresetMode.SAME_STEP`. A step that ends an
episode returns the next episode's first observation at once, and the last observation of the
finished one in `info["final_obs"]`; this is what the jitted environments do (gymnax resets in
the same step and gives `final_observation`), so every step of a trajectory is a real decision and
a truncated episode is bootstrapped from its final picture. gymnasium's default, NEXT_STEP, would
instead spend the step after an episode's end on a reset whose action is ignored.

`gym_cards(config)` is the spec of the original gym_cards NumberLine (RL4VLM's, installed
separately): `config.env.host = "rlvlm_jax.envs.host:gym_cards"` (experiments/host_numberline.py).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from rlvlm_jax.envs.prompts import IMAGE_TOKEN
from rlvlm_jax.envs.tasks import Task, get_task

VECTOR_KINDS = ("sync", "async")
EXAMPLE = "rlvlm_jax.envs.host:gym_cards"  # named in error messages


# ------------------------------------------------------------------------------- the task spec
@dataclasses.dataclass(frozen=True)
class HostTaskSpec:
    """What the adapter needs to know about a gymnasium task.

    name: the task's name (`config.task` must equal it; it names the run in reports).
    make_env: a function of no arguments returning one gymnasium environment (called once per
      vector slot, and once more by `check_env`).
    action_strings: the text of each action, in action-id order; the answer's text after its last
      `"action":` is searched for them (lower-case ASCII; none may occur inside another, or the
      longer one could never be read alone). The env's action space must be
      `Discrete(len(action_strings))`.
    prompt: the whole prompt the model sees, with one `<image>` where the picture goes
      (e.g. `"USER: <image>\\n... ASSISTANT:"`); or a function of the text observation (None
      without one) returning it, called for every environment at every step.
    image_key / text_key: for Dict observations, the keys of the picture (a uint8 H x W x 3 Box)
      and of an optional `Text` passed to `prompt`. A Box observation is the picture itself.
    max_prompt_tokens: the longest prompt in tokens (BOS and the `<image>` placeholder counted
      once each); needed when `prompt` is a function, since compiled shapes are fixed. Longer
      prompts are refused when they occur. 0 with a fixed prompt: its own length.
    vector: "sync" (every env in this process, one after the other) or "async" (one process
      per env; worth it for slow environments).
    demonstrations: optional `(num, key, wrong_share) -> rl.sft_data.Demonstrations` for SFT
      without a JSON file (pictures of any size, prompts equal to `prompt`'s texts, and the
      answers); without it SFT needs `config.sft.json` or `config.sft.steps = 0`.
    """

    name: str
    make_env: Callable[[], Any]
    action_strings: tuple[str, ...]
    prompt: str | Callable[[str | None], str]
    image_key: str | None = None
    text_key: str | None = None
    max_prompt_tokens: int = 0
    vector: str = "sync"
    demonstrations: Callable | None = None

    def __post_init__(self):
        object.__setattr__(self, "action_strings", tuple(self.action_strings))
        where = f"host task spec {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("a host task spec needs a name (config.task must equal it)")
        if not callable(self.make_env):
            raise ValueError(f"{where}: make_env must be a function returning a gymnasium env")
        if not self.action_strings:
            raise ValueError(f"{where}: action_strings is empty")
        for a in self.action_strings:
            if not isinstance(a, str) or not a or not a.isascii() or a != a.lower() or "\0" in a:
                raise ValueError(
                    f"{where}: action string {a!r} must be non-empty lower-case "
                    "ASCII (the parser lower-cases the answer and compares bytes)"
                )
        if len(set(self.action_strings)) != len(self.action_strings):
            raise ValueError(f"{where}: action strings repeat: {list(self.action_strings)}")
        for a in self.action_strings:
            for b in self.action_strings:
                if a != b and a in b:
                    raise ValueError(
                        f"{where}: action string {a!r} occurs inside {b!r}: the parser counts "
                        "every action string found in the answer, so an answer naming "
                        f"{b!r} would be ambiguous; rename one of them"
                    )
        if not (isinstance(self.prompt, str) or callable(self.prompt)):
            raise ValueError(
                f"{where}: prompt must be a string or a function of the text observation"
            )
        if (
            callable(self.prompt)
            and not isinstance(self.prompt, str)
            and self.max_prompt_tokens < 1
        ):
            raise ValueError(
                f"{where}: a prompt function needs max_prompt_tokens >= 1 (the "
                "compiled step takes prompts padded to a fixed length)"
            )
        if self.vector not in VECTOR_KINDS:
            raise ValueError(
                f"{where}: vector must be one of {list(VECTOR_KINDS)}, got {self.vector!r}"
            )
        if self.text_key is not None and self.image_key is None:
            raise ValueError(f"{where}: text_key needs a Dict observation; set image_key too")

    @property
    def num_actions(self) -> int:
        return len(self.action_strings)

    @property
    def task(self) -> Task:
        """A synthetic row of the task table for the parsers (`text.parse_device`)."""
        return Task(
            name=self.name,
            gym_id="",
            gymnax_id="",
            action_strings=self.action_strings,
            has_formula=False,
            has_ten=False,
            target=None,
        )

    def prompt_for(self, text: str | None) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt(text)


def load_spec(where: str, config=None) -> HostTaskSpec:
    """The spec `config.env.host` names: "package.module:name", where `name` is a function of
    the run's config returning a `HostTaskSpec`, or a `HostTaskSpec` itself."""
    module_name, _, attr = str(where or "").partition(":")
    if not module_name or not attr:
        raise ValueError(
            f"config.env.host {where!r} must name a task spec as "
            f"'package.module:name' (e.g. {EXAMPLE!r})"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"config.env.host {where!r}: cannot import {module_name}: {e}") from None
    obj = getattr(module, attr, None)
    if obj is None:
        raise ValueError(f"config.env.host {where!r}: {module_name} has no {attr!r}")
    spec = obj if isinstance(obj, HostTaskSpec) else obj(config) if callable(obj) else obj
    if not isinstance(spec, HostTaskSpec):
        raise ValueError(
            f"config.env.host {where!r} gave {type(spec).__name__}, not a "
            "rlvlm_jax.envs.host.HostTaskSpec"
        )
    return spec


# ------------------------------------------------------------------------------- validation
def _picture_problem(space) -> str | None:
    from gymnasium import spaces

    if not isinstance(space, spaces.Box):
        return f"{space} is not a Box"
    if (
        space.dtype != np.uint8
        or len(space.shape) != 3
        or space.shape[2] != 3
        or min(space.shape) < 1
    ):
        return f"{space} is not a uint8 picture of shape (H, W, 3)"
    return None


def check_spaces(spec: HostTaskSpec, observation_space, action_space) -> None:
    """ValueError naming what is wrong when the env's (single) spaces do not fit the spec."""
    from gymnasium import spaces

    where = f"host task {spec.name!r}"
    advice = (
        "the host adapter needs pictures: a uint8 Box of shape (H, W, 3), or a Dict with "
        "such a Box (the spec's image_key) and optionally a Text (text_key); wrap the env "
        "in a gymnasium ObservationWrapper that renders one (e.g. "
        "gymnasium.wrappers.AddRenderObservation)"
    )
    if isinstance(observation_space, spaces.Dict):
        keys = list(observation_space.spaces)
        if spec.image_key is None:
            raise ValueError(
                f"{where}: the observation is a Dict {keys}; set the spec's "
                "image_key to the picture's key (and text_key to a Text's)"
            )
        if spec.image_key not in observation_space.spaces:
            raise ValueError(
                f"{where}: the observation Dict has no picture key "
                f"{spec.image_key!r} (image_key); its keys are {keys}"
            )
        problem = _picture_problem(observation_space[spec.image_key])
        if problem:
            raise ValueError(f"{where}: observation[{spec.image_key!r}] = {problem}; {advice}")
        if spec.text_key is not None:
            if spec.text_key not in observation_space.spaces:
                raise ValueError(
                    f"{where}: the observation Dict has no text key "
                    f"{spec.text_key!r} (text_key); its keys are {keys}"
                )
            if not isinstance(observation_space[spec.text_key], spaces.Text):
                raise ValueError(
                    f"{where}: observation[{spec.text_key!r}] is "
                    f"{observation_space[spec.text_key]}, not a gymnasium Text "
                    "(text_key names the text passed to the prompt)"
                )
    else:
        problem = _picture_problem(observation_space)
        if problem:
            raise ValueError(f"{where}: the observation space {problem}; {advice}")
        if spec.image_key is not None or spec.text_key is not None:
            raise ValueError(
                f"{where}: the observation is a single picture, not a Dict; leave "
                "the spec's image_key and text_key unset"
            )
    n = spec.num_actions
    if (
        not isinstance(action_space, spaces.Discrete)
        or int(action_space.n) != n
        or int(action_space.start) != 0
    ):
        raise ValueError(
            f"{where}: the action space {action_space} does not match the task "
            f"spec: its {n} action strings {list(spec.action_strings)} need "
            f"Discrete({n}) (ids 0..{n - 1} in that order); fix action_strings or "
            "wrap the env's actions"
        )


def check_env(spec: HostTaskSpec) -> None:
    """Makes one environment and checks its spaces against the spec (`check_spaces`)."""
    try:
        env = spec.make_env()
    except Exception as e:  # noqa: BLE001 - any failure of the user's factory is bad input
        raise ValueError(
            f"host task {spec.name!r}: make_env failed: {type(e).__name__}: {e}"
        ) from e
    try:
        check_spaces(spec, env.observation_space, env.action_space)
    finally:
        env.close()


# ------------------------------------------------------------------------------- pictures
def frames_of(images, size: int) -> np.ndarray:
    """uint8 [B, size, size, 3]: the pictures as they are, or resized with PIL (bicubic; a
    picture that is not square is stretched)."""
    images = [np.asarray(im) for im in images] if not isinstance(images, np.ndarray) else images
    if isinstance(images, np.ndarray) and images.shape[1:] == (size, size, 3):
        return np.ascontiguousarray(images, dtype=np.uint8)
    out = np.empty((len(images), size, size, 3), np.uint8)
    for i, im in enumerate(images):
        im = np.asarray(im, np.uint8)
        if im.shape != (size, size, 3):
            im = np.asarray(Image.fromarray(im).convert("RGB").resize((size, size), Image.BICUBIC))
        out[i] = im
    return out


# ------------------------------------------------------------------------------- prompts
class HostPrompts:
    """Prompt ids of a host task, tokenised on the host with the run's tokenizer and left-padded
    to a fixed length `length` (the `<image>` expanded to the image tokens), as
    `text.tokenizer.encode_prompts` does; a fixed prompt is tokenised once. Stands in for the
    card tasks' `PromptEncoder` (`length`, `pad_id`, `num_image_tokens`)."""

    num_slots = 0  # no formula spliced in
    _CACHE = 4096  # distinct prompt texts kept tokenised

    def __init__(self, spec: HostTaskSpec, tokenizer, num_image_tokens: int):
        from rlvlm_jax.text.tokenizer import prompt_ids

        self.spec, self.tokenizer = spec, tokenizer
        self.task = spec.name
        self.num_image_tokens = int(num_image_tokens)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self._prompt_ids = functools.partial(
            prompt_ids, tokenizer, num_image_tokens=self.num_image_tokens
        )
        self._rows: dict[str, np.ndarray] = {}
        self.fixed = isinstance(spec.prompt, str)
        if self.fixed:
            row = self._row(spec.prompt, check_length=False)
            text = len(row) - self.num_image_tokens + 1
            if spec.max_prompt_tokens and text > spec.max_prompt_tokens:
                raise ValueError(
                    f"host task {spec.name!r}: the prompt is {text} tokens, longer "
                    f"than the spec's max_prompt_tokens = {spec.max_prompt_tokens}"
                )
            self.length = len(row)
        else:
            self.length = spec.max_prompt_tokens - 1 + self.num_image_tokens

    def _row(self, text: str, check_length: bool = True) -> np.ndarray:
        row = self._rows.get(text)
        if row is not None:
            return row
        if not isinstance(text, str):
            raise ValueError(
                f"host task {self.task!r}: the prompt function returned "
                f"{type(text).__name__}, not a string"
            )
        row = np.asarray(self._prompt_ids(text), np.int32)
        images = int(np.sum(row == self._image_id))
        if images != self.num_image_tokens:
            raise ValueError(
                f"host task {self.task!r}: a prompt must hold exactly one "
                f"{IMAGE_TOKEN} (where the picture goes), found "
                f"{images // max(self.num_image_tokens, 1)} in {text[:120]!r}"
            )
        if check_length and len(row) > self.length:
            raise ValueError(
                f"host task {self.task!r}: a prompt is {len(row) - self.num_image_tokens + 1} "
                f"tokens, longer than the spec's max_prompt_tokens = "
                f"{self.spec.max_prompt_tokens}: raise max_prompt_tokens (the model holds "
                f"model.max_positions tokens with the answer) or shorten the prompt: "
                f"{text[:120]!r}"
            )
        if len(self._rows) >= self._CACHE:
            self._rows.clear()
        self._rows[text] = row
        return row

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(ids, mask) int32 [B, length] of prompt texts."""
        ids = np.full((len(texts), self.length), self.pad_id, np.int32)
        mask = np.zeros((len(texts), self.length), np.int32)
        for b, text in enumerate(texts):
            row = self._row(text)
            ids[b, self.length - len(row) :] = row
            mask[b, self.length - len(row) :] = 1
        return ids, mask

    def prompt_texts(self, observation_texts: Sequence[str | None]) -> list[str]:
        return [self.spec.prompt_for(t) for t in observation_texts]


# ------------------------------------------------------------------------------- vector envs
class Observation(NamedTuple):
    """A batch of observations as the policy sees them."""

    frames: np.ndarray  # uint8 [B, S, S, 3]
    texts: list  # the text observations (None without text)


class Transition(NamedTuple):
    """What one vector step returned, per environment."""

    obs: Observation  # the next observations (a finished episode's successor's first)
    reward: np.ndarray  # float32 [B]
    terminated: np.ndarray  # bool [B]
    truncated: np.ndarray  # bool [B]
    final: Observation | None  # where an episode ended: its last observation (else `obs`)


def make_vector_env(spec: HostTaskSpec, num_envs: int):
    """gymnasium's vector env of `num_envs` copies, auto-resetting in the same step."""
    from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

    cls = SyncVectorEnv if spec.vector == "sync" else AsyncVectorEnv
    venv = cls([spec.make_env] * num_envs, autoreset_mode=AutoresetMode.SAME_STEP)
    mode = venv.metadata.get("autoreset_mode")
    if mode not in (AutoresetMode.SAME_STEP, AutoresetMode.SAME_STEP.value):
        venv.close()
        raise ValueError(
            f"host task {spec.name!r}: the vector env resets in mode {mode}; the "
            "adapter needs AutoresetMode.SAME_STEP (final observations in info)"
        )
    return venv


class HostEnvs:
    """`num_envs` environments of a spec stepped together on the host (gymnasium's vector API),
    as batches of pictures at `image_size` and their text observations."""

    def __init__(self, spec: HostTaskSpec, num_envs: int, image_size: int):
        self.spec, self.num_envs, self.image_size = spec, int(num_envs), int(image_size)
        self.venv = make_vector_env(spec, self.num_envs)
        try:
            check_spaces(spec, self.venv.single_observation_space, self.venv.single_action_space)
        except ValueError:
            self.venv.close()
            raise

    def _split(self, obs) -> tuple[Any, list]:
        if self.spec.image_key is None:
            return obs, [None] * self.num_envs
        texts = (
            [None] * self.num_envs
            if self.spec.text_key is None
            else [str(t) for t in obs[self.spec.text_key]]
        )
        return obs[self.spec.image_key], texts

    def observe(self, obs) -> Observation:
        images, texts = self._split(obs)
        return Observation(frames_of(images, self.image_size), texts)

    def reset(self, seed: int | None = None) -> Observation:
        obs, _ = self.venv.reset(seed=seed)
        return self.observe(obs)

    def step(self, actions) -> Transition:
        actions = np.asarray(actions, np.int64)
        obs, reward, terminated, truncated, info = self.venv.step(actions)
        nxt = self.observe(obs)
        terminated, truncated = np.asarray(terminated, bool), np.asarray(truncated, bool)
        final = None
        done = terminated | truncated
        if done.any():
            finals = info.get("final_obs")
            if finals is None:
                raise RuntimeError(
                    f"host task {self.spec.name!r}: an episode ended without "
                    "info['final_obs'] (the vector env must auto-reset in "
                    "SAME_STEP mode)"
                )
            has = np.asarray(info.get("_final_obs", done), bool)
            frames, texts = nxt.frames.copy(), list(nxt.texts)
            for i in np.flatnonzero(has):
                image, text = self._one(finals[i])
                frames[i] = frames_of([image], self.image_size)[0]
                texts[i] = text
            final = Observation(frames, texts)
        return Transition(nxt, np.asarray(reward, np.float32), terminated, truncated, final)

    def _one(self, obs):
        if self.spec.image_key is None:
            return obs, None
        text = None if self.spec.text_key is None else str(obs[self.spec.text_key])
        return obs[self.spec.image_key], text

    def close(self) -> None:
        self.venv.close()


# ------------------------------------------------------------------------------- gym_cards
GYM_CARDS_TASKS = ("NumberLine",)


def gym_cards(config) -> HostTaskSpec:
    """The original gym_cards (RL4VLM's `gym_cards/NumberLine-v0`) as a host task, with the
    run's prompt (`config.cot`, `config.template`, as the jitted task's) and SFT demonstrations:
    our NumberLine's visited states and oracle answers, painted by the original env class."""
    from rlvlm_jax.text.prompt_encoder import prompt_text

    task = get_task(config.task)
    if task.name not in GYM_CARDS_TASKS:
        raise ValueError(
            f"config.env.host {EXAMPLE!r} runs {list(GYM_CARDS_TASKS)} only, not "
            f"{task.name}: the points tasks' prompts carry the formula, which the "
            "original shows in info only, and Blackjack's pictures cannot be "
            "repainted for demonstrations; use env.kind='gymnax' for them"
        )
    try:
        import gym_cards as _  # noqa: F401 - registers the gym_cards/... ids
    except ImportError:
        raise ValueError(
            "config.env.host 'rlvlm_jax.envs.host:gym_cards' needs the original "
            "gym_cards (RL4VLM's gym-cards package): pip install -e "
            "<RL4VLM>/gym-cards"
        ) from None
    prompt = prompt_text(task.name, None, bool(config.cot), str(config.template))
    return HostTaskSpec(
        name=task.name,
        make_env=functools.partial(_make_gym_cards, task.gym_id),
        action_strings=task.action_strings,
        prompt=prompt,
        demonstrations=functools.partial(
            _numberline_demonstrations, cot=bool(config.cot), prompt=prompt
        ),
    )


def _make_gym_cards(gym_id: str):
    import gym_cards as _  # noqa: F401 - registers the ids (also in worker processes)
    import gymnasium

    return gymnasium.make(gym_id)


def _numberline_demonstrations(num: int, key, wrong_share: float, *, cot: bool, prompt: str):
    """Our NumberLine's SFT demonstrations (same visited states, answers and wrong share as the
    jitted task's) with the original env's pictures of each state."""
    from gym_cards.envs.numberline import NumberLineEnv

    import rlvlm_jax.envs as envs
    from rlvlm_jax.rl import sft_data

    env, _ = envs.make("NumberLine", image_size=envs.NumberLine.min_image_size())
    painter = NumberLineEnv()

    def picture(fields: dict) -> np.ndarray:
        painter.position, painter.goal_position = int(fields["position"]), int(fields["goal"])
        return painter._get_observation()

    demos = sft_data.make_demonstrations(env, num, key, wrong_share, cot, picture=picture)
    demos.prompts = [prompt] * len(demos)
    return demos
