"""The planner: its counts against independent ones on the tiny config, device names, bad input.

The figures checked here come from the planner's abstract build (ShapeDtypeStructs); the
references come from a closed-form count of the architecture and from a real, initialised and
placed model on the test process's simulated devices (tests/conftest.py: 8 CPU devices).
"""

import importlib.util
import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from rlvlm_jax import devices, plan
from rlvlm_jax.planning import accounting
from rlvlm_jax.planning import report as report_lib
from rlvlm_jax.rl import optimizer as optim
from rlvlm_jax.rl import policy as policy_lib
from rlvlm_jax.sharding import ShardingError, make_mesh, shard_params
from rlvlm_jax.text.prompt_encoder import PromptEncoder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "experiments", "numberline_tiny.py")


# Smaller than numberline_tiny's defaults so that the plan compiles in seconds.
OVERRIDES = {"model.vision_layers": 1, "model.text_layers": 1, "max_new_tokens": 8,
             "ppo.num_envs": 4, "ppo.num_steps": 2, "ppo.minibatches": 2,
             "ppo.micro_batches": 2, "eval.episodes": 8}


def tiny_config():
    spec = importlib.util.spec_from_file_location("numberline_tiny", TINY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    for field, value in OVERRIDES.items():
        *parents, name = field.split(".")
        node = c
        for part in parents:
            node = node[part]
        node[name] = value
    return c


def _cli(*args, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return subprocess.run([sys.executable, "-m", "rlvlm_jax.plan", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cli():
    """The planner as a command on 2 devices (it must create them itself: the test process's
    XLA_FLAGS are removed), the tiny config with OVERRIDES."""
    r = _cli("--config", TINY, "--mesh", "1,2,1", "--device", "v5e-2",
             *(f"--config.{k}={v}" for k, v in OVERRIDES.items()))
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout, json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def one():
    """The planner's abstract build on one device (nothing compiled)."""
    return plan.abstract_job(tiny_config(), (1, 1, 1), config_path=TINY)


@pytest.fixture(scope="module")
def real():
    """The tiny policy actually initialised, as training does it."""
    c = tiny_config()
    src = plan.model_source(c)
    _, params = policy_lib.init_policy(src.cfg, c.model)
    return c, src, params


def closed_form_params(c, vocab: int) -> int:
    """LLaVA (CLIP + projector + LLaMA) + value head, from the config's dimensions."""
    m = c.model
    dv, fv = m.vision_hidden, m.vision_mlp
    patches = (c.image_size // m.patch_size) ** 2
    vision = (m.patch_size**2 * 3 * dv + dv + (patches + 1) * dv + 4 * dv
              + m.vision_layers * (4 * dv * dv + 2 * dv * fv + 9 * dv + fv))
    d, f, h, k = m.text_hidden, m.text_mlp, m.text_heads, m.text_kv_heads
    hd = d // h
    layer = 2 * d + d * h * hd + 2 * d * k * hd + h * hd * d + 3 * d * f
    text = vocab * d + m.text_layers * layer + d + d * vocab
    projector = dv * d + d + d * d + d
    sizes = (d, *m.value_hidden, 1)
    value = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=False))
    return vision + projector + text + value


def shard_bytes(tree, device) -> int:
    """Bytes of `tree`'s placed arrays that live on `device`."""
    return sum(s.data.nbytes for x in jax.tree.leaves(tree) for s in x.addressable_shards
               if s.device == device)


def test_param_count(cli, one, real):
    _, report = cli
    c, src, params = real
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    assert report["model"]["params"] == n == accounting.count(one.params)
    assert n == closed_form_params(c, src.cfg.text.vocab_size)
    vision = sum(x.size for x in jax.tree.leaves(params["vlm"]["vision"]))
    assert report["model"]["trainable_params"] == n - vision  # ppo.freeze_vision


def _placed(real, shape):
    """The real params and optimiser state placed on a mesh as training places them."""
    c, _, params = real
    mesh = make_mesh(shape, jax.devices()[:math.prod(shape)])
    placed = {k: shard_params(v, mesh) for k, v in params.items()}
    schedule = optim.warmup_cosine(c.ppo.lr, c.ppo.iterations * c.ppo.epochs * c.ppo.minibatches,
                                c.ppo.warmup, c.ppo.lr_end)  # as training builds it
    tx = optim.make_optimizer(schedule, c.ppo.weight_decay, c.ppo.grad_clip, placed,
                           c.ppo.freeze_vision)
    return mesh.devices.flat[0], placed, tx.init(placed)


def test_params_and_optimizer_bytes_per_device(cli, one, real):
    """The planner's per-device bytes equal what placing the real model (and the real optimiser
    state) on that mesh puts on one device."""
    _, report = cli
    dev, placed, opt = _placed(real, (1, 2, 1))
    assert report["per_device_bytes"]["params"] == shard_bytes(placed, dev)
    assert report["per_device_bytes"]["optimizer_state"] == shard_bytes(opt, dev)
    assert report["per_device_bytes"]["reference_params"] == 0  # kl_coef 0
    dev, placed, opt = _placed(real, (1, 1, 1))
    assert accounting.device_bytes(one.params) == shard_bytes(placed, dev)
    assert accounting.device_bytes(one.opt_state) == shard_bytes(opt, dev)


def test_fsdp_halves_the_sharded_leaves(cli, real):
    _, report = cli
    _, _, params = real
    total = sum(x.nbytes for x in jax.tree.leaves(params))
    mesh = make_mesh((1, 2, 1), jax.devices()[:2])
    sharded = sum(x.nbytes for x in jax.tree.leaves(
        {k: shard_params(v, mesh) for k, v in params.items()})
        if not x.sharding.is_fully_replicated)
    assert sharded > total / 2
    b = report["per_device_bytes"]
    assert b["params"] == total - sharded // 2
    # The compiled rollout's arguments are the params, the env states, a key and a float
    # (jit drops the few env-state fields the rollout never reads).
    args = report["xla_memory_analysis"]["rollout"]["arguments"]
    assert b["params"] < args <= b["params"] + b["env_state"] + 8 + 4
    # The update's params and optimiser state are donated (XLA aliases all but a few scalars).
    donated = b["params"] + b["optimizer_state"]
    assert 0.99 * donated <= report["xla_memory_analysis"]["update"]["aliased"] <= donated


def test_kv_cache_closed_form(cli, real):
    _, report = cli
    c, src, _ = real
    enc = PromptEncoder(src.tokenizer, c.task, c.cot, c.template, src.cfg.num_image_tokens,
                        max_formula=0)
    assert report["model"]["prompt_tokens"] == enc.length  # the card tokenizer: exact
    t = src.cfg.text
    want = (t.num_layers * 2 * c.ppo.num_envs * t.num_kv_heads * (enc.length + c.max_new_tokens)
            * (t.hidden_size // t.num_heads) * 4)
    assert report["kv_cache"]["total"] == want
    assert report["per_device_bytes"]["kv_cache"] == want // 2  # envs split over fsdp
    assert accounting.kv_cache_bytes(t, c.ppo.num_envs, enc.length + c.max_new_tokens, np.float32,
                               (1, 1, 1))["per_device"] == want
    b = report["per_device_bytes"]
    assert b["rollout_temporaries"] >= b["kv_cache"]  # the cache lives in the rollout
    assert b["peak"] == max(b["rollout_phase_peak"], b["update_phase_peak"])
    assert b["peak"] >= b["params"] + b["optimizer_state"] + b["kv_cache"]
    assert report["fits"] and not report["suggestions"]


def test_flops_are_counted_per_iteration(cli, real):
    _, report = cli
    c, _, _ = real
    f = report["flops"]
    units = f["units_per_device"]
    assert min(units["rollout_program"], units["update_program"], units["decode_step"]) > 0
    # The loop bodies' trips are added: more than the once-counted programs.
    assert f["per_device"]["rollout"] > units["rollout_program"]
    assert f["per_device"]["update"] > units["update_program"]
    assert f["total"]["iteration"] == 2 * f["per_device"]["iteration"]
    # 2 FLOPs per parameter per generated token (forward matmuls), within generous bounds.
    tokens = c.ppo.num_envs * c.ppo.num_steps * c.max_new_tokens / 2  # per device
    n = report["model"]["params"]
    assert 0.2 * 2 * n * tokens < f["per_device"]["rollout"] < 50 * 2 * n * tokens


def test_report_prints(cli):
    stdout, report = cli
    assert "PEAK" in stdout and "FITS" in stdout and "KV cache" in stdout
    assert report["devices"] == 2 and report["mesh"] == {"data": 1, "fsdp": 2, "tensor": 1}
    assert report["device"] == "v5e-2" and report["hbm_per_device"] == 16 * 1024**3
    assert "does not fit" not in report_lib.format_report(report).lower()


def test_device_names():
    assert devices.parse("v4-32").devices == 16  # TensorCores: 2 per chip
    assert devices.parse("v5p-8").devices == 4
    assert devices.parse("v5e-32").devices == 32  # chips
    assert devices.parse("v5litepod-16").devices == 16
    assert devices.parse("v6e-8").devices == 8
    assert devices.parse("h100x8").devices == 8
    assert devices.parse("v5e").devices is None
    assert devices.parse("a100-80gb").accelerator.hbm_bytes == 80 * 1024**3
    assert devices.parse("v5e").accelerator.hbm_bytes == 16 * 1024**3
    for bad, match in (("tpu-v9", "unknown device"), ("v4-3", "multiple of 2"),
                       ("a100", "a100-40gb or a100-80gb"), ("h100-8", "unknown device")):
        with pytest.raises(devices.DeviceError, match=match):
            devices.parse(bad)
    with pytest.raises(devices.DeviceError, match="v4-32 has 16.*32 TensorCores"):
        devices.parse("v4-32").check_mesh(32)


def test_bad_input_fails_before_compiling():
    c = tiny_config()
    calls = []

    def no(*a, **k):
        calls.append(a)
        raise AssertionError("compiled")

    cases = [
        ((1, 2, 1), "tpu-v9", devices.DeviceError, "unknown device"),
        ((1, 2, 1), "v5e-8", devices.DeviceError, "mesh has 2 devices but v5e-8 has 8"),
        ((1, 1, 8), "v5e", ShardingError, r"not divisible by mesh axes \('tensor',\)"),
        ((1, 3, 1), "v5e", ValueError, "ppo.num_envs = 4 does not divide"),
        ((1, 2), "v5e", plan.PlanError, "three positive sizes"),
    ]
    original = plan.compile_steps
    plan.compile_steps = no
    try:
        for shape, device, err, match in cases:
            with pytest.raises(err, match=match):
                plan.plan(c, shape, device, config_path=TINY, log=lambda s: None)
        with pytest.raises(plan.PlanError, match="unknown preset"):
            plan.plan(c, (1, 1, 1), "v5e", preset="gpt-9", log=lambda s: None)
        with pytest.raises(plan.PlanError, match="two or more depths"):
            plan.plan(c, (1, 1, 1), "v5e", probe_layers=(1, 4), log=lambda s: None)
    finally:
        plan.compile_steps = original
    assert not calls


@pytest.mark.slow  # ~5 s of subprocesses; test_bad_input_fails_before_compiling stays
def test_cli_errors():
    r = _cli("--config", TINY, "--mesh", "1,2,1", "--device", "v5e",
             "--config.ppo.no_such_field=3")
    assert r.returncode == 2 and "the config has no field ppo.no_such_field" in r.stderr
    r = _cli("--config", TINY, "--mesh", "1,2,1", "--device", "v5e-4")
    assert r.returncode == 1 and "mesh has 2 devices but v5e-4 has 4" in r.stderr
    assert "compiled" not in r.stderr


def test_depth_extrapolation_is_linear():
    """`--probe_layers`: each XLA figure is fitted linearly in the decoder depth."""
    def run(depth):
        mem = {"arguments": 100 + 10 * depth, "outputs": 5, "aliased": 0,
               "temporaries": 1000 + 300 * depth, "code": 0}
        fl = {"rollout": 7.0 * depth, "update": 11.0 * depth + 1, "iteration": 18.0 * depth + 1,
              "units": {"decode_step": 2.0 * depth}}
        return {"rollout": mem, "update": dict(mem, temporaries=50 * depth),
                "trajectory_bytes": 64, "flops": fl,
                "compile_seconds": {"rollout": 1.0, "update": 2.0}}

    out = accounting.extrapolate([run(2), run(4)], [2, 4], 32)
    assert out["rollout"]["temporaries"] == 1000 + 300 * 32
    assert out["rollout"]["arguments"] == 100 + 10 * 32
    assert out["update"]["temporaries"] == 50 * 32
    assert out["flops"]["iteration"] == pytest.approx(18.0 * 32 + 1)
    assert out["flops"]["units"]["decode_step"] == pytest.approx(64.0)
    assert out["extrapolated"]["largest_fit_residual_bytes"] < 1e-6
    assert out["compile_seconds"] == {"rollout": 2.0, "update": 4.0}


QWEN_7B = os.path.join(ROOT, "experiments", "qwen25_vl_7b_numberline.py")


def _load(path):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def test_qwen_preset_is_found_and_built_abstractly():
    """The Qwen2.5-VL-7B config plans from the qwen2.5-vl-7b preset (named by its file) at its
    336 px grid, with the card tokenizer plus Qwen's specials standing in; the abstract build
    has transformers' parameter count (8,292,166,656) + the value head."""
    from rlvlm_jax.models.qwen2_vl import QwenVLConfig

    c = _load(QWEN_7B)
    src = plan.model_source(c, config_path=QWEN_7B)
    assert src.description == "preset qwen2.5-vl-7b" and isinstance(src.cfg, QwenVLConfig)
    assert (src.cfg.vision.image_height, src.cfg.vision.image_width) == (336, 336)
    assert src.cfg.num_image_tokens == 144
    assert src.tokenizer.convert_tokens_to_ids("<|image_pad|>") != src.tokenizer.unk_token_id
    with c.unlocked():
        c.ppo.lora_rank = 0
    a = plan.abstract_job(c, (1, 2, 4), config_path=QWEN_7B)
    value = sum(x.size for x in jax.tree.leaves(a.params["value"]))
    assert accounting.count(a.params["vlm"]) == 8_292_166_656 and value > 0
    assert a.prompt_tokens > src.cfg.num_image_tokens
    with c.unlocked():
        c.image_size = 330
    with pytest.raises(plan.PlanError, match="config.image_size 330"):
        plan.model_source(c, config_path=QWEN_7B)


@pytest.mark.slow  # compiles the planner's programs (~7 s); the preset tests stay in the default
def test_tiny_qwen_plan_compiles():
    """A Qwen model from the config's fields (model.family) through the whole planner on 2
    devices: the rollout (M-RoPE rope delta in the cache) and the update compile."""
    c = _load(os.path.join(ROOT, "experiments", "qwen_numberline_test.py"))
    for field, value in OVERRIDES.items():
        section, *rest = field.split(".")
        if rest:
            c[section][rest[0]] = value
        else:
            c[section] = value
    report = plan.plan(c, (1, 2, 1), "v5e-2", preset="none", flops=False, log=lambda s: None)
    assert report["model"]["source"] == "config.model fields"
    assert report["fits"] and report["per_device_bytes"]["peak"] > 0
