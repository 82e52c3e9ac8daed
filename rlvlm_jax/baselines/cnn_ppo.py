"""The paper's CNN+RL baseline: a small conv actor-critic trained with PPO on the env's pictures.

    python -m rlvlm_jax.baselines.cnn_ppo --config experiments/cnn_ppo.py --workdir outputs/cnn_nl
    python -m rlvlm_jax.baselines.cnn_ppo --config experiments/cnn_ppo.py --workdir ... \
        --config.task=EZPoints --config.seed=1

A purejaxrl-style loop: each PPO update (a `lax.scan` over env steps of vmapped envs, GAE from
`rlvlm_jax.rl.gae`, epochs x minibatches of the project's `losses.ppo_loss` with Adam) is one
jitted call; the host only logs. The network sees what the VLM sees: the env's picture at
`image_size` (0: the task's smallest legible size), as "ink" (255 - x) / 255.

Evaluation is the VLM's (`rlvlm_jax.baselines.policies.make_evaluate`): the first episode of each
of `eval.episodes` environments, actions sampled from the policy's softmax at `eval.temperature`
(1.0 by default: the policy as trained, as the VLM is evaluated at its own rollout temperature;
<= 0 takes the argmax), success = first-episode return > 0, unfinished episodes are failures. The
same environments are evaluated before and after training.

Outputs in the workdir, in the schema of `rlvlm_jax.train`: config.json (with `method`, `task`,
`seed`, image_size resolved), results.json (init_eval, ppo_eval, evals (none in between),
history, wall_seconds, num_params) and tb/ (TensorBoard). A workdir already holding
results.json of a different config is refused; one holding this config's results is left as it
is.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app, flags
from flax import nnx

from rlvlm_jax import envs
from rlvlm_jax.baselines import policies
from rlvlm_jax.config_files import parse_flags
from rlvlm_jax.rl import losses
from rlvlm_jax.rl.gae import gae
from rlvlm_jax.rl.minibatch import gather, shuffle_indices
from rlvlm_jax.tensorboard import Progress, Writer


# ------------------------------------------------------------------------------------ network
def patches(x: jax.Array, kernel: int, stride: int) -> jax.Array:
    """[B, H, W, C] -> [B, H', W', kernel * kernel * C] 'VALID' patches from strided slices.

    A conv written as patches + Dense: XLA:CPU ran `nn.Conv` inside `lax.scan` ~13x slower, and
    slices keep the work at plain copies and one matmul."""
    b, h, w, c = x.shape
    oh, ow = (h - kernel) // stride + 1, (w - kernel) // stride + 1
    cols = [
        jax.lax.slice(x, (0, i, j, 0), (b, i + stride * (oh - 1) + 1, j + stride * (ow - 1) + 1, c),
                      (1, stride, stride, 1))
        for i in range(kernel) for j in range(kernel)
    ]
    return jnp.concatenate(cols, axis=-1)


def conv_sides(image_size: int, kernels, strides) -> list[int]:
    """Side of the picture after each conv layer."""
    sides, side = [], image_size
    for k, s in zip(kernels, strides, strict=True):
        side = (side - k) // s + 1
        sides.append(side)
    return sides


class ConvActorCritic(nnx.Module):
    """Convs (patches + Dense, ReLU) -> Dense(hidden) ReLU -> policy logits and a value.

    LeCun-normal init everywhere (orthogonal init deadlocked under vmap in jaxlib's CPU QR); the
    policy head starts 100x smaller so the first policy is close to uniform."""

    def __init__(self, image_size: int, num_actions: int, channels=(32, 64), kernels=(4, 3),
                 strides=(2, 2), hidden: int = 256, *, rngs: nnx.Rngs):
        self.kernels, self.strides = tuple(kernels), tuple(strides)
        c_in = 3
        for i, (c, k) in enumerate(zip(channels, kernels, strict=True)):
            setattr(self, f"conv{i}", nnx.Linear(c_in * k * k, c, rngs=rngs))
            c_in = c
        side = conv_sides(image_size, kernels, strides)[-1]
        self.torso = nnx.Linear(side * side * c_in, hidden, rngs=rngs)
        small = nnx.initializers.variance_scaling(1e-4, "fan_in", "truncated_normal")
        self.policy_head = nnx.Linear(hidden, num_actions, kernel_init=small, rngs=rngs)
        self.value_head = nnx.Linear(hidden, 1, rngs=rngs)

    def __call__(self, frames: jax.Array) -> tuple[jax.Array, jax.Array]:
        """uint8 [B, S, S, 3] pictures -> (logits [B, A], values [B])."""
        x = (255.0 - frames.astype(jnp.float32)) / 255.0  # "ink", as the VLM's pixels
        for i, (k, s) in enumerate(zip(self.kernels, self.strides, strict=True)):
            x = jax.nn.relu(getattr(self, f"conv{i}")(patches(x, k, s)))
        x = jax.nn.relu(self.torso(x.reshape(x.shape[0], -1)))
        return self.policy_head(x), self.value_head(x)[:, 0]


# ------------------------------------------------------------------------------------ config
def resolve_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A validated copy with the task's canonical name and image_size 0 replaced by the task's
    minimum; raises a one-line ValueError on bad values (before anything is written)."""
    c = ml_collections.ConfigDict(config.to_dict())
    if c.get("method", "cnn_ppo") != "cnn_ppo":
        raise ValueError(f"method must be 'cnn_ppo' for this trainer, got {c.method!r}")
    c.method = "cnn_ppo"
    try:
        c.task = envs.tasks.get_task(c.task).name
    except KeyError:
        raise ValueError(f"unknown task {c.task!r}; choose one of "
                         f"{', '.join(envs.tasks.TASK_NAMES)}") from None
    smallest = envs.TASKS[c.task].min_image_size()
    if c.image_size == 0:
        c.image_size = smallest
    if c.image_size < smallest:
        raise ValueError(f"image_size={c.image_size} is below {c.task}'s smallest legible size "
                         f"{smallest} (0 picks it)")
    p, m = c.ppo, c.model
    positive = {"ppo.total_env_steps": p.total_env_steps, "ppo.num_envs": p.num_envs,
                "ppo.num_steps": p.num_steps, "ppo.epochs": p.epochs,
                "ppo.minibatches": p.minibatches, "model.hidden": m.hidden,
                "eval.episodes": c.eval.episodes, "eval.max_steps": c.eval.max_steps,
                "log_every": c.log_every}
    for name, v in positive.items():
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    if (p.num_envs * p.num_steps) % p.minibatches:
        raise ValueError(f"a buffer of num_envs * num_steps = {p.num_envs * p.num_steps} does "
                         f"not split into ppo.minibatches = {p.minibatches}")
    if not len(m.channels) == len(m.kernels) == len(m.strides) >= 1:
        raise ValueError("model.channels, model.kernels and model.strides need the same "
                         "length >= 1")
    if min(*m.channels, *m.kernels, *m.strides) < 1:
        raise ValueError("model.channels, model.kernels and model.strides must be >= 1")
    if conv_sides(c.image_size, m.kernels, m.strides)[-1] < 1:
        raise ValueError(f"the convs (kernels {tuple(m.kernels)}, strides {tuple(m.strides)}) "
                         f"leave nothing of a {c.image_size} px picture")
    if p.lr < 0:
        raise ValueError(f"ppo.lr must be >= 0, got {p.lr}")
    return c


# ------------------------------------------------------------------------------------ training
class Transition(NamedTuple):
    """One env step of the batch [B, ...]; a rollout stacks T of them."""

    frames: jax.Array  # uint8 [B, S, S, 3] the picture acted on
    action: jax.Array
    logp: jax.Array
    value: jax.Array
    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    final_value: jax.Array  # value of the pre-reset picture where truncated, else 0
    episode_return: jax.Array  # return of the episode ending here (else 0)
    episode_length: jax.Array


class Runner(NamedTuple):
    """Everything one update hands to the next."""

    params: object
    opt_state: object
    env_state: object
    ep_return: jax.Array
    ep_length: jax.Array
    key: jax.Array


class Trainer:
    """The built pieces of one config: envs, network, optimiser, jitted update and evaluation."""

    def __init__(self, config: ml_collections.ConfigDict):
        c = self.config = resolve_config(config)
        p = c.ppo
        self.bootstrap = not p.truncation_as_termination
        # Rollouts need the pre-reset picture of truncated episodes to bootstrap their value.
        self.env, self.env_params = envs.make(c.task, image_size=c.image_size,
                                              final_observation=self.bootstrap)
        self.eval_env, _ = envs.make(c.task, image_size=c.image_size)
        self.per_update = p.num_envs * p.num_steps
        self.iterations = -(-p.total_env_steps // self.per_update)
        key = jax.random.PRNGKey(c.seed)
        self.key_init, self.key_train, self.key_eval = jax.random.split(key, 3)
        model = ConvActorCritic(c.image_size, self.env.num_actions, c.model.channels,
                                c.model.kernels, c.model.strides, c.model.hidden,
                                rngs=nnx.Rngs(self.key_init))
        self.graphdef, self.init_params = nnx.split(model, nnx.Param)
        self.num_params = int(sum(x.size for x in jax.tree.leaves(self.init_params)))
        steps = self.iterations * p.epochs * p.minibatches
        lr = optax.linear_schedule(p.lr, 0.0, steps) if p.anneal_lr else p.lr
        self.tx = optax.chain(optax.clip_by_global_norm(p.grad_clip), optax.adam(lr, eps=1e-5))
        self.update = jax.jit(self._update, donate_argnums=0)
        self.evaluate_fn = policies.make_evaluate(self.eval_env, self.env_params, self._act,
                                                  c.eval.episodes, c.eval.max_steps)

    def apply(self, params, frames):
        return nnx.merge(self.graphdef, params)(frames)

    def _act(self, params, key, state):
        logits, _ = self.apply(params, state.canvas)
        t = self.config.eval.temperature
        if t <= 0:
            return jnp.argmax(logits, axis=-1)
        return jax.random.categorical(key, logits / t)

    def init_runner(self) -> Runner:
        k_reset, k_run = jax.random.split(self.key_train)
        n = self.config.ppo.num_envs
        _, state = jax.vmap(self.env.reset, in_axes=(0, None))(jax.random.split(k_reset, n),
                                                               self.env_params)
        params = jax.tree.map(jnp.copy, self.init_params)
        return Runner(params, self.tx.init(params), state, jnp.zeros((n,), jnp.float32),
                      jnp.zeros((n,), jnp.int32), k_run)

    def _env_step(self, params, carry, key):
        state, ep_return, ep_length = carry
        n = ep_return.shape[0]
        k_act, k_env = jax.random.split(key)
        frames = state.canvas
        logits, value = self.apply(params, frames)
        action = jax.random.categorical(k_act, logits).astype(jnp.int32)
        logp = jnp.take_along_axis(jax.nn.log_softmax(logits), action[:, None], axis=1)[:, 0]
        _, nxt, reward, term, trunc, info = jax.vmap(self.env.step, in_axes=(0, 0, 0, None))(
            jax.random.split(k_env, n), state, action, self.env_params)
        if self.bootstrap:
            final_value = jax.lax.cond(
                jnp.any(trunc),
                lambda: jnp.where(trunc, self.apply(params, info["final_observation"])[1], 0.0),
                lambda: jnp.zeros((n,), jnp.float32),
            )
        else:
            final_value = jnp.zeros((n,), jnp.float32)
        done = term | trunc
        ep_return, ep_length = ep_return + reward, ep_length + 1
        record = Transition(frames, action, logp, value, reward, term, trunc, final_value,
                            jnp.where(done, ep_return, 0.0), jnp.where(done, ep_length, 0))
        carry = (nxt, jnp.where(done, 0.0, ep_return), jnp.where(done, 0, ep_length))
        return carry, record

    def _loss(self, params, batch):
        t, p = batch, self.config.ppo
        logits, value = self.apply(params, t["frames"])
        logp_all = jax.nn.log_softmax(logits)
        new_logp = jnp.take_along_axis(logp_all, t["action"][:, None], axis=1)[:, 0]
        entropy = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
        return losses.ppo_loss(
            new_logp, t["logp"], t["advantage"], values=value, old_values=t["value"],
            returns=t["ret"], clip_eps=p.clip_eps, value_clip_eps=p.value_clip_eps,
            vf_coef=p.vf_coef, ent_coef=p.ent_coef, entropy=entropy[:, None],
            token_mask=jnp.ones((new_logp.shape[0], 1), bool), value_loss="clipped",
        )

    def _update(self, r: Runner) -> tuple[Runner, dict]:
        """One rollout of num_steps x num_envs and its PPO update (jitted, runner donated)."""
        p = self.config.ppo
        key, k_roll, k_perm = jax.random.split(r.key, 3)
        (state, ep_return, ep_length), traj = jax.lax.scan(
            lambda carry, k: self._env_step(r.params, carry, k),
            (r.env_state, r.ep_return, r.ep_length), jax.random.split(k_roll, p.num_steps))
        last_value = self.apply(r.params, state.canvas)[1]
        adv, ret = gae(traj.reward, traj.value, traj.terminated, traj.truncated, last_value,
                       traj.final_value, gamma=p.gamma, gae_lambda=p.gae_lambda,
                       truncation_as_termination=p.truncation_as_termination)
        n = self.per_update
        samples = {
            "frames": traj.frames.reshape(n, *traj.frames.shape[2:]),
            "action": traj.action.reshape(n),
            "logp": traj.logp.reshape(n),
            "value": traj.value.reshape(n),
            "advantage": losses.normalize_advantages(adv.reshape(n)),
            "ret": ret.reshape(n),
        }
        order = shuffle_indices(k_perm, n, p.epochs, p.minibatches).reshape(-1, n // p.minibatches)
        grad_fn = jax.value_and_grad(self._loss, has_aux=True)

        def minibatch(carry, idx):
            params, opt_state = carry
            (_, aux), grads = grad_fn(params, gather(samples, idx))
            updates, opt_state = self.tx.update(grads, opt_state, params)
            aux["grad_norm"] = optax.tree.norm(grads)
            return (optax.apply_updates(params, updates), opt_state), aux

        (params, opt_state), per_mb = jax.lax.scan(minibatch, (r.params, r.opt_state), order)
        done = traj.terminated | traj.truncated
        denom = jnp.maximum(jnp.sum(done), 1)
        metrics = {k: jnp.mean(per_mb[k]) for k in ("policy_loss", "value_loss", "entropy",
                                                     "approx_kl", "clip_frac", "grad_norm")}
        metrics.update(  # as `rlvlm_jax.rl.ppo.rollout_metrics`: episodes ending in this rollout
            episodes=jnp.sum(done),
            success_rate=jnp.sum(done & (traj.episode_return > 0)) / denom,
            episode_return=jnp.sum(traj.episode_return) / denom,
            episode_length=jnp.sum(traj.episode_length) / denom,
            reward_mean=jnp.mean(traj.reward),
            value_mean=jnp.mean(traj.value),
        )
        return Runner(params, opt_state, state, ep_return, ep_length, key), metrics

    def evaluate(self, params) -> dict:
        t0 = time.time()
        out = policies.summarize(self.evaluate_fn(params, self.key_eval))
        out["eval_seconds"] = time.time() - t0
        return out


def _config_json(c: ml_collections.ConfigDict) -> dict:
    return json.loads(c.to_json_best_effort())


def train(config: ml_collections.ConfigDict, workdir: str, *, log: bool = True,
          trainer: Trainer | None = None) -> dict:
    """Trains and evaluates one config; returns the results also written to results.json.

    `trainer` reuses one built for the same config (compiled functions; tests). Bad config
    values raise ValueError before anything is written.
    """
    t_start = time.time()
    if trainer is None:
        c = resolve_config(config)
    else:
        c = trainer.config
        if _config_json(resolve_config(config)) != _config_json(c):
            raise ValueError("the trainer was built for a different config")
    record = _config_json(c)
    done = policies.check_workdir(workdir, record)
    if done is not None:
        print(f"[done] {workdir} already holds this run's results", flush=True)
        return done
    tr = trainer or Trainer(c)
    say = print if log else (lambda *a, **k: None)
    policies.write_json(workdir, "config.json", record)
    writer = Writer(os.path.join(workdir, "tb") if log else None)
    say(f"[setup] cnn_ppo on {c.task}: {tr.num_params:,} params, {c.image_size} px, "
        f"{tr.iterations} updates of {tr.per_update} env steps, workdir {workdir}", flush=True)
    results = {"sft_eval": None, "init_eval": tr.evaluate(tr.init_params)}
    say(f"[eval] initial policy: success {results['init_eval']['success_rate']:.3f}", flush=True)
    runner = tr.init_runner()
    history = []
    progress = Progress("ppo", tr.iterations)
    for it in range(tr.iterations):
        runner, metrics = tr.update(runner)
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not np.isfinite(m["policy_loss"] + m["value_loss"]):
            raise FloatingPointError(f"non-finite loss at update {it + 1}")
        step = it + 1
        entry = {"iteration": step, "env_steps": step * tr.per_update, **m}
        history.append(entry)
        writer.scalars(step, entry, "ppo/")
        if log and (step % c.log_every == 0 or step == tr.iterations or it == 0):
            progress(step, {k: m[k] for k in ("success_rate", "episode_return", "entropy",
                                              "approx_kl")})
    results["ppo_eval"] = tr.evaluate(runner.params)
    writer.scalars(tr.iterations, results["ppo_eval"], "eval/")
    writer.close()
    say(f"[eval] trained policy: success {results['ppo_eval']['success_rate']:.3f} over "
        f"{results['ppo_eval']['episodes']} first episodes", flush=True)
    results.update(evals=[], history=history, wall_seconds=time.time() - t_start,
                   num_params=tr.num_params)
    policies.write_json(workdir, "results.json", results)
    say(f"[done] {results['wall_seconds']:.0f} s; results in "
        f"{os.path.join(workdir, 'results.json')}", flush=True)
    return results


def main(argv, config_flag, workdir_flag) -> int:
    del argv
    try:
        train(config_flag.value, workdir_flag.value)
    except (ValueError, FloatingPointError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # bad flags: one line and exit code 2 (config_files.parse_flags)
    from ml_collections import config_flags

    _CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file",
                                              lock_config=True)
    _WORKDIR = flags.DEFINE_string("workdir", None, "output directory")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(lambda argv: sys.exit(main(argv, _CONFIG, _WORKDIR)), flags_parser=parse_flags)
