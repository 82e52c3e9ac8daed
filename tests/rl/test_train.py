"""The main job: a resumed run equals an uninterrupted one; bad configs fail clearly."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from rlvlm_jax import train as train_lib
from rlvlm_jax.checkpoints import Checkpointer, CheckpointError
from rlvlm_jax.text import tokenizer as tokenizer_lib
from tests.rl.test_sft import ROOT, load_config

TIMING = ("wall_seconds", "eval_seconds")


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
    tokenizer_lib.get_tokenizer(load_config(), tok_dir).save_pretrained(tok_dir)
    c = small_config(tok_dir)
    full_dir = str(tmp_path_factory.mktemp("full"))
    job = train_lib.Job(c, full_dir)
    full = train_lib.train(c, full_dir, job=job)
    part_dir = str(tmp_path_factory.mktemp("part"))
    assert train_lib.train(c, part_dir, job=job, interrupt_after=1) == {"interrupted": True}
    resumed = train_lib.train(c, part_dir, job=job)
    return c, job, full_dir, full, part_dir, resumed


def _params(job, workdir, step):
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    target = job.ppo_state(job.init_params, job.ppo_tx.init(job.init_params),
                           job.actor.reset(jax.random.key(0), job.config.ppo.num_envs),
                           jax.random.key(0), job.init_params)
    state, meta = ckpt.restore(target, step)
    return state, meta


def test_resumed_run_equals_uninterrupted(runs):
    c, job, full_dir, full, part_dir, resumed = runs
    assert len(full["history"]) == c.ppo.iterations
    assert [h["iteration"] for h in resumed["history"]] == [1, 2, 3]
    for a, b in zip(full["history"], resumed["history"], strict=True):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=0, atol=0, err_msg=k)
    last = c.sft.steps + c.ppo.iterations
    s_full, _ = _params(job, full_dir, last)
    s_part, _ = _params(job, part_dir, last)
    jax.tree.map(np.testing.assert_array_equal, s_full, s_part)


def test_keeps_last_checkpoints(runs):
    c, job, full_dir, *_ = runs
    steps = Checkpointer(os.path.join(full_dir, "checkpoints")).all_steps()
    assert len(steps) == c.keep_checkpoints
    assert max(steps) == c.sft.steps + c.ppo.iterations


def test_incompatible_checkpoint_is_a_clear_error(runs, tmp_path):
    c, job, full_dir, *_ = runs
    ckpt = Checkpointer(os.path.join(full_dir, "checkpoints"))
    with pytest.raises(CheckpointError, match="does not match"):
        ckpt.restore({"params": {"w": np.zeros(3)}})
    with pytest.raises(CheckpointError, match="no checkpoint"):
        Checkpointer(str(tmp_path / "empty")).restore({"x": np.zeros(1)})


def test_changed_model_in_same_workdir_is_refused(runs):
    c, job, full_dir, *_ = runs
    other = small_config(c.tokenizer.path)
    other.model.text_hidden = 48
    with pytest.raises(ValueError, match="different config"):
        train_lib.Job(other, full_dir)


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
        train_lib.validate_config(c)


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

    c, job, full_dir, *_ = runs
    out = evaluate_checkpoint(c, full_dir, episodes=4, temperature=0.2)
    assert out["episodes"] == 4 and out["stage"] == "ppo"
    assert 0.0 <= out["success_rate"] <= 1.0
    assert os.path.isfile(os.path.join(full_dir, f"eval_{out['checkpoint_step']}_t0.2.json"))
    greedy = evaluate_checkpoint(c, full_dir, episodes=4, temperature=0.0)
    assert greedy["temperature"] == 0.0
