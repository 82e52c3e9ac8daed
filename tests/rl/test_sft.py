"""SFT: prompt ids built on the device equal the host's, the SFT loss falls on a fixed batch."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import rlvlm_jax.envs as envs
from rlvlm_jax.envs import formula as F
from rlvlm_jax.envs import prompts
from rlvlm_jax.rl import optimizer as optim
from rlvlm_jax.rl import policy as policy_lib
from rlvlm_jax.rl import sft, sft_data
from rlvlm_jax.text import tokenizer as tokenizer_lib
from rlvlm_jax.text.prompt_encoder import PromptEncoder, prompt_text
from rlvlm_jax.text.tokenizer import encode_prompts

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_config(name="numberline_test", arg=None):
    path = os.path.join(ROOT, "experiments", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def init_policy(cfg, value_hidden, **model):
    """`policy.init_policy` with a model section at the values these tests were written for:
    N(0, 0.02) weights, CLIP pixels, seed 0, float32 (override with `model`)."""
    section = ml_collections.ConfigDict(dict(
        value_hidden=tuple(value_hidden), init_seed=0, init="normal", pixels="clip",
        dtype="float32", param_dtype="float32", remat=False))
    section.update(model)
    return policy_lib.init_policy(cfg, section)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return tokenizer_lib.get_tokenizer(load_config().tokenizer, str(tmp_path_factory.mktemp("tok")))


@pytest.mark.parametrize("template", ["short", "llava_v1"])
@pytest.mark.parametrize("task", ["NumberLine", "Blackjack"])
def test_fixed_prompts_equal_encode_prompts(tok, task, template):
    enc = PromptEncoder(tok, task, True, template, num_image_tokens=16)
    ids, mask = enc.host()
    ref_ids, ref_mask = encode_prompts(tok, [prompt_text(task, None, True, template)], 16,
                                       enc.length)
    np.testing.assert_array_equal(ids, ref_ids[0])
    np.testing.assert_array_equal(mask, ref_mask[0])
    dev_ids, dev_mask = jax.jit(enc.device)(jnp.zeros((1,), jnp.int32), jnp.int32(0))
    np.testing.assert_array_equal(dev_ids, ids)
    np.testing.assert_array_equal(dev_mask, mask)


@pytest.mark.parametrize("template", ["short", "llava_v1"])
def test_formula_prompts_device_equals_host(tok, template):
    enc = PromptEncoder(tok, "Points24", True, template, num_image_tokens=4, max_formula=12)
    build = jax.jit(jax.vmap(enc.device))
    rng = np.random.default_rng(0)
    codes = np.zeros((40, 12), np.int32)
    lengths = rng.integers(0, 13, 40).astype(np.int32)
    for i, n in enumerate(lengths):
        codes[i, :n] = rng.integers(1, F.NUM_CODES, n)
    ids, mask = build(jnp.asarray(codes), jnp.asarray(lengths))
    for i, n in enumerate(lengths):
        host_ids, host_mask = enc.host(codes[i, :n])
        np.testing.assert_array_equal(ids[i], host_ids)
        np.testing.assert_array_equal(mask[i], host_mask)
    # The spliced formula decodes to the prompt text with the formula in place.
    n = int(lengths[0])
    strings = [str(c) if c <= 10 else "+-*/() "[c - 11] for c in codes[0, :n]]
    text = tok.decode(np.asarray(ids[0])[np.asarray(mask[0]) > 0][1 + 0:], skip_special_tokens=True)
    want = prompt_text("Points24", strings, True, template).replace("<image>", "")
    assert text == want


def test_formula_codes_round_trip():
    prompt = prompts.full_prompt("Points24", ["10", "+", "(", "3", " ", "*", "1", ")"], True)
    assert sft.formula_codes(prompt) == [10, F.PLUS, F.LPAREN, 3, F.BLANK, F.TIMES, 1, F.RPAREN]
    assert sft.formula_codes(prompts.full_prompt("Points24", [], True)) == []


@pytest.mark.slow  # 40 optimiser steps (~11 s); SFT's loss and masks stay in the default suite
def test_sft_loss_decreases_on_a_fixed_batch(tok):
    c = load_config()
    cfg = policy_lib.llava_config(c.model, c.image_size, tok)
    policy, params = init_policy(cfg, c.model.value_hidden)
    env, _ = envs.make("NumberLine", image_size=c.image_size)
    enc = PromptEncoder(tok, "NumberLine", True, c.template, cfg.num_image_tokens)
    data = sft.make_sft_data(env, tok, enc, 8, jax.random.key(0), 0.5, True, c.max_new_tokens)
    assert data.response_mask.sum(1).min() > 40  # whole chains of thought, EOS included
    tx = optim.make_optimizer(optim.warmup_cosine(1e-2, 20), 0.0, 1.0, params)
    step = sft.make_sft_step(policy, tx)
    opt = tx.init(params)
    data = jax.device_put(data)
    idx = jnp.arange(8)
    losses = []
    for _ in range(12):
        params, opt, m = step(params, opt, data, idx)
        losses.append(float(m["loss"]))
    assert np.all(np.isfinite(losses))
    assert losses[-1] < losses[0] - 1.0, losses
    # Only the response is supervised: the loss equals the mean NLL over response tokens.
    loss, aux = sft.sft_loss(policy, params, jax.tree.map(lambda x: x[:8], data))
    assert int(aux["tokens"]) == int(np.sum(data.response_mask))


def _text_records():
    from rlvlm_jax.envs import demonstrations

    return demonstrations.solution_corpus("Points24", hands=[[3, 3, 8, 8], [2, 3, 8, 10]])


def test_text_records_encode_as_context_and_continuation(tok):
    """Contexts left-padded with BOS, continuations right-padded without EOS."""
    records = _text_records()
    text = sft.encode_text(records, tok)
    for i, (context, continuation) in enumerate(records):
        ids = text.prompt_ids[i][text.prompt_mask[i] > 0]
        assert ids[0] == tok.bos_token_id and tok.decode(ids[1:]) == context
        assert text.prompt_mask[i, -1] == 1  # left padding
        cont = text.response[i][text.response_mask[i] > 0]
        assert tok.eos_token_id not in cont and tok.decode(cont) == continuation
        assert text.response_mask[i, 0] == 1  # right padding


@pytest.mark.slow  # two compiled SFT steps (~10 s)
def test_text_records_are_scored_without_pictures(tok):
    """A record's loss does not depend on its padding, and SFT steps with text-only records
    lower their loss."""
    records = _text_records()
    text = sft.encode_text(records, tok)
    i = int(np.argmin(text.prompt_mask.sum(1)))  # the shortest context, padded the most
    alone = sft.encode_text([records[i]], tok)
    c = load_config()
    cfg = policy_lib.llava_config(c.model, c.image_size, tok)
    policy, params = init_policy(cfg, c.model.value_hidden)
    model = policy.model(params)
    batch_loss = sft._nll(model, jax.tree.map(lambda x: x[i:i + 1], text), None)[0]
    np.testing.assert_allclose(batch_loss, sft._nll(model, alone, None)[0], rtol=1e-5)

    env, _ = envs.make("NumberLine", image_size=c.image_size)
    enc = PromptEncoder(tok, "NumberLine", True, c.template, cfg.num_image_tokens)
    data = jax.device_put(sft.make_sft_data(env, tok, enc, 4, jax.random.key(0), 0.0, True,
                                            c.max_new_tokens))
    tx = optim.make_optimizer(optim.warmup_cosine(1e-2, 20), 0.0, 1.0, params)
    step = sft.make_sft_step(policy, tx)
    opt, losses = tx.init(params), []
    for _ in range(5):
        params, opt, m = step(params, opt, data, jnp.arange(4), jax.device_put(text),
                              jnp.arange(len(records)))
        losses.append(float(m["text_loss"]))
    assert losses[-1] < losses[0] - 0.5, losses


def test_demonstrations_parse_to_their_actions(tok):
    """The encoded responses, parsed on the device, give the demonstrated actions."""
    c = load_config()
    cfg = policy_lib.llava_config(c.model, c.image_size, tok)
    env, _ = envs.make("NumberLine", image_size=c.image_size)
    enc = PromptEncoder(tok, "NumberLine", True, c.template, cfg.num_image_tokens)
    demos = sft_data.make_demonstrations(env, 16, jax.random.key(1), 0.5, True)
    data = sft.encode_demonstrations(demos, enc, tok, c.max_new_tokens)
    from rlvlm_jax.text.byte_table import byte_table
    from rlvlm_jax.text.parse_device import make_action_parser, parse_tokens

    table, parser = byte_table(tok, cfg.text.vocab_size), make_action_parser("NumberLine")
    parsed, _ = jax.vmap(lambda t, n: parse_tokens(parser, table, t, n))(
        jnp.asarray(data.response), jnp.asarray(data.response_mask.sum(1)))
    np.testing.assert_array_equal(parsed.action, demos.actions)


def test_llava_json_demonstrations_encode_like_the_encoder(tok, tmp_path):
    """SFT from a LLaVA-format JSON file: its prompt texts give the encoder's ids (llava_v1)."""
    env, _ = envs.make("NumberLine", image_size=56)
    demos = sft_data.make_demonstrations(env, 4, jax.random.key(3), 0.0, True)
    path = sft_data.save_llava_json(demos, str(tmp_path))
    loaded = sft_data.load_llava_json(path)
    enc = PromptEncoder(tok, "NumberLine", True, "llava_v1", num_image_tokens=16)
    from_json = sft.encode_demonstrations(loaded, enc, tok, 72, prompt_text=True)
    generated = sft.encode_demonstrations(demos, enc, tok, 72)
    np.testing.assert_array_equal(from_json.prompt_ids, generated.prompt_ids)
    np.testing.assert_array_equal(from_json.response, generated.response)
    np.testing.assert_array_equal(from_json.frames, generated.frames)
