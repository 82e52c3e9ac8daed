"""What a planned job costs per device: bytes of placed trees, the KV cache in closed form,
XLA's memory figures, and FLOPs per PPO iteration (loop bodies times their trip counts)."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from rlvlm_jax.build import with_shardings
from rlvlm_jax.models import sampling, scoring
from rlvlm_jax.sharding import BATCH, Shardings


def _itemsize(dtype) -> int:
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return 8  # threefry: 2 x uint32
    return np.dtype(dtype).itemsize


def device_bytes(tree) -> int:
    """Bytes one device holds of a tree of ShapeDtypeStructs with shardings (largest shard)."""
    total = 0
    for x in jax.tree.leaves(tree):
        shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
        total += int(np.prod(shape, dtype=np.int64)) * _itemsize(x.dtype)
    return total


def global_bytes(tree) -> int:
    return sum(int(np.prod(x.shape, dtype=np.int64)) * _itemsize(x.dtype)
               for x in jax.tree.leaves(tree))


def count(tree) -> int:
    return sum(int(np.prod(x.shape, dtype=np.int64)) for x in jax.tree.leaves(tree))


def kv_cache_bytes(text_cfg, batch: int, context: int, dtype, mesh_shape) -> dict:
    """Closed form of the rollout's KV cache: total and per device under sharding.CACHE_SPEC
    (batch over data x fsdp, kv heads over tensor; a dim the axes do not divide stays whole)."""
    d, f, t = mesh_shape
    per_elem = np.dtype(dtype).itemsize
    total = (text_cfg.num_layers * 2 * batch * text_cfg.num_kv_heads * context
             * text_cfg.dim_per_head * per_elem)
    # `constrain` applies the cache's spec only when every dim divides, else leaves it whole
    divides = batch % (d * f) == 0 and text_cfg.num_kv_heads % t == 0
    shards = d * f * t if divides else 1
    return {"total": int(total), "per_device": int(total // shards), "shards": shards}


def _memory(compiled) -> dict:
    m = compiled.memory_analysis()
    return {"arguments": int(m.argument_size_in_bytes), "outputs": int(m.output_size_in_bytes),
            "aliased": int(m.alias_size_in_bytes), "temporaries": int(m.temp_size_in_bytes),
            "code": int(m.generated_code_size_in_bytes)}


def _flops(compiled) -> float:
    ca = compiled.cost_analysis()
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else {}
    return float((ca or {}).get("flops", 0.0))



def count_flops(a, steps: dict, log=print) -> dict:
    """FLOPs per PPO iteration from XLA's cost analysis, per device.

    XLA's cost analysis counts a loop body once, whatever its trip count (checked: a 10-step
    scan of a matmul reports one matmul). So the whole compiled rollout and update are counted
    once each, and the loop bodies are compiled on their own (same functions, same shardings)
    and added for their remaining trips:

        rollout = S * (R - V) + V + S * (T - 2) * D
        update  = U + (E*M*K - 1) * G + (E*M - 1) * O  [+ (chunks - 1) * F with a KL reference]

    R, U: the compiled rollout / update; S env steps, T max_new_tokens; D one decode step (the
    sampler's while body: `sampling.decode` compiled alone); V the bootstrap value
    (`Actor.last_value`); E epochs, M minibatches, K micro-batches; O the optimiser step
    (`tx.update` + apply); F the reference scoring of one chunk (`scoring.token_logprobs`); G one
    micro-batch's forward + backward = U - O (- F), which also absorbs the one-off GAE and
    shuffling (tiny). Every response is counted at T tokens (decoding stops early when all
    envs answered) and the truncation bootstrap value at every step (an upper bound).
    """
    c, p = a.config, a.config.ppo
    n_steps, t_new = c.ppo.num_steps, c.max_new_tokens
    units = {}
    with jax.set_mesh(a.mesh):
        r = _flops(steps["rollout"]["compiled"])
        u = _flops(steps["update"]["compiled"])
        t0 = time.time()
        xla = a.run.compiler_options
        v = _flops(jax.jit(a.run.actor.last_value, compiler_options=xla)
                   .lower(a.params, a.carry).compile())
        d = _flops(_decode_step(a).compile())
        o = _flops(jax.jit(lambda g, s, q: optax.apply_updates(q, a.run.ppo_tx.update(g, s, q)[0]),
                           compiler_options=xla).lower(a.params, a.opt_state, a.params).compile())
        f = 0.0
        chunks = 1
        n = p.num_envs * p.num_steps
        if p.kl_coef > 0:
            chunk = n // (p.minibatches * p.micro_batches)
            chunks = n // max(1, chunk)
            f = _flops(_score_chunk(a, steps["trajectory"], chunk).compile())
        log(f"[plan] FLOP units compiled in {time.time() - t0:.0f} s")
    g = max(u - o - f, 0.0)
    rollout = n_steps * (r - v) + v + n_steps * (t_new - 2) * d
    k = p.epochs * p.minibatches
    update = u + (k * p.micro_batches - 1) * g + (k - 1) * o + (chunks - 1) * f
    units.update(rollout_program=r, update_program=u, bootstrap_value=v, decode_step=d,
                 optimizer_step=o, reference_chunk=f, micro_batch=g)
    return {"rollout": rollout, "update": update, "iteration": rollout + update,
            "units": units}


def _decode_step(a):
    """The sampler's decode loop for the rollout's batch (its body is counted once)."""
    b, plen = a.config.ppo.num_envs, a.prompt_tokens
    cfg = a.policy.cfg
    policy, actor = a.policy, a.run.actor
    vlm = a.params["vlm"]  # LoRA, when on, is merged into weights of these same shapes
    sh = Shardings(a.mesh, vlm)

    def prefill(vlm_params, ids, mask, frames, key):
        model = nnx.merge(policy.vlm_graph, vlm_params)
        cache = sampling.new_cache(model, b, plen, actor.sampling)
        knobs = sampling.make_knobs(1.0, eos_ids=actor.sampling.eos_ids)
        return sampling.prefill(model, ids, mask, policy.preprocess(frames), cache, key, knobs,
                                cfg=actor.sampling)

    ids = jax.ShapeDtypeStruct((b, plen), jnp.int32)
    frames = jax.ShapeDtypeStruct((b, a.config.image_size, a.config.image_size, 3), jnp.uint8)
    state, cache = jax.eval_shape(prefill, vlm, ids, ids, frames, a.key)
    kw = sampling.jit_shardings(sh, sampling.has_rope_delta(cfg))["decode"]
    state_sh = kw["in_shardings"][1]
    cache_sh = jax.tree.map(lambda s, sub: jax.tree.map(lambda _: s, sub),
                            kw["in_shardings"][2], cache)

    def decode(vlm_params, state, cache):
        model = nnx.merge(policy.vlm_graph, vlm_params)
        return sampling.decode(model, state, cache, cfg=actor.sampling)

    return jax.jit(decode, compiler_options=a.run.compiler_options).lower(
        vlm, with_shardings(state, state_sh), with_shardings(cache, cache_sh))


def _score_chunk(a, traj, chunk: int):
    """`scoring.token_logprobs` of the KL reference on one chunk of samples (the update's
    `lax.map` body). A chunk the batch axes do not divide is replicated, as `constrain` leaves
    it inside the update."""
    split = chunk % (a.mesh.shape["data"] * a.mesh.shape["fsdp"]) == 0
    batch = NamedSharding(a.mesh, P(BATCH) if split else P())
    policy, temp = a.policy, float(a.config.ppo.temperature)

    def row(x):
        return jax.ShapeDtypeStruct((chunk, *x.shape[2:]), x.dtype, sharding=batch)

    def score(params, frames, ids, mask, tokens, tmask):
        return scoring.token_logprobs(policy.model(params), ids, mask, policy.preprocess(frames),
                                      tokens, tmask, temp).logprobs

    tmask = jax.ShapeDtypeStruct((chunk, traj.tokens.shape[-1]), jnp.bool_, sharding=batch)
    params = a.ref_params if a.ref_params is not None else a.params
    return jax.jit(score, compiler_options=a.run.compiler_options).lower(
        params, row(traj.frames), row(traj.prompt_ids), row(traj.prompt_mask), row(traj.tokens),
        tmask)


def _fit(xs, ys, at):
    """Least-squares line through (xs, ys), evaluated at `at`; and the largest residual."""
    slope, intercept = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    resid = max(abs(slope * x + intercept - y) for x, y in zip(xs, ys, strict=True))
    return slope * at + intercept, resid


def extrapolate(runs: list[dict], depths: list[int], full: int) -> dict:
    """Per-quantity linear fits in the decoder depth (KV cache, remat residuals, gradients and
    per-layer FLOPs grow linearly with it; one layer's working set does not)."""
    out = {"trajectory_bytes": runs[-1]["trajectory_bytes"],
           "compile_seconds": {k: sum(r["compile_seconds"][k] for r in runs)
                               for k in ("rollout", "update")}}
    resid = {}
    for prog in ("rollout", "update"):
        out[prog] = {}
        for k in runs[0][prog]:
            v, e = _fit(depths, [r[prog][k] for r in runs], full)
            out[prog][k] = int(round(v))
            resid[f"{prog}.{k}"] = e
    if "flops" in runs[0]:
        fl = {"units": {}}
        for k in ("rollout", "update", "iteration"):
            fl[k] = _fit(depths, [r["flops"][k] for r in runs], full)[0]
        for k in runs[0]["flops"]["units"]:
            fl["units"][k] = _fit(depths, [r["flops"]["units"][k] for r in runs], full)[0]
        out["flops"] = fl
    out["extrapolated"] = {
        "probe_layers": depths, "full_layers": full,
        "probes": [{"layers": d, "rollout": r["rollout"], "update": r["update"],
                    **({"flops_iteration": r["flops"]["iteration"]} if "flops" in r else {})}
                   for d, r in zip(depths, runs, strict=True)],
        "largest_fit_residual_bytes": max(resid.values()),
    }
    return out
