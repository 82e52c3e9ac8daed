"""Rollouts of host environments (gymnasium, `envs.host`): the policy's step stays compiled, only
the environment step runs on the host, for a batch of environments at a time.

Per env step: ONE compiled call (`Acting.decide`, the jitted actor's own code: picture + prompt ->
sampled answer -> parsed action -> value and lambda-scaled log-prob), the actions to the host,
`vector_env.step(actions)`, the next pictures (resized to `config.image_size` on the host) and
prompts (tokenised on the host, padded to a fixed length) back to the device. A second compiled
call computes the values of the final observations of the steps where some environment
truncated (bootstrapping, as the jitted `Actor` does under `lax.cond`), and one more the values
of the observations the rollout ends on. The T step records are stacked on the device into the
same `rollout.StepOutput` layout [T, B, ...] the PPO update takes; the update does not know where
its trajectory came from.

The carry of a host rollout (`HostCarry`) holds the pictures and prompts the next step acts on
and the running episode sums; the environments' own state lives in the environments and cannot
be saved: a run resumed from a checkpoint starts from freshly reset environments
(`build.Run.unpack_ppo_state`), and only the latest carry of an actor's environments can be
continued (an older one is refused).

Random streams: the step keys are split exactly as the jitted `Actor` splits them (sampling and
the fallback action use the same keys), so on environments that reach the same states the two
produce the same trajectories (tests/envs/test_host_adapter.py). The environments' own
randomness is theirs: `reset(key, n)` seeds them with an integer drawn from `key` (env i gets
seed + i, gymnasium's vector convention); environments that ignore seeds (the original gym_cards
uses Python's global `random`) are not reproducible.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from rlvlm_jax.envs.host import HostEnvs, HostPrompts, HostTaskSpec, Observation
from rlvlm_jax.models import sampling
from rlvlm_jax.rl.rollout import Acting, Decision, StepOutput, step_output
from rlvlm_jax.sharding import BATCH


class HostCarry(NamedTuple):
    """What a host rollout hands to the next one (host arrays)."""

    frames: np.ndarray  # uint8 [B, S, S, 3] the pictures the next step acts on
    prompt_ids: np.ndarray  # int32 [B, P]
    prompt_mask: np.ndarray  # int32 [B, P]
    ep_return: np.ndarray  # float32 [B]
    ep_length: np.ndarray  # int32 [B]
    epoch: int  # which reset of the actor's environments this continues (-1: a placeholder)


def _seed(key) -> int:
    """A gymnasium seed drawn from a JAX key."""
    return int(jax.random.bits(key, (), jnp.uint32))


class HostActor(Acting):
    """The host-environment counterpart of `rollout.Actor`, with the interface `build` and
    `train` use: `reset(key, num_envs)`, `make_rollout(num_steps)`, `make_evaluate(num_envs,
    max_steps)`. The training environments (made by the first `reset`) and the evaluation
    environments (made by the first evaluation) are kept and reused."""

    def __init__(
        self,
        spec: HostTaskSpec,
        policy,
        tokenizer,
        prompts: HostPrompts,
        image_size: int,
        max_new_tokens: int,
        thought_lambda: float = 0.5,
        action_only: bool = False,
        bootstrap_truncation: bool = True,
        mesh=None,
    ):
        super().__init__(
            policy,
            tokenizer,
            spec.task,
            spec.num_actions,
            prompts.pad_id,
            max_new_tokens,
            thought_lambda,
            action_only,
        )
        self.spec, self.encoder, self.image_size = spec, prompts, int(image_size)
        self.bootstrap_truncation = bootstrap_truncation
        self.mesh = mesh
        self._envs: HostEnvs | None = None
        self._eval_envs: dict[int, HostEnvs] = {}  # by count
        self._epoch = 0  # advanced by every reset and rollout: only the newest carry goes on
        self.resets = 0  # resets of the training environments
        self._compiled: dict = {}

    # ------------------------------------------------------------------------ compiled parts
    def _fns(self, compiler_options: dict | None):
        """(act, value, stack), jitted once per compiler options."""
        key = tuple(sorted((compiler_options or {}).items()))
        if key not in self._compiled:

            def act(params, frames, ids, mask, key, temperature):
                k_sample, k_rand, _ = jax.random.split(key, 3)  # as Actor.step splits its key
                knobs = sampling.make_knobs(temperature, eos_ids=self.sampling.eos_ids)
                return self.decide(params, frames, ids, mask, k_sample, k_rand, knobs)

            def stack(items):
                return jax.tree.map(lambda *xs: jnp.stack(xs), *items)

            shard = (
                {}
                if self.mesh is None
                else {"out_shardings": NamedSharding(self.mesh, P(None, BATCH))}
            )
            self._compiled[key] = (
                jax.jit(act, compiler_options=compiler_options),
                jax.jit(self.value_of, compiler_options=compiler_options),
                jax.jit(stack, compiler_options=compiler_options, **shard),
            )
        return self._compiled[key]

    def _put(self, x, time_major: bool = False):
        """Host array -> device, split over the mesh's batch axes when there is a mesh."""
        if self.mesh is None:
            return jnp.asarray(x)
        spec = P(None, BATCH) if time_major else P(BATCH)
        return jax.device_put(np.asarray(x), NamedSharding(self.mesh, spec))

    def _observe(self, obs: Observation):
        ids, mask = self.encoder.encode(self.encoder.prompt_texts(obs.texts))
        return obs.frames, ids, mask

    # ------------------------------------------------------------------------ environments
    def reset(self, key, num_envs: int) -> HostCarry:
        """Resets the training environments (made on first use, or again for another count)."""
        if self._envs is None or self._envs.num_envs != num_envs:
            if self._envs is not None:
                self._envs.close()
            self._envs = HostEnvs(self.spec, num_envs, self.image_size)
        self._epoch += 1
        self.resets += 1
        frames, ids, mask = self._observe(self._envs.reset(seed=_seed(key)))
        return HostCarry(
            frames,
            ids,
            mask,
            np.zeros((num_envs,), np.float32),
            np.zeros((num_envs,), np.int32),
            self._epoch,
        )

    def placeholder(self, num_envs: int) -> HostCarry:
        """A carry of the right shapes without touching the environments (checkpoint
        templates); it cannot be continued."""
        s, p = self.image_size, self.encoder.length
        return HostCarry(
            np.zeros((num_envs, s, s, 3), np.uint8),
            np.zeros((num_envs, p), np.int32),
            np.zeros((num_envs, p), np.int32),
            np.zeros((num_envs,), np.float32),
            np.zeros((num_envs,), np.int32),
            -1,
        )

    def close(self) -> None:
        """Closes every environment this actor made (a later reset or evaluation makes new
        ones)."""
        for envs in [self._envs, *self._eval_envs.values()]:
            if envs is not None:
                envs.close()
        self._envs, self._eval_envs = None, {}

    def _check(self, carry: HostCarry) -> None:
        if self._envs is None or carry.epoch != self._epoch:
            raise ValueError(
                "this carry does not continue the host environments' current "
                "episodes (host env states live in the environments, not in the "
                "carry): use the carry of the latest reset or rollout"
            )

    def _final_values(self, value, params, tr) -> np.ndarray:
        """Values of the final observations of truncated episodes (else 0)."""
        b = tr.truncated.shape[0]
        if not (self.bootstrap_truncation and tr.truncated.any()):
            return np.zeros((b,), np.float32)
        if tr.final is None:
            raise RuntimeError("an episode was truncated without its final observation")
        f_frames, f_ids, f_mask = self._observe(tr.final)
        v = value(params, self._put(f_ids), self._put(f_mask), self._put(f_frames))
        return np.where(tr.truncated, np.asarray(jax.device_get(v)), 0.0).astype(np.float32)

    # ------------------------------------------------------------------------ rollouts
    def make_rollout(self, num_steps: int, compiler_options: dict | None = None):
        """`rollout(params, carry, key, temperature) -> (carry, Trajectory, last_value)`."""
        act, value, stack = self._fns(compiler_options)

        def rollout(params, carry: HostCarry, key, temperature):
            self._check(carry)
            envs = self._envs
            temperature = jnp.float32(temperature)
            keys = jax.random.split(key, num_steps)
            frames, ids, mask = carry.frames, carry.prompt_ids, carry.prompt_mask
            ep_return, ep_length = carry.ep_return.copy(), carry.ep_length.copy()
            acted, host = [], []
            for t in range(num_steps):
                inputs = (self._put(frames), self._put(ids), self._put(mask))
                d: Decision = act(params, *inputs, keys[t], temperature)
                tr = envs.step(np.asarray(jax.device_get(d.action)))
                final_value = self._final_values(value, params, tr)
                done = tr.terminated | tr.truncated
                ep_return = ep_return + tr.reward
                ep_length = ep_length + 1
                host.append(
                    (
                        tr.reward,
                        tr.terminated,
                        tr.truncated,
                        final_value,
                        np.where(done, ep_return, 0.0).astype(np.float32),
                        np.where(done, ep_length, 0).astype(np.int32),
                    )
                )
                acted.append((*inputs, d))
                ep_return = np.where(done, 0.0, ep_return).astype(np.float32)
                ep_length = np.where(done, 0, ep_length).astype(np.int32)
                frames, ids, mask = self._observe(tr.obs)
            frames_t, ids_t, mask_t, d_t = stack(acted)
            columns = [self._put(np.stack(col), time_major=True) for col in zip(*host, strict=True)]
            traj: StepOutput = step_output(frames_t, ids_t, mask_t, d_t, *columns)
            last = value(params, self._put(ids), self._put(mask), self._put(frames))
            self._epoch += 1
            return HostCarry(frames, ids, mask, ep_return, ep_length, self._epoch), traj, last

        return rollout

    def make_evaluate(self, num_envs: int, max_steps: int, compiler_options: dict | None = None):
        """`evaluate(params, key, temperature) -> dict` over each env's first episode, as
        `rollout.Actor.make_evaluate` (the same keys and counts; host arrays)."""
        act, _, _ = self._fns(compiler_options)

        def evaluate(params, key, temperature):
            if num_envs not in self._eval_envs:
                self._eval_envs[num_envs] = HostEnvs(self.spec, num_envs, self.image_size)
            envs = self._eval_envs[num_envs]
            temperature = jnp.float32(temperature)
            k_reset, k_run = jax.random.split(key)
            frames, ids, mask = self._observe(envs.reset(seed=_seed(k_reset)))
            first_return = np.full((num_envs,), np.nan, np.float32)
            first_length = np.zeros((num_envs,), np.int32)
            ep_return = np.zeros((num_envs,), np.float32)
            ep_length = np.zeros((num_envs,), np.int32)
            s = {"t": 0, "steps": 0, "invalid": 0, "tokens": 0, "clipped": 0}
            while s["t"] < max_steps and np.isnan(first_return).any():
                d = act(
                    params,
                    self._put(frames),
                    self._put(ids),
                    self._put(mask),
                    jax.random.fold_in(k_run, s["t"]),
                    temperature,
                )
                action, lengths, parsed = (
                    np.asarray(x) for x in jax.device_get((d.action, d.lengths, d.parsed))
                )
                tr = envs.step(action)
                active = np.isnan(first_return)
                done = tr.terminated | tr.truncated
                ep_return, ep_length = ep_return + tr.reward, ep_length + 1
                first = active & done
                first_return = np.where(first, ep_return, first_return)
                first_length = np.where(first, ep_length, first_length)
                ep_return = np.where(done, 0.0, ep_return).astype(np.float32)
                ep_length = np.where(done, 0, ep_length).astype(np.int32)
                s["t"] += 1
                s["steps"] += int(active.sum())
                s["invalid"] += int((active & ~parsed).sum())
                s["tokens"] += int(np.where(active, lengths, 0).sum())
                s["clipped"] += int((active & (lengths >= self.sampling.max_new_tokens)).sum())
                frames, ids, mask = self._observe(tr.obs)
            return {
                "t": np.int32(s["t"]),
                "first_return": first_return,
                "first_length": first_length,
                **{k: np.int32(s[k]) for k in ("steps", "invalid", "tokens", "clipped")},
            }

        return evaluate
