"""Paper-style report over finished run workdirs: success table (mean ± std over seeds), curves.

    python -m rlvlm_jax.report runs/nl_s0 runs/nl_s1 runs/nl_s2 runs/ez_s0 --out report/
    python -m rlvlm_jax.report runs/* --out report/ --group-by ppo.lr,ppo.kl_coef
    python -m rlvlm_jax.report runs/* --out report/ --force   # --out may hold other files

Each workdir holds the `config.json` and `results.json` that `rlvlm_jax.train` (or a baseline,
whose config has a top-level `method`: cnn_ppo, random, oracle) writes at its end. Runs are
grouped into rows (Random, Oracle, CNN + RL, SFT, RL (CoT), ...) per task; within a row the
configs must match except for seed-like fields (`IGNORED_KEYS`), so that seeds are the only
thing averaged over; `--group-by` splits rows by further config keys instead of refusing.

Writes into --out: table.md (success %, mean ± sample std (ddof=1) over seeds, and the per-seed
RL − SFT gains), summary.json (the same numbers, per group, for scripts), and PNG plots (success,
response length and, where logged, MAYE's reflection ratios vs environment steps; overview.png,
small enough for the README). Bad input is refused (one line, exit code 2) before anything is
written; a re-run replaces the files the previous report wrote and nothing else.
`aggregate` (numbers only, no matplotlib) is what a seeds command reuses. Single-turn runs
(`rlvlm_jax.train_single`) have their own report, `rlvlm_jax.report_single`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence

import numpy as np

from rlvlm_jax.config_files import LATER_FIELDS, flatten
from rlvlm_jax.envs.tasks import TASK_NAMES

TASKS = TASK_NAMES  # table columns, in the paper's order
BASELINES = {"random": "Random", "oracle": "Oracle", "cnn_ppo": "CNN + RL"}
# RL4VLM's λ (the paper's rows): a run at another λ gets a "λ=..." row of its own. A row label,
# not a default: the configs set their own `ppo.thought_lambda`.
PAPER_LAMBDA = 0.5
# Fields that differ between seeds of one experiment or only change bookkeeping, not results.
IGNORED_KEYS = frozenset({
    "seed", "model.init_seed", "checkpoint_every", "sft.checkpoint_every", "log_every",
    "keep_checkpoints", "eval.every", "sft.eval_every", "mesh", "fast_compile",
    "require_checkpoint",
})
SMOOTH = 5  # moving-average window (PPO iterations) of the training curves
GRID = 200  # points of the common x grid that each seed's curve is interpolated onto
STD_NOTE = ("mean ± sample std (ddof=1) over seeds, (n) = number of seeds; n = 1 shows no ±")
REFLECTION_KEYS = ("reflection_ratio", "reflection_in_correct", "reflection_in_incorrect",
                   "correct_among_reflective", "correct_among_nonreflective")
_MISSING = object()
_RAISE = object()


class ReportError(ValueError):
    """Input the report refuses (bad workdir, mixed configs, duplicate seeds, busy --out)."""


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """One finished run: its workdir, config and results, with the fields rows are made of."""

    workdir: str
    config: dict
    results: dict
    task: str
    seed: object
    method: str | None  # None: a VLM run of rlvlm_jax.train
    cot: bool
    thought_lambda: float
    has_sft: bool

    @property
    def wall_seconds(self) -> float | None:
        return wall_seconds_of(self.results)

    @property
    def history(self) -> list[dict]:
        return list(self.results.get("history") or [])


def wall_seconds_of(results: dict) -> float | None:
    """A run's recorded machine time, None when absent or not a finite number."""
    w = results.get("wall_seconds")
    return float(w) if isinstance(w, (int, float)) and math.isfinite(w) else None


# ------------------------------------------------------------------------------------ loading
def _read_json(path: str, workdir: str, missing: str) -> dict:
    if not os.path.isfile(path):
        raise ReportError(f"{workdir} has no {os.path.basename(path)}{missing}")
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ReportError(f"{path}: unreadable JSON ({e})") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def lookup(config: dict, key: str, default=_RAISE):
    """The value at a dotted path (`ppo.lr`) of a nested config dict (KeyError if absent and
    no default)."""
    node = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            if default is _RAISE:
                raise KeyError(key)
            return default
        node = node[part]
    return node


def load_run(workdir: str) -> RunRecord:
    """Reads a workdir's config.json and results.json; ReportError names what is missing."""
    wd = os.path.normpath(workdir)
    if not os.path.isdir(wd):
        raise ReportError(f"{workdir}: no such directory")
    config = _read_json(os.path.join(wd, "config.json"), wd, " (not a run workdir?)")
    results = _read_json(os.path.join(wd, "results.json"), wd,
                         " (a run still in progress has none yet: it is written at its end)")

    def need(key):
        try:
            return lookup(config, key)
        except KeyError:
            raise ReportError(f"{wd}/config.json has no '{key}'") from None

    if "task" not in config and lookup(config, "rl.algorithm", _MISSING) is not _MISSING:
        raise ReportError(f"{wd} is a single-turn run (its config.json has rl.algorithm); "
                          "report it with python -m rlvlm_jax.report_single")
    method = config.get("method")
    if method is not None and method not in BASELINES:
        raise ReportError(f"{wd}/config.json: unknown method {method!r} (expected one of "
                          f"{', '.join(BASELINES)}, or none for a VLM run)")
    task, seed = need("task"), need("seed")
    if method is None:
        cot, lam = bool(need("cot")), float(need("ppo.thought_lambda"))
        has_sft = int(need("sft.steps")) > 0
    else:
        cot, lam, has_sft = False, PAPER_LAMBDA, False
    return RunRecord(wd, config, results, task, seed, method, cot, lam, has_sft)


# ------------------------------------------------------------------------------------ grouping
def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _rows(run: RunRecord) -> list[tuple[str, str, tuple]]:
    """(row label, results key, sort key) of each table row this run contributes to."""
    if run.method is not None:
        rank = list(BASELINES).index(run.method)
        return [(BASELINES[run.method], "ppo_eval", (rank,))]
    suffix = "" if run.cot else " (no CoT)"
    stage = ("SFT" if run.has_sft else "Init") + suffix
    parts = ["CoT" if run.cot else "no CoT"]
    if run.thought_lambda != PAPER_LAMBDA:
        parts.append(f"λ={run.thought_lambda:g}")
    if not run.has_sft:
        parts.append("no SFT")
    rl = f"RL ({', '.join(parts)})"
    default = run.thought_lambda == PAPER_LAMBDA and run.has_sft
    return [
        (stage, "sft_eval", (3 + (not run.cot) + 2 * (not run.has_sft),)),
        (rl, "ppo_eval", (7 + (not run.cot), 0.0, 0) if default
         else (9, not run.cot, run.thought_lambda, not run.has_sft)),
    ]


def _compared(run, ignore: frozenset, skip_prefix: str | None) -> dict:
    """Config fields that must match within a group (an SFT row skips the RL section, e.g.
    `ppo.`). A checkpoint compares by its folder's name: a cached reader's name holds its
    recipe's hash, while the cache's location differs between machines. A field that a run's
    config lacks because it predates the field counts as its `LATER_FIELDS` value."""
    flat = {k: v for k, v in {**LATER_FIELDS, **flatten(run.config)}.items()
            if k not in ignore and not (skip_prefix and k.startswith(skip_prefix))}
    if flat.get("model.checkpoint"):
        flat["model.checkpoint"] = os.path.basename(os.path.normpath(flat["model.checkpoint"]))
    return flat


def _check_configs(label: str, where: str, runs: Sequence, ignore: frozenset,
                   skip_prefix: str | None) -> None:
    """Refuses a row whose runs (anything with .config and .workdir) differ in config beyond
    `ignore`; `where` follows the row's name in the message (" on NumberLine")."""
    flat = [_compared(r, ignore, skip_prefix) for r in runs]
    keys = sorted(set().union(*flat))
    differ = [k for k in keys if len({json.dumps(f.get(k, "<absent>"), sort_keys=True)
                                      for f in flat}) > 1]
    if differ:
        shown = ", ".join(differ[:6]) + (f" (+{len(differ) - 6} more)" if len(differ) > 6 else "")
        raise ReportError(
            f"runs of row '{label}'{where} differ in config {shown}: "
            f"{', '.join(r.workdir for r in runs)}; pass --group-by {','.join(differ[:3])} to "
            "split them into rows")


def _stats(values: Sequence[float]) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {"n": int(v.size), "mean": float(np.mean(v)),
            "std": float(np.std(v, ddof=1)) if v.size > 1 else None,
            "values": [float(x) for x in v]}


def _success(run: RunRecord, source: str) -> float | None:
    ev = run.results.get(source)
    if not isinstance(ev, dict):
        return None
    s = ev.get("success_rate")
    return 100.0 * float(s) if isinstance(s, (int, float)) and math.isfinite(s) else None


def _task_rank(task: str) -> tuple:
    return (TASKS.index(task), "") if task in TASKS else (len(TASKS), task)


def _collect(runs: list[RunRecord], group_by: Sequence[str], warn) -> list[dict]:
    for key in group_by:
        if all(lookup(r.config, key, _MISSING) is _MISSING for r in runs):
            raise ReportError(f"--group-by {key}: no run's config.json has this key")
    ignore = frozenset(IGNORED_KEYS | set(group_by))
    buckets: dict[tuple, dict] = {}
    for run in runs:
        for base, source, rank in _rows(run):
            sft_stage = source == "sft_eval"
            extra = [(k, lookup(run.config, k, _MISSING)) for k in group_by
                     if not (sft_stage and k.startswith("ppo."))]
            # A key a baseline's config lacks is left out of its label; a VLM run lacking it
            # (an older run) is labelled n/a.
            extra = [(k, "n/a" if v is _MISSING else v) for k, v in extra
                     if v is not _MISSING or run.method is None]
            label = " ".join([base] + [f"{k}={_fmt(v)}" for k, v in extra])
            value = _success(run, source)
            if value is None:
                if source == "ppo_eval" and run.method is None and run.config.get(
                        "ppo", {}).get("iterations", 1) == 0:
                    continue  # an SFT-only run: no RL row, not worth a warning
                warn(f"{run.workdir}: results.json has no {source}.success_rate "
                     f"(eval.episodes 0?); left out of row '{label}'")
                continue
            sort = (rank, tuple(_sortable(v) for _, v in extra), label)
            b = buckets.setdefault((run.task, label), {
                "task": run.task, "method": label, "row": base, "source": source,
                "sort": sort, "entries": []})
            b["entries"].append((run, value))

    groups = []
    for (task, label), b in sorted(buckets.items(),
                                   key=lambda kv: (_task_rank(kv[0][0]), kv[1]["sort"])):
        sft_stage = b["source"] == "sft_eval"
        _check_configs(label, f" on {task}", [r for r, _ in b["entries"]], ignore,
                       "ppo." if sft_stage else None)
        entries = _dedupe(label, task, b["entries"], sft_stage, warn)
        used = [r for r, _ in entries]
        g = {"task": task, "method": label, "row": b["row"], "source": b["source"],
             "metric": "success_rate_percent", "seeds": [r.seed for r in used],
             **_stats([v for _, v in entries]), "workdirs": [r.workdir for r in used],
             "episodes": [(r.results.get(b["source"]) or {}).get("episodes") for r in used],
             "wall_seconds": _sum_wall(used),
             "wall_seconds_per_seed": [r.wall_seconds for r in used], "gain": None,
             "_sort": b["sort"]}
        if b["source"] == "ppo_eval" and b["row"].startswith("RL"):
            sft = [_success(r, "sft_eval") for r in used]
            if all(s is not None for s in sft):
                g["gain"] = {**_stats([v - s for (_, v), s in zip(entries, sft, strict=True)]),
                             "sft_values": sft}
        groups.append(g)
    return groups


def _sortable(value):
    return (0, float(value), "") if isinstance(value, (int, float)) else (1, 0.0, _fmt(value))


def _sum_wall(runs: list[RunRecord]) -> float | None:
    walls = [r.wall_seconds for r in runs]
    return None if any(w is None for w in walls) else float(sum(walls))


def _dedupe(label, task, entries, sft_stage, warn):
    """One entry per seed, ordered by seed; refuses repeated seeds (the same run given twice).

    An SFT row may see one seed from several runs that differ only in their PPO section: they
    share the SFT stage (same seed, same SFT config), so one of them is kept (the default λ).
    """
    by_seed: dict[str, list] = {}
    for run, value in entries:
        by_seed.setdefault(json.dumps(run.seed), []).append((run, value))
    kept = []
    for same in by_seed.values():
        if len(same) > 1:
            ppo = {json.dumps({k: v for k, v in flatten(r.config).items()
                               if k.startswith("ppo.") and k not in IGNORED_KEYS},
                              sort_keys=True)
                   for r, _ in same}
            if not sft_stage or len(ppo) < len(same):
                raise ReportError(
                    f"duplicate seed {same[0][0].seed} in row '{label}' on {task}: "
                    f"{', '.join(r.workdir for r, _ in same)}")
            same = sorted(same, key=lambda e: (e[0].thought_lambda != PAPER_LAMBDA,
                                               e[0].workdir))
            if len({v for _, v in same}) > 1:
                shown = ", ".join(f"{v:.1f}" for _, v in same)
                warn(f"row '{label}' on {task}, seed {same[0][0].seed}: the SFT evaluations "
                     f"of runs sharing the SFT stage differ ({shown} %); keeping "
                     f"{same[0][0].workdir}")
        kept.append(same[0])
    return sorted(kept, key=lambda e: _sortable(e[0].seed))


def aggregate(workdirs: Sequence[str], group_by: Sequence[str] = (), warn=None) -> list[dict]:
    """Groups (task, row) with per-seed success % and mean / sample std; ReportError on bad input.

    Each dict: task, method (row label), row, source (sft_eval / ppo_eval), n, seeds, values,
    mean, std (None for n = 1), workdirs, episodes, wall_seconds and, for VLM RL rows, gain (the
    per-seed RL − SFT difference in points with its n / mean / std / values); `_sort` orders
    rows as the table does. Sorted by task (TASKS order), then row.
    """
    return _collect(_load_all(workdirs), tuple(group_by), warn or (lambda msg: None))


def _load_all(workdirs: Sequence[str], loader=None) -> list:
    """`loader` (default load_run) over the workdirs, after refusing none or one given twice."""
    if not workdirs:
        raise ReportError("no workdirs given")
    seen: dict[str, str] = {}
    for w in workdirs:
        real = os.path.realpath(w)
        if real in seen:
            raise ReportError(f"workdir given twice: {seen[real]} and {w}")
        seen[real] = w
    return [(loader or load_run)(w) for w in workdirs]


# ------------------------------------------------------------------------------------ table
def format_cell(stats: dict, signed: bool = False) -> str:
    """`mean ± std (n)` of a group's success % (no ± for one seed)."""
    sign = "+" if signed else ""
    text = f"{stats['mean']:{sign}.1f}"
    if stats["std"] is not None:
        text += f" ± {stats['std']:.1f}"
    return f"{text} ({stats['n']})"


def _hours(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    return f"{seconds:.0f} s" + (f" ({seconds / 3600:.2f} h)" if seconds >= 360 else "")


def format_table(groups: list[dict]) -> str:
    """table.md: success % per row and task, RL − SFT gains, machine time per row."""
    tasks = sorted({g["task"] for g in groups}, key=_task_rank)
    rows = list(dict.fromkeys(g["method"] for g in sorted(groups, key=_row_order(groups))))
    cells = {(g["method"], g["task"]): g for g in groups}

    def table(row_names, cell):
        lines = ["| Method | " + " | ".join(tasks) + " |",
                 "|---|" + "---:|" * len(tasks)]
        for name in row_names:
            lines.append(f"| {name} | " + " | ".join(
                cell(cells.get((name, t))) for t in tasks) + " |")
        return lines

    out = ["# Success rate (%)", ""]
    out += table(rows, lambda g: format_cell(g) if g else "—")
    out += ["", f"Final evaluation: first episode of each evaluation environment; {STD_NOTE}. "
            "SFT rows: the policy after the supervised stage, before PPO (the same runs as the "
            "RL rows)."]
    gain_rows = [r for r in rows if any(g["method"] == r and g["gain"] for g in groups)]
    if gain_rows:
        out += ["", "# RL − SFT gain (percentage points)", ""]
        out += table(gain_rows, lambda g: format_cell(g["gain"], True) if g and g["gain"] else "—")
        out += ["", f"Per seed: PPO evaluation minus the same run's SFT evaluation; {STD_NOTE}."]
    wall = machine_time(groups)
    parts = [f"{name} {_hours(wall['rows'][name])}" for name in rows]
    out += ["", f"Machine time (sum of wall_seconds of the row's runs, all tasks): "
            f"{'; '.join(parts)}; overall {_hours(wall['overall'])} (each run once; SFT and RL "
            "rows share runs)."]
    return "\n".join(out) + "\n"


def _row_order(groups: list[dict]):
    """Sort key of rows: Random, Oracle, CNN + RL, SFT, ..., RL (CoT), RL (no CoT), others."""
    return lambda g: g["_sort"]


def machine_time(groups: list[dict]) -> dict:
    """Sum of wall_seconds per row (over tasks) and over all distinct runs (None if unknown)."""
    rows: dict[str, float | None] = {}
    runs: dict[str, float | None] = {}
    for g in groups:
        walls = g["wall_seconds_per_seed"]
        for wd, w in zip(g["workdirs"], walls, strict=True):
            runs[wd] = w
        prev = rows.get(g["method"], 0.0)
        rows[g["method"]] = None if prev is None or None in walls else prev + sum(walls)
    overall = None if None in runs.values() else float(sum(runs.values()))
    return {"rows": rows, "overall": overall}


# ------------------------------------------------------------------------------------ plots
def _series(run: RunRecord, key: str, smooth: int) -> tuple[np.ndarray, np.ndarray]:
    """(env_steps, value) of one run's history; rollouts where no episode ended are dropped
    for per-episode keys (their success_rate is 0 by construction, not a measurement)."""
    xs, ys = [], []
    per_episode = key in ("success_rate", "episode_return", "episode_length")
    for h in run.history:
        x, y = h.get("env_steps"), h.get(key)
        if not isinstance(x, (int, float)) or not isinstance(y, (int, float)):
            continue
        if not math.isfinite(y) or (per_episode and h.get("episodes", 1) == 0):
            continue
        xs.append(float(x))
        ys.append(float(y))
    x, y = np.asarray(xs), np.asarray(ys)
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    if smooth > 1 and y.size > 1:  # centred window, shorter at the ends
        h = smooth // 2
        c = np.concatenate([[0.0], np.cumsum(y)])
        lo = np.maximum(np.arange(y.size) - h, 0)
        hi = np.minimum(np.arange(y.size) + h + 1, y.size)
        y = (c[hi] - c[lo]) / (hi - lo)
    return x, y


def band(curves: list[tuple[np.ndarray, np.ndarray]]):
    """Mean and sample std (None for one seed) of curves interpolated onto a common grid over
    the x range every seed covers; None when no seed has points."""
    curves = [(x, y) for x, y in curves if x.size]
    if not curves:
        return None
    lo, hi = max(x[0] for x, _ in curves), min(x[-1] for x, _ in curves)
    grid = np.linspace(lo, hi, GRID) if hi > lo else np.asarray([hi])
    ys = np.stack([np.interp(grid, x, y) for x, y in curves])
    std = np.std(ys, axis=0, ddof=1) if len(curves) > 1 else None
    return grid, ys.mean(axis=0), std


def _colors(groups: list[dict]) -> dict:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    names = list(dict.fromkeys(g["method"] for g in sorted(groups, key=_row_order(groups))))
    return {name: cmap(i % 10) for i, name in enumerate(names)}


def _plot_metric(ax, groups, runs, key, scale, colors, smooth, levels=True) -> bool:
    """Mean line ± std band per group with a history; groups without one (SFT, Random, Oracle)
    as horizontal lines of their final evaluation. True when anything was drawn."""
    drawn = False
    for g in groups:
        curve = band([_series(runs[wd], key, smooth) for wd in g["workdirs"]])
        if curve is not None and g["source"] == "ppo_eval":
            x, mean, std = curve
            color = colors[g["method"]]
            ax.plot(x, scale * mean, color=color, lw=1.5, label=f"{g['method']} (n={g['n']})")
            if std is not None:
                ax.fill_between(x, scale * (mean - std), scale * (mean + std), color=color,
                                alpha=0.2, lw=0)
            if key == "success_rate":  # the final evaluation, at the end of the curve
                ax.errorbar([x[-1]], [g["mean"]], yerr=[g["std"] or 0.0], color=color,
                            marker="o", ms=4, capsize=3)
            drawn = True
        elif levels and key == "success_rate":
            ax.axhline(g["mean"], color=colors[g["method"]], ls="--", lw=1,
                       label=f"{g['method']} eval (n={g['n']})")
            drawn = True
    return drawn


def _figure(w: float, h: float, rows: int = 1, cols: int = 1):
    """An Agg figure without pyplot: no display, no global backend switch for callers."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, squeeze=False)


def _save(fig, path: str, dpi: int = 100) -> None:
    fig.savefig(path, dpi=dpi, format="png")


def write_plots(groups: list[dict], runs: dict[str, RunRecord], out: str) -> list[str]:
    """Per-task PNGs and overview.png into `out`; returns the file names written."""
    colors = _colors(groups)
    tasks = sorted({g["task"] for g in groups}, key=_task_rank)
    files = []
    smooth_note = f"training rollouts, moving average of {SMOOTH} iterations; band ± sample std"
    levels_note = "dot: final evaluation ± std; dashed: evaluation of rows without a curve"

    for task in tasks:
        tg = [g for g in groups if g["task"] == task]
        fig, axes = _figure(7, 4.5)
        _plot_metric(axes[0, 0], tg, runs, "success_rate", 100.0, colors, SMOOTH)
        _decorate(axes[0, 0], f"{task}: success rate ({smooth_note})\n{levels_note}",
                  "success rate (%)")
        name = f"success_{task}.png"
        _save(fig, os.path.join(out, name))
        files.append(name)

        vlm = [g for g in tg if g["row"].startswith("RL")]
        fig, axes = _figure(7, 4.5)
        if _plot_metric(axes[0, 0], vlm, runs, "response_length", 1.0, colors, SMOOTH, False):
            _decorate(axes[0, 0], f"{task}: response length ({smooth_note})",
                      "tokens per response")
            name = f"response_length_{task}.png"
            _save(fig, os.path.join(out, name))
            files.append(name)

        files += _reflection_plots(task, vlm, runs, colors, out)

    files.append(_overview(tasks, groups, runs, colors, out))
    return files


def _reflection_plots(task, groups, runs, colors, out) -> list[str]:
    """MAYE's reflection ratios vs env steps, and reflection ratio vs response length."""
    files = []
    fig, axes = _figure(11, 4, 1, 2)
    drawn = _plot_metric(axes[0, 0], groups, runs, "reflection_ratio", 100.0, colors, 1, False)
    _decorate(axes[0, 0], f"{task}: reflection ratio (no smoothing; band ± sample std)",
              "responses with reflection words (%)")
    ax = axes[0, 1]
    for g in groups:
        for key, ls in (("reflection_in_correct", "-"), ("reflection_in_incorrect", ":")):
            curve = band([_series(runs[wd], key, 1) for wd in g["workdirs"]])
            if curve is not None:
                ax.plot(curve[0], 100 * curve[1], ls=ls, color=colors[g["method"]],
                        label=f"{g['method']}: {key.removeprefix('reflection_')}")
                drawn = True
    _decorate(ax, "reflection among correct (solid) / incorrect (dotted)", "share (%)")
    if drawn:
        name = f"reflection_{task}.png"
        _save(fig, os.path.join(out, name))
        files.append(name)

    fig, axes = _figure(6, 4.5)
    ax, drawn = axes[0, 0], False
    for g in groups:
        pts = []
        for wd in g["workdirs"]:
            for h in runs[wd].history:
                x, y = h.get("response_length"), h.get("reflection_ratio")
                if all(isinstance(v, (int, float)) and math.isfinite(v) for v in (x, y)):
                    pts.append((x, 100 * y))
        if pts:
            p = np.asarray(pts)
            ax.scatter(p[:, 0], p[:, 1], s=10, alpha=0.6, color=colors[g["method"]],
                       label=g["method"])
            drawn = True
    if drawn:
        ax.set_xlabel("response length (tokens)")
        ax.set_ylabel("reflection ratio (%)")
        ax.set_title(f"{task}: reflection ratio vs response length (all seeds, iterations)",
                     fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        name = f"reflection_vs_length_{task}.png"
        _save(fig, os.path.join(out, name))
        files.append(name)
    return files


def _decorate(ax, title: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("environment steps")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def _overview(tasks, groups, runs, colors, out) -> str:
    """Success curves, one panel per task (2x2 for 3-4 tasks), one shared legend; small
    enough (72 dpi) to be committed beside the README."""
    rows, cols = (1, len(tasks)) if len(tasks) < 3 else (2, 2)
    fig, axes = _figure(4 * cols, 2.8 * rows + 0.8, rows, cols)
    handles = {}
    for i, ax in enumerate(axes.flat):
        if i >= len(tasks):
            ax.set_visible(False)
            continue
        tg = [g for g in groups if g["task"] == tasks[i]]
        _plot_metric(ax, tg, runs, "success_rate", 100.0, colors, SMOOTH)
        ax.set_title(tasks[i], fontsize=9)
        ax.set_xlabel("environment steps", fontsize=8)
        ax.set_ylabel("success (%)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab.split(" (n=")[0], h)
    fig.suptitle(f"Success rate: training rollouts (moving average of {SMOOTH}, band ± sample "
                 "std over seeds);\ndot: final evaluation of RL; dashed: evaluation of rows "
                 "without a curve", fontsize=8)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside lower center",
                   ncols=min(4, len(handles)), fontsize=7)
    _save(fig, os.path.join(out, "overview.png"), dpi=72)
    return "overview.png"


# ------------------------------------------------------------------------------------ output
MANIFEST = "summary.json"  # its "files" list names what the report wrote (replaced on re-runs)


def _previous_files(out: str) -> set[str]:
    try:
        with open(os.path.join(out, MANIFEST)) as f:
            files = json.load(f).get("files", [])
        return {f for f in files if isinstance(f, str) and os.path.basename(f) == f}
    except (OSError, ValueError, AttributeError):
        return set()


def _check_out(out: str, force: bool) -> set[str]:
    """Refuses an --out that is a file, or holds files the report did not write (no --force)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ReportError(f"--out {out} is a file, not a directory")
    if not os.path.isdir(out):
        return set()
    previous = _previous_files(out)
    previous |= {MANIFEST} if previous else set()
    foreign = sorted(set(os.listdir(out)) - previous)
    if foreign and not force:
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise ReportError(f"--out {out} holds files the report did not write ({shown}); "
                          "pass --force to write beside them, or choose an empty directory")
    return previous


def write_report(workdirs: Sequence[str], out: str, group_by: Sequence[str] = (),
                 force: bool = False, warn=None) -> dict:
    """Checks everything, then writes table.md, summary.json and the plots into `out`.

    Files are made in a staging folder inside `out` and moved into place at the end, so a
    refusal or failure leaves `out` as it was; returns the summary dict.
    """
    warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    runs = _load_all(workdirs)
    groups = _collect(runs, tuple(group_by), warn)
    if not groups:
        raise ReportError("nothing to report: no run has an sft_eval or ppo_eval success rate")
    previous = _check_out(out, force)
    by_dir = {r.workdir: r for r in runs}
    return write_files(out, previous, lambda d: write_plots(groups, by_dir, d),
                       format_table(groups), lambda files: _summary(groups, group_by, files))


def write_files(out: str, previous: set[str], plots, table: str, summary_of) -> dict:
    """A report's files, staged (`_write_staged`): `plots(dir)` -> PNG names, table.md, and
    summary.json (`summary_of(file names)`, the manifest included). Returns the summary."""

    def make(staging: str) -> tuple[list[str], dict]:
        files = plots(staging)
        with open(os.path.join(staging, "table.md"), "w") as f:
            f.write(table)
        files = ["table.md", *files, MANIFEST]
        summary = summary_of(files)
        _write_json(os.path.join(staging, MANIFEST), summary)
        return files, summary

    return _write_staged(out, previous, make)


def _write_json(path: str, data) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=1, ensure_ascii=False)


def _write_staged(out: str, previous: set[str], make):
    """`make(staging)` writes the report's files into a staging folder inside `out` and returns
    (their names, result); they are moved into place at the end and the previous report's other
    files removed, so a failure leaves `out` (and any parents this made) as it was. Returns
    result."""
    created = _make_dirs(out)
    staging = None
    try:
        staging = tempfile.mkdtemp(prefix=".report-", dir=out)
        files, result = make(staging)
        for name in files:
            os.replace(os.path.join(staging, name), os.path.join(out, name))
        for name in previous - set(files):
            path = os.path.join(out, name)
            if os.path.isfile(path):
                os.remove(path)
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        for d in reversed(created):
            shutil.rmtree(d, ignore_errors=True)
        raise
    os.rmdir(staging)
    return result


def _make_dirs(path: str) -> list[str]:
    """Creates `path` and missing parents; returns the ones made (removed again on failure)."""
    made, p = [], os.path.abspath(path)
    while not os.path.exists(p):
        made.append(p)
        p = os.path.dirname(p)
    for d in reversed(made):
        os.mkdir(d)
    return list(reversed(made))


def _summary(groups: list[dict], group_by: Sequence[str], files: list[str]) -> dict:
    wall = machine_time(groups)
    public = [{k: v for k, v in g.items() if not k.startswith("_")} for g in groups]
    return {
        "metric": "success rate (%) of the final evaluation",
        "std": "sample standard deviation over seeds (ddof=1); null when n = 1",
        "tasks": sorted({g["task"] for g in groups}, key=_task_rank),
        "group_by": list(group_by),
        "groups": public,
        "wall_seconds": {"rows": wall["rows"], "overall": wall["overall"]},
        "files": files,
    }


# ------------------------------------------------------------------------------------ CLI
class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit code 2, as the repo's other commands
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def cli(argv: Sequence[str], *, prog: str, description: str, write, tag: str,
        example_key: str = "ppo.lr") -> int:
    """The report commands' shared command line: `write(workdirs, out, group_by, force=...)`
    makes the files. 0: written; 2: refused input (one line); 1: I/O."""
    parser = _Parser(prog=prog, description=description,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdirs", nargs="+", help="run workdirs (config.json, results.json)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--group-by", default="", help="comma-separated config keys (dotted "
                        f"paths, e.g. {example_key}) that split rows instead of being refused")
    parser.add_argument("--force", action="store_true",
                        help="write even if --out holds files the report did not write")
    try:
        args = parser.parse_args(list(argv[1:]))
    except SystemExit as e:
        return int(e.code or 0)
    group_by = tuple(k.strip() for k in args.group_by.split(",") if k.strip())
    try:
        summary = write(args.workdirs, args.out, group_by, force=args.force)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    with open(os.path.join(args.out, "table.md")) as f:
        print(f.read(), end="")
    print(f"[{tag}] {len(summary['files'])} files in {args.out}", flush=True)
    return 0


def main(argv: Sequence[str]) -> int:
    """`argv` as sys.argv (the program name first)."""
    return cli(argv, prog="python -m rlvlm_jax.report", description=__doc__,
               write=write_report, tag="report")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
