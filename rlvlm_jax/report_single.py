"""MAYE-style report over finished single-turn workdirs (`rlvlm_jax.train_single`): accuracy
tables (final epoch, mean and max over epochs), RL − start gains, the seeds' response lengths.

    python -m rlvlm_jax.report_single runs/sft_s* runs/rpp_s* runs/grpo_s* --out report_single/
    python -m rlvlm_jax.report_single runs/grpo_* --out rep/ --group-by rl.lr
    python -m rlvlm_jax.report_single runs/* --out rep/ --force   # --out may hold other files

Rows: "SFT" (runs with rl.epochs = 0: their one evaluation), "<algorithm> start (SFT)" (the RL
runs' evaluation before RL, the policy RL started from) and one row per RL algorithm
(Reinforce++, GRPO, RLOO). Within a row the configs must match except for seed-like fields
(`report.IGNORED_KEYS`), so that seeds are the only thing averaged over; `--group-by` splits rows
by further config keys instead of refusing. Columns: MAYE's three settings (pass@k at T 1.0,
pass@1 at T 0.6 and at T 0.01) on the test and validation splits, in percent, mean ± sample std
(ddof=1) over seeds. Card-task runs (`rlvlm_jax.train`) belong to `rlvlm_jax.report`.

Writes into --out: table.md, summary.json (the numbers, and the "files" it wrote) and PNGs
(accuracy vs epoch, training response length per seed, reflection ratio vs response length).
Bad input is refused (one line, exit code 2) before anything is written; --out follows
`rlvlm_jax.report`'s rules. `aggregate` (numbers only, no matplotlib) is what seeds reuses.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from collections.abc import Sequence

import numpy as np

from rlvlm_jax.config_files import flatten
from rlvlm_jax.report import (
    _MISSING,
    IGNORED_KEYS,
    STD_NOTE,
    ReportError,
    _check_configs,
    _check_out,
    _colors,
    _figure,
    _fmt,
    _hours,
    _load_all,
    _read_json,
    _save,
    _sortable,
    _stats,
    _sum_wall,
    cli,
    format_cell,
    lookup,
    machine_time,
    wall_seconds_of,
    write_files,
)

ALGORITHMS = {"reinforce_pp": "Reinforce++", "grpo": "GRPO", "rloo": "RLOO"}  # row order
SPLITS = ("test", "validation")
# (results key with {k} = eval.pass_k, column heading) of MAYE's three evaluation settings
SETTINGS = (("pass@{k}_t1.0", "pass@{k} T1.0"), ("pass@1_t0.6", "pass@1 T0.6"),
            ("pass@1_t0.01", "pass@1 T0.01"))
VIEWS = (("final", "final epoch"), ("mean_over_epochs", "mean over epochs"),
         ("max_over_epochs", "max over epochs"))
GAIN_KEY = "test/pass@1_t0.01"  # the RL − start gain's accuracy (near-greedy test pass@1)
SCATTER_KEY = "test/pass@{k}_t1.0"  # the evaluation setting of the reflection-vs-length plot
STAGE_KINDS = ("sft", "start")  # rows of one evaluation before any RL
QUALITY_KEYS = ("response_length", "length_clip_ratio")  # per-setting extras that are not kinds


@dataclasses.dataclass(frozen=True)
class SingleRun:
    """One finished train_single run: its workdir, config, results and the fields rows use."""

    workdir: str
    config: dict
    results: dict
    seed: object
    algorithm: str
    epochs: int
    pass_k: int
    sft_steps: int

    @property
    def wall_seconds(self) -> float | None:
        return wall_seconds_of(self.results)

    @property
    def history(self) -> list[dict]:
        return [h for h in self.results.get("history") or [] if isinstance(h, dict)]

    @property
    def evals(self) -> list[dict]:
        return list(self.results.get("evals") or [])

    @property
    def start_eval(self) -> dict:
        return self.results["sft_eval"]


# ------------------------------------------------------------------------------------ loading
def is_single_turn(workdir: str) -> bool:
    """Whether a workdir's config.json is a train_single run's (it has rl.algorithm); False
    when it cannot be read (the card-task loader then names the problem)."""
    try:
        with open(os.path.join(workdir, "config.json")) as f:
            config = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and lookup(config, "rl.algorithm", _MISSING) is not _MISSING


def load_run(workdir: str) -> SingleRun:
    """Reads a workdir's config.json and results.json; ReportError names what is missing."""
    wd = os.path.normpath(workdir)
    if not os.path.isdir(wd):
        raise ReportError(f"{workdir}: no such directory")
    config = _read_json(os.path.join(wd, "config.json"), wd, " (not a run workdir?)")
    algorithm = lookup(config, "rl.algorithm", _MISSING)
    if algorithm is _MISSING:
        what = "a card-task run" if "task" in config else "not a train_single run"
        raise ReportError(f"{wd} is {what} (its config.json has no rl.algorithm); report "
                          "card-task runs with python -m rlvlm_jax.report")
    results = _read_json(os.path.join(wd, "results.json"), wd,
                         " (a run still in progress has none yet: it is written at its end)")

    def need(key):
        try:
            return lookup(config, key)
        except KeyError:
            raise ReportError(f"{wd}/config.json has no '{key}'") from None

    seed, epochs, pass_k = need("seed"), int(need("rl.epochs")), int(need("eval.pass_k"))
    sft_steps = int(need("sft.steps"))
    if not isinstance(results.get("sft_eval"), dict):
        raise ReportError(f"{wd}/results.json has no sft_eval (not written by "
                          "rlvlm_jax.train_single?)")
    evals = results.get("evals") or []
    if epochs > 0 and (len(evals) != epochs or not all(isinstance(e, dict) for e in evals)):
        raise ReportError(f"{wd}/results.json has {len(evals)} epoch evaluations but rl.epochs "
                          f"is {epochs} (config.json changed after the run? rerun it)")
    return SingleRun(wd, config, results, seed, str(algorithm), epochs, pass_k, sft_steps)


# ------------------------------------------------------------------------------------ grouping
def _rows(run: SingleRun) -> list[tuple[str, str, tuple]]:
    """(row label, kind: sft / start / rl, sort key) of each row this run contributes to."""
    stage = "SFT" if run.sft_steps > 0 else "Init"
    if run.epochs == 0:
        return [(stage, "sft", (0, run.sft_steps == 0))]
    rank = list(ALGORITHMS).index(run.algorithm) if run.algorithm in ALGORITHMS else \
        len(ALGORITHMS)
    name = ALGORITHMS.get(run.algorithm, run.algorithm)
    suffix = "" if run.sft_steps > 0 else " (no SFT)"
    return [(f"{name} start ({stage}){suffix}", "start", (1, rank, run.algorithm, 0,
                                                          run.sft_steps == 0)),
            (f"{name}{suffix}", "rl", (1, rank, run.algorithm, 1, run.sft_steps == 0))]


def setting_keys(pass_k: int) -> list[str]:
    """The accuracy keys of results.json in table order: test, then validation settings."""
    return [f"{split}/{key.format(k=pass_k)}" for split in SPLITS for key, _ in SETTINGS]


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _value(run: SingleRun, kind: str, view: str, key: str) -> float | None:
    """One run's accuracy (fraction) under a view; a stage row's views are its one evaluation.
    Mean and max over epochs are the run's own (results.json), else computed from its evals."""
    if kind in STAGE_KINDS:
        return _number(run.start_eval.get(key))
    if view == "final":
        return _number(run.evals[-1].get(key))
    stored = run.results.get(view)
    if isinstance(stored, dict) and key in stored:
        return _number(stored[key])
    values = [_number(e.get(key)) for e in run.evals]
    if any(v is None for v in values):
        return None
    return float(np.mean(values) if view == "mean_over_epochs" else np.max(values))


def _cell(runs: list[SingleRun], values: list[float | None], scale: float = 100.0):
    """Stats over the seeds that have a value (their seeds listed); None when none has."""
    have = [(r, v) for r, v in zip(runs, values, strict=True) if v is not None]
    if not have:
        return None
    return {**_stats([scale * v for _, v in have]), "seeds": [r.seed for r, _ in have]}


def _final_length(run: SingleRun) -> float | None:
    """The response length (tokens) of the run's last RL generation step."""
    steps = [h for h in run.history if _number(h.get("step")) is not None]
    return _number(max(steps, key=lambda h: h["step"]).get("response_length")) if steps else None


def _collect(runs: list[SingleRun], group_by: Sequence[str], warn) -> list[dict]:
    for key in group_by:
        if all(lookup(r.config, key, _MISSING) is _MISSING for r in runs):
            raise ReportError(f"--group-by {key}: no run's config.json has this key")
    ignore = frozenset(IGNORED_KEYS | set(group_by))
    buckets: dict[str, dict] = {}
    for run in runs:
        for base, kind, rank in _rows(run):
            extra = [(k, lookup(run.config, k, "n/a")) for k in group_by
                     if not (kind in STAGE_KINDS and k.startswith("rl."))]
            label = " ".join([base] + [f"{k}={_fmt(v)}" for k, v in extra])
            sort = (rank, tuple(_sortable(v) for _, v in extra), label)
            b = buckets.setdefault(label, {"row": base, "kind": kind, "sort": sort,
                                           "runs": []})
            b["runs"].append(run)
    groups = []
    for label, b in sorted(buckets.items(), key=lambda kv: kv[1]["sort"]):
        stage = b["kind"] in STAGE_KINDS
        _check_configs(label, "", b["runs"], ignore, "rl." if stage else None)
        used = _dedupe(label, b["kind"], b["runs"], warn)
        groups.append(_group(label, b, used, warn))
    return groups


def _dedupe(label: str, kind: str, runs: list[SingleRun], warn) -> list[SingleRun]:
    """One run per seed, ordered by seed; refuses repeated seeds (the same run given twice).

    A start row may see one seed from runs that differ only in their RL section (split into
    rows by --group-by rl.*): they share the stage before RL, so the first (by workdir) is kept.
    """
    by_seed: dict[str, list[SingleRun]] = {}
    for run in runs:
        by_seed.setdefault(json.dumps(run.seed), []).append(run)
    kept = []
    for same in by_seed.values():
        if len(same) > 1:
            rl = {json.dumps({k: v for k, v in flatten(r.config).items()
                              if k.startswith("rl.") and k not in IGNORED_KEYS}, sort_keys=True)
                  for r in same}
            if kind != "start" or len(rl) < len(same):
                raise ReportError(f"duplicate seed {same[0].seed} in row '{label}': "
                                  f"{', '.join(r.workdir for r in same)}")
            same = sorted(same, key=lambda r: r.workdir)
            starts = {json.dumps(r.start_eval.get(GAIN_KEY)) for r in same}
            if len(starts) > 1:
                warn(f"row '{label}', seed {same[0].seed}: the start evaluations of runs "
                     f"sharing the stage before RL differ ({GAIN_KEY}); keeping "
                     f"{same[0].workdir}")
        kept.append(same[0])
    return sorted(kept, key=lambda r: _sortable(r.seed))


def _group(label: str, b: dict, used: list[SingleRun], warn) -> dict:
    kind = b["kind"]
    pass_k = used[0].pass_k  # one value per row: eval.pass_k is compared like the rest
    keys = setting_keys(pass_k)
    g = {"method": label, "row": b["row"], "kind": kind,
         "algorithm": None if kind == "sft" else used[0].algorithm,
         "source": "sft_eval" if kind in STAGE_KINDS else "evals", "pass_k": pass_k,
         "epochs": used[0].epochs, "metric": "accuracy_percent",
         "seeds": [r.seed for r in used], "n": len(used), "workdirs": [r.workdir for r in used]}
    for view, _ in VIEWS:
        g[view] = {}
        for key in keys:
            values = [_value(r, kind, view, key) for r in used]
            missing = [r.workdir for r, v in zip(used, values, strict=True) if v is None]
            if missing and view == "final":
                warn(f"row '{label}': {key} is missing or null in {', '.join(missing)}; "
                     "left out of that cell")
            g[view][key] = _cell(used, values)
    g["gain"] = None
    if kind == "rl":  # per seed: the run's RL evaluation minus its own start evaluation
        g["gain"] = {}
        for view, _ in VIEWS:
            start = [_number(r.start_eval.get(GAIN_KEY)) for r in used]
            rl = [_value(r, kind, view, GAIN_KEY) for r in used]
            diffs = [None if a is None or s is None else a - s
                     for a, s in zip(rl, start, strict=True)]
            cell = _cell(used, diffs)
            if cell is not None:
                cell["start_values"] = [100 * s for s, d in zip(start, diffs, strict=True)
                                        if d is not None]
            g["gain"][view] = cell
    # The generated suite's accuracy per question kind (test pass@1 T0.01, final view).
    prefix = GAIN_KEY + "/"
    kinds = sorted({k[len(prefix):] for r in used for k in (
        r.start_eval if kind in STAGE_KINDS else (r.evals[-1] if r.evals else {}))
        if k.startswith(prefix) and k[len(prefix):] not in QUALITY_KEYS
        and not k[len(prefix):].startswith(("reflection", "correct"))})
    g["kinds"] = {q: _cell(used, [_value(r, kind, "final", prefix + q) for r in used])
                  for q in kinds}
    g["response_length"] = _cell(used, [_final_length(r) for r in used], 1.0) \
        if kind == "rl" else None
    g["wall_seconds"] = _sum_wall(used)
    g["wall_seconds_per_seed"] = [r.wall_seconds for r in used]
    g["_sort"] = b["sort"]
    return g


def aggregate(workdirs: Sequence[str], group_by: Sequence[str] = (), warn=None) -> list[dict]:
    """Rows with per-seed accuracies (%) and mean / sample std; ReportError on bad input.

    Each dict: method (row label), row, kind (sft / start / rl), algorithm, source, pass_k,
    seeds, n, workdirs; per view (final, mean_over_epochs, max_over_epochs) a dict of
    results key -> {n, mean, std (None for n = 1), values, seeds} (None where no seed has the
    key); gain (RL rows: per view, the per-seed RL − start difference of GAIN_KEY in points);
    response_length (RL rows: the last training step's, per seed); wall_seconds. Sorted as the
    table's rows.
    """
    runs = _load_all(workdirs, load_run)
    return _collect(runs, tuple(group_by), warn or (lambda msg: None))


def public(groups: list[dict]) -> list[dict]:
    """The groups without their private sort keys: what summary.json and seeds.json hold."""
    return [{k: v for k, v in g.items() if not k.startswith("_")} for g in groups]


# ------------------------------------------------------------------------------------ table
def _k(groups: list[dict]) -> str:
    """The k of pass@k in headings: the rows' common eval.pass_k, else "k"."""
    ks = {g["pass_k"] for g in groups}
    return str(ks.pop()) if len(ks) == 1 else "k"


def _headings(groups: list[dict]) -> tuple[list[str], str]:
    """Column headings, and a note when rows use different k for pass@k."""
    k = _k(groups)
    heads = [f"{split} {head.format(k=k)}" for split in SPLITS for _, head in SETTINGS]
    note = "" if k != "k" else (" k of pass@k (eval.pass_k) per row: " + "; ".join(
        f"{g['method']} {g['pass_k']}" for g in groups) + ".")
    return heads, note


def _gain_line(groups: list[dict], view: str) -> str | None:
    parts = [f"{g['method']} {format_cell(g['gain'][view], signed=True)}" for g in groups
             if g["gain"] and g["gain"][view]]
    if not parts:
        return None
    name = GAIN_KEY.replace("/", " ").replace("_t", " T")
    return (f"RL − start gain on {name} (points; per seed the run's "
            f"{dict(VIEWS)[view]} minus its own start evaluation): " + "; ".join(parts) + ".")


def format_table(groups: list[dict]) -> str:
    """table.md: the three accuracy tables with their gain lines, response lengths per seed."""
    heads, k_note = _headings(groups)
    out = []
    for view, title in VIEWS:
        out += [f"# Accuracy (%), {title}", "",
                "| Method | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(heads)]
        for g in groups:
            cells = [g[view][key] for key in setting_keys(g["pass_k"])]
            out.append(f"| {g['method']} | "
                       + " | ".join(format_cell(c) if c else "—" for c in cells) + " |")
        gain = _gain_line(groups, view)
        out += ["", gain] if gain else []
        out.append("")
    out.append(f"Cells: {STD_NOTE}. SFT / start rows are one evaluation per seed (before any "
               "RL), the same in all three tables; a start row is the RL runs' own starting "
               f"policy.{k_note}")

    kinds = sorted({q for g in groups for q in g.get("kinds") or {}})
    if kinds:
        out += ["", f"# Accuracy (%) per question kind, {GAIN_KEY}, final epoch", "",
                "| Method | " + " | ".join(kinds) + " |", "|---|" + "---:|" * len(kinds)]
        for g in groups:
            cells = [(g.get("kinds") or {}).get(q) for q in kinds]
            out.append(f"| {g['method']} | "
                       + " | ".join(format_cell(c) if c else "—" for c in cells) + " |")

    rl = [g for g in groups if g["response_length"]]
    if rl:
        seeds = sorted({json.dumps(s) for g in rl for s in g["response_length"]["seeds"]},
                       key=lambda s: _sortable(json.loads(s)))
        out += ["", "# Response length at the last training step (tokens), per seed", "",
                "| Method | " + " | ".join(f"seed {json.loads(s)}" for s in seeds)
                + " | mean ± std (n) | max − min |", "|---|" + "---:|" * (len(seeds) + 2)]
        for g in rl:
            c = g["response_length"]
            per = dict(zip((json.dumps(s) for s in c["seeds"]), c["values"], strict=True))
            spread = max(c["values"]) - min(c["values"])
            out.append(f"| {g['method']} | " + " | ".join(
                f"{per[s]:.1f}" if s in per else "—" for s in seeds)
                + f" | {format_cell(c)} | {spread:.1f} |")
        out += ["", "MAYE: response length is seed-sensitive; compare the spread with the mean."]
    wall = machine_time(groups)
    parts = [f"{g['method']} {_hours(wall['rows'][g['method']])}" for g in groups]
    out += ["", f"Machine time (sum of wall_seconds of the row's runs): {'; '.join(parts)}; "
            f"overall {_hours(wall['overall'])} (each run once; start and RL rows share runs)."]
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------ plots
def _curve(run: SingleRun, key: str) -> list[float | None]:
    """Accuracy (%) per epoch, epoch 0 being the start evaluation."""
    values = [_number(run.start_eval.get(key))] + [_number(e.get(key)) for e in run.evals]
    return [None if v is None else 100 * v for v in values]


def _accuracy_plot(groups, runs, colors, out) -> str | None:
    """Accuracy vs epoch (test row, validation row; one panel per setting), mean ± std band
    per RL row; SFT rows as dashed levels (start rows are the curves' epoch 0)."""
    from matplotlib.ticker import MaxNLocator

    fig, axes = _figure(12, 6.5, len(SPLITS), len(SETTINGS))
    drawn = False
    for i, split in enumerate(SPLITS):
        for j, (key, head) in enumerate(SETTINGS):
            ax = axes[i, j]
            for g in groups:
                full = f"{split}/{key.format(k=g['pass_k'])}"
                color = colors[g["method"]]
                if g["kind"] == "sft" and g["final"][full]:
                    ax.axhline(g["final"][full]["mean"], color=color, ls="--", lw=1,
                               label=f"{g['method']} (n={g['n']})")
                    drawn = True
                if g["kind"] != "rl":
                    continue
                curves = [c for c in (_curve(runs[wd], full) for wd in g["workdirs"])
                          if None not in c]
                if not curves:
                    continue
                ys = np.asarray([c[:min(map(len, curves))] for c in curves])
                x = np.arange(ys.shape[1])
                mean = ys.mean(axis=0)
                ax.plot(x, mean, color=color, marker="o", ms=3, lw=1.5,
                        label=f"{g['method']} (n={len(curves)})")
                if len(curves) > 1:
                    std = ys.std(axis=0, ddof=1)
                    ax.fill_between(x, np.clip(mean - std, 0, 100), np.clip(mean + std, 0, 100),
                                    color=color, alpha=0.2, lw=0)
                drawn = True
            ax.set_title(f"{split} {head.format(k=_k(groups))}", fontsize=9)
            ax.set_xlabel("epoch (0: start of RL)", fontsize=8)
            ax.set_ylabel("accuracy (%)", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
    if not drawn:
        return None
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("Accuracy per epoch: mean over seeds, band ± sample std; dashed: SFT-only "
                 "rows", fontsize=9)
    _save(fig, os.path.join(out, "accuracy_vs_epoch.png"))
    return "accuracy_vs_epoch.png"


def _length_plot(groups, runs, colors, out) -> str | None:
    """Training response length vs step, one panel per RL row, one line per seed."""
    rl = [g for g in groups if g["kind"] == "rl" and any(runs[wd].history
                                                         for wd in g["workdirs"])]
    if not rl:
        return None
    cols = min(3, len(rl))
    rows = -(-len(rl) // cols)
    fig, axes = _figure(4.2 * cols, 3.2 * rows, rows, cols)
    for ax, g in zip(axes.flat, rl + [None] * (rows * cols - len(rl)), strict=True):
        if g is None:
            ax.set_visible(False)
            continue
        for wd, seed in zip(g["workdirs"], g["seeds"], strict=True):
            pts = [(h["step"], h["response_length"]) for h in runs[wd].history
                   if _number(h.get("step")) is not None
                   and _number(h.get("response_length")) is not None]
            if pts:
                p = np.asarray(sorted(pts))
                ax.plot(p[:, 0], p[:, 1], lw=1, label=f"seed {seed}")
        ax.set_title(f"{g['method']}: response length per seed", fontsize=9,
                     color=colors[g["method"]])
        ax.set_xlabel("RL generation step", fontsize=8)
        ax.set_ylabel("tokens per response", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save(fig, os.path.join(out, "response_length.png"))
    return "response_length.png"


def _reflection_plot(groups, runs, colors, out) -> str | None:
    """Reflection ratio vs response length of the test pass@k T1.0 evaluations: a point per
    seed for SFT / start rows, per epoch and seed for RL rows."""
    fig, axes = _figure(6, 4.5)
    ax, drawn = axes[0, 0], False
    for g in groups:
        prefix = SCATTER_KEY.format(k=g["pass_k"])
        pts = []
        for wd in g["workdirs"]:
            run = runs[wd]
            for ev in ([run.start_eval] if g["kind"] in STAGE_KINDS else run.evals):
                x = _number(ev.get(f"{prefix}/response_length"))
                y = _number(ev.get(f"{prefix}/reflection_ratio"))
                if x is not None and y is not None:
                    pts.append((x, 100 * y))
        if pts:
            p = np.asarray(pts)
            ax.scatter(p[:, 0], p[:, 1], s=14, alpha=0.7, color=colors[g["method"]],
                       marker="o" if g["kind"] == "rl" else "x", label=g["method"])
            drawn = True
    if not drawn:
        return None
    ax.set_xlabel("response length (tokens)")
    ax.set_ylabel("reflection ratio (%)")
    ax.set_title(f"test pass@{_k(groups)} T1.0: reflection ratio vs response length\n"
                 "(RL: a point per epoch and seed; x: SFT / start evaluations)", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    _save(fig, os.path.join(out, "reflection_vs_length.png"))
    return "reflection_vs_length.png"


def write_plots(groups: list[dict], runs: dict[str, SingleRun], out: str) -> list[str]:
    """The PNGs (dpi 100) that have data into `out`; returns their names."""
    colors = _colors(groups)
    made = [plot(groups, runs, colors, out)
            for plot in (_accuracy_plot, _length_plot, _reflection_plot)]
    return [name for name in made if name]


# ------------------------------------------------------------------------------------ output
def write_report(workdirs: Sequence[str], out: str, group_by: Sequence[str] = (),
                 force: bool = False, warn=None) -> dict:
    """Checks everything, then writes table.md, summary.json and the plots into `out` (staged:
    a refusal or failure leaves `out` as it was); returns the summary dict."""
    warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    runs = _load_all(workdirs, load_run)
    groups = _collect(runs, tuple(group_by), warn)
    previous = _check_out(out, force)
    by_dir = {r.workdir: r for r in runs}
    return write_files(out, previous, lambda d: write_plots(groups, by_dir, d),
                       format_table(groups), lambda files: _summary(groups, group_by, files))


def _summary(groups: list[dict], group_by: Sequence[str], files: list[str]) -> dict:
    wall = machine_time(groups)
    return {
        "metric": "accuracy (%) in MAYE's settings: pass@k at T 1.0 (k = eval.pass_k), pass@1 "
                  "at T 0.6 and at T 0.01, on the test and validation splits",
        "std": "sample standard deviation over seeds (ddof=1); null when n = 1",
        "views": dict(VIEWS),
        "gain_key": GAIN_KEY,
        "group_by": list(group_by),
        "groups": public(groups),
        "wall_seconds": {"rows": wall["rows"], "overall": wall["overall"]},
        "files": files,
    }


def headline(g: dict) -> str:
    """One line of a row's final-epoch cells (the seeds command prints it)."""
    parts = []
    for key in setting_keys(g["pass_k"]):
        c = g["final"][key]
        parts.append(f"{key} {format_cell(c) if c else 'n/a'}")
    return "; ".join(parts)


# ------------------------------------------------------------------------------------ CLI
def main(argv: Sequence[str]) -> int:
    """`argv` as sys.argv (the program name first)."""
    return cli(argv, prog="python -m rlvlm_jax.report_single", description=__doc__,
               write=write_report, tag="report_single", example_key="rl.lr")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
