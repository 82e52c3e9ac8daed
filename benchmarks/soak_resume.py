"""Soak test of resume: SIGKILL the smoke run at many seeded moments, resume each time, and check
that the final checkpoint equals an uninterrupted run's, array for array, bit for bit.

    python benchmarks/soak_resume.py                       # 20 kills, seed 0
    python benchmarks/soak_resume.py --kills 5 --seed 1 --sft-steps 3 --ppo-iterations 3

`experiments/numberline_test.py`, lengthened (--sft-steps SFT steps and --ppo-iterations PPO
iterations, a checkpoint after every one), runs first uninterrupted (the reference), then in a
second workdir as a subprocess that is killed with SIGKILL and started again, --kills times.
Each kill is one of (drawn from --seed):
  save    when orbax's temporary folder of the (n+1)-th save of that attempt appears (n drawn
          so that the kills spread over the run, often 0; the directory is polled every 2 ms),
          i.e. in the middle of writing a checkpoint;
  commit  as soon as the attempt's first checkpoint is committed (orbax is then deleting the
          oldest checkpoint beyond `keep_checkpoints`);
  random  after a random delay, 0.3-1 x the observed start-up time of that stage (imports,
          data, compilation: most of a restart), so mostly mid-start-up.
Whatever the plan, an attempt is killed when it starts the run's final save, so every kill
happens before the run can finish (the table's "by" column says which rule fired). A kill
counts as "during a save" when a temporary save folder created by that attempt is still there
after the process died. After the last kill the run is resumed to the end; then every array
of every checkpoint both workdirs keep, the checkpoint metadata (counters, history) and
results.json are compared with the reference (timings aside). Restarts cost their start-up
(~15-25 s on 2 CPU cores), which bounds how many kills fit in a given time: the default 20
kills take ~6-10 minutes.

Prints one row per attempt, a summary, and, last, one JSON line. Exit status 1 if anything
differs, a run failed, or fewer kills than asked for happened.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TMP = ".orbax-checkpoint-tmp"
TIMING = ("wall_seconds", "eval_seconds")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--kills", type=int, default=20, help="SIGKILLs before the final resume")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", default=os.path.join(ROOT, "experiments", "numberline_test.py"))
    p.add_argument("--sft-steps", type=int, default=6)
    p.add_argument("--ppo-iterations", type=int, default=6)
    p.add_argument("--workdir", default=None, help="where ref/ and soak/ go (default: a temp "
                   "folder, removed at the end unless --keep)")
    p.add_argument("--keep", action="store_true", help="keep the workdirs")
    p.add_argument("--attempt-timeout", type=float, default=600.0, help="seconds per attempt")
    p.add_argument("--poll", type=float, default=0.002, help="seconds between directory polls")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------ one attempt
def train_command(args, workdir: str) -> list[str]:
    return [sys.executable, "-m", "rlvlm_jax.train", "--config", args.config,
            "--workdir", workdir,
            f"--config.sft.steps={args.sft_steps}", "--config.sft.checkpoint_every=1",
            f"--config.ppo.iterations={args.ppo_iterations}", "--config.checkpoint_every=1"]


def snapshot(ckdir: str) -> dict[str, tuple]:
    """name -> identity of the checkpoint directory's entries: the inode for a step folder (one
    being deleted, as orbax drops the oldest, keeps it), the inode and change time for a
    temporary one (orbax empties and re-creates a leftover one of the same step)."""
    out = {}
    try:
        names = os.listdir(ckdir)
    except FileNotFoundError:
        return out
    for name in names:
        try:
            st = os.stat(os.path.join(ckdir, name))
        except FileNotFoundError:
            continue
        out[name] = (st.st_ino, st.st_ctime_ns) if TMP in name else (st.st_ino,)
    return out


def committed(ckdir: str) -> list[int]:
    try:
        return sorted(int(n) for n in os.listdir(ckdir) if n.isdigit())
    except FileNotFoundError:
        return []


def attempt(args, workdir: str, log_path: str, plan: dict | None) -> dict:
    """Run train once; with `plan`, SIGKILL it as planned. Returns what happened."""
    ckdir = os.path.join(workdir, "checkpoints")
    before = snapshot(ckdir)
    steps_before = committed(ckdir)
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    t0 = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(train_command(args, workdir), stdout=log,
                                stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        new_commits, first_tmp_at, killed_at, by, save_started = set(), None, None, None, {}
        last = None if plan is None else plan["remaining"]  # saves this attempt may start
        while proc.poll() is None:
            now = time.time() - t0
            snap = snapshot(ckdir)
            fresh = {n for n, key in snap.items() if before.get(n) != key}
            tmps = {n for n in fresh if TMP in n}
            new_commits |= {n for n in fresh if n.isdigit()}
            if tmps and first_tmp_at is None:
                first_tmp_at = now
            for name in tmps:
                save_started.setdefault(int(name.split(".")[0]), round(now, 2))
            if now > args.attempt_timeout:
                by = "timeout"
            elif plan is not None:
                mode = plan["mode"]
                if mode == "save":  # mid-save: a fresh temporary folder after n commits (or,
                    # had a whole save slipped between two polls, right after it)
                    if (tmps and len(new_commits) >= plan["n"]) or len(new_commits) > plan["n"]:
                        by = "plan"
                elif mode == "commit" and new_commits:
                    by = "plan"
                elif mode == "random" and now >= plan["delay"]:
                    by = "plan"
                # Whatever the plan, the final save is never let through: the kills must all
                # happen before the run can finish.
                if by is None and last and ((tmps and len(new_commits) >= last - 1)
                                            or len(new_commits) >= last):
                    by = "final save"
            kill = by is not None
            if kill:
                proc.send_signal(signal.SIGKILL)  # the process this attempt started, only it
                proc.wait()
                killed_at = time.time() - t0
                break
            time.sleep(args.poll)
        rc = proc.wait()
    after = snapshot(ckdir)
    mid_save = sorted(n for n, key in after.items() if TMP in n and before.get(n) != key)
    with open(log_path) as f:
        text = f.read()
    resumed = re.search(r"\[resume\] checkpoint (\d+)", text)
    return {
        "plan": plan,
        "killed": killed_at is not None,
        "killed_by": by,
        "timed_out": by == "timeout",
        "seconds": round(time.time() - t0, 2),
        "killed_at": None if killed_at is None else round(killed_at, 2),
        "first_save_at": None if first_tmp_at is None else round(first_tmp_at, 2),
        "save_started": save_started,
        "rc": rc,
        "during_save": bool(mid_save),
        "left": mid_save,
        "from_step": steps_before[-1] if steps_before else 0,
        "to_step": (committed(ckdir) or [0])[-1],
        "resumed_from": int(resumed.group(1)) if resumed else None,
        "warnings": [ln for ln in text.splitlines() if "[checkpoint] warning" in ln],
        "finished": "[done]" in text,
        "error_tail": None if killed_at is not None or rc == 0 else text[-2000:],
    }


# ------------------------------------------------------------------------------ comparison
def strip_timing(x):
    if isinstance(x, dict):
        return {k: strip_timing(v) for k, v in x.items() if k not in TIMING}
    if isinstance(x, list):
        return [strip_timing(v) for v in x]
    return x


def compare(ref_dir: str, soak_dir: str) -> dict:
    import jax
    import orbax.checkpoint as ocp
    from absl import logging

    logging.set_verbosity(logging.ERROR)  # read-only managers warn about their options

    def manager(d):
        return ocp.CheckpointManager(os.path.join(d, "checkpoints"),
                                     options=ocp.CheckpointManagerOptions(read_only=True))

    def flat(tree):
        leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
        return {jax.tree_util.keystr(p): x for p, x in leaves}

    ref, soak = manager(ref_dir), manager(soak_dir)
    steps = sorted(set(ref.all_steps()) & set(soak.all_steps()))
    out = {"ref_steps": list(ref.all_steps()), "soak_steps": list(soak.all_steps()),
           "steps_compared": steps, "arrays_compared": 0, "array_mismatches": [],
           "meta_equal": True}
    args = ocp.args.Composite(state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore())
    for step in steps:
        a, b = ref.restore(step, args=args), soak.restore(step, args=args)
        fa, fb = flat(a.state), flat(b.state)
        if fa.keys() != fb.keys():
            out["array_mismatches"].append(f"step {step}: different array paths")
        for k in sorted(fa.keys() & fb.keys()):
            x, y = np.asarray(fa[k]), np.asarray(fb[k])
            out["arrays_compared"] += 1
            if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
                out["array_mismatches"].append(f"step {step} {k}")
        if strip_timing(a.meta) != strip_timing(b.meta):
            out["meta_equal"] = False
    out["final_step_compared"] = bool(steps) and steps[-1] == max(ref.all_steps())
    ref.close()
    soak.close()

    def results(d):
        path = os.path.join(d, "results.json")
        return json.load(open(path)) if os.path.exists(path) else None

    ra, rb = results(ref_dir), results(soak_dir)
    out["history_equal"] = ra is not None and rb is not None and ra["history"] == rb["history"]
    out["results_equal"] = ra is not None and strip_timing(ra) == strip_timing(rb)
    out["history_length"] = len(rb["history"]) if rb else 0
    out["arrays_equal"] = out["arrays_compared"] > 0 and not out["array_mismatches"]
    return out


# ------------------------------------------------------------------------------ main
def draw_plan(rng, startup: dict[str, list[float]], stage: str, mean_n: float,
              remaining: int) -> dict:
    """The next kill, with `remaining` steps left to commit (the attempt is also killed when it
    starts the final save, whatever the plan; see `attempt`)."""
    mode = str(rng.choice(["save", "commit", "random"], p=[0.45, 0.15, 0.40]))
    n = int(min(rng.poisson(mean_n), 3))  # often 0: killed in the attempt's first save
    factor = float(rng.uniform(0.3, 1.0))
    if remaining == 0:  # every step committed, the final evaluation left: mid-start-up
        mode, factor = "random", min(factor, 0.9)
    elif mode == "commit" and remaining <= 1:
        mode = "save"
    plan = {"mode": mode, "remaining": remaining}
    if mode == "save":
        plan["n"] = min(n, remaining - 1)
    elif mode == "random":
        plan["delay"] = round(factor * float(np.median(startup[stage])), 2)
    return plan


def main(argv=None) -> int:
    args = parse_args(argv)
    t_all = time.time()
    base = args.workdir or tempfile.mkdtemp(prefix="soak_resume_")
    ref_dir, soak_dir = os.path.join(base, "ref"), os.path.join(base, "soak")
    logs = os.path.join(base, "logs")
    for d in (ref_dir, soak_dir):
        shutil.rmtree(d, ignore_errors=True)
    os.makedirs(logs, exist_ok=True)
    final_step = args.sft_steps + args.ppo_iterations

    print(f"[soak] reference run in {ref_dir}", flush=True)
    ref = attempt(args, ref_dir, os.path.join(logs, "reference.log"), None)
    if ref["rc"] != 0:
        print(ref["error_tail"], file=sys.stderr)
        raise SystemExit("the reference run failed")
    # Start-up (to the first save) per stage a restart begins in: from the reference, then
    # from every attempt that got that far.
    first_ppo = ref["save_started"].get(args.sft_steps + 1, ref["seconds"])
    startup = {"sft": [ref["first_save_at"]], "ppo": [first_ppo]}

    rng = np.random.default_rng(args.seed)
    # Saves let through per "save" kill, on average, so that the kills spread over the whole
    # run: ~0.9 x steps / kills of progress per kill ("commit" kills make 1, "random" mostly
    # none: they are drawn shorter than a start-up).
    mean_n = max(0.0, (0.9 * final_step / max(args.kills, 1) - 0.15 - 0.04) / 0.45)
    rows = []
    print(f"{'#':>3} {'mode':<7}{'plan':>7}{'killed at s':>12}{'by':>11}{'1st save s':>11}"
          f"{'mid-save':>9}{'resumed':>8}{'steps':>9}  warnings", flush=True)
    while len([r for r in rows if r["killed"]]) < args.kills:
        done = committed(os.path.join(soak_dir, "checkpoints"))
        stage = "sft" if not done or done[-1] < args.sft_steps else "ppo"
        plan = draw_plan(rng, startup, stage, mean_n, final_step - (done[-1] if done else 0))
        r = attempt(args, soak_dir, os.path.join(logs, f"attempt_{len(rows):03d}.log"), plan)
        r["stage"] = stage
        if r["first_save_at"] is not None:
            startup[stage].append(r["first_save_at"])
        rows.append(r)
        what = {"save": f"n={plan.get('n')}", "commit": "", "random": f"{plan.get('delay')}s"}
        print(f"{len(rows) - 1:>3} {plan['mode']:<7}{what[plan['mode']]:>7}"
              f"{r['killed_at'] if r['killed'] else '-':>12}{r['killed_by'] or '-':>11}"
              f"{r['first_save_at'] if r['first_save_at'] is not None else '-':>11}"
              f"{'yes' if r['during_save'] else '':>9}"
              f"{r['resumed_from'] if r['resumed_from'] is not None else '-':>8}"
              f"{r['from_step']:>4}->{r['to_step']:<4}  {len(r['warnings']) or ''}", flush=True)
        if not r["killed"]:  # it finished (or failed) before the planned moment
            break
    final = None
    if not (rows and rows[-1]["finished"]):
        final = attempt(args, soak_dir, os.path.join(logs, "final.log"), None)
        print(f"[soak] final resume from {final['resumed_from']}: rc {final['rc']}, "
              f"{final['seconds']:.0f} s", flush=True)
    failed = [r for r in rows + ([final] if final else []) if r["error_tail"]]
    for r in failed:
        print(r["error_tail"], file=sys.stderr)

    cmp = compare(ref_dir, soak_dir)
    kills = [r for r in rows if r["killed"]]
    warnings = [w for r in rows + ([final] if final else []) for w in r["warnings"]]
    unreadable = sorted(n for n in os.listdir(os.path.join(soak_dir, "checkpoints"))
                        if ".unreadable" in n)
    summary = {
        "kills": len(kills),
        "kills_during_save": sum(r["during_save"] for r in kills),
        "kills_by_mode": {m: sum(r["plan"]["mode"] == m for r in kills)
                          for m in ("save", "commit", "random")},
        "kills_before_any_save": sum(r["first_save_at"] is None for r in kills),
        "kills_at_final_save_guard": sum(r["killed_by"] == "final save" for r in kills),
        "timeouts": sum(r["timed_out"] for r in kills),
        "failed_runs": len(failed),
        "restarts_resumed": sum(r["resumed_from"] is not None for r in rows),
        "checkpoint_warnings": len(warnings),
        "set_aside_unreadable": unreadable,
        "final_step": final_step,
        **cmp,
        "reference_seconds": ref["seconds"],
        "startup_seconds_median": {k: round(float(np.median(v)), 1) for k, v in startup.items()},
        "wall_seconds": round(time.time() - t_all, 1),
        "seed": args.seed,
        "sft_steps": args.sft_steps,
        "ppo_iterations": args.ppo_iterations,
        "workdir": base if args.keep or args.workdir else None,
    }
    ok = (cmp["arrays_equal"] and cmp["meta_equal"] and cmp["results_equal"]
          and cmp["final_step_compared"] and not failed and len(kills) >= args.kills)
    summary["ok"] = bool(ok)
    print(f"[soak] {len(kills)} kills ({summary['kills_during_save']} during a save, "
          f"{summary['kills_before_any_save']} before the attempt's first save), "
          f"{len(warnings)} checkpoint warnings, {len(failed)} failed runs", flush=True)
    print(f"[soak] steps compared {cmp['steps_compared']}: {cmp['arrays_compared']} arrays, "
          f"{len(cmp['array_mismatches'])} differ; meta equal {cmp['meta_equal']}; "
          f"results.json equal {cmp['results_equal']} (history {cmp['history_length']} "
          f"iterations); {summary['wall_seconds']:.0f} s in all", flush=True)
    if cmp["array_mismatches"]:
        print("[soak] differing: " + ", ".join(cmp["array_mismatches"][:10]), flush=True)
    if not args.keep and not args.workdir:
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(summary))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
