"""Rollout and PPO update with a tiny random model: shapes, masks, invalid-action counting, the
sampler's log-probs equal the trainer's, one update changes the params, no recompilation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rlvlm_jax.envs as envs
from rlvlm_jax.models import scoring
from rlvlm_jax.rl import losses, ppo
from rlvlm_jax.rl import optimizer as optim
from rlvlm_jax.rl import policy as policy_lib
from rlvlm_jax.rl.rollout import Actor
from rlvlm_jax.text import tokenizer as tokenizer_lib
from rlvlm_jax.text.parse_device import token_masks
from rlvlm_jax.text.prompt_encoder import PromptEncoder
from tests.models.compiles import count_compiles
from tests.rl.test_sft import init_policy, load_config

T, B = 2, 8  # B divides an 8-device mesh
FAST = {"xla_backend_optimization_level": 0}  # compile time dominates these tests


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    c = load_config()
    c.max_new_tokens = 12  # random models rarely stop: keep the decode short
    tok = tokenizer_lib.get_tokenizer(c.tokenizer, str(tmp_path_factory.mktemp("tok")))
    cfg = policy_lib.llava_config(c.model, c.image_size, tok)
    policy, params = init_policy(cfg, c.model.value_hidden)
    env, env_params = envs.make("NumberLine", image_size=c.image_size, final_observation=True)
    enc = PromptEncoder(tok, "NumberLine", True, c.template, cfg.num_image_tokens)
    actor = Actor(env, env_params, policy, tok, enc, c.max_new_tokens, 0.5)
    rollout = actor.make_rollout(T, FAST)
    carry = actor.reset(jax.random.key(0), B)
    out = rollout(params, carry, jax.random.key(1), jnp.float32(1.0))
    return c, tok, policy, params, actor, rollout, carry, out


def test_rollout_shapes_and_masks(setup):
    c, tok, policy, params, actor, rollout, carry, (new_carry, traj, last_value) = setup
    r = c.max_new_tokens
    assert traj.tokens.shape == (T, B, r)
    assert traj.frames.shape == (T, B, c.image_size, c.image_size, 3)
    assert traj.prompt_ids.shape == (T, B, actor.encoder.length)
    assert last_value.shape == (B,)
    valid = np.arange(r)[None, None] < np.asarray(traj.lengths)[..., None]
    cot, act = np.asarray(traj.cot_mask), np.asarray(traj.action_mask)
    assert not np.any(cot & act)
    np.testing.assert_array_equal(cot | act, valid)
    masks = token_masks(traj.action_mask, traj.lengths)  # what the PPO update derives
    for got, want in ((masks.token, valid), (masks.cot, cot), (masks.action, act)):
        np.testing.assert_array_equal(got, want)
    assert np.all((np.asarray(traj.action) >= 0) & (np.asarray(traj.action) < 2))
    # lambda-scaled log-prob from the sampler's per-token log-probs
    want = losses.action_log_prob(traj.token_logp, traj.cot_mask, traj.action_mask, 0.5)
    np.testing.assert_allclose(traj.logp, want, rtol=1e-6)
    # The first picture is the reset state's, the next ones follow the env.
    np.testing.assert_array_equal(traj.frames[0], carry.state.canvas)
    assert np.all(np.isfinite(np.asarray(traj.value)))


def test_invalid_answers_are_counted_and_get_legal_actions(setup):
    c, tok, policy, params, actor, rollout, carry, (_, traj, _) = setup
    texts = [tok.decode(np.asarray(traj.tokens[t, b])[: int(traj.lengths[t, b])])
             for t in range(T) for b in range(B)]
    from rlvlm_jax.envs.parse import parse_action

    host = np.asarray([parse_action("NumberLine", s)[0] is not None for s in texts]).reshape(T, B)
    np.testing.assert_array_equal(np.asarray(traj.parsed), host)
    metrics = jax.device_get(ppo.rollout_metrics(traj, c.max_new_tokens))
    assert metrics["invalid_action_rate"] == pytest.approx(1.0 - host.mean())


def test_sampler_and_trainer_log_probs_agree(setup):
    """The PPO ratio starts at 1: teacher-forced log-probs equal the sampler's."""
    c, tok, policy, params, actor, rollout, carry, (_, traj, _) = setup
    flat = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), traj)
    mask = np.arange(c.max_new_tokens)[None] < np.asarray(flat.lengths)[:, None]
    lp, hidden, ent = scoring.token_logprobs(
        policy.model(params), flat.prompt_ids, flat.prompt_mask, policy.preprocess(flat.frames),
        flat.tokens, jnp.asarray(mask), 1.0, entropy=True)
    np.testing.assert_allclose(lp, flat.token_logp, atol=2e-4)
    np.testing.assert_allclose(policy.value(params, hidden), flat.value, atol=1e-4)
    assert np.all(np.asarray(ent)[mask] > 0) and np.all(np.asarray(ent)[~mask] == 0)


@pytest.fixture(scope="module")
def updater(setup):
    c, tok, policy, params, *_ = setup
    c = c.copy_and_resolve_references()
    c.ppo.kl_coef = 0.01  # exercise the reference path too
    tx = optim.make_optimizer(optim.warmup_cosine(1e-3, 4), 0.0, 1.0, params, freeze_vision=True)
    return tx, ppo.make_ppo_update(policy, tx, c.ppo, FAST)


def test_one_update_changes_params_and_never_recompiles(setup, updater):
    c, tok, policy, params, actor, rollout, carry, (new_carry, traj, last_value) = setup
    tx, update = updater
    start = jax.tree.map(jnp.copy, params)
    p = jax.tree.map(jnp.copy, params)
    opt = tx.init(p)
    p, opt, m = update(p, opt, traj, last_value, jax.random.key(2), start)
    m = jax.device_get(m)
    assert bool(m["finite"])
    for k in ("policy_loss", "value_loss", "clip_frac", "approx_kl", "entropy", "kl_ref",
              "grad_norm"):
        assert np.isfinite(m[k]), k
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), p, start)
    assert moved["vlm"]["text"]["embed"] and moved["value"]["kernel_0"]
    assert not any(jax.tree.leaves(moved["vlm"]["vision"]))  # frozen vision tower
    # Second iteration: same shapes, new values -> no compilation at all.
    with count_compiles() as seen:
        carry2, traj2, last2 = rollout(p, new_carry, jax.random.key(3), jnp.float32(1.0))
        p, opt, m = update(p, opt, traj2, last2, jax.random.key(4), start)
        jax.block_until_ready(p)
    assert seen == [], f"{len(seen)} compilations after the first iteration"


def test_nonfinite_update_is_not_applied(setup, updater):
    c, tok, policy, params, actor, rollout, carry, (_, traj, last_value) = setup
    tx, update = updater
    bad = traj._replace(reward=traj.reward.at[0, 0].set(jnp.nan))
    p = jax.tree.map(jnp.copy, params)
    p2, _, m = update(p, tx.init(p), bad, last_value, jax.random.key(5), params)
    assert not bool(m["finite"])
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), p2, params)


def test_rollouts_with_a_formula_prompt(tmp_path):
    """EZPoints: every step's prompt carries that step's formula (built on the device)."""
    c = load_config()
    c.max_new_tokens = 6
    c.image_size = 76  # EZPoints' smallest legible picture
    c.model.patch_size = 19  # 16 image tokens
    tok = tokenizer_lib.get_tokenizer(c.tokenizer, str(tmp_path))
    cfg = policy_lib.llava_config(c.model, c.image_size, tok)
    policy, params = init_policy(cfg, c.model.value_hidden)
    env, env_params = envs.make("EZPoints", image_size=76, final_observation=True)
    enc = PromptEncoder(tok, "EZPoints", True, "short", cfg.num_image_tokens,
                        max_formula=env.max_tokens + 1)
    actor = Actor(env, env_params, policy, tok, enc, c.max_new_tokens)
    n, steps = 3, 4
    carry = actor.reset(jax.random.key(0), n)
    _, traj, _ = actor.make_rollout(steps, FAST)(params, carry, jax.random.key(1), jnp.float32(1.0))
    head, tail = "USER: \nEZPoints json with thoughts formula: ", " ASSISTANT:"
    strings = env.action_strings
    for b in range(n):
        formulas = []
        for t in range(steps):
            ids = np.asarray(traj.prompt_ids[t, b])[np.asarray(traj.prompt_mask[t, b]) > 0]
            text = tok.decode(ids, skip_special_tokens=True)
            assert text.startswith(head) and text.endswith(tail), text
            formulas.append(text[len(head): -len(tail)])
        assert formulas[0] == ""
        for t in range(1, steps):
            if bool(traj.terminated[t - 1, b] | traj.truncated[t - 1, b]):
                assert formulas[t] == ""
                continue
            a = strings[int(traj.action[t - 1, b])]
            assert formulas[t] in (formulas[t - 1] + a, formulas[t - 1] + " ",
                                   formulas[t - 1]), (formulas, a)


@pytest.mark.slow  # ~9 s; test_sharding's meshes and the Qwen sharded step stay in the default
def test_eight_devices_equal_one(setup, updater):
    """One compiled iteration (rollout + update) on a (data 4, fsdp 2) mesh of 8 simulated
    devices gives the single-device results."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from rlvlm_jax.sharding import make_mesh, shard_params

    if len(jax.devices()) < 8:
        pytest.skip("needs 8 (simulated) devices")
    c, tok, policy, params, actor, rollout, carry, (_, traj, last_value) = setup
    tx, update = updater
    p1 = jax.tree.map(jnp.copy, params)
    p1, _, m1 = update(p1, tx.init(p1), traj, last_value, jax.random.key(7), params)

    mesh = make_mesh((4, 2, 1))
    with jax.set_mesh(mesh):
        sharded = {k: shard_params(v, mesh) for k, v in params.items()}
        batch_axis = NamedSharding(mesh, P(None, ("data", "fsdp")))
        carry8 = jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh, P(("data", "fsdp")))),
                              carry)
        _, traj8, last8 = rollout(sharded, carry8, jax.random.key(1), jnp.float32(1.0))
        assert len(traj8.tokens.sharding.device_set) == 8
        np.testing.assert_array_equal(traj8.tokens, traj.tokens)
        np.testing.assert_allclose(traj8.logp, traj.logp, atol=1e-4)
        traj8 = jax.tree.map(lambda x: jax.device_put(x, batch_axis), traj8)
        p8 = jax.tree.map(jnp.copy, sharded)
        p8, _, m8 = update(p8, tx.init(p8), traj8, last8, jax.random.key(7), sharded)
    for k in ("policy_loss", "value_loss", "approx_kl", "grad_norm"):
        np.testing.assert_allclose(m8[k], m1[k], rtol=1e-3, atol=1e-5, err_msg=k)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5), p8, p1)


def test_lora_update_trains_adapters_and_value_head_only(setup):
    """With LoRA the rollout's policy (fresh adapters) is the base policy, so the first
    minibatch's ratio is 1 and the KL to the base (the reference, no copy) starts at 0; the
    update moves adapters and value head and leaves every LLaVA weight as it was."""
    import dataclasses

    from rlvlm_jax.rl import lora

    c, tok, policy, params, actor, rollout, carry, (_, traj, last_value) = setup
    c = c.copy_and_resolve_references()
    c.ppo.kl_coef = 0.01
    c.ppo.minibatches = 1
    c.ppo.micro_batches = 1
    lp = {**params, "lora": lora.init_lora(params["vlm"], 4, jax.random.key(3))}
    lpolicy = dataclasses.replace(policy, lora_scale=2.0)
    tx = optim.make_optimizer(optim.warmup_cosine(1e-3, 4), 0.0, 1.0, lp, freeze_vision=True)
    update = ppo.make_ppo_update(lpolicy, tx, c.ppo, FAST)
    start = jax.tree.map(jnp.copy, lp)
    p, _, m = update(jax.tree.map(jnp.copy, lp), tx.init(lp), traj, last_value,
                     jax.random.key(2), None)
    m = jax.device_get(m)
    assert bool(m["finite"])
    np.testing.assert_allclose(m["approx_kl"], 0.0, atol=1e-4)
    np.testing.assert_allclose(m["kl_ref"], 0.0, atol=1e-4)
    jax.tree.map(np.testing.assert_array_equal, p["vlm"], start["vlm"])
    assert bool(jnp.any(p["lora"]["text.layers.0.q_proj"]["lora_b"] != 0))
    assert bool(jnp.any(p["value"]["kernel_0"] != start["value"]["kernel_0"]))
