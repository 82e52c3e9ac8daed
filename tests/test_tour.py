"""The tour of the environments (`python -m rlvlm_jax.tour`) runs end to end and writes what it
promises."""

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow  # the whole tour command (~10 s)
def test_tour_runs_and_writes_pictures_and_texts(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "rlvlm_jax.tour",
        "--config",
        "experiments/tour.py:NumberLine,EZPoints",
        "--config.num_envs=32",
        "--config.steps=12",
        f"--workdir={tmp_path}",
    ]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        cmd,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "XLA_FLAGS": ""},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.load(open(tmp_path / "summary.json"))
    assert summary["NumberLine"]["oracle"]["first_episode_success_rate"] == 1.0
    assert summary["EZPoints"]["text_episode_return"] == 10.0
    episode = json.load(open(tmp_path / "EZPoints_episode.json"))
    assert episode[-1]["action"] == "=" and episode[-1]["terminated"]
    assert "current formula" in episode[0]["response"]
    assert (tmp_path / "NumberLine_episode.png").exists()


def test_tour_rejects_unknown_task(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "rlvlm_jax.tour",
        "--config",
        "experiments/tour.py:Poker",
        f"--workdir={tmp_path}",
    ]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "unknown task(s) ['Poker']" in out.stderr
