"""Every bad input is a one-line error before anything is built, compiled or written; the table
of inputs, messages and where each is checked is BUILD.md's "Bad input".

In-process where possible (`validate_config`, `build`, `train`, `evaluate_checkpoint`,
`config_files.parse_flags`); the commands run as subprocesses, all at once, only to check what
a user sees: one line, the exit code, no traceback, no workdir.
"""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from rlvlm_jax import train as train_lib
from rlvlm_jax.build import build, validate_config
from rlvlm_jax.checkpoints import Checkpointer
from rlvlm_jax.evaluate import evaluate_checkpoint
from tests.rl.test_sft import ROOT, load_config

TEST_CONFIG = os.path.join(ROOT, "experiments", "numberline_test.py")
MISSING = "/nonexistent/rlvlm_bad_input"

# (overrides of numberline_test, the message). The config checks run before the tokenizer, the
# env or the model are made (today's build would otherwise fail only after SFT, or never).
BAD_VALUES = {
    # names, each from the registry the component looks it up in
    "task": ({"task": "Chess"}, "config.task 'Chess' is not one of"),
    "template": ({"template": "llava_v2"}, "config.template 'llava_v2' is not one of"),
    "policy_loss": ({"ppo.policy_loss": "ppo_clipp"},
                    r"config.ppo.policy_loss 'ppo_clipp' is not one of \['ppo_clip', 'pg'\]"),
    "value_loss": ({"ppo.value_loss": "huber"}, "config.ppo.value_loss 'huber' is not one of"),
    "kl_estimator": ({"ppo.kl_estimator": "k4"}, "config.ppo.kl_estimator 'k4' is not one of"),
    "token_reduction": ({"ppo.token_reduction": "mean"},
                        "config.ppo.token_reduction 'mean' is not one of"),
    "init": ({"model.init": "xavier"}, "config.model.init 'xavier' is not one of"),
    "pixels": ({"model.pixels": "rgb"}, "config.model.pixels 'rgb' is not one of"),
    "dtype": ({"model.dtype": "float8"}, "config.model.dtype 'float8' is not one of"),
    "param_dtype": ({"model.param_dtype": "bf16"}, "config.model.param_dtype 'bf16' is not one"),
    # sizes
    "num_envs": ({"ppo.num_envs": 0}, "config.ppo.num_envs must be an integer >= 1, got 0"),
    "num_steps": ({"ppo.num_steps": 0}, "config.ppo.num_steps must be an integer >= 1"),
    "epochs": ({"ppo.epochs": 0}, "config.ppo.epochs must be an integer >= 1"),
    "minibatches": ({"ppo.minibatches": 0}, "config.ppo.minibatches must be an integer >= 1"),
    "micro_batches": ({"ppo.micro_batches": -2}, "config.ppo.micro_batches must be an integer"),
    "iterations": ({"ppo.iterations": -1}, "config.ppo.iterations must be an integer >= 0"),
    "minibatch_split": ({"ppo.minibatches": 3}, "does not split into ppo.minibatches = 3"),
    "sft_steps": ({"sft.steps": -1}, "config.sft.steps must be an integer >= 0"),
    "sft_batch": ({"sft.batch_size": 0}, "sft.batch_size and sft.eval_samples must be >= 1"),
    "sft_eval_samples": ({"sft.eval_samples": 0}, "sft.batch_size and sft.eval_samples"),
    "sft_num_demos": ({"sft.num_demos": 0}, "sft.num_demos must be >= 1"),
    "text_corpus": ({"sft.text_corpus": "books"}, "config.sft.text_corpus 'books' is not one of"),
    "text_corpus_alone": ({"sft.text_corpus": "solutions"}, "set both"),
    "text_corpus_task": ({"sft.text_corpus": "solutions", "sft.text_batch_size": 8},
                         "are for Points24, not NumberLine"),
    "sort_values_task": ({"sft.sort_values": True}, "are for Points24, not NumberLine"),
    "episodes": ({"eval.episodes": -1}, "config.eval.episodes must be an integer >= 0"),
    "eval_max_steps": ({"eval.max_steps": 0}, "config.eval.max_steps must be >= 1"),
    "max_new_tokens": ({"max_new_tokens": 0}, "config.max_new_tokens must be an integer >= 1"),
    "keep_checkpoints": ({"keep_checkpoints": 0}, "config.keep_checkpoints must be an integer"),
    "log_every": ({"log_every": 0}, "config.log_every must be an integer >= 1"),
    "checkpoint_every": ({"checkpoint_every": -5}, "config.checkpoint_every must be an integer"),
    "text_layers": ({"model.text_layers": 0}, "config.model.text_layers must be an integer"),
    "value_hidden": ({"model.value_hidden": (16, 0)}, "config.model.value_hidden must be"),
    "lora_rank": ({"ppo.lora_rank": -1}, "config.ppo.lora_rank must be an integer >= 0"),
    # real numbers
    "gamma": ({"ppo.gamma": 1.5}, r"config.ppo.gamma must be in \[0.0, 1.0\], got 1.5"),
    "ppo_lr": ({"ppo.lr": -1e-3}, "config.ppo.lr must be >= 0.0"),
    "sft_lr_nan": ({"sft.lr": math.nan}, "config.sft.lr must be >= 0.0, got nan"),
    "kl_coef": ({"ppo.kl_coef": -0.1}, "config.ppo.kl_coef must be >= 0.0"),
    "clip_eps": ({"ppo.clip_eps": 0.0}, "ppo.clip_eps must be > 0 with the ppo_clip loss"),
    "value_clip_eps": ({"ppo.value_clip_eps": -0.1}, "ppo.value_clip_eps must be > 0"),
    "eval_temperature": ({"eval.temperature": math.inf}, "config.eval.temperature must be a"),
    "ppo_temperature": ({"ppo.temperature": 0.0}, "ppo.temperature must be > 0"),
    "wrong_share": ({"sft.wrong_share": 1.5}, "config.sft.wrong_share must be in"),
    "thought_lambda": ({"ppo.thought_lambda": 2.0}, "config.ppo.thought_lambda must be in"),
    "lora_alpha": ({"ppo.lora_rank": 4, "ppo.lora_alpha": 0.0}, "ppo.lora_alpha > 0"),
    "lora_targets": ({"ppo.lora_rank": 4, "ppo.lora_targets": " , "}, "names no weights"),
    # pictures and the architecture from the config's fields
    "image_small": ({"image_size": 28}, r"config.image_size must be in \[55, 1024\]"),
    "image_large": ({"image_size": 4200}, r"config.image_size must be in \[55, 1024\]"),
    "image_patch": ({"image_size": 60}, "image_size 60 is not a multiple of patch_size 14"),
    "text_heads": ({"model.text_heads": 3}, "hidden_size 32 is not divisible by num_heads 3"),
    "kv_heads": ({"model.text_kv_heads": 3}, "num_heads 2 is not divisible by num_kv_heads 3"),
    "feature_layer": ({"model.vision_feature_layer": 5}, "vision_feature_layer 5 out of range"),
    "max_positions": ({"model.max_positions": 64}, "exceed the model's 64 positions"),
    # devices
    "mesh_text": ({"mesh": "a,b,c"}, "config.mesh must be 'data,fsdp,tensor' sizes"),
    "mesh_short": ({"mesh": "8,1"}, "config.mesh must be 'data,fsdp,tensor' sizes"),
    "mesh_zero": ({"mesh": "0,1,1"}, "config.mesh must be 'data,fsdp,tensor' sizes"),
    "mesh_split": ({"mesh": "3,1,1"}, "does not divide over the mesh"),
    # files a concrete run reads
    "tokenizer_path": ({"tokenizer.path": MISSING}, "config.tokenizer.path .* is not a direc"),
    "checkpoint": ({"model.checkpoint": MISSING}, "config.model.checkpoint .* is not a direc"),
    "sft_json": ({"sft.json": MISSING + ".json"}, "config.sft.json .* is not a file"),
}


def configured(overrides: dict, name: str = "numberline_test"):
    c = load_config(name)
    for field, value in overrides.items():
        section, _, key = field.rpartition(".")
        node = c
        for part in section.split(".") if section else ():
            node = node[part]
        node[key] = value
    return c


@pytest.mark.parametrize("overrides, message", list(BAD_VALUES.values()), ids=list(BAD_VALUES))
def test_bad_value_is_refused_by_validate_config(overrides, message):
    with pytest.raises(ValueError, match=message) as e:
        validate_config(configured(overrides))
    assert "\n" not in str(e.value)


def test_files_that_are_not_what_the_build_reads(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="config.tokenizer.path .* holds no tokenizer"):
        validate_config(configured({"tokenizer.path": str(empty)}))
    (empty / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="has no .safetensors files"):
        validate_config(configured({"model.checkpoint": str(empty)}))


def test_7b_config_needs_a_checkpoint_but_plans_without_one():
    c = load_config("llava_mistral_7b_numberline")
    with pytest.raises(ValueError, match="needs a pretrained model .*--config.model.checkpoint"):
        validate_config(c)
    validate_config(c, abstract=True)  # the planner's shape-only build (from a preset)
    c.require_checkpoint = False  # the field is the switch: a random 7B, if one insists
    validate_config(c)


def test_failed_build_leaves_no_workdir(tmp_path):
    """The card tokenizer is written into the workdir before the prompt length is known; a build
    that then fails removes it, and the directories it made."""
    workdir = tmp_path / "new" / "run"
    c = configured({"model.max_positions": 93})  # 16 image + 72 new tokens fit, the prompt not
    with pytest.raises(ValueError, match="exceeds the model's 93 positions"):
        build(c, str(workdir))
    assert not (tmp_path / "new").exists()
    c = configured({"mesh": "1,1,16"})  # 8 simulated devices (tests/conftest.py)
    with pytest.raises(ValueError, match="needs 16 devices but this process has 8"):
        build(c, str(workdir))
    assert not (tmp_path / "new").exists()


def test_undo_keeps_what_was_there(tmp_path):
    from rlvlm_jax.build import undo_on_error

    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(RuntimeError), undo_on_error(str(tmp_path)):
        (tmp_path / "tokenizer").mkdir()
        (tmp_path / "config.json").write_text("{}")
        raise RuntimeError("bad input")
    assert sorted(os.listdir(tmp_path)) == ["keep.txt"]


def test_train_refuses_bad_input_before_writing(tmp_path):
    workdir = tmp_path / "run"
    with pytest.raises(ValueError, match="config.ppo.policy_loss 'nope'"):
        train_lib.train(configured({"ppo.policy_loss": "nope"}), str(workdir))
    assert not workdir.exists()
    workdir.write_text("a file")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        train_lib.train(load_config(), str(workdir))


def test_evaluate_refuses_before_creating_anything(tmp_path):
    c = load_config()
    typo = tmp_path / "rnu"
    with pytest.raises(ValueError, match=f"--workdir {typo} does not exist"):
        evaluate_checkpoint(c, str(typo), episodes=4, temperature=0.2)
    assert not typo.exists()
    with pytest.raises(ValueError, match="--episodes must be >= 1, got 0"):
        evaluate_checkpoint(c, str(typo), episodes=0, temperature=0.2)
    with pytest.raises(ValueError, match="--temperature must be a number"):
        evaluate_checkpoint(c, str(typo), episodes=4, temperature=math.nan)
    run = tmp_path / "run"
    Checkpointer(str(run / "checkpoints")).save(5, {"x": np.zeros(1)}, {"stage": "sft"})
    with pytest.raises(ValueError, match="has no checkpoint 7; it has 5"):
        evaluate_checkpoint(c, str(run), episodes=4, temperature=0.2, step=7)
    with pytest.raises(ValueError, match="needs a pretrained model"):
        evaluate_checkpoint(load_config("llava_mistral_7b_numberline"), str(run), episodes=4,
                            temperature=0.2)
    assert os.listdir(run) == ["checkpoints"]


@pytest.mark.parametrize("args, message", [
    (["--config", TEST_CONFIG, "--workdir", "w", "--config.ppo.learning_rate=1"],
     "error: the config has no field ppo.learning_rate (from --config.ppo.learning_rate)\n"),
    (["--config", MISSING + ".py", "--workdir", "w"],
     f"error: config file '{MISSING}.py' does not exist\n"),
    (["--config", TEST_CONFIG, "--workdir", "w", "--config.ppo.lr=fast"],
     "error: flag --config.ppo.lr=fast: could not convert string to float: 'fast'\n"),
    (["--config", TEST_CONFIG], "error: --workdir is required\n"),
    (["--config", TEST_CONFIG, "--workdir", "w", "--bogus=1"],
     "error: Unknown command line flag 'bogus'\n"),
    (["--config", "BROKEN", "--workdir", "w"], "error: cannot load config file '"),
    (["--config", TEST_CONFIG, "--workdir", "w", "extra"],
     "error: unexpected arguments ['extra'] (flags are --name=value)\n"),
], ids=["unknown_field", "missing_file", "wrong_type", "required", "unknown_flag", "broken",
        "positional"])
def test_flag_errors_are_one_line_with_exit_code_2(args, message, tmp_path, capsys,
                                                   monkeypatch):
    from rlvlm_jax.config_files import parse_flags

    broken = tmp_path / "broken.py"
    broken.write_text("def get_config(:\n")
    argv = ["prog", *(str(broken) if a == "BROKEN" else a for a in args)]
    monkeypatch.setattr(sys, "argv", argv)  # config_flags reads the overrides from sys.argv
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True)
    flags.DEFINE_string("workdir", None, "", flag_values=fv)
    flags.mark_flags_as_required(["config", "workdir"], flag_values=fv)
    with pytest.raises(SystemExit) as e:
        parse_flags(argv, fv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err


def test_commands_print_one_line_and_create_nothing(tmp_path):
    """What a user sees, from the commands themselves (started together: ~5 s of imports each)."""
    w = str(tmp_path / "run")
    base = ["--config", TEST_CONFIG, "--workdir", w]
    cases = [
        ("train", [*base, "--config.ppo.learning_rate=1e-3"], 2,
         "error: the config has no field ppo.learning_rate"),
        ("train", [*base, "--config.ppo.num_envs=0"], 1,
         "error: config.ppo.num_envs must be an integer >= 1, got 0"),
        ("evaluate", [*base, "--episodes", "4"], 1, f"error: --workdir {w} does not exist"),
    ]
    env = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1")
    procs = [subprocess.Popen([sys.executable, "-m", f"rlvlm_jax.{cmd}", *args], cwd=ROOT,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for cmd, args, _, _ in cases]
    for (cmd, args, code, message), proc in zip(cases, procs, strict=True):
        out, err = proc.communicate(timeout=300)
        assert (proc.returncode, err.splitlines()) == (code, [err.strip()]), (cmd, args, err)
        assert err.startswith(message), (cmd, args, err)
        assert "Traceback" not in out + err
    assert not os.path.exists(w)
