"""Sharded forward, sampling and a gradient step on 8 simulated CPU devices equal one device."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from rlvlm_jax import sharding
from rlvlm_jax.models import presets
from rlvlm_jax.models.llava import abstract_model, init_params
from rlvlm_jax.models.sampling import Sampler, SamplingConfig
from rlvlm_jax.models.scoring import token_logprobs
from tests.models.compiles import count_compiles

MESHES = [(8, 1, 1), (2, 2, 2), (1, 2, 4)]
# These tests compare numbers across meshes, not speed: spend less time in LLVM.
FAST_COMPILE = {"xla_backend_optimization_level": 0}
B, PROMPT, NEW = 8, 12, 6


def _scaled(params):
    """std 0.2 weights: logits far from uniform, so greedy choices are not near-ties."""
    return jax.tree_util.tree_map_with_path(
        lambda p, x: x * 10 if x.ndim >= 2 and "norm" not in str(p) else x, params)


@pytest.fixture(scope="module")
def model():
    cfg = presets.tiny()
    graphdef, params = init_params(cfg, seed=0)
    params = _scaled(params)
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 120, (B, PROMPT)).astype(np.int32)
    mask = np.ones((B, PROMPT), np.int32)
    for b in range(B):
        mask[b, :b % 4] = 0
        ids[b, :b % 4] = 0
        ids[b, 4:4 + cfg.num_image_tokens] = cfg.image_token_id
    images = rng.standard_normal((B, 28, 28, 3)).astype(np.float32)
    completion = rng.integers(3, 120, (B, NEW)).astype(np.int32)
    cmask = (np.arange(NEW)[None] < rng.integers(2, NEW + 1, (B, 1))).astype(np.int32)
    return cfg, graphdef, params, (ids, mask, images, completion, cmask)


def _train_step(graphdef):
    tx = optax.sgd(0.5)

    def loss_fn(params, ids, mask, images, completion, cmask):
        model = nnx.merge(graphdef, params)
        lp = token_logprobs(model, ids, mask, images, completion, cmask, 1.0).logprobs
        return -lp.sum() / cmask.sum(), lp

    def step(params, ids, mask, images, completion, cmask):
        (loss, lp), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, ids, mask, images, completion, cmask)
        updates, _ = tx.update(grads, tx.init(params), params)
        return optax.apply_updates(params, updates), grads, loss, lp

    return step


@pytest.fixture(scope="module")
def single_device(model):
    cfg, graphdef, params, batch = model
    new, grads, loss, lp = jax.jit(_train_step(graphdef), compiler_options=FAST_COMPILE)(
        params, *batch)
    sampler = Sampler(graphdef, cfg, SamplingConfig(max_new_tokens=NEW),
                      compiler_options=FAST_COMPILE)
    greedy, _ = sampler(params, *batch[:3], jax.random.key(0), temperature=0.0)
    drawn, _ = sampler(params, *batch[:3], jax.random.key(1), temperature=1.0)
    return jax.device_get((new, grads, loss, lp, greedy, drawn))


def _close(a, b, tol):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.max(np.abs(a - b)) <= tol * max(np.max(np.abs(b)), 1e-12)


def _tree_close(a, b, tol):
    """Every leaf within tol x the largest magnitude in the whole tree b (leaves like unused
    layers' grads or zero-initialised biases are pure round-off on their own scale)."""
    scale = max(float(np.max(np.abs(x))) for x in jax.tree.leaves(b))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.max(np.abs(np.asarray(x, np.float64) - y)) <= tol * scale


@pytest.mark.parametrize("shape", [
    # (1, 2, 4) (~6 s) runs under slow; (2, 2, 2) already splits every axis in the default suite.
    pytest.param(s, marks=pytest.mark.slow) if s == (1, 2, 4) else s for s in MESHES
], ids=lambda s: "x".join(map(str, s)))
def test_mesh_matches_single_device(model, single_device, shape):
    cfg, graphdef, params, batch = model
    ref_new, ref_grads, ref_loss, ref_lp, ref_greedy, ref_drawn = single_device
    mesh = sharding.make_mesh(shape)
    sh = sharding.Shardings(mesh, params)
    sharded = sharding.shard_params(params, mesh)

    # One gradient step (forward, backward, update) with explicit in/out shardings.
    step = sh.jit(_train_step(graphdef), "pbbbbb",
                  out_shardings=(sh.params, sh.params, sh.replicated, sh.batch),
                  compiler_options=FAST_COMPILE)
    new, grads, loss, lp = step(sharded, *batch)
    _close(loss, ref_loss, 1e-5)
    _close(lp, ref_lp, 1e-5)
    _tree_close(grads, ref_grads, 1e-5)
    _tree_close(new, ref_new, 1e-6)
    # Updated params stay where the rule table puts them.
    for (path, leaf) in jax.tree_util.tree_leaves_with_path(new):
        assert leaf.sharding.spec == sharding.spec_for(sharding._path_str(path))

    # Sampling: greedy tokens identical, sampled tokens identical for the same key.
    sampler = Sampler(graphdef, cfg, SamplingConfig(max_new_tokens=NEW), shardings=sh,
                      compiler_options=FAST_COMPILE)
    greedy, cache = sampler(sharded, *batch[:3], jax.random.key(0), temperature=0.0)
    np.testing.assert_array_equal(greedy.tokens, ref_greedy.tokens)
    _close(greedy.logprobs, ref_greedy.logprobs, 1e-5)
    assert all(c.sharding.spec == sharding.CACHE_SPEC for c in cache["k"] + cache["v"])
    with count_compiles() as compiled:
        drawn, _ = sampler(sharded, *batch[:3], jax.random.key(1), temperature=1.0,
                           cache=cache)
    np.testing.assert_array_equal(drawn.tokens, ref_drawn.tokens)
    assert not compiled and sampler.trace_counts == {"prefill": 1, "decode": 1}


def test_params_placed_as_the_table_says(model):
    cfg, graphdef, params, _ = model
    mesh = sharding.make_mesh((2, 2, 2))
    placed = sharding.shard_params(params, mesh)
    seen = set()
    for path, leaf in jax.tree_util.tree_leaves_with_path(placed):
        name = sharding._path_str(path)
        spec = sharding.spec_for(name)
        assert leaf.sharding.spec == spec
        shard = leaf.addressable_shards[0].data.shape
        want = tuple(d // (np.prod([mesh.shape[a] for a in ((ax,) if isinstance(ax, str)
                                                           else ax)]) if ax else 1)
                     for d, ax in zip(leaf.shape, tuple(spec) + (None,) * leaf.ndim,
                                      strict=False))
        assert shard == want, name
        seen.add(spec)
    # Spot checks of the table itself.
    assert sharding.spec_for("text/layers/3/q_proj") == P("fsdp", "tensor", None)
    assert sharding.spec_for("text/embed") == P("tensor", "fsdp")
    assert sharding.spec_for("vision/layers/0/norm1_scale") == P()
    assert len(seen) > 8


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_rules_cover_every_parameter(name):
    _, params = abstract_model(presets.get(name))
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        spec = sharding.spec_for(sharding._path_str(path))
        assert len(spec) <= leaf.ndim
    # The 7B presets fit a (2, 4, 8) mesh: every sharded dim divides.
    if name.startswith("llava"):
        mesh = jax.sharding.AbstractMesh((2, 4, 8), sharding.AXES)
        for path, leaf in jax.tree_util.tree_leaves_with_path(params):
            name = sharding._path_str(path)
            sharding._check_divides(name, leaf.shape, sharding.spec_for(name), mesh)


def test_unknown_parameter_is_an_error():
    with pytest.raises(sharding.ShardingError, match="matches no rule"):
        sharding.spec_for("text/layers/0/new_thing")


def test_meshes_that_do_not_divide(model):
    cfg, graphdef, params, batch = model
    with pytest.raises(sharding.ShardingError, match="needs 3 devices, but 8 are available"):
        sharding.make_mesh((3, 1, 1))
    with pytest.raises(sharding.ShardingError, match="3 positive sizes"):
        sharding.make_mesh((8, 1))
    # tensor=8 does not divide the 4 key/value heads (nor the 4 vision heads)
    with pytest.raises(sharding.ShardingError, match=r"not divisible by mesh axes \('tensor',\)"):
        sharding.shard_params(params, sharding.make_mesh((1, 1, 8)))
    sh = sharding.Shardings(sharding.make_mesh((8, 1, 1)), params)
    sampler = Sampler(graphdef, cfg, SamplingConfig(max_new_tokens=4), shardings=sh)
    with pytest.raises(sharding.ShardingError, match="batch 4 is not divisible by data x fsdp"):
        sampler(params, *(x[:4] for x in batch[:3]), jax.random.key(0))
    assert sum(sampler.trace_counts.values()) == 0


def test_bf16_compute_with_f32_master_params(model, single_device):
    """bfloat16 compute graph over float32 params on a (2, 2, 2) mesh: float32 grads and
    updated params, close to the float32 single-device step."""
    cfg, _, params, batch = model
    ref_new, ref_grads, ref_loss, *_ = single_device
    graphdef16, _ = abstract_model(cfg, dtype=jnp.bfloat16)
    mesh = sharding.make_mesh((2, 2, 2))
    sh = sharding.Shardings(mesh, params)
    step = sh.jit(_train_step(graphdef16), "pbbbbb", compiler_options=FAST_COMPILE)
    new, grads, loss, _ = step(sharding.shard_params(params, mesh), *batch)
    assert {x.dtype for x in jax.tree.leaves((new, grads))} == {jnp.dtype(jnp.float32)}
    _close(loss, ref_loss, 2e-2)
    flat = lambda t: np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)])
    assert np.corrcoef(flat(grads), flat(ref_grads))[0, 1] > 0.99


def test_remat_gives_the_same_gradients(model, single_device):
    """Rematerialised layers (memory for compute) change nothing numerically."""
    cfg, _, params, batch = model
    _, ref_grads, ref_loss, *_ = single_device
    graphdef, _ = abstract_model(cfg, remat=True)
    jaxpr = str(jax.make_jaxpr(_train_step(graphdef))(params, *batch))
    assert "checkpoint" in jaxpr or "remat" in jaxpr
    _, grads, loss, _ = jax.jit(_train_step(graphdef), compiler_options=FAST_COMPILE)(
        params, *batch)
    _close(loss, ref_loss, 1e-6)
    _tree_close(grads, ref_grads, 1e-6)
