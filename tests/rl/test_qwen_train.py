"""The card-task PPO loop (`train.train`: SFT, rollouts, PPO updates, evaluation) and the
single-turn loop run a tiny random Qwen2-VL / Qwen2.5-VL policy, switched by config.model.family."""

import json
import math
import os

import pytest

from rlvlm_jax import train as train_lib
from rlvlm_jax.build import build, validate_config
from rlvlm_jax.models.qwen2_vl import QwenVLConfig
from tests.rl.test_sft import load_config


def qwen_config(family="qwen2_vl"):
    c = load_config("qwen_numberline_test")
    c.model.family = family
    c.sft.steps = 2
    c.sft.eval_every = 2  # the greedy SFT evaluation samples too
    c.ppo.iterations = 2
    c.ppo.kl_coef = 0.01  # the reference's teacher-forced log-probs too
    c.checkpoint_every = 2  # one PPO checkpoint, for `evaluate`
    return c


@pytest.mark.slow  # end-to-end training runs (~22 s each here); the default suite keeps the parts
@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_ppo_loop_trains_a_qwen_policy(family, tmp_path):
    c = qwen_config(family)
    run = build(c, str(tmp_path))
    assert isinstance(run.cfg, QwenVLConfig) and run.cfg.model_type == family
    assert run.tokenizer.eos_token == "<|im_end|>"
    out = train_lib.train(c, str(tmp_path), run=run)
    with open(os.path.join(tmp_path, "results.json")) as f:
        assert json.load(f)["history"] == out["history"]
    assert len(out["history"]) == c.ppo.iterations
    for h in out["history"]:
        assert all(v is None or math.isfinite(v) for v in h.values() if not isinstance(v, str))
    for stage in ("sft_eval", "ppo_eval"):
        assert 0.0 <= out[stage]["success_rate"] <= 1.0
    if family == "qwen2_vl":  # the evaluate command's path (python -m rlvlm_jax.evaluate)
        from rlvlm_jax.evaluate import evaluate_checkpoint

        ev = evaluate_checkpoint(c, str(tmp_path), episodes=4, temperature=0.2)
        assert ev["stage"] == "ppo" and 0.0 <= ev["success_rate"] <= 1.0


@pytest.mark.parametrize("field,value,message", [
    ("model.family", "qwen3", "model.family"),
    ("model.mrope_section", (4, 3, 3), "mrope_section"),
    ("sft.json", "demos.json", "LLaVA conversations"),
    ("pretrain.enabled", True, "LLaVA reader"),
])
def test_unsupported_qwen_settings_fail_before_building(field, value, message):
    c = qwen_config()
    section, name = field.split(".")
    c[section][name] = value
    with pytest.raises(ValueError, match=message):
        validate_config(c)


@pytest.mark.slow  # an end-to-end single-turn run (~11 s here)
def test_single_turn_loop_trains_a_qwen_policy(tmp_path):
    """GRPO (+ 2 SFT steps and pass@k evaluation) on the card suite with the tiny Qwen2-VL:
    the sampler's log-probs equal the scorer's in the loop (`sampler_logp_gap`)."""
    from experiments import suite_test
    from rlvlm_jax.train_single import train_single_turn

    c = suite_test.get_config("grpo")
    c.model = load_config("qwen_numberline_test").model
    out = train_single_turn(c, str(tmp_path / "run"))
    assert [h["step"] for h in out["history"]] == [1, 2]
    assert max(h["sampler_logp_gap"] for h in out["history"]) < 1e-4
    assert all(math.isfinite(h["reward_mean"]) for h in out["history"])
    assert 0.0 <= out["sft_eval"]["validation/pass@1_t0.01"] <= 1.0


def test_qwen_checkpoint_is_detected_by_model_type(tmp_path):
    """model.checkpoint = a transformers Qwen2.5-VL directory (here our tiny random policy
    exported, with the Qwen card tokenizer): its config.json model_type picks the model, the
    tower runs at config.image_size, and the weights load unchanged."""
    import jax
    import numpy as np

    from rlvlm_jax.models.conversion import export_hf_checkpoint

    c = qwen_config("qwen2_5_vl")
    first = build(c, str(tmp_path / "random"))
    ckpt = str(tmp_path / "ckpt")
    export_hf_checkpoint(first.init_params["vlm"], first.cfg, ckpt)
    first.tokenizer.save_pretrained(ckpt)
    c.model.family = "llava"  # ignored: the checkpoint says qwen2_5_vl
    c.model.checkpoint = ckpt
    run = build(c, str(tmp_path / "loaded"))
    assert isinstance(run.cfg, QwenVLConfig) and run.cfg.model_type == "qwen2_5_vl"
    assert (run.cfg.vision.image_height, run.cfg.vision.image_width) == (56, 56)
    assert run.cfg.image_token_id == run.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    jax.tree.map(np.testing.assert_array_equal, run.init_params["vlm"],
                 first.init_params["vlm"])
