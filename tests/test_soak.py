"""Resume survives SIGKILL at any moment: benchmarks/soak_resume.py with a few kills (the
>= 20-kill version is the tool's default; it takes ~10 minutes on 2 CPU cores)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_killed_and_resumed_run_equals_uninterrupted(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "soak_resume.py"), "--kills", "5",
           "--seed", "1", "--sft-steps", "3", "--ppo-iterations", "3",
           "--workdir", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=1500,
                         env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert out.stdout.strip(), out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    detail = out.stdout[-3000:] + out.stderr[-3000:]
    assert summary["kills"] == 5, detail
    assert summary["failed_runs"] == 0, detail
    assert summary["final_step_compared"] and summary["arrays_compared"] > 0, detail
    assert summary["arrays_equal"], summary["array_mismatches"]
    assert summary["meta_equal"] and summary["results_equal"], detail
    assert summary["history_length"] == 3
    assert summary["ok"] and out.returncode == 0, detail
