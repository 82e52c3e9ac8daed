"""Multi-host training: two processes (jax.distributed on localhost, 2 CPU devices each) run the
tiny config on a 4-device mesh and match one process with 4 devices: the same metrics, the same
evaluation and the same params, with logs and JSON written by process 0 only."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from rlvlm_jax.build import build
from rlvlm_jax.checkpoints import Checkpointer
from tests.rl.test_sft import ROOT, load_config
from tests.rl.test_train import assert_histories_close

OVERRIDES = ["--config.mesh=4,1,1", "--config.ppo.kl_coef=0.01", "--config.eval.episodes=4",
             "--config.sft.eval_every=0"]  # the SFT greedy check adds a compile, not coverage
CONFIG = os.path.join(ROOT, "experiments", "numberline_test.py")


pytestmark = pytest.mark.slow  # three training processes (two together): minutes


def _env(devices: int) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _cmd(workdir, *extra):
    return [sys.executable, "-m", "rlvlm_jax.train", "--config", CONFIG, "--workdir",
            str(workdir), *OVERRIDES, *extra]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    single = tmp_path_factory.mktemp("single")
    multi = tmp_path_factory.mktemp("multi")
    port = _free_port()
    procs = [subprocess.Popen(
        _cmd(multi, "--coordinator", f"localhost:{port}", "--num_processes", "2",
             "--process_id", str(i)),
        env=_env(2), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)]
    one = subprocess.run(_cmd(single), env=_env(4), cwd=ROOT, capture_output=True, text=True,
                         timeout=900)
    outs = [p.communicate(timeout=900) for p in procs]
    for i, (p, (out, err)) in enumerate(zip(procs, outs, strict=True)):
        assert p.returncode == 0, f"process {i} failed:\n{out[-3000:]}\n{err[-3000:]}"
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]
    return single, multi, one.stdout, [o for o, _ in outs]


def test_two_processes_match_one(runs):
    single, multi, *_ = runs
    a = json.loads((single / "results.json").read_text())
    b = json.loads((multi / "results.json").read_text())
    assert len(a["history"]) == len(b["history"]) == 2
    # Losses and KL estimates are means of differences of log-probs of size ~10: summed in
    # another order, float32 moves them by ~1e-5 absolute whatever their own (small) size. The
    # final params are compared more tightly below.
    assert_histories_close(a["history"], b["history"], rtol=1e-4, atol=1e-4)
    for stage in ("sft_eval", "ppo_eval"):
        for k in ("success_rate", "episode_return", "response_length", "env_steps"):
            np.testing.assert_allclose(b[stage][k], a[stage][k], rtol=1e-5, err_msg=k)


def test_same_final_params(runs):
    single, multi, *_ = runs
    c = load_config()
    c.ppo.kl_coef = 0.01  # as OVERRIDES: the reference params are part of the checkpoint
    target = build(c, str(single / "restore")).restore_target("ppo")  # one local device here
    last = c.sft.steps + c.ppo.iterations
    sa, _ = Checkpointer(str(single / "checkpoints")).restore(target, last)
    sb, _ = Checkpointer(str(multi / "checkpoints")).restore(target, last)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(y, x, rtol=1e-4, atol=2e-5),
                 sa["params"], sb["params"])
    jax.tree.map(np.testing.assert_array_equal, sa["env"], sb["env"])


def test_only_process_zero_logs(runs):
    *_, one_out, (out0, out1) = runs
    assert "[distributed] process 0 of 2, 2 local of 4 devices" in out0
    assert "[done]" in out0 and "[ppo] 2/2" in out0
    assert "[done]" not in out1 and "[ppo]" not in out1
    assert "[done]" in one_out
