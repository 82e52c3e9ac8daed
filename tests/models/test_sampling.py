"""Compiled sampling against transformers' generate, and sampling against scoring."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from rlvlm_jax.models import conversion
from rlvlm_jax.models.llava import abstract_model
from rlvlm_jax.models.sampling import Sampler, SamplingConfig
from rlvlm_jax.models.scoring import make_scorer
from tests.models import hf_reference as ref
from tests.models.compiles import count_compiles

T = 24
FAST_COMPILE = {"xla_backend_optimization_level": 0}  # correctness tests: compile quickly
SPECS = [ref.Spec(text="llama", heads=4, kv_heads=2, feature_layer=-2, seed=1),
         ref.Spec(text="mistral", heads=4, kv_heads=2, sliding_window=7, strategy="full",
                  seed=2)]


class Setup:
    """A converted reference model with a sampler and scorer built once."""

    def __init__(self, spec, path):
        self.hf = ref.build_hf(spec)
        self.hf.save_pretrained(path)
        self.cfg, params = conversion.load_hf_checkpoint(path)
        self.params = jax.tree.map(jnp.asarray, params)
        self.graphdef, _ = abstract_model(self.cfg)
        self.sampler = Sampler(self.graphdef, self.cfg,
                               SamplingConfig(max_new_tokens=T, eos_ids=(2,), pad_id=0),
                               compiler_options=FAST_COMPILE)
        self.scorer = make_scorer(self.graphdef, compiler_options=FAST_COMPILE)
        self.ids, self.mask, self.images = ref.make_inputs(self.cfg.num_image_tokens, length=14)

    def hf_greedy(self, eos, ids=None):
        ids = self.ids if ids is None else ids
        with torch.no_grad():
            out = self.hf.generate(
                input_ids=torch.tensor(ids, dtype=torch.long),
                pixel_values=torch.tensor(self.images).permute(0, 3, 1, 2),
                attention_mask=torch.tensor(self.mask, dtype=torch.long), do_sample=False,
                max_new_tokens=T, eos_token_id=eos, pad_token_id=0)
        return out.numpy()[:, ids.shape[1]:]


_get = ref.setup_cache(Setup)


@pytest.fixture(scope="module", params=SPECS, ids=lambda s: s.name)
def setup(request, tmp_path_factory):
    """Each reference architecture (for the parity tests)."""
    return _get(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """One architecture, for tests of the sampler's own logic."""
    return _get(SPECS[0], tmp_path_factory)


def _sample(s, sampler=None, key=0, temperature=0.0, ids=None, images=None, **kw):
    sampler = sampler or s.sampler
    out, _ = sampler(s.params, s.ids if ids is None else ids, s.mask,
                     s.images if images is None else images, jax.random.key(key),
                     temperature=temperature, **kw)
    return jax.device_get(out)


def test_greedy_matches_transformers_generate(setup):
    ours = _sample(setup)
    theirs = setup.hf_greedy(eos=2)
    np.testing.assert_array_equal(ours.tokens[:, :theirs.shape[1]], theirs)


def test_greedy_eos_stops_rows_like_transformers(setup):
    free = _sample(setup)
    eos = int(free.tokens[0, 5])  # a token row 0 really emits: it stops there
    ours = _sample(setup, eos_ids=(eos,))
    theirs = setup.hf_greedy(eos=eos)
    first = int(np.argmax(free.tokens[0] == eos))
    assert ours.lengths[0] == first + 1
    np.testing.assert_array_equal(ours.tokens[:, :theirs.shape[1]], theirs)
    assert (ours.tokens[:, theirs.shape[1]:] == 0).all()
    for b, n in enumerate(ours.lengths):
        assert (ours.tokens[b, n:] == 0).all() and (ours.logprobs[b, n:] == 0).all()
        assert (ours.logprobs[b, :n] < 0).all()


def test_early_exit_when_all_rows_stop(llama):
    free = _sample(llama)
    stops = [int(free.tokens[b, 3]) for b in range(free.tokens.shape[0])]
    out = _sample(llama, eos_ids=stops)
    assert (out.lengths <= 4).all()
    assert int(out.steps) == int(out.lengths.max()) < T


def test_sampled_logprobs_agree_with_scoring(setup):
    temperature = 0.7
    out = _sample(setup, key=3, temperature=temperature, top_p=0.9)
    comp_mask = (np.arange(T)[None] < out.lengths[:, None]).astype(np.int32)
    scores = setup.scorer(setup.params, setup.ids, setup.mask, setup.images, out.tokens,
                          comp_mask, temperature)
    assert np.asarray(scores.logprobs).dtype == np.float32
    np.testing.assert_allclose(np.asarray(scores.logprobs), out.logprobs, atol=2e-5, rtol=1e-5)
    # Temperature matters: scoring at another temperature gives other numbers.
    other = setup.scorer(setup.params, setup.ids, setup.mask, setup.images, out.tokens,
                         comp_mask, 1.3)
    assert np.abs(np.asarray(other.logprobs) - out.logprobs).max() > 1e-2


def test_decode_does_not_recompile(llama):
    """New prompts, images, key, temperature, top-k, top-p and EOS ids: no new compilation."""
    s = llama
    sampler = Sampler(s.graphdef, s.cfg, SamplingConfig(max_new_tokens=8, pad_id=0),
                      compiler_options=FAST_COMPILE)
    with count_compiles() as first_compiles:
        first = _sample(s, sampler, key=0, temperature=1.0)
    counts = dict(sampler.trace_counts)
    ids = np.where(s.ids == ref.IMAGE_TOKEN, ref.IMAGE_TOKEN, (s.ids * 7) % 90 + 3)
    ids = np.where(s.mask == 1, ids, 0).astype(np.int32)
    with count_compiles() as second_compiles:
        second = _sample(s, sampler, key=5, temperature=0.3, top_p=0.8, top_k=5,
                         eos_ids=(7, 9), ids=ids, images=s.images[::-1].copy())
    assert not np.array_equal(first.tokens, second.tokens)
    assert len(first_compiles) >= 2 and not second_compiles  # the counter sees compiles
    assert dict(sampler.trace_counts) == counts == {"prefill": 1, "decode": 1}
    assert sampler._decode._cache_size() == 1 and sampler._prefill._cache_size() == 1


def test_deterministic_per_key(llama):
    a = _sample(llama, key=11, temperature=1.0)
    b = _sample(llama, key=11, temperature=1.0)
    c = _sample(llama, key=12, temperature=1.0)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.logprobs, b.logprobs)
    assert not np.array_equal(a.tokens, c.tokens)


def test_top_k_one_and_tiny_top_p_are_greedy(llama):
    greedy = _sample(llama)
    np.testing.assert_array_equal(_sample(llama, key=1, temperature=1.0, top_k=1).tokens,
                                  greedy.tokens)
    np.testing.assert_array_equal(_sample(llama, key=1, temperature=1.0, top_p=1e-6).tokens,
                                  greedy.tokens)


def test_first_token_distribution(llama):
    """Many rows of one prompt: the first token follows softmax(logits / T) restricted to the
    top-k set, then to the top-p nucleus of what is left (transformers' order)."""
    setup = llama
    n, temperature, top_p, top_k = 4096, 1.5, 0.6, 20
    ids, mask, images = (np.repeat(x[:1], n, axis=0) for x in (setup.ids, setup.mask,
                                                               setup.images))
    logits = ref.hf_logits(setup.hf, ids[:1], mask[:1], images[:1])[0, -1] / temperature
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    sampler = Sampler(setup.graphdef, setup.cfg, SamplingConfig(max_new_tokens=1, pad_id=0),
                      compiler_options=FAST_COMPILE)
    out, _ = sampler(setup.params, ids, mask, images, jax.random.key(0), temperature, top_p,
                     top_k=top_k)
    first = np.asarray(out.tokens[:, 0])
    order = np.argsort(-probs)
    keep = order[:top_k]
    within_k = probs[keep] / probs[keep].sum()  # top-p acts on the top-k renormalised (as HF)
    keep = keep[(np.cumsum(within_k) - within_k) < top_p]
    assert 1 < keep.size < top_k
    assert set(np.unique(first)) <= set(keep.tolist())
    want = probs[keep] / probs[keep].sum()
    got = np.bincount(first, minlength=probs.size)[keep] / n
    assert 0.5 * np.abs(got - want).sum() < 0.05  # total variation; noise is ~0.02 here
    # Reported log-probs are the untruncated tempered ones.
    np.testing.assert_allclose(np.asarray(out.logprobs[:, 0]), np.log(probs[first]), atol=1e-4)


def test_bad_inputs_fail_before_compiling(llama):
    setup = llama
    sampler = Sampler(setup.graphdef, setup.cfg, SamplingConfig(max_new_tokens=250))
    with pytest.raises(ValueError, match="exceeds the model's context of 256"):
        _sample(setup, sampler)
    sampler = Sampler(setup.graphdef, setup.cfg, SamplingConfig(max_new_tokens=4))
    ids = setup.ids.copy()
    ids[1, ids[1] == ref.IMAGE_TOKEN] = 5
    with pytest.raises(ValueError, match=r"rows \[1\] have \[0\] image placeholder"):
        _sample(setup, sampler, ids=ids)
    assert sum(sampler.trace_counts.values()) == 0
