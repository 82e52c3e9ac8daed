"""Checkpoints that survive faults: restore falls back past an unreadable newest step (one
warning line naming it), never across a changed layout; nothing non-finite is written or
resumed from; train's resume and evaluate use the same fallback."""

import dataclasses
import glob
import os
import shutil
import types

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from rlvlm_jax import checkpoints as ckpt_lib
from rlvlm_jax.checkpoints import Checkpointer, CheckpointError, UnreadableCheckpoint


def small_state(k: float):
    return {
        "params": {"w": np.full((8, 4), k, np.float32), "b": np.arange(4, dtype=np.float32)},
        "opt": {"count": np.array(k, np.int32), "mu": np.full((8, 4), 0.5 * k, np.float32)},
        "rng": np.array([7, int(k)], np.uint32),
    }


def write_unchecked(ckpt: Checkpointer, step: int, state, meta: dict) -> None:
    """Write a checkpoint the way the code did before saves checked finiteness."""
    layout = {k: list(v[0]) + [v[1]] for k, v in ckpt_lib._layout(state).items()}
    ckpt.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(dict(meta, layout=layout))),
        force=True)
    ckpt.manager.wait_until_finished()


def truncate_arrays(step_dir: str) -> None:
    files = [f for f in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)
             if os.path.isfile(f)]
    assert files, f"no array files under {step_dir}"
    for f in files:
        with open(f, "r+b") as fh:
            fh.truncate(10)


def corrupt(step_dir: str, how: str) -> None:
    if how == "truncated arrays":
        truncate_arrays(step_dir)
    elif how == "arrays deleted":
        shutil.rmtree(os.path.join(step_dir, "state"))
    elif how == "meta truncated":
        with open(os.path.join(step_dir, "meta", "metadata"), "r+b") as fh:
            fh.truncate(5)
    elif how == "array index deleted":
        for f in glob.glob(os.path.join(step_dir, "state", "**", "manifest.ocdbt"),
                           recursive=True):
            os.remove(f)
    else:
        raise AssertionError(how)


@pytest.fixture
def three(tmp_path):
    d = str(tmp_path / "ckpt")
    ck = Checkpointer(d)
    for s in (1, 2, 3):
        ck.save(s, small_state(s), {"stage": "x", "s": s})
    return d, ck


def warnings_of(captured) -> list[str]:
    return [line for line in captured.err.splitlines() if "[checkpoint] warning" in line]


@pytest.mark.parametrize("how", ["truncated arrays", "arrays deleted", "meta truncated",
                                 "array index deleted"])
def test_unreadable_newest_falls_back_with_one_warning(three, how, capsys):
    d, ck = three
    corrupt(os.path.join(d, "3"), how)
    capsys.readouterr()
    step, state, meta = ck.restore_latest(small_state(0))
    assert step == 2 and meta["s"] == 2  # meta from the step whose arrays came back
    jax.tree.map(np.testing.assert_array_equal, state, small_state(2))
    captured = capsys.readouterr()
    lines = warnings_of(captured)
    assert len(lines) == 1, captured.err
    assert "checkpoint 3 in " + d in lines[0] and "restored checkpoint 2" in lines[0]
    assert len(captured.err.splitlines()) == 1, captured.err  # no traceback
    assert len(lines[0]) < 600
    assert ck.all_steps() == [1, 2, 3]  # without set_aside nothing moves
    # restore() without a step is the same fallback
    state, meta = ck.restore(small_state(0))
    assert meta["s"] == 2


def test_set_aside_moves_the_bad_step_so_it_can_be_written_again(three, capsys):
    d, ck = three
    corrupt(os.path.join(d, "3"), "truncated arrays")
    step, _, _ = ck.restore_latest(small_state(0), set_aside=True)
    assert step == 2
    assert "moved to " + os.path.join(d, "3.unreadable") in warnings_of(capsys.readouterr())[0]
    assert ck.all_steps() == [1, 2]
    assert os.path.isdir(os.path.join(d, "3.unreadable"))
    ck.save(3, small_state(30), {"stage": "x", "s": 30})  # the resumed run writes 3 again
    assert Checkpointer(d).restore_latest(small_state(0))[0] == 3
    assert warnings_of(capsys.readouterr()) == []


def test_explicit_unreadable_step_is_one_line_error(three, capsys):
    d, ck = three
    corrupt(os.path.join(d, "3"), "truncated arrays")
    with pytest.raises(UnreadableCheckpoint, match=r"checkpoint 3 in .* is unreadable") as e:
        ck.restore(small_state(0), 3)
    assert "\n" not in str(e.value) and len(str(e.value)) < 400
    assert isinstance(e.value, CheckpointError)  # train/evaluate main print it as one line
    with pytest.raises(CheckpointError, match="no checkpoint 9"):
        ck.restore(small_state(0), 9)
    state, meta = ck.restore(small_state(0), 2)  # a readable step by number
    assert meta["s"] == 2


def test_layout_mismatch_is_not_a_fallback(three, capsys):
    d, ck = three
    other = small_state(0)
    other["params"]["w"] = np.zeros((8, 5), np.float32)
    with pytest.raises(CheckpointError, match="checkpoint 3 .* does not match"):
        ck.restore_latest(other, set_aside=True)
    assert ck.all_steps() == [1, 2, 3] and warnings_of(capsys.readouterr()) == []


def test_nothing_readable_is_an_error_and_moves_nothing(three):
    d, ck = three
    for s in (1, 2, 3):
        corrupt(os.path.join(d, str(s)), "truncated arrays")
    with pytest.raises(UnreadableCheckpoint, match="no readable checkpoint"):
        ck.restore_latest(small_state(0), set_aside=True)
    assert sorted(os.listdir(d)) == ["1", "2", "3"]


def test_target_from_meta_of_the_same_step(tmp_path, capsys):
    """The target's layout depends on the stage stored in meta: a fallback across stages reads
    the older step's meta and builds that stage's target."""
    ck = Checkpointer(str(tmp_path / "c"))
    ck.save(1, {"a": np.ones(3, np.float32)}, {"stage": "one"})
    ck.save(2, {"a": np.ones(3, np.float32), "b": np.ones(2, np.float32)}, {"stage": "two"})
    corrupt(str(tmp_path / "c" / "2"), "truncated arrays")
    shapes = {"one": {"a": np.zeros(3, np.float32)},
              "two": {"a": np.zeros(3, np.float32), "b": np.zeros(2, np.float32)}}
    step, state, meta = ck.restore_latest(lambda m: shapes[m["stage"]])
    assert (step, meta["stage"], sorted(state)) == (1, "one", ["a"])


@pytest.mark.parametrize("part", ["params", "opt"])
def test_save_refuses_non_finite(three, part):
    d, ck = three
    bad = small_state(4)
    leaf = "w" if part == "params" else "mu"
    bad[part][leaf][1, 2] = np.nan if part == "params" else np.inf
    with pytest.raises(FloatingPointError, match=rf"checkpoint 4 not written.*\['{part}'\]"
                                                 rf"\['{leaf}'\].*checkpoint, 3, is kept"):
        ck.save(4, bad, {"stage": "x", "s": 4})
    assert ck.all_steps() == [1, 2, 3]
    assert sorted(os.listdir(d)) == ["1", "2", "3"]  # not even a temporary folder


def test_restore_skips_non_finite_checkpoint(three, capsys):
    """A checkpoint with NaN weights (written before saves checked) is never resumed from."""
    d, ck = three
    bad = small_state(4)
    bad["params"]["b"][0] = np.nan
    write_unchecked(ck, 4, bad, {"stage": "x", "s": 4})
    step, state, _ = ck.restore_latest(small_state(0))
    assert step == 3
    line, = warnings_of(capsys.readouterr())
    assert "checkpoint 4" in line and "non-finite" in line and "['params']['b']" in line


def test_evaluate_falls_back_but_not_for_an_explicit_step(three, capsys, monkeypatch):
    from rlvlm_jax import evaluate as evaluate_lib
    from rlvlm_jax.tensorboard import Writer

    d, ck = three
    corrupt(os.path.join(d, "3"), "truncated arrays")
    seen = []
    run = types.SimpleNamespace(restore_target=lambda stage: small_state(0),
                                evaluate_fn=lambda params, key, t: seen.append(params) or {})
    monkeypatch.setattr(evaluate_lib, "summarize_evaluation", lambda r: {"episodes": 4})
    out = types.SimpleNamespace(ckpt=ck, writer=Writer(None), workdir=os.path.dirname(d))
    result = evaluate_lib._evaluate(run, out, 4, 0.2, None, 0)
    assert result["checkpoint_step"] == 2 and result["stage"] == "x"
    jax.tree.map(np.testing.assert_array_equal, seen[0], small_state(2)["params"])
    assert len(warnings_of(capsys.readouterr())) == 1
    assert ck.all_steps() == [1, 2, 3]  # evaluate moves nothing (training may be running)
    with pytest.raises(UnreadableCheckpoint, match="checkpoint 3 in .* is unreadable"):
        evaluate_lib._evaluate(run, out, 4, 0.2, 3, 0)


# ------------------------------------------------------------------- through train's resume
@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The smoke config, short: SFT 3 steps (a checkpoint each), PPO 2 iterations, no evals."""
    from rlvlm_jax.build import build
    from rlvlm_jax.text import tokenizer as tokenizer_lib
    from tests.rl.test_sft import load_config

    tok_dir = str(tmp_path_factory.mktemp("tok"))
    tokenizer_lib.get_tokenizer(load_config().tokenizer, tok_dir).save_pretrained(tok_dir)
    c = load_config()
    c.tokenizer.path = tok_dir
    c.sft.steps = 3
    c.sft.checkpoint_every = 1
    c.sft.num_demos = 8
    c.sft.eval_every = 0
    c.eval.episodes = 0
    c.ppo.iterations = 2
    workdir = str(tmp_path_factory.mktemp("smoke"))
    return c, build(c, workdir), workdir


def _nan(tree):
    return jax.tree.map(lambda x: x * np.nan if jnp.issubdtype(x.dtype, jnp.inexact) else x,
                        tree)


def _all_finite(run, workdir):
    """Steps of the workdir, after checking every array of every one (orbax directly)."""
    ck = Checkpointer(os.path.join(workdir, "checkpoints"))
    for step in ck.all_steps():
        stage = ck.read_meta(step)["stage"]
        out = ck.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(
            jax.tree.map(ocp.utils.to_shape_dtype_struct, run.restore_target(stage)))))
        for path, x in jax.tree_util.tree_flatten_with_path(out.state)[0]:
            assert np.all(np.isfinite(np.asarray(x))), (step, jax.tree_util.keystr(path))
    return ck.all_steps()


def test_sft_writes_no_nan_and_resume_skips_bad_checkpoints(smoke, capsys, monkeypatch):
    """SFT only (PPO stubbed out, so this stays cheap): NaN optimiser moments are not written;
    a resume skips a NaN checkpoint written by older code and a truncated one."""
    from rlvlm_jax import train as train_lib

    c, run, smoke_dir = smoke
    workdir = smoke_dir + "_sft_only"
    ckdir = os.path.join(workdir, "checkpoints")
    monkeypatch.setattr(train_lib, "run_ppo", lambda *args, **kw: None)  # stop after SFT
    # 1. SFT step 3 leaves the params finite and the optimiser moments NaN: not written (the
    # check used to look at the params only).
    calls = []

    def sft_step_nan_moments(params, opt, data, idx):
        params, opt, metrics = run.sft_step(params, opt, data, idx)
        calls.append(1)
        return params, (_nan(opt) if len(calls) == 3 else opt), metrics

    with pytest.raises(FloatingPointError, match="checkpoint 3 not written.*'opt'.*2, is kept"):
        train_lib.train(c, workdir, run=dataclasses.replace(run, sft_step=sft_step_nan_moments))
    assert _all_finite(run, workdir) == [1, 2]
    step2, _ = Checkpointer(ckdir).restore(run.restore_target("sft"), 2)

    # 2. Newest, a NaN checkpoint written by older code (never resumed from), then a truncated
    # one: one line each, resume from step 1, steps 2 and 3 written again (2 bit-identical).
    sft = run.restore_target("sft")
    meta = dict(Checkpointer(ckdir).read_meta(2), sft_step=3)
    write_unchecked(Checkpointer(ckdir), 3, {**sft, "params": _nan(sft["params"])}, meta)
    truncate_arrays(os.path.join(ckdir, "2"))
    capsys.readouterr()
    assert train_lib.train(c, workdir, run=run) == {"interrupted": True}
    captured = capsys.readouterr()
    lines = warnings_of(captured)
    assert len(lines) == 2 and len(captured.err.splitlines()) == 2, captured.err  # no noise
    assert lines[0].startswith(f"[checkpoint] warning: checkpoint 3 in {ckdir} is unreadable "
                               "(non-finite values in ['params']")
    assert lines[1].startswith(f"[checkpoint] warning: checkpoint 2 in {ckdir} is unreadable "
                               "(arrays: ")
    assert all("restored checkpoint 1 instead" in line and "moved to" in line for line in lines)
    assert "[resume] checkpoint 1: stage sft, sft step 1" in captured.out
    assert _all_finite(run, workdir) == [1, 2, 3]
    again, _ = Checkpointer(ckdir).restore(run.restore_target("sft"), 2)
    jax.tree.map(np.testing.assert_array_equal, step2, again)
    assert {"2.unreadable", "3.unreadable"} <= set(os.listdir(ckdir))


@pytest.mark.slow
def test_ppo_writes_no_nan_checkpoint_and_resumes_past_bad_ones(smoke, capsys):
    from rlvlm_jax import train as train_lib

    c, run, workdir = smoke
    ckdir = os.path.join(workdir, "checkpoints")
    # 1. PPO's update returns NaN weights with finite loss and gradients (what a NaN learning
    # rate does): not written; this used to be saved, and the run said the last good one was
    # kept.
    def update_nan_weights(*args):
        params, opt, metrics = run.update(*args)
        return _nan(params), opt, metrics

    with pytest.raises(FloatingPointError, match="checkpoint 4 not written.*'params'"):
        train_lib.train(c, workdir, run=dataclasses.replace(run, update=update_nan_weights))
    assert _all_finite(run, workdir) == [1, 2, 3]

    # 2. A NaN PPO checkpoint written by older code is never resumed from: back to SFT step 3.
    ppo = run.restore_target("ppo")
    ppo["params"] = _nan(ppo["params"])
    meta = dict(Checkpointer(ckdir).read_meta(3), stage="ppo", ppo_iter=1)
    write_unchecked(Checkpointer(ckdir), 4, ppo, meta)
    capsys.readouterr()
    results = train_lib.train(c, workdir, run=run)
    captured = capsys.readouterr()
    line, = warnings_of(captured)
    assert f"checkpoint 4 in {ckdir} is unreadable (non-finite" in line
    assert "[resume] checkpoint 3: stage sft" in captured.out
    assert [h["iteration"] for h in results["history"]] == [1, 2]
    assert _all_finite(run, workdir) == [3, 4, 5]

    # 3. A truncated newest checkpoint: one warning, resume from 4, iteration 2 run again.
    truncate_arrays(os.path.join(ckdir, "5"))
    again = train_lib.train(c, workdir, run=run)
    captured = capsys.readouterr()
    line, = warnings_of(captured)
    assert f"checkpoint 5 in {ckdir} is unreadable" in line and "moved to" in line
    assert "[resume] checkpoint 4: stage ppo, sft step 3, ppo iteration 1" in captured.out
    assert len(captured.err.splitlines()) == 1, captured.err
    assert again["history"] == results["history"]  # the same iteration 2, bit for bit
    assert _all_finite(run, workdir) == [3, 4, 5]
    assert {"4.unreadable", "5.unreadable"} <= set(os.listdir(ckdir))
