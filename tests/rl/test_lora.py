"""LoRA adapters: the merge is W + (alpha / r) A @ B in each weight's own layout, fresh adapters
leave the model unchanged, targets are the language model's and projector's linear maps, and
the rule table places the adapters."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from rlvlm_jax.models import presets
from rlvlm_jax.rl import lora
from rlvlm_jax.rl import optimizer as optim
from rlvlm_jax.rl import policy as policy_lib
from rlvlm_jax.sharding import make_mesh, shard_params
from tests.rl.test_sft import init_policy


@pytest.fixture(scope="module")
def tiny():
    cfg = presets.get("tiny")
    policy, params = init_policy(cfg, (16,))
    return cfg, policy, params


def _forward(policy, params, cfg):
    """(logits, final hidden states) of one image + text prompt."""
    ids = jnp.concatenate([jnp.array([[1]]), jnp.full((1, cfg.num_image_tokens),
                                                      cfg.image_token_id),
                           jnp.full((1, 6), 5)], axis=1)
    size = cfg.vision.image_size
    pixels = jax.random.normal(jax.random.key(3), (1, size, size, 3))
    model = policy.model(params)
    hidden = model.hidden_states(ids, pixels, jnp.ones_like(ids))
    return model.text.logits(hidden), hidden


def test_default_targets_are_the_language_model_and_projector(tiny):
    cfg, _, params = tiny
    paths = lora.target_paths(params["vlm"])
    names = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    want = {f"text/layers/{i}/{n}" for i in range(cfg.text.num_layers) for n in names}
    want |= {"projector/linear_1", "projector/linear_2"}
    assert set(paths) == want
    assert lora.target_paths(params["vlm"], "q_proj,v_proj") == sorted(
        p for p in want if p.endswith(("q_proj", "v_proj")))
    with pytest.raises(ValueError, match="match no weight"):
        lora.target_paths(params["vlm"], "q_proj,qkv")
    with pytest.raises(ValueError, match="rank"):
        lora.init_lora(params["vlm"], 0, jax.random.key(0))


def test_fresh_adapters_change_nothing(tiny):
    cfg, policy, params = tiny
    with_lora = {**params, "lora": lora.init_lora(params["vlm"], 4, jax.random.key(1))}
    a = jax.jit(lambda p: _forward(policy, p, cfg))(params)
    lpolicy = dataclasses.replace(policy, lora_scale=8.0)
    b = jax.jit(lambda p: _forward(lpolicy, p, cfg))(with_lora)
    np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))


def test_merge_is_w_plus_scaled_low_rank_product(tiny):
    _, _, params = tiny
    adapters = lora.init_lora(params["vlm"], 3, jax.random.key(2))
    rng = np.random.default_rng(0)
    adapters = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32),
                            adapters)
    merged = lora.merge(params["vlm"], adapters, 0.5)
    layer = params["vlm"]["text"]["layers"][0]
    out = merged["text"]["layers"][0]
    for name in ("q_proj", "k_proj", "o_proj", "gate_proj", "down_proj"):
        w = np.asarray(layer[name])
        ab = adapters[f"text.layers.0.{name}"]
        a, b = np.asarray(ab["lora_a"]), np.asarray(ab["lora_b"])
        if name in ("q_proj", "k_proj"):  # (D, heads, head_dim): rows are the input
            assert a.shape[0] == w.shape[0]
        else:  # (..., D_out) with every leading dim an input
            assert b.shape[1] == w.shape[-1]
        delta = (a @ b).reshape(w.shape)
        np.testing.assert_allclose(np.asarray(out[name]), w + 0.5 * delta, rtol=1e-6,
                                   atol=1e-6, err_msg=name)
    np.testing.assert_array_equal(np.asarray(merged["text"]["embed"]),
                                  np.asarray(params["vlm"]["text"]["embed"]))
    np.testing.assert_array_equal(np.asarray(merged["vision"]["layers"][0]["q_proj"]),
                                  np.asarray(params["vlm"]["vision"]["layers"][0]["q_proj"]))


def test_gradients_and_updates_reach_only_adapters_and_value_head(tiny):
    cfg, policy, params = tiny
    params = {**params, "lora": lora.init_lora(params["vlm"], 4, jax.random.key(1))}
    policy = dataclasses.replace(policy, lora_scale=2.0)
    tx = optim.make_optimizer(optim.warmup_cosine(1e-2, 4), 0.1, 1.0, params, freeze_vision=True)
    opt = tx.init(params)
    # Adam moments exist only for trainable leaves: adapters and value head.
    trainable = policy_lib.count_params({"l": params["lora"], "v": params["value"]})
    assert sum(x.size for x in jax.tree.leaves(opt) if x.ndim) == 2 * trainable

    def loss(p):
        p = optim.stop_frozen(p, True)
        logits, hidden = _forward(policy, p, cfg)
        return jnp.sum(logits ** 2) + jnp.sum(policy.value(p, hidden[:, -1]))

    grads = jax.jit(jax.grad(loss))(params)
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(grads["vlm"]))
    assert float(jnp.abs(grads["lora"]["text.layers.1.v_proj"]["lora_b"]).max()) > 0
    assert float(jnp.abs(grads["value"]["kernel_0"]).max()) > 0
    updates, _ = tx.update(grads, opt, params)
    new = jax.tree.map(lambda p, u: p + u, params, updates)
    jax.tree.map(np.testing.assert_array_equal, new["vlm"], params["vlm"])
    assert bool(jnp.any(new["lora"]["text.layers.0.q_proj"]["lora_b"] != 0))


@pytest.mark.slow  # ~7 s; test_sharding's bf16 test stays in the default suite
def test_mixed_precision_casts_matrices_once_with_the_same_logits():
    """bf16 compute: Policy.model hands the model bf16 matrices (cast while still sharded, so
    gathers move bf16), and the logits equal the model's own per-use casts, with and without
    adapters."""
    cfg = presets.get("tiny")
    policy, params = init_policy(cfg, (16,), dtype="bfloat16")
    assert policy.dtype == "bfloat16"
    adapters = lora.init_lora(params["vlm"], 2, jax.random.key(1))
    adapters = jax.tree.map(lambda x: x + 0.05, adapters)  # B != 0: a real delta
    policy = dataclasses.replace(policy, lora_scale=2.0)
    for extra in ({}, {"lora": adapters}):
        p = {**params, **extra}
        merged = policy.model(p)
        leaves = jax.tree.leaves(nnx.state(merged, nnx.Param))
        assert {x.dtype for x in leaves if x.ndim >= 2} == {jnp.dtype(jnp.bfloat16)}
        assert {x.dtype for x in leaves if x.ndim < 2} == {jnp.dtype(jnp.float32)}
        # The old path: merge in float32, let the model cast at each use.
        f32 = lora.merge(p["vlm"], p.get("lora"), 2.0)
        old = dataclasses.replace(policy, dtype="float32")
        want, _ = _forward(old, {**p, "vlm": f32, "lora": None}, cfg)
        got, _ = _forward(policy, p, cfg)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_trainable_part_is_what_the_optimiser_updates(tiny):
    """Finite checks and gradient norms read only the leaves that train."""
    _, _, params = tiny
    value = jax.tree.leaves(params["value"])
    vision = jax.tree.leaves(params["vlm"]["vision"])
    every = jax.tree.leaves(params)
    ids = lambda leaves: {id(x) for x in leaves}  # noqa: E731
    assert ids(optim.trainable_part(params, False)) == ids(every)
    assert ids(optim.trainable_part(params, True)) == ids(every) - ids(vision)
    with_lora = {**params, "lora": lora.init_lora(params["vlm"], 2, jax.random.key(0))}
    assert ids(optim.trainable_part(with_lora, False)) == ids(
        jax.tree.leaves(with_lora["lora"]) + value)
    # A NaN in a frozen leaf does not count; one in a trained leaf does.
    bad_vision = jax.tree.map(lambda x: x, params)
    bad_vision["vlm"]["vision"] = jax.tree.map(lambda x: x * jnp.nan, params["vlm"]["vision"])
    assert bool(optim.tree_finite(optim.trainable_part(bad_vision, True)))
    assert not bool(optim.tree_finite(optim.trainable_part(bad_vision, False)))


def test_rule_table_places_adapters():
    cfg = presets.get("tiny")
    _, params = init_policy(cfg, (16,))
    adapters = lora.init_lora(params["vlm"], 4, jax.random.key(0))
    placed = shard_params(adapters, make_mesh((2, 2, 2)))
    ab = placed["text.layers.0.gate_proj"]
    assert ab["lora_a"].sharding.spec == P("fsdp", None)
    assert ab["lora_b"].sharding.spec == P(None, "fsdp")
