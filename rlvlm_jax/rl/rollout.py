"""Rollouts in one compiled function: picture -> prompt -> sampled chain of thought -> parsed
action -> env step, for a batch of environments over T steps inside a single `lax.scan`.

Per-step prompts are built on the device by `text.prompt_encoder.PromptEncoder`.

The value of a step is the value head on the final hidden state of the last prompt token, taken
from the sampler's own prefill (no second pass). Unparsable answers get a uniformly random legal
action and are counted. For truncation bootstrapping the value of the final (pre-reset)
observation is computed, only when some environment truncated, from the env's
`final_observation` and the step's own prompt: every card task truncates either on a time limit
(the prompt is constant) or, in the formula tasks, on a move that is ignored (the formula did not
change), so the step's prompt is the final state's prompt.

The policy's half of a step (`Acting.decide`: sample, parse, value, log-prob) is shared with the
host-environment actor of `rl.host_rollout`, which steps gymnasium environments on the host
between compiled calls and stacks the same `StepOutput` records.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rlvlm_jax.models import sampling
from rlvlm_jax.rl import losses
from rlvlm_jax.text.byte_table import byte_table
from rlvlm_jax.text.parse_device import make_action_parser, parse_tokens, token_masks
from rlvlm_jax.text.prompt_encoder import PromptEncoder, formula_of


class StepOutput(NamedTuple):
    """One environment step for a batch [B, ...] (a `Trajectory` stacks T of them)."""

    frames: jax.Array  # uint8 [B, S, S, 3] the picture acted on
    prompt_ids: jax.Array  # int32 [B, P]
    prompt_mask: jax.Array  # int32 [B, P]
    tokens: jax.Array  # int32 [B, R] generated ids (pad after EOS)
    lengths: jax.Array  # int32 [B] generated tokens including EOS
    token_logp: jax.Array  # float32 [B, R] sampler log-probs at the temperature
    cot_mask: jax.Array  # bool [B, R] chain-of-thought tokens
    action_mask: jax.Array  # bool [B, R] tokens from `"action":` to the end
    logp: jax.Array  # float32 [B] lambda-scaled action log-prob (old policy)
    value: jax.Array  # float32 [B]
    action: jax.Array  # int32 [B] action taken
    parsed: jax.Array  # bool [B] text parsed to exactly one action
    reward: jax.Array  # float32 [B]
    terminated: jax.Array  # bool [B]
    truncated: jax.Array  # bool [B]
    final_value: jax.Array  # float32 [B] value of the pre-reset observation (0 if not truncated)
    episode_return: jax.Array  # float32 [B] return of the episode ending here (else 0)
    episode_length: jax.Array  # int32 [B]


Trajectory = StepOutput  # leaves [T, B, ...]


class EnvCarry(NamedTuple):
    """What a rollout hands to the next one: env states and running episode sums."""

    state: object
    ep_return: jax.Array  # float32 [B]
    ep_length: jax.Array  # int32 [B]


class Decision(NamedTuple):
    """What the policy did for a batch [B, ...] of observations: the `StepOutput` fields that do
    not depend on the environment's answer."""

    tokens: jax.Array  # int32 [B, R]
    lengths: jax.Array  # int32 [B]
    token_logp: jax.Array  # float32 [B, R]
    cot_mask: jax.Array  # bool [B, R]
    action_mask: jax.Array  # bool [B, R]
    logp: jax.Array  # float32 [B]
    value: jax.Array  # float32 [B]
    action: jax.Array  # int32 [B]
    parsed: jax.Array  # bool [B]


def step_output(frames, prompt_ids, prompt_mask, d: Decision, reward, terminated, truncated,
                final_value, episode_return, episode_length) -> StepOutput:
    """One step's record from what the policy did and what the environment answered (leaves
    [B, ...], or [T, B, ...] for a whole trajectory)."""
    return StepOutput(
        frames=frames, prompt_ids=prompt_ids, prompt_mask=prompt_mask, tokens=d.tokens,
        lengths=d.lengths, token_logp=d.token_logp, cot_mask=d.cot_mask,
        action_mask=d.action_mask, logp=d.logp, value=d.value, action=d.action, parsed=d.parsed,
        reward=reward, terminated=terminated, truncated=truncated, final_value=final_value,
        episode_return=episode_return, episode_length=episode_length,
    )


class Acting:
    """The policy's side of a step, shared by the jitted-env `Actor` and the host-env actor
    (`rl.host_rollout.HostActor`): picture + prompt -> sampled text -> parsed action (a uniformly
    random legal action when the text does not parse) -> lambda-scaled log-prob and value."""

    def __init__(self, policy, tokenizer, task, num_actions: int, pad_id: int,
                 max_new_tokens: int, thought_lambda: float = 0.5, action_only: bool = False):
        self.policy = policy
        self.num_actions = int(num_actions)
        self.table = byte_table(tokenizer, policy.cfg.text.vocab_size)
        self.parser = make_action_parser(task)
        self.sampling = sampling.SamplingConfig(
            max_new_tokens=max_new_tokens,
            pad_id=pad_id,
            eos_ids=(policy.cfg.eos_token_id,),
        )
        self.thought_lambda = thought_lambda
        self.action_only = action_only

    def value_of(self, params, ids, mask, frames):
        model = self.policy.model(params)
        hidden = model.hidden_states(ids, self.policy.preprocess(frames), mask)
        return self.policy.value(params, hidden[:, -1])

    def decide(self, params, frames, ids, mask, k_sample, k_rand, knobs) -> Decision:
        """Traceable: sample, parse and score the answers of a batch of observations."""
        b = frames.shape[0]
        model = self.policy.model(params)
        out, _, hidden = sampling.generate(
            model, ids, mask, self.policy.preprocess(frames), k_sample, knobs, cfg=self.sampling,
            with_hidden=True,
        )
        value = self.policy.value(params, hidden)
        parsed, action_mask = jax.vmap(
            lambda t, n: parse_tokens(self.parser, self.table, t, n)
        )(out.tokens, out.lengths)
        masks = token_masks(action_mask, out.lengths)
        ok = parsed.action >= 0
        random_action = jax.random.randint(k_rand, (b,), 0, self.num_actions)
        action = jnp.where(ok, parsed.action, random_action).astype(jnp.int32)
        return Decision(
            tokens=out.tokens,
            lengths=out.lengths,
            token_logp=out.logprobs,
            cot_mask=masks.cot,
            action_mask=masks.action,
            logp=losses.action_log_prob(out.logprobs, masks.cot, masks.action,
                                        self.thought_lambda, self.action_only),
            value=value,
            action=action,
            parsed=ok,
        )


class Actor(Acting):
    """Everything static a rollout needs: env, policy graph, prompt encoder, parser, byte table.

    Build once; `make_rollout` / `make_evaluate` return jitted functions of (params, ...).
    """

    def __init__(self, env, env_params, policy, tokenizer, encoder: PromptEncoder,
                 max_new_tokens: int, thought_lambda: float = 0.5, action_only: bool = False,
                 bootstrap_truncation: bool = True):
        super().__init__(policy, tokenizer, env.task, env.num_actions, encoder.pad_id,
                         max_new_tokens, thought_lambda, action_only)
        self.env, self.env_params = env, env_params
        self.encoder = encoder
        self.bootstrap_truncation = bootstrap_truncation
        if bootstrap_truncation and not env.final_observation:
            raise ValueError("truncation bootstrapping needs an env made with final_observation")

    def reset(self, key, num_envs: int) -> EnvCarry:
        keys = jax.random.split(key, num_envs)
        _, state = jax.vmap(self.env.reset, in_axes=(0, None))(keys, self.env_params)
        return EnvCarry(state, jnp.zeros((num_envs,)), jnp.zeros((num_envs,), jnp.int32))

    def prompts(self, state, batch: int):
        codes, n = formula_of(state, batch)
        return jax.vmap(self.encoder.device)(codes, n)

    def step(self, params, carry: EnvCarry, key, knobs) -> tuple[EnvCarry, StepOutput]:
        """Traceable: one env step of the whole batch."""
        b = carry.ep_return.shape[0]
        k_sample, k_rand, k_env = jax.random.split(key, 3)
        state = carry.state
        frames = state.canvas
        ids, mask = self.prompts(state, b)
        d = self.decide(params, frames, ids, mask, k_sample, k_rand, knobs)
        _, nxt, reward, term, trunc, info = jax.vmap(self.env.step, in_axes=(0, 0, 0, None))(
            jax.random.split(k_env, b), state, d.action, self.env_params
        )
        if self.bootstrap_truncation:
            final_value = jax.lax.cond(
                jnp.any(trunc),
                lambda: jnp.where(
                    trunc, self.value_of(params, ids, mask, info["final_observation"]), 0.0
                ),
                lambda: jnp.zeros((b,), jnp.float32),
            )
        else:
            final_value = jnp.zeros((b,), jnp.float32)
        done = term | trunc
        ep_return = carry.ep_return + reward
        ep_length = carry.ep_length + 1
        record = step_output(frames, ids, mask, d, reward, term, trunc, final_value,
                             jnp.where(done, ep_return, 0.0), jnp.where(done, ep_length, 0))
        carry = EnvCarry(nxt, jnp.where(done, 0.0, ep_return), jnp.where(done, 0, ep_length))
        return carry, record

    def last_value(self, params, carry: EnvCarry) -> jax.Array:
        b = carry.ep_return.shape[0]
        ids, mask = self.prompts(carry.state, b)
        return self.value_of(params, ids, mask, carry.state.canvas)

    def make_rollout(self, num_steps: int, compiler_options: dict | None = None):
        """Jitted `rollout(params, carry, key, temperature) -> (carry, Trajectory, last_value)`."""

        def rollout(params, carry, key, temperature):
            knobs = sampling.make_knobs(temperature, eos_ids=self.sampling.eos_ids)

            def body(c, k):
                return self.step(params, c, k, knobs)

            carry, traj = jax.lax.scan(body, carry, jax.random.split(key, num_steps))
            return carry, traj, self.last_value(params, carry)

        return jax.jit(rollout, compiler_options=compiler_options)

    def make_evaluate(self, num_envs: int, max_steps: int, compiler_options: dict | None = None):
        """Jitted `evaluate(params, key, temperature) -> dict` over each env's first episode.

        Steps all envs until every first episode has ended (or `max_steps`), in a while loop.
        Returns per-env first returns/lengths and step-level invalid-answer and length counts.
        """

        def evaluate(params, key, temperature):
            knobs = sampling.make_knobs(temperature, eos_ids=self.sampling.eos_ids)
            k_reset, k_run = jax.random.split(key)
            carry = self.reset(k_reset, num_envs)
            init = {
                "carry": carry,
                "t": jnp.int32(0),
                "first_return": jnp.full((num_envs,), jnp.nan),
                "first_length": jnp.zeros((num_envs,), jnp.int32),
                "steps": jnp.int32(0),
                "invalid": jnp.int32(0),
                "tokens": jnp.int32(0),
                "clipped": jnp.int32(0),
            }

            def cond(s):
                return (s["t"] < max_steps) & jnp.any(jnp.isnan(s["first_return"]))

            def body(s):
                carry, rec = self.step(params, s["carry"], jax.random.fold_in(k_run, s["t"]),
                                       knobs)
                active = jnp.isnan(s["first_return"])
                done = rec.terminated | rec.truncated
                first = active & done
                hit_limit = rec.lengths >= self.sampling.max_new_tokens
                return {
                    "carry": carry,
                    "t": s["t"] + 1,
                    "first_return": jnp.where(first, rec.episode_return, s["first_return"]),
                    "first_length": jnp.where(first, rec.episode_length, s["first_length"]),
                    "steps": s["steps"] + jnp.sum(active),
                    "invalid": s["invalid"] + jnp.sum(active & ~rec.parsed),
                    "tokens": s["tokens"] + jnp.sum(jnp.where(active, rec.lengths, 0)),
                    "clipped": s["clipped"] + jnp.sum(active & hit_limit),
                }

            s = jax.lax.while_loop(cond, body, init)
            s.pop("carry")
            return s

        return jax.jit(evaluate, compiler_options=compiler_options)


def summarize_evaluation(result) -> dict[str, float]:
    """Host floats from `evaluate`'s output; unfinished first episodes count as failures."""
    r = jax.device_get(result)
    first = np.asarray(r["first_return"])
    finished = ~np.isnan(first)
    steps = max(int(r["steps"]), 1)
    return {
        "success_rate": float(np.mean(np.where(finished, first > 0, False))),
        "episode_return": float(np.nanmean(first)) if finished.any() else float("nan"),
        "episode_length": float(np.mean(r["first_length"][finished])) if finished.any() else 0.0,
        "finished_share": float(np.mean(finished)),
        "invalid_action_rate": int(r["invalid"]) / steps,
        "response_length": int(r["tokens"]) / steps,
        "length_clip_ratio": int(r["clipped"]) / steps,
        "episodes": int(first.size),
        "env_steps": int(r["steps"]),
    }
