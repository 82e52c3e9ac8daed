"""The main job: a resumed run equals an uninterrupted one; bad configs fail clearly."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from rlvlm_jax import train as train_lib
from rlvlm_jax.build import build, validate_config
from rlvlm_jax.checkpoints import Checkpointer, CheckpointError
from rlvlm_jax.text import tokenizer as tokenizer_lib
from tests.rl.test_sft import ROOT, load_config

TIMING = ("wall_seconds", "eval_seconds")


def assert_histories_close(a: list, b: list, rtol: float, atol: float) -> None:
    """results.json histories: the same keys per iteration, values within tolerance, and
    undefined values (null, e.g. a reflection ratio without reflective answers) in the same
    places."""
    assert len(a) == len(b)
    for ha, hb in zip(a, b, strict=True):
        assert ha.keys() == hb.keys()
        for k in ha:
            if ha[k] is None or hb[k] is None:
                assert ha[k] is None and hb[k] is None, k
            else:
                np.testing.assert_allclose(hb[k], ha[k], rtol=rtol, atol=atol, err_msg=k)


def small_config(tok_dir):
    c = load_config()
    c.tokenizer.path = tok_dir
    c.sft.steps = 2
    c.sft.eval_every = 0  # no greedy SFT evaluation (saves a compilation)
    c.eval.episodes = 0  # no success-rate evaluations
    c.ppo.iterations = 3
    c.ppo.kl_coef = 0.01  # the reference params travel through the checkpoint too
    c.max_new_tokens = 72
    return c


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tok_dir = str(tmp_path_factory.mktemp("tok"))
    tokenizer_lib.get_tokenizer(load_config().tokenizer, tok_dir).save_pretrained(tok_dir)
    c = small_config(tok_dir)
    full_dir = str(tmp_path_factory.mktemp("full"))
    run = build(c, full_dir)
    full = train_lib.train(c, full_dir, run=run)
    part_dir = str(tmp_path_factory.mktemp("part"))
    assert train_lib.train(c, part_dir, run=run, interrupt_after=1) == {"interrupted": True}
    resumed = train_lib.train(c, part_dir, run=run)
    return c, run, full_dir, full, part_dir, resumed


def _params(run, workdir, step):
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    return ckpt.restore(run.restore_target("ppo"), step)


def test_resumed_run_equals_uninterrupted(runs):
    c, run, full_dir, full, part_dir, resumed = runs
    assert len(full["history"]) == c.ppo.iterations
    assert [h["iteration"] for h in resumed["history"]] == [1, 2, 3]
    assert_histories_close(full["history"], resumed["history"], rtol=0, atol=0)
    last = c.sft.steps + c.ppo.iterations
    s_full, _ = _params(run, full_dir, last)
    s_part, _ = _params(run, part_dir, last)
    jax.tree.map(np.testing.assert_array_equal, s_full, s_part)


def test_keeps_last_checkpoints(runs):
    c, run, full_dir, *_ = runs
    steps = Checkpointer(os.path.join(full_dir, "checkpoints")).all_steps()
    assert len(steps) == c.keep_checkpoints
    assert max(steps) == c.sft.steps + c.ppo.iterations


def test_incompatible_checkpoint_is_a_clear_error(runs, tmp_path):
    c, run, full_dir, *_ = runs
    ckpt = Checkpointer(os.path.join(full_dir, "checkpoints"))
    with pytest.raises(CheckpointError, match="does not match"):
        ckpt.restore({"params": {"w": np.zeros(3)}})
    with pytest.raises(CheckpointError, match="no checkpoint"):
        Checkpointer(str(tmp_path / "empty")).restore({"x": np.zeros(1)})


def test_changed_model_in_same_workdir_is_refused(runs):
    c, run, full_dir, *_ = runs
    other = small_config(c.tokenizer.path)
    other.model.text_hidden = 48
    with pytest.raises(ValueError, match="different config"):
        train_lib.Outputs(other, full_dir)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("ppo.minibatches", 3, "does not split"),
        ("ppo.micro_batches", 3, "does not split"),
        ("ppo.temperature", 0.0, "temperature"),
        ("task", "Chess", "not one of"),
        ("sft.wrong_share", 1.5, "wrong_share"),
        ("mesh", "3,1,1", "does not divide over the mesh"),
        ("mesh", "8,1", "data,fsdp,tensor"),
    ],
)
def test_bad_values_fail_before_compiling(field, value, message):
    c = load_config()
    section, _, name = field.rpartition(".")
    setattr(c[section] if section else c, name, value)
    with pytest.raises(ValueError, match=message):
        validate_config(c)


def test_unknown_field_on_the_command_line(tmp_path):
    cmd = [sys.executable, "-m", "rlvlm_jax.train", "--config",
           os.path.join(ROOT, "experiments", "numberline_test.py"), "--workdir", str(tmp_path),
           "--config.ppo.learning_rate=1e-3"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode != 0
    assert "learning_rate" in out.stderr
    cmd[-1] = "--config.ppo.lr=fast"  # wrong type
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode != 0
    assert "lr" in out.stderr


def test_evaluate_command(runs):
    from rlvlm_jax.evaluate import evaluate_checkpoint

    c, run, full_dir, *_ = runs
    out = evaluate_checkpoint(c, full_dir, episodes=4, temperature=0.2)
    assert out["episodes"] == 4 and out["stage"] == "ppo"
    assert 0.0 <= out["success_rate"] <= 1.0
    assert os.path.isfile(os.path.join(full_dir, f"eval_{out['checkpoint_step']}_t0.2.json"))
    greedy = evaluate_checkpoint(c, full_dir, episodes=4, temperature=0.0)
    assert greedy["temperature"] == 0.0


@pytest.mark.slow  # ~6 s; test_evaluate_command restores the full checkpoint in the default suite
def test_evaluate_restores_a_lora_checkpoint(runs, tmp_path):
    """`evaluate` restores into the same target as training's resume: with LoRA adapters the PPO
    checkpoint carries `lora` leaves and no reference copy (the frozen base is the reference)."""
    from rlvlm_jax.evaluate import evaluate_checkpoint

    c = small_config(runs[0].tokenizer.path)
    c.ppo.lora_rank, c.ppo.lora_alpha = 4, 8.0
    run = build(c, str(tmp_path))
    target = run.restore_target("ppo")
    assert "lora" in target["params"] and "ref_params" not in target  # kl_coef > 0 under LoRA
    adapters = jax.tree.map(lambda x: x + 1.0, target["params"]["lora"])
    state = {**target, "params": {**target["params"], "lora": adapters}}
    train_lib.Outputs(c, str(tmp_path)).ckpt.save(7, state, {"stage": "ppo"})
    restored, _ = Checkpointer(str(tmp_path / "checkpoints")).restore(run.restore_target("ppo"))
    jax.tree.map(np.testing.assert_array_equal, restored["params"]["lora"], adapters)
    out = evaluate_checkpoint(c, str(tmp_path), episodes=4, temperature=0.0)
    assert out["checkpoint_step"] == 7 and out["stage"] == "ppo" and out["episodes"] == 4
