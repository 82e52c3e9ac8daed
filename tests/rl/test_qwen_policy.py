"""A tiny random Qwen2-VL / Qwen2.5-VL policy through the project's one sampler, scorer and
partition table: sampled log-probs equal teacher-forced ones (M-RoPE positions in both), and a
sharded gradient step equals the one-device step."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from rlvlm_jax import sharding
from rlvlm_jax.models import scoring
from rlvlm_jax.models.llava import ImageTextModel
from rlvlm_jax.models.qwen2_vl import QwenVLConfig, QwenVLModel
from rlvlm_jax.models.sampling import Sampler, SamplingConfig
from rlvlm_jax.rl import policy as policy_lib

FAST_COMPILE = {"xla_backend_optimization_level": 0}
VOCAB, PAD, EOS, START, END, IMAGE, VIDEO = 128, 0, 2, 98, 99, 100, 101
T = 6


def model_section(family: str) -> ml_collections.ConfigDict:
    m = ml_collections.ConfigDict(dict(
        family=family, vision_hidden=32, vision_mlp=64, vision_layers=2, vision_heads=2,
        patch_size=14, vision_feature_layer=-1, text_hidden=32, text_mlp=64, text_layers=2,
        text_heads=2, text_kv_heads=1, vocab_size=VOCAB, max_positions=256, value_hidden=(16,),
        init_seed=0, init="fan_in", pixels="clip", dtype="float32", param_dtype="float32",
        remat=False, checkpoint=""))
    return m


def tiny_policy(family: str = "qwen2_vl", **fields):
    m = model_section(family)
    m.update(fields)
    cfg = policy_lib.architecture(m, 56, VOCAB)
    cfg = dataclasses.replace(cfg, image_token_id=IMAGE, video_token_id=VIDEO,
                              vision_start_token_id=START, vision_end_token_id=END,
                              pad_token_id=PAD, eos_token_id=EOS)
    cfg.validate()
    return policy_lib.init_policy(cfg, m)


def prompts(cfg: QwenVLConfig, pads=(0, 3, 5, 1), seed: int = 0):
    """Left-padded rows: text, <start> image pads <end>, text; uint8 frames."""
    rng = np.random.default_rng(seed)
    n = cfg.num_image_tokens
    length = max(pads) + n + 8
    ids = np.full((len(pads), length), PAD, np.int32)
    mask = np.zeros_like(ids)
    for b, pad in enumerate(pads):
        row = list(rng.integers(3, 90, 2 + b % 2)) + [START] + [IMAGE] * n + [END]
        row += list(rng.integers(3, 90, length - pad - len(row)))
        ids[b, pad:], mask[b, pad:] = row, 1
    frames = rng.integers(0, 256, (len(pads), 56, 56, 3), dtype=np.uint8)
    return ids, mask, frames


@pytest.fixture(scope="module")
def qwen():
    policy, params = tiny_policy("qwen2_vl")
    assert isinstance(policy.cfg, QwenVLConfig)
    return policy, params


def _sample_and_score(policy, params, ids, mask, frames):
    images = policy.preprocess(jnp.asarray(frames))
    sampler = Sampler(policy.vlm_graph, policy.cfg,
                      SamplingConfig(max_new_tokens=T, pad_id=PAD, eos_ids=(EOS,)),
                      compiler_options=FAST_COMPILE)
    out, cache = sampler(params["vlm"], ids, mask, images, jax.random.key(3), temperature=1.0)
    assert "rope_delta" in cache and cache["rope_delta"].shape == (ids.shape[0],)
    comp_mask = (np.arange(T)[None] < np.asarray(out.lengths)[:, None]).astype(np.int32)

    def score(p, ids, mask, images, tokens, comp_mask):
        return scoring.token_logprobs(policy.model({"vlm": p}), ids, mask, images, tokens,
                                      comp_mask).logprobs

    return out, comp_mask, lambda: jax.jit(score)(params["vlm"], ids, mask, images, out.tokens,
                                                  comp_mask)


def test_sampled_logprobs_equal_scored_logprobs(qwen, monkeypatch):
    """The sampler (prefill + cached decode with the rope delta) and the scorer (one forward
    over prompt + completion with `score_positions`) give the same per-token log-probs; the
    scorer with LLaVA's 1-D positions would not (MAYE's trainer bug), so this test can fail."""
    policy, params = qwen
    ids, mask, frames = prompts(policy.cfg)
    out, comp_mask, score = _sample_and_score(policy, params, ids, mask, frames)
    assert int(comp_mask.sum()) >= ids.shape[0] * 2  # several tokens per row were scored
    ours = np.asarray(score())
    np.testing.assert_allclose(ours, np.asarray(out.logprobs), atol=1e-5)

    monkeypatch.setattr(QwenVLModel, "score_positions", ImageTextModel.score_positions)
    jax.clear_caches()  # retrace with LLaVA's positions
    flat = np.asarray(score())
    assert np.max(np.abs(flat - np.asarray(out.logprobs))) > 1e-3


def test_tokenizer_and_prompts_give_qwens_image_span(tmp_path):
    """The card tokenizer with Qwen's specials; the prompt encoder's Qwen chat rows hold
    <|vision_start|> + num_image_tokens x <|image_pad|> + <|vision_end|> and pass check_inputs."""
    from rlvlm_jax.models.qwen2_vl import check_inputs
    from rlvlm_jax.text.prompt_encoder import PromptEncoder
    from rlvlm_jax.text.tokenizer import build_card_tokenizer

    tok = build_card_tokenizer(str(tmp_path), 512, chat="qwen")
    m = model_section("qwen2_5_vl")
    m.vocab_size = 0  # the tokenizer's size, rounded up
    cfg = policy_lib.llava_config(m, 56, tok)
    assert cfg.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>") == tok.eos_token_id
    assert cfg.pad_token_id == tok.convert_tokens_to_ids("<|endoftext|>")
    enc = PromptEncoder(tok, "NumberLine", True, "short", cfg.num_image_tokens, chat="qwen")
    ids, mask = enc.host()
    real = ids[mask.astype(bool)].tolist()
    n = cfg.num_image_tokens
    at = real.index(cfg.vision_start_token_id)
    assert real[at + 1:at + 1 + n] == [cfg.image_token_id] * n
    assert real[at + 1 + n] == cfg.vision_end_token_id
    assert tok.decode(real).endswith("<|im_end|>\n<|im_start|>assistant\n")
    check_inputs(ids[None], np.zeros((1, 56, 56, 3), np.float32), cfg)


def test_sharded_grad_step_equals_one_device():
    """A Qwen2.5-VL policy's gradient step (SFT loss, SGD) on a (2, 2, 2) mesh of simulated
    devices, params placed by the one partition table, equals the one-device step."""
    import optax

    policy, params = tiny_policy("qwen2_5_vl", text_kv_heads=2)  # KV heads split over tensor
    ids, mask, frames = prompts(policy.cfg)
    rng = np.random.default_rng(1)
    resp = rng.integers(3, 90, (ids.shape[0], T)).astype(np.int32)
    rmask = np.ones_like(resp)
    tx = optax.sgd(0.5)  # linear in the gradients (Adam would amplify float noise)
    batch = (frames, ids, mask, resp, rmask)

    def step(params, opt, frames, ids, mask, resp, rmask):
        def loss(p):
            s = scoring.token_logprobs(policy.model(p), ids, mask, policy.preprocess(frames),
                                       resp, rmask)
            return -jnp.sum(s.logprobs) / jnp.sum(rmask)

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), value

    ref, ref_loss = jax.jit(step, compiler_options=FAST_COMPILE)(params, tx.init(params), *batch)
    mesh = sharding.make_mesh((2, 2, 2))
    psh = {k: sharding.param_shardings(v, mesh) for k, v in params.items()}  # as build does
    placed = jax.device_put(params, psh)
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    bat = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(sharding.BATCH))
    fn = jax.jit(step, in_shardings=(psh, rep) + (bat,) * 5, out_shardings=(psh, rep),
                 compiler_options=FAST_COMPILE)
    with jax.set_mesh(mesh):
        new, new_loss = fn(placed, tx.init(params), *batch)
    assert new["vlm"]["vision"]["patch_proj"].sharding.spec == sharding.spec_for(
        "vision/patch_proj")
    moved = np.abs(np.asarray(ref["vlm"]["projector"]["linear_1"])
                   - np.asarray(params["vlm"]["projector"]["linear_1"]))
    assert moved.max() > 1e-4  # the step changed the weights it compares
    np.testing.assert_allclose(float(new_loss), float(ref_loss), rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b),
                                                         rtol=1e-4, atol=1e-5), new, ref)


@pytest.mark.slow  # the sharded gradient step stays in the default suite
def test_sharded_sampler_equals_one_device():
    """The Sampler on a (2, 2, 2) mesh (its cache's (B,) rope delta split over the batch axes,
    the K/V caches as CACHE_SPEC) gives the one-device tokens and log-probs."""
    policy, params = tiny_policy("qwen2_vl", text_kv_heads=2)
    ids, mask, frames = prompts(policy.cfg)
    images = policy.preprocess(jnp.asarray(frames))
    cfg = SamplingConfig(max_new_tokens=T, pad_id=PAD, eos_ids=(EOS,))
    one = Sampler(policy.vlm_graph, policy.cfg, cfg, compiler_options=FAST_COMPILE)
    ref, _ = one(params["vlm"], ids, mask, images, jax.random.key(5), temperature=1.0)
    mesh = sharding.make_mesh((2, 2, 2))
    sh = sharding.Shardings(mesh, params["vlm"])
    many = Sampler(policy.vlm_graph, policy.cfg, cfg, shardings=sh,
                   compiler_options=FAST_COMPILE)
    out, cache = many(sharding.shard_params(params["vlm"], mesh), ids, mask, images,
                      jax.random.key(5), temperature=1.0)
    assert cache["rope_delta"].sharding.spec == sharding.ROPE_DELTA_SPEC
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(ref.tokens))
    np.testing.assert_allclose(np.asarray(out.logprobs), np.asarray(ref.logprobs), atol=1e-5)
