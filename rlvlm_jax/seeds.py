"""One config over N seeds, one run after another, then mean ± std over the seeds.

    python -m rlvlm_jax.seeds --config experiments/ezpoints_tiny.py --workdir runs/ez --seeds 3
    python -m rlvlm_jax.seeds --config experiments/ezpoints_tiny.py:nocot --workdir runs/ez_nocot \
        --seeds 3 --config.ppo.iterations=50
    python -m rlvlm_jax.seeds --program rlvlm_jax.baselines.cnn_ppo \
        --config experiments/cnn_ppo.py:EZPoints --workdir runs/cnn_ez --seeds 3

Seed s runs `python -m <program> --config <config> --workdir <workdir>/seed_<s> --config.seed=<s>`
plus the other `--config.*` flags given here, as its own process (a crash ends one seed, not the
sweep; each run resumes itself when started again). A seed whose workdir already has results.json
is skipped, so re-running the command finishes an interrupted sweep. Runs go one after another:
on a 2-core CPU parallel runs only share the cores, and a TPU/GPU job runs one config per slice.
At the end the seeds are aggregated (mean, sample std over seeds) into <workdir>/seeds.json and
printed: card-task runs by `rlvlm_jax.report.aggregate` (success %), single-turn runs of
`rlvlm_jax.train_single` (their config has rl.algorithm) by `rlvlm_jax.report_single.aggregate`
(MAYE's test / validation accuracies per row: start and RL, or SFT for rl.epochs=0).

    python -m rlvlm_jax.seeds --program rlvlm_jax.train_single \
        --config experiments/suite_tiny.py:grpo --workdir runs/grpo --seeds 3

Seeds are not vmapped into one process: each seed stays a normal run (its own workdir, resume,
TensorBoard), and on a CPU a vmapped batch of seeds costs the same compute as the runs in turn.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from rlvlm_jax.config_files import load, unknown_fields

PROGRAMS = ("rlvlm_jax.train", "rlvlm_jax.baselines.cnn_ppo", "rlvlm_jax.train_single")
SEEDS_FILE = "seeds.json"


def seed_dir(workdir: str, seed: int) -> str:
    return os.path.join(workdir, f"seed_{seed}")


def parse_args(argv: list[str]) -> dict:
    """The command line as a dict; ValueError (one line) for anything that cannot work, before
    any run starts."""
    opts = {"program": PROGRAMS[0], "config": None, "workdir": None, "seeds": None,
            "first_seed": 0, "overrides": []}
    it = iter(argv)
    for a in it:
        name, eq, value = a.partition("=")
        if name.startswith("--config."):
            if not eq:
                raise ValueError(f"{a}: config overrides are --config.field=value")
            if name == "--config.seed":
                raise ValueError("--config.seed is set per run by --seeds/--first_seed")
            opts["overrides"].append(a)
            continue
        key = name[2:] if name.startswith("--") else None
        if key not in opts or key == "overrides":
            raise ValueError(f"unexpected argument {a!r} (flags: --program, --config, --workdir, "
                             "--seeds, --first_seed, --config.field=value)")
        if not eq:
            value = next(it, None)
            if value is None:
                raise ValueError(f"--{key} needs a value")
        opts[key] = value
    for key in ("config", "workdir", "seeds"):
        if opts[key] is None:
            raise ValueError(f"--{key} is required")
    for key in ("seeds", "first_seed"):
        try:
            opts[key] = int(opts[key])
        except ValueError:
            raise ValueError(f"--{key} must be an integer, got {opts[key]!r}") from None
    if opts["seeds"] < 1:
        raise ValueError(f"--seeds must be >= 1, got {opts['seeds']}")
    if opts["first_seed"] < 0:
        raise ValueError(f"--first_seed must be >= 0, got {opts['first_seed']}")
    if opts["program"] not in PROGRAMS:
        raise ValueError(f"--program {opts['program']!r} is not one of {list(PROGRAMS)}")
    path = opts["config"].partition(":")[0]
    if not os.path.isfile(path):
        raise ValueError(f"config file {path!r} does not exist")
    try:
        config = load(opts["config"])
    except Exception as e:  # noqa: BLE001 - any failure to load is a bad --config
        raise ValueError(f"cannot load config file {opts['config']!r}: {type(e).__name__}: "
                         f"{e}") from None
    if "seed" not in config:
        raise ValueError(f"config {opts['config']!r} has no seed field to vary")
    missing = unknown_fields(opts["config"], opts["overrides"])
    if missing:
        raise ValueError(f"the config has no field {', '.join(missing)}")
    if os.path.exists(opts["workdir"]) and not os.path.isdir(opts["workdir"]):
        raise ValueError(f"--workdir {opts['workdir']} is a file, not a directory")
    return opts


def run_seeds(opts: dict, log=print) -> list[str]:
    """Runs the seeds that have no results yet; returns every seed's workdir. RuntimeError names
    the seed whose run failed (the finished seeds stay)."""
    dirs = []
    for seed in range(opts["first_seed"], opts["first_seed"] + opts["seeds"]):
        d = seed_dir(opts["workdir"], seed)
        dirs.append(d)
        if os.path.isfile(os.path.join(d, "results.json")):
            log(f"[seeds] seed {seed}: {d} has results.json, skipped")
            continue
        cmd = [sys.executable, "-m", opts["program"], "--config", opts["config"], "--workdir", d,
               f"--config.seed={seed}", *opts["overrides"]]
        log(f"[seeds] seed {seed}: {' '.join(cmd[1:])}")
        t0 = time.time()
        rc = subprocess.call(cmd)
        if rc != 0:
            raise RuntimeError(f"seed {seed} failed (exit code {rc}); its workdir {d} is kept "
                               "and the same command resumes it")
        log(f"[seeds] seed {seed}: done in {time.time() - t0:.0f} s")
    return dirs


def summarize(dirs: list[str], workdir: str, log=print) -> list[dict]:
    """Mean ± std over the seeds' workdirs, written to seeds.json: report.aggregate for card
    tasks, report_single.aggregate for train_single runs (detected by their config)."""
    from rlvlm_jax import report, report_single

    if any(report_single.is_single_turn(d) for d in dirs):
        groups = report_single.public(report_single.aggregate(
            dirs, warn=lambda msg: log(f"[seeds] warning: {msg}")))
        with open(os.path.join(workdir, SEEDS_FILE), "w") as f:
            json.dump(groups, f, indent=1, ensure_ascii=False)
        for g in groups:
            log(f"[seeds] {g['method']} (%, final epoch, over seeds {g['seeds']}): "
                f"{report_single.headline(g)}")
        return groups
    groups = report.aggregate(dirs)
    with open(os.path.join(workdir, SEEDS_FILE), "w") as f:
        json.dump(groups, f, indent=1)
    for g in groups:
        log(f"[seeds] {g['task']} {g['method']}: {report.format_cell(g)} success (%, over seeds "
            f"{g['seeds']})")
    return groups


def main(argv: list[str]) -> int:
    try:
        opts = parse_args(argv[1:])
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    os.makedirs(opts["workdir"], exist_ok=True)
    try:
        dirs = run_seeds(opts)
        summarize(dirs, opts["workdir"])
    except (RuntimeError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
