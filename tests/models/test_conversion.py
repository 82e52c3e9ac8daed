"""Checkpoint conversion: transformers LLaVA files -> our model gives transformers' logits, and
our export loads back into transformers with the same logits. Float32 tolerance: 1e-4 relative
(max abs difference over max abs logit, real positions only)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlvlm_jax.models import conversion
from rlvlm_jax.models.llava import abstract_model, init_params, make_forward
from tests.models import hf_reference as ref

SPECS = [
    ref.Spec(text="llama", heads=4, kv_heads=4, feature_layer=-2, strategy="default"),
    ref.Spec(text="llama", heads=4, kv_heads=2, feature_layer=-1, strategy="full", tie=True),
    ref.Spec(text="mistral", heads=4, kv_heads=2, feature_layer=-2, strategy="default",
             sliding_window=5, rope_theta=1e6),
    ref.Spec(text="mistral", heads=8, kv_heads=1, feature_layer=-1, strategy="full",
             hidden=64),
]


def _ours(path, dtype="float32"):
    cfg, params = conversion.load_hf_checkpoint(path, dtype)
    graphdef, _ = abstract_model(cfg)
    return cfg, graphdef, jax.tree.map(jnp.asarray, params)


@pytest.fixture(scope="module", params=SPECS, ids=lambda s: s.name)
def converted(request, tmp_path_factory):
    spec = request.param
    model = ref.build_hf(spec)
    path = str(tmp_path_factory.mktemp(spec.name))
    model.save_pretrained(path, max_shard_size="100KB")  # several shards + index
    return spec, model, path


_FORWARDS = {}


def _forward(graphdef, params, ids, mask, images):
    if graphdef not in _FORWARDS:
        # Parity tests need numbers, not speed: spend less time in LLVM.
        _FORWARDS[graphdef] = make_forward(
            graphdef, compiler_options={"xla_backend_optimization_level": 0})
    return _FORWARDS[graphdef](params, ids, images, mask)


def test_logits_match_transformers(converted):
    spec, model, path = converted
    assert len([f for f in os.listdir(path) if f.endswith(".safetensors")]) > 1
    cfg, graphdef, params = _ours(path)
    ids, mask, images = ref.make_inputs(cfg.num_image_tokens)
    ours = _forward(graphdef, params, ids, mask, images)
    assert ref.rel_err(ours, ref.hf_logits(model, ids, mask, images), mask) < 1e-4


@pytest.mark.parametrize("converted", SPECS[1:3], indirect=True, ids=lambda s: s.name)
def test_text_only_logits_match(converted):
    """Without images (one LLaMA and one Mistral variant suffice)."""
    spec, model, path = converted
    cfg, graphdef, params = _ours(path)
    ids, mask, _ = ref.make_inputs(0, with_images=False, length=12, seed=1)
    ours = _forward(graphdef, params, ids, mask, None)
    assert ref.rel_err(ours, ref.hf_logits(model, ids, mask, None), mask) < 1e-4


def test_export_loads_in_transformers(converted, tmp_path):
    from transformers import LlavaForConditionalGeneration

    spec, model, path = converted
    cfg, graphdef, params = _ours(path)
    conversion.export_hf_checkpoint(params, cfg, str(tmp_path), max_shard_bytes=50_000)
    assert os.path.isfile(tmp_path / "model.safetensors.index.json")
    back = LlavaForConditionalGeneration.from_pretrained(str(tmp_path)).eval()
    ids, mask, images = ref.make_inputs(cfg.num_image_tokens, seed=2)
    np.testing.assert_allclose(ref.hf_logits(back, ids, mask, images),
                               ref.hf_logits(model, ids, mask, images), rtol=0, atol=1e-6)
    # Our reader gets the same params back from our own export.
    cfg2, params2 = conversion.load_hf_checkpoint(str(tmp_path))
    assert cfg2 == cfg
    jax.tree.map(np.testing.assert_array_equal, params2, jax.device_get(params))


@pytest.mark.parametrize("converted", SPECS[2:3], indirect=True, ids=lambda s: s.name)
def test_bfloat16_load(converted):
    """Params converted to bfloat16 (architecture-independent: one variant suffices)."""
    spec, model, path = converted
    cfg, params = conversion.load_hf_checkpoint(path, "bfloat16")
    assert {x.dtype for x in jax.tree.leaves(params)} == {np.dtype(jnp.bfloat16)}
    graphdef, _ = abstract_model(cfg, dtype=jnp.bfloat16)
    ids, mask, images = ref.make_inputs(cfg.num_image_tokens)
    ours = _forward(graphdef, jax.tree.map(jnp.asarray, params), ids, mask, images)
    assert ours.dtype == jnp.float32
    assert ref.rel_err(ours, ref.hf_logits(model, ids, mask, images), mask) < 5e-2


# ------------------------------------------------------------------ bad input
@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    model = ref.build_hf(ref.Spec())
    path = tmp_path_factory.mktemp("small")
    model.save_pretrained(str(path))
    return path


def _copy_without(src, dst, drop=(), reshape=()):
    from safetensors.numpy import load_file, save_file

    os.makedirs(dst, exist_ok=True)
    tensors = load_file(str(src / "model.safetensors"))
    for k in drop:
        tensors.pop(k)
    for k in reshape:
        tensors[k] = tensors[k][:-1]
    save_file(tensors, str(dst / "model.safetensors"))
    (dst / "config.json").write_text((src / "config.json").read_text())
    return dst


def test_missing_and_misshaped_tensors_are_named(small_ckpt, tmp_path):
    drop = "language_model.model.layers.1.mlp.up_proj.weight"
    bad = "vision_tower.encoder.layers.0.self_attn.q_proj.weight"
    path = _copy_without(small_ckpt, tmp_path / "broken", drop=[drop], reshape=[bad])
    with pytest.raises(conversion.CheckpointError) as e:
        conversion.load_hf_checkpoint(str(path))
    msg = str(e.value)
    assert "text.layers.1.mlp.up_proj.weight" in msg and "missing" in msg
    assert bad in msg and "(31, 32)" in msg and "(32, 32)" in msg


def test_unexpected_tensor_is_named(small_ckpt, tmp_path):
    from safetensors.numpy import load_file, save_file

    path = _copy_without(small_ckpt, tmp_path / "extra")
    tensors = load_file(str(path / "model.safetensors"))
    tensors["language_model.model.layers.0.self_attn.rotary.inv_freq"] = np.zeros(4, np.float32)
    save_file(tensors, str(path / "model.safetensors"))
    with pytest.raises(conversion.CheckpointError, match="rotary.inv_freq"):
        conversion.load_hf_checkpoint(str(path))
    conversion.load_hf_checkpoint(str(path), strict=False)


def test_wrong_directory(tmp_path):
    with pytest.raises(conversion.CheckpointError, match="not a directory"):
        conversion.load_hf_checkpoint(str(tmp_path / "nope"))
    with pytest.raises(conversion.CheckpointError, match="no config.json"):
        conversion.load_hf_checkpoint(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava"}))
    with pytest.raises(conversion.CheckpointError, match="no .safetensors"):
        conversion.load_hf_checkpoint(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(conversion.CheckpointError, match="model_type is 'bert'"):
        conversion.load_hf_checkpoint(str(tmp_path))


def test_heads_that_do_not_divide(small_ckpt, tmp_path):
    path = _copy_without(small_ckpt, tmp_path / "heads")
    cfg = json.loads((path / "config.json").read_text())
    cfg["text_config"]["num_key_value_heads"] = 3
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(conversion.CheckpointError, match="num_heads 4 is not divisible by "
                                                          "num_kv_heads 3"):
        conversion.load_hf_checkpoint(str(path))
    cfg["text_config"]["num_key_value_heads"] = 4
    cfg["text_config"]["num_attention_heads"] = 5
    cfg["text_config"]["head_dim"] = None
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(conversion.CheckpointError, match="hidden_size 32 is not divisible"):
        conversion.load_hf_checkpoint(str(path))


def test_cli_round_trip(small_ckpt, tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    run = lambda *a: subprocess.run([sys.executable, "-m", "rlvlm_jax.models.conversion", *a],
                                    capture_output=True, text=True, env=env)
    assert "to-jax" in run("--help").stdout
    ours, hf = tmp_path / "ours", tmp_path / "hf"
    assert run("to-jax", str(small_ckpt), str(ours)).returncode == 0
    assert run("to-hf", str(ours), str(hf)).returncode == 0
    _, a = conversion.load_hf_checkpoint(str(small_ckpt))
    _, b = conversion.load_hf_checkpoint(str(hf))
    jax.tree.map(np.testing.assert_array_equal, a, b)
    bad = run("to-jax", str(tmp_path / "missing"), str(tmp_path / "x"))
    assert bad.returncode == 2 and "not a directory" in bad.stderr
    # Reading needs no torch (nor transformers) at run time.
    code = ("import sys; from rlvlm_jax.models import conversion; "
            f"conversion.load_hf_checkpoint({str(small_ckpt)!r}); "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0


def test_random_init_model_exports(tmp_path):
    """A model initialised by us (no checkpoint) exports to a directory transformers loads."""
    from transformers import LlavaForConditionalGeneration

    from rlvlm_jax.models import presets

    cfg = presets.tiny()
    graphdef, params = init_params(cfg, seed=3)
    conversion.export_hf_checkpoint(params, cfg, str(tmp_path))
    back = LlavaForConditionalGeneration.from_pretrained(str(tmp_path)).eval()
    ids, mask, images = ref.make_inputs(cfg.num_image_tokens, seed=4)
    ids = np.where(ids == ref.IMAGE_TOKEN, cfg.image_token_id, ids)
    ours = _forward(graphdef, params, ids, mask, images)
    assert ref.rel_err(ours, ref.hf_logits(back, ids, mask, images), mask) < 1e-4
