"""Real-size presets, shape-only: the 7B configs trace and lower with their sharding on a mesh
of 8 simulated devices (no weights are allocated)."""

import jax
import jax.numpy as jnp
import pytest

from rlvlm_jax import sharding
from rlvlm_jax.models import presets
from rlvlm_jax.models.llama import init_cache
from rlvlm_jax.models.llava import abstract_model
from rlvlm_jax.models.sampling import Sampler, SamplingConfig, make_knobs


@pytest.mark.parametrize("name", ["llava-1.5-7b", "llava-v1.6-mistral-7b"])
def test_7b_prefill_and_decode_lower_on_a_mesh(name):
    cfg = presets.get(name)
    assert cfg.num_image_tokens == 576  # one 336 px crop, class token dropped
    graphdef, params = abstract_model(cfg, param_dtype=jnp.bfloat16, dtype=jnp.bfloat16)
    n = sum(x.size for x in jax.tree.leaves(params))
    assert 7.0e9 < n < 7.6e9
    mesh = sharding.make_mesh((1, 2, 4))
    sh = sharding.Shardings(mesh, params)
    abstract = lambda tree, s: jax.tree.map(
        lambda x, y: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=y), tree, s)
    params = abstract(params, sh.params)
    batch, prompt = 2, 640
    sampler = Sampler(graphdef, cfg, SamplingConfig(max_new_tokens=256), shardings=sh)
    cache = jax.eval_shape(lambda: init_cache(cfg.text, batch, prompt + 256, jnp.bfloat16))
    cache = abstract(cache, sh.cache_sharding(cache))
    ids = jax.ShapeDtypeStruct((batch, prompt), jnp.int32, sharding=sh.batch)
    images = jax.ShapeDtypeStruct((batch, 336, 336, 3), jnp.bfloat16, sharding=sh.batch)
    knobs = make_knobs()
    with jax.set_mesh(mesh):
        lowered = sampler._prefill.lower(params, ids, ids, images, cache, jax.random.key(0),
                                         knobs)
        state, cache_out = jax.eval_shape(sampler._prefill, params, ids, ids, images, cache,
                                          jax.random.key(0), knobs)
        sampler._decode.lower(params, state, cache)
    assert state.tokens.shape == (batch, 256)
    assert "sharding" in lowered.as_text()
