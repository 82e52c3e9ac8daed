"""The seeds command: its command lines per seed, skipping finished seeds, stopping on a failed
one, refusing bad input before any run, and mean ± std over the seeds' workdirs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from rlvlm_jax import seeds
from tests.rl.test_sft import ROOT

CONFIG = os.path.join(ROOT, "experiments", "numberline_test.py")


def _fake_runs(monkeypatch, success, fail_seed=None):
    """subprocess.call replaced by a run that writes config.json and results.json as train does
    (success[seed] as the PPO evaluation); returns the list of commands it was given."""
    calls = []

    def call(cmd):
        calls.append(cmd)
        seed = int(next(a for a in cmd if a.startswith("--config.seed=")).split("=")[1])
        if seed == fail_seed:
            return 3
        wd = cmd[cmd.index("--workdir") + 1]
        os.makedirs(wd, exist_ok=True)
        config = {"task": "NumberLine", "seed": seed, "cot": True, "model": {"init_seed": 0},
                  "ppo": {"thought_lambda": 0.5, "iterations": 2}, "sft": {"steps": 3}}
        with open(os.path.join(wd, "config.json"), "w") as f:
            json.dump(config, f)
        with open(os.path.join(wd, "results.json"), "w") as f:
            json.dump({"sft_eval": {"success_rate": 0.1, "episodes": 4},
                       "ppo_eval": {"success_rate": success[seed], "episodes": 4},
                       "history": [], "evals": [], "wall_seconds": 1.0}, f)
        return 0

    monkeypatch.setattr(seeds.subprocess, "call", call)
    return calls


def test_runs_each_seed_then_aggregates(tmp_path, monkeypatch):
    success = [0.5, 0.75, 1.0, 0.25]
    calls = _fake_runs(monkeypatch, success)
    out = str(tmp_path / "sweep")
    argv = ["seeds", "--config", CONFIG, "--workdir", out, "--seeds", "3",
            "--config.ppo.lr=1e-4"]
    assert seeds.main(argv) == 0
    assert [c[1:] for c in calls] == [
        ["-m", "rlvlm_jax.train", "--config", CONFIG, "--workdir",
         os.path.join(out, f"seed_{s}"), f"--config.seed={s}", "--config.ppo.lr=1e-4"]
        for s in range(3)]
    with open(os.path.join(out, seeds.SEEDS_FILE)) as f:
        groups = {g["method"]: g for g in json.load(f)}
    rl = groups["RL (CoT)"]
    assert rl["seeds"] == [0, 1, 2] and rl["n"] == 3
    np.testing.assert_allclose(rl["mean"], np.mean(success[:3]) * 100)
    np.testing.assert_allclose(rl["std"], np.std(np.asarray(success[:3]) * 100, ddof=1))
    assert groups["SFT"]["mean"] == pytest.approx(10.0)

    calls.clear()  # finished seeds are skipped; a fourth one runs
    assert seeds.main(["seeds", "--config", CONFIG, "--workdir", out, "--seeds", "4"]) == 0
    assert [c[c.index("--workdir") + 1] for c in calls] == [os.path.join(out, "seed_3")]
    with open(os.path.join(out, seeds.SEEDS_FILE)) as f:
        assert {g["method"]: g["n"] for g in json.load(f)}["RL (CoT)"] == 4


def test_a_failed_seed_stops_the_sweep_and_names_it(tmp_path, monkeypatch, capsys):
    calls = _fake_runs(monkeypatch, [0.5, 0.5, 0.5], fail_seed=1)
    out = str(tmp_path / "sweep")
    assert seeds.main(["seeds", "--config", CONFIG, "--workdir", out, "--seeds", "3"]) == 1
    assert len(calls) == 2  # seed 2 never started
    assert "seed 1 failed (exit code 3)" in capsys.readouterr().err
    assert os.path.isfile(os.path.join(out, "seed_0", "results.json"))


@pytest.mark.parametrize("args, message", [
    (["--seeds", "0"], "--seeds must be >= 1, got 0"),
    (["--seeds", "two"], "--seeds must be an integer"),
    (["--seeds", "2", "--config.seed=3"], "--config.seed is set per run"),
    (["--seeds", "2", "--config.ppo.lrr=1"], "the config has no field ppo.lrr"),
    (["--seeds", "2", "--program", "rlvlm_jax.evaluate"], "--program 'rlvlm_jax.evaluate' is "
                                                           "not one of"),
    (["--seeds", "2", "--verbose"], "unexpected argument '--verbose'"),
    ([], "--seeds is required"),
])
def test_bad_input_is_one_line_before_any_run(tmp_path, monkeypatch, capsys, args, message):
    calls = _fake_runs(monkeypatch, [0.5] * 3)
    out = tmp_path / "sweep"
    assert seeds.main(["seeds", "--config", CONFIG, "--workdir", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not calls and not out.exists()


def test_missing_config_file(tmp_path, capsys):
    assert seeds.main(["seeds", "--config", str(tmp_path / "nope.py"), "--workdir",
                       str(tmp_path / "w"), "--seeds", "1"]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_two_real_seeds_of_the_test_config(tmp_path):
    """Two seeds of numberline_test.py through the real entry point, as a user runs it."""
    out = str(tmp_path / "sweep")
    subprocess.run([sys.executable, "-m", "rlvlm_jax.seeds", "--config", CONFIG, "--workdir", out,
                    "--seeds", "2"], check=True, cwd=ROOT, env={**os.environ,
                                                                 "HF_HUB_OFFLINE": "1"})
    with open(os.path.join(out, seeds.SEEDS_FILE)) as f:
        groups = json.load(f)
    assert {g["method"] for g in groups} >= {"SFT", "RL (CoT)"}
    assert all(g["seeds"] == [0, 1] for g in groups)
    configs = [json.load(open(os.path.join(out, f"seed_{s}", "config.json"))) for s in (0, 1)]
    assert [c["seed"] for c in configs] == [0, 1]
