"""The planner's verdict: warnings, the parts of the peak, suggestions when it does not fit,
and the printed table."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from rlvlm_jax.build import _path_keys
from rlvlm_jax.planning.accounting import _itemsize, count
from rlvlm_jax.rl import lora as lora_lib
from rlvlm_jax.sharding import AXES, ShardingError, param_shardings

GIB = 1024**3


def warnings(report, shape) -> list[str]:
    """Settings that compile but waste the mesh."""
    d, f, t = shape
    pp, out = report["ppo"], []
    micro = pp["micro_batch_size"]
    if micro % (d * f):
        most = max(1, micro * pp["micro_batches"] // (d * f))
        out.append(f"a micro-batch of {micro} samples does not split over data x fsdp = "
                   f"{d * f} devices: its activations are not batch-sharded (devices repeat "
                   f"work); use ppo.micro_batches <= {most} so each micro-batch has a "
                   f"multiple of {d * f} samples")
    return out


def contributors(report) -> list[dict]:
    """The peak phase's parts, largest first."""
    b = report["per_device_bytes"]
    if b["rollout_phase_peak"] >= b["update_phase_peak"]:
        phase = "rollout"
        parts = {"params": b["params"], "optimizer state": b["optimizer_state"],
                 "reference params": b["reference_params"], "KV cache": b["kv_cache"],
                 "other rollout temporaries": b["rollout_temporaries_besides_kv_cache"],
                 "trajectory (rollout output)": b["trajectory"], "env state": b["env_state"]}
    else:
        phase = "update"
        parts = {"params": b["params"], "optimizer state": b["optimizer_state"],
                 "reference params": b["reference_params"],
                 "update temporaries (activations, gradients)": b["update_temporaries"],
                 "trajectory (update input)": b["trajectory"], "env state": b["env_state"]}
    return [{"phase": phase, "part": k, "bytes": v}
            for k, v in sorted(parts.items(), key=lambda kv: -kv[1]) if v > 0]


def _sharded_state_bytes(a, shape) -> int:
    """params + optimiser state + reference per device on another mesh (no compile)."""
    mesh = jax.sharding.AbstractMesh(tuple(shape), AXES)

    def per(tree):
        total = 0
        for x in jax.tree.leaves(tree):
            spec = x.sharding.spec
            shard = list(x.shape)
            for dim, axes in enumerate(spec):
                if axes is None:
                    continue
                axes = (axes,) if isinstance(axes, str) else axes
                shard[dim] //= math.prod(mesh.shape[ax] for ax in axes)
            total += int(np.prod(shard, dtype=np.int64)) * _itemsize(x.dtype)
        return total

    out = per(a.params) + per(a.opt_state)
    return out + (per(a.ref_params) if a.ref_params is not None else 0)


def _divides(a, shape) -> bool:
    mesh = jax.sharding.AbstractMesh(tuple(shape), AXES)
    try:
        for v in a.params.values():
            param_shardings(v, mesh)
    except ShardingError:
        return False
    p = a.config.ppo
    return p.num_envs % (shape[0] * shape[1]) == 0


def suggestions(a, report, shape, target) -> list[dict]:
    """Concrete changes, largest estimated saving first (estimates; re-plan to confirm)."""
    c, p = a.config, a.config.ppo
    b = report["per_device_bytes"]
    upd_phase = b["update_phase_peak"] >= b["rollout_phase_peak"]
    state = b["params"] + b["optimizer_state"] + b["reference_params"]
    out = []
    d, f, t = shape
    n = d * f * t
    cand = []
    if d > 1:
        cand.append((1, d * f, t))
    if target.devices is None:
        cand += [(d, f * 2, t), (d, f * 4, t)]
    for new in cand:
        if _divides(a, new):
            saved = state - _sharded_state_bytes(a, new)
            extra = "" if math.prod(new) == n else f" ({math.prod(new)} devices)"
            out.append({"change": f"--mesh {','.join(map(str, new))}{extra}",
                        "why": "shard params and optimiser state over more devices (fsdp)",
                        "saves_bytes": saved, "estimate": "exact"})
            break
    if not c.model.remat and upd_phase:
        out.append({"change": "--config.model.remat=True",
                    "why": "recompute each layer's activations in the backward pass",
                    "saves_bytes": b["update_temporaries"] // 2, "estimate": "at most"})
    micro = (p.num_envs * p.num_steps) // (p.minibatches * p.micro_batches)
    if upd_phase and micro % 2 == 0 and (micro // 2) % (d * f) == 0:
        out.append({"change": f"--config.ppo.micro_batches={p.micro_batches * 2}",
                    "why": f"micro-batches of {micro // 2} instead of {micro}: half the "
                           "activations live at once", "saves_bytes": b["update_temporaries"] // 2,
                    "estimate": "at most"})
    if jnp.dtype(c.model.param_dtype) == jnp.float32:
        out.append({"change": "--config.model.param_dtype=bfloat16",
                    "why": "bf16 params (and, with optax's defaults, bf16 Adam moments); "
                           "less precise updates", "saves_bytes": state // 2,
                    "estimate": "exact"})
    rank = int(p.lora_rank)
    if rank == 0:
        if "lora_rank" in p:
            frac = _lora_fraction(a, 128, report["model"]["trainable_params"])
            out.append({"change": "--config.ppo.lora_rank=128",
                        "why": "LoRA: Adam state only for adapters and the value head (RL4VLM: "
                               "r=128); merging adapters adds temporaries, re-plan",
                        "saves_bytes": int(b["optimizer_state"] * (1 - frac)),
                        "estimate": "rough"})
        else:
            out.append({"change": "LoRA (ppo.lora_rank)", "why": "not available in this "
                        "checkout; would drop most of the optimiser state", "saves_bytes": 0,
                        "estimate": "rough"})
    heads = math.gcd(a.policy.cfg.text.num_kv_heads, a.policy.cfg.vision.num_heads)
    temps = b["update_temporaries"] if upd_phase else b["rollout_temporaries"]
    for k in (8, 4, 2):
        new = (d, f // k, t * k)
        if f % k == 0 and heads % (t * k) == 0 and _divides(a, new):
            out.append({"change": f"--mesh {','.join(map(str, new))}",
                        "why": f"tensor parallelism x{k}: each device gathers 1/{t * k} of a "
                               "layer's weights over fsdp, attention and MLP activations split "
                               "by heads (rough: half the saving the ratio suggests)",
                        "saves_bytes": int(temps * (1 - 1 / k) / 2), "estimate": "rough"})
            break
    if not upd_phase and p.num_envs % 2 == 0 and (p.num_envs // 2) % (d * f) == 0:
        out.append({"change": f"--config.ppo.num_envs={p.num_envs // 2} "
                              f"--config.ppo.num_steps={p.num_steps * 2}",
                    "why": "half the envs per rollout (same buffer): half the KV cache and "
                           "rollout activations", "saves_bytes": b["rollout_temporaries"] // 2,
                    "estimate": "at most"})
    return sorted(out, key=lambda s: -s["saves_bytes"])


def _lora_fraction(a, rank: int, trainable: int) -> float:
    """(adapters of `rank` + value head) / the current trainable params (for the estimate)."""
    try:
        paths = lora_lib.target_paths(a.params["vlm"])
        flat = {"/".join(_path_keys(p)): x
                for p, x in jax.tree_util.tree_leaves_with_path(a.params["vlm"])}
        adapters = sum(sum(lora_lib._split(path, flat[path].shape)) * rank for path in paths)
    except Exception:  # noqa: BLE001 - an optional estimate
        return 1.0
    return min(1.0, (adapters + count(a.params["value"])) / max(trainable, 1))


# ------------------------------------------------------------------------------------ output
def _gib(x) -> str:
    """Right-aligned GiB (or MiB below 0.1 GiB), 12 characters."""
    if abs(x) >= 0.1 * GIB:
        return f"{x / GIB:8.2f} GiB"
    return f"{x / 2**20:8.2f} MiB"


def format_report(r: dict) -> str:
    b, m, pp = r["per_device_bytes"], r["model"], r["ppo"]
    mesh = " ".join(f"{k}={v}" for k, v in r["mesh"].items())
    lines = [
        f"Plan for {r['config'] or 'config'} on {r['device']} ({r['accelerator']}, "
        f"{r['devices']} devices x {r['hbm_per_device'] / GIB:.1f} GiB), mesh {mesh}",
        f"Model: {m['source']}: {m['params']:,} params ({m['trainable_params']:,} trainable), "
        f"{m['dtype']} compute, {m['param_dtype']} params, remat {'on' if m['remat'] else 'off'}"
        + (f", LoRA r={m['lora_rank']}" if m["lora_rank"] else ""),
        f"Prompt {m['prompt_tokens']} tokens ({m['prompt_tokens_source']}), "
        f"{m['max_new_tokens']} new tokens; {pp['num_envs']} envs x {pp['num_steps']} steps, "
        f"{pp['epochs']} epochs x {pp['minibatches']} minibatches x {pp['micro_batches']} "
        f"micro-batches of {pp['micro_batch_size']}",
        "",
        "per device",
        f"  {'params':<46}{_gib(b['params'])}",
        f"  {'optimiser state':<46}{_gib(b['optimizer_state'])}",
        f"  {'KL reference params':<46}{_gib(b['reference_params'])}",
        f"  {'env state':<46}{_gib(b['env_state'])}",
        f"  {'KV cache (closed form)':<46}{_gib(b['kv_cache'])}",
        f"  {'rollout temporaries (XLA, incl. KV cache)':<46}{_gib(b['rollout_temporaries'])}",
        f"  {'trajectory buffer':<46}{_gib(b['trajectory'])}",
        f"  {'update temporaries (XLA)':<46}{_gib(b['update_temporaries'])}",
        f"  {'peak during rollout':<46}{_gib(b['rollout_phase_peak'])}",
        f"  {'peak during update':<46}{_gib(b['update_phase_peak'])}",
        f"  {'PEAK':<46}{_gib(b['peak'])}  of {r['hbm_per_device'] / GIB:.2f} GiB "
        f"({100 * r['peak_share_of_hbm']:.0f}%; budget {r['budget_per_device'] / GIB:.2f} with "
        f"{100 * r['headroom']:.0f}% headroom) -> {'FITS' if r['fits'] else 'DOES NOT FIT'}",
    ]
    if "flops" in r:
        f = r["flops"]
        lines += ["", "FLOPs per PPO iteration (XLA cost analysis x loop trip counts)",
                  f"  {'':<12}{'per device':>14}{'total':>14}"]
        for k in ("rollout", "update", "iteration"):
            lines.append(f"  {k:<12}{f['per_device'][k]:14.3e}{f['total'][k]:14.3e}")
        lines.append(f"  at the device's peak bf16 rate an iteration takes >= "
                     f"{f['seconds_at_peak']:.1f} s")
    for w in r.get("warnings", []):
        lines.append(f"warning: {w}")
    cs = r["compile_seconds"]
    lines.append(f"\nCompiled on {r['devices']} simulated CPU devices: rollout "
                 f"{cs['rollout']:.0f} s, update {cs['update']:.0f} s; planned in "
                 f"{r['wall_seconds']:.0f} s")
    ex = r.get("extrapolated")
    if ex:
        args = r["xla_memory_analysis"]["rollout"]["arguments"]
        lines.append(f"XLA's figures (temporaries, FLOPs) extrapolated linearly from "
                     f"{', '.join(map(str, ex['probe_layers']))} to {ex['full_layers']} decoder "
                     f"layers (largest fit residual {ex['largest_fit_residual_bytes'] / 2**20:.1f}"
                     f" MiB; rollout arguments {args / GIB:.3f} GiB extrapolated vs "
                     f"{ex['rollout_arguments_exact'] / GIB:.3f} exact)")
    if not r["fits"]:
        parts = ", ".join(f"{c['part']} {c['bytes'] / GIB:.2f} GiB" for c in r["contributors"])
        lines += ["", f"Does not fit: the {r['contributors'][0]['phase']} phase peaks at "
                      f"{b['peak'] / GIB:.2f} GiB: {parts}.", "Try (estimated savings; re-plan to "
                      "confirm):"]
        for s in r["suggestions"]:
            saving = f"-{s['saves_bytes'] / GIB:.2f} GiB"
            lines.append(f"  {s['change']:<50} {saving:>11} {s['estimate']:<8} {s['why']}")
    return "\n".join(lines)


