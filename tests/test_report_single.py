"""The single-turn report over fake train_single workdirs with known numbers: MAYE's three tables,
the paired RL − start gain, response lengths per seed, plots, refusals; seeds over train_single."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from rlvlm_jax import report, seeds
from rlvlm_jax import report_single as rs
from tests.rl.test_sft import ROOT

PNG = b"\x89PNG\r\n\x1a\n"
K = 2  # eval.pass_k of the fake runs
KEYS = rs.setting_keys(K)
EPOCHS = 3
STEPS = 4  # RL generation steps per epoch


def _config(seed, algorithm="reinforce_pp", epochs=EPOCHS, **over):
    c = {"seed": seed, "image_size": 56, "max_new_tokens": 48, "log_every": 1, "mesh": "",
         "keep_checkpoints": 2, "fast_compile": True,
         "model": {"init_seed": 0, "text_layers": 1, "checkpoint": ""},
         "data": {"train": "suite", "validation": "suite", "test": "suite", "suite_seed": 0},
         "sft": {"steps": 2, "lr": 1e-3},
         "rl": {"algorithm": algorithm, "epochs": epochs, "iterations_per_epoch": STEPS,
                "lr": 1e-3, "group_size": 4 if algorithm != "reinforce_pp" else 1},
         "eval": {"pass_k": K, "batch_size": 4}}
    for key, value in over.items():  # rl__lr=1e-4 sets c["rl"]["lr"]
        *path, last = key.split("__")
        node = c
        for p in path:
            node = node.setdefault(p, {})
        node[last] = value
    return c


def _evaluation(rng, refl=True):
    """An evaluation dict as train_single writes it (accuracies drawn by `rng`)."""
    ev = {}
    for key in KEYS:
        ev[key] = float(np.round(rng.uniform(), 4))
        if key.endswith("t1.0") or key.endswith("t0.01"):
            ev[f"{key}/response_length"] = float(np.round(rng.uniform(20, 48), 2))
            ev[f"{key}/length_clip_ratio"] = 0.5
            ev[f"{key}/reflection_ratio"] = float(np.round(rng.uniform(), 3)) if refl else None
            ev[f"{key}/reflection_in_correct"] = None
    return ev


def _write(root, name, config, results):
    wd = root / name
    wd.mkdir(parents=True)
    (wd / "config.json").write_text(json.dumps(config))
    if results is not None:
        (wd / "results.json").write_text(json.dumps(results))
    return str(wd)


def _run(root, name, config, rng, summary=True):
    """A finished run: its start evaluation, one per epoch, and a history of STEPS per epoch."""
    epochs = config["rl"]["epochs"]
    evals = [{"epoch": e + 1, "step": (e + 1) * STEPS, **_evaluation(rng)} for e in range(epochs)]
    history = [{"step": s, "epoch": (s - 1) // STEPS + 1, "reward_mean": 0.1, "accuracy": 0.2,
                "response_length": float(np.round(rng.uniform(10, 48), 2)),
                "length_clip_ratio": 0.1, "kl_ref": 0.0, "clip_frac": 0.0}
               for s in range(1, epochs * STEPS + 1)]
    results = {"sft_eval": _evaluation(rng), "evals": evals, "history": history,
               "wall_seconds": 10.0 + config["seed"], "num_params": 1000}
    if evals and summary:  # as train_single.summarize
        results["mean_over_epochs"] = {k: float(np.mean([e[k] for e in evals])) for k in KEYS}
        results["max_over_epochs"] = {k: float(np.max([e[k] for e in evals])) for k in KEYS}
    return _write(root, name, config, results)


KINDS = {"sft": ("reinforce_pp", 0), "rpp": ("reinforce_pp", EPOCHS), "grpo": ("grpo", EPOCHS)}


@pytest.fixture
def runs(tmp_path):
    """3 seeds x {SFT-only, Reinforce++, GRPO}, given seed-shuffled; {kind: [workdir by seed]}."""
    rng = np.random.default_rng(0)
    out = {kind: [None] * 3 for kind in KINDS}
    for kind, (algorithm, epochs) in KINDS.items():
        for seed in (2, 0, 1):
            out[kind][seed] = _run(tmp_path / "runs", f"{kind}_s{seed}",
                                   _config(seed, algorithm, epochs), rng)
    return out


def _all(runs):
    return [wd for kind in ("grpo", "sft", "rpp") for wd in runs[kind][::-1]]


def _results(wd):
    with open(os.path.join(wd, "results.json")) as f:
        return json.load(f)


def _group(groups, method):
    (g,) = [g for g in groups if g["method"] == method]
    return g


def _check(cell, values, scale=100.0):
    v = scale * np.asarray(values)
    np.testing.assert_allclose(cell["values"], v)
    np.testing.assert_allclose(cell["mean"], np.mean(v))
    np.testing.assert_allclose(cell["std"], np.std(v, ddof=1))
    assert cell["n"] == len(v)


def test_rows_and_statistics_match_numpy(runs):
    groups = rs.aggregate(_all(runs))
    assert [g["method"] for g in groups] == ["SFT", "Reinforce++ start (SFT)", "Reinforce++",
                                             "GRPO start (SFT)", "GRPO"]
    assert all(g["seeds"] == [0, 1, 2] for g in groups)
    for kind, method in (("rpp", "Reinforce++"), ("grpo", "GRPO")):
        res = [_results(wd) for wd in runs[kind]]
        g, start = _group(groups, method), _group(groups, f"{method} start (SFT)")
        for key in KEYS:
            _check(g["final"][key], [r["evals"][-1][key] for r in res])
            _check(g["mean_over_epochs"][key], [np.mean([e[key] for e in r["evals"]])
                                                for r in res])
            _check(g["max_over_epochs"][key], [np.max([e[key] for e in r["evals"]])
                                               for r in res])
            for view, _ in rs.VIEWS:  # the policy RL started from: one evaluation
                _check(start[view][key], [r["sft_eval"][key] for r in res])
        _check(g["response_length"], [r["history"][-1]["response_length"] for r in res], 1.0)
    sft = _group(groups, "SFT")
    res = [_results(wd) for wd in runs["sft"]]
    for view, _ in rs.VIEWS:
        for key in KEYS:
            _check(sft[view][key], [r["sft_eval"][key] for r in res])
    assert sft["gain"] is None and sft["response_length"] is None
    assert sft["wall_seconds"] == 33.0


def test_gain_is_paired_per_seed(runs):
    groups = rs.aggregate(_all(runs))
    for kind, method in (("rpp", "Reinforce++"), ("grpo", "GRPO")):
        res = [_results(wd) for wd in runs[kind]]
        start = np.asarray([r["sft_eval"][rs.GAIN_KEY] for r in res])
        final = np.asarray([r["evals"][-1][rs.GAIN_KEY] for r in res])
        gain = _group(groups, method)["gain"]["final"]
        _check(gain, final - start)  # the std of the per-seed differences
        np.testing.assert_allclose(gain["start_values"], 100 * start)
        best = np.asarray([max(e[rs.GAIN_KEY] for e in r["evals"]) for r in res])
        _check(_group(groups, method)["gain"]["max_over_epochs"], best - start)


def test_mean_and_max_computed_when_results_lack_them(tmp_path):
    rng = np.random.default_rng(1)
    wds = [_run(tmp_path, f"s{s}", _config(s), rng, summary=False) for s in range(2)]
    g = _group(rs.aggregate(wds), "Reinforce++")
    res = [_results(wd) for wd in wds]
    for key in KEYS:
        _check(g["mean_over_epochs"][key], [np.mean([e[key] for e in r["evals"]]) for r in res])


def test_table_layout(runs):
    groups = rs.aggregate(_all(runs))
    text = rs.format_table(groups)
    lines = text.splitlines()
    head = ("| Method | test pass@2 T1.0 | test pass@1 T0.6 | test pass@1 T0.01 | validation "
            "pass@2 T1.0 | validation pass@1 T0.6 | validation pass@1 T0.01 |")
    assert [i for i, line in enumerate(lines) if line == head] == [2, 14, 26]
    assert [line for line in lines if line.startswith("# ")] == [
        "# Accuracy (%), final epoch", "# Accuracy (%), mean over epochs",
        "# Accuracy (%), max over epochs",
        "# Response length at the last training step (tokens), per seed"]
    finals = [_results(wd)["evals"][-1]["test/pass@1_t0.01"] for wd in runs["grpo"]]
    v = 100 * np.asarray(finals)
    cell = f"{np.mean(v):.1f} ± {np.std(v, ddof=1):.1f} (3)"
    (grpo,) = [line for line in lines[:13] if line.startswith("| GRPO |")]
    assert grpo.split(" | ")[3] == cell
    sft_rows = [line for line in lines if line.startswith("| SFT |")]
    assert len(sft_rows) == 3 and len(set(sft_rows)) == 1  # one evaluation: the same 3 times
    gains = [line for line in lines if line.startswith("RL − start gain")]
    assert len(gains) == 3 and "test pass@1 T0.01" in gains[0]
    res = [_results(wd) for wd in runs["rpp"]]
    d = 100 * np.asarray([r["evals"][-1][rs.GAIN_KEY] - r["sft_eval"][rs.GAIN_KEY] for r in res])
    assert f"Reinforce++ {np.mean(d):+.1f} ± {np.std(d, ddof=1):.1f} (3)" in gains[0]
    lengths = lines[lines.index(
        "# Response length at the last training step (tokens), per seed") + 2:]
    assert lengths[0] == "| Method | seed 0 | seed 1 | seed 2 | mean ± std (n) | max − min |"
    per = [_results(wd)["history"][-1]["response_length"] for wd in runs["rpp"]]
    assert lengths[2] == (f"| Reinforce++ | {per[0]:.1f} | {per[1]:.1f} | {per[2]:.1f} | "
                          f"{np.mean(per):.1f} ± {np.std(per, ddof=1):.1f} (3) | "
                          f"{max(per) - min(per):.1f} |")
    assert "ddof=1" in text and "Machine time" in text


def test_write_report_files_and_plots(runs, tmp_path):
    out = tmp_path / "rep"
    summary = rs.write_report(_all(runs), str(out), warn=pytest.fail)
    names = sorted(os.listdir(out))
    assert names == sorted(summary["files"]) == sorted([
        "table.md", "summary.json", "accuracy_vs_epoch.png", "response_length.png",
        "reflection_vs_length.png"])
    for name in names:
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == PNG
            assert (out / name).stat().st_size < 300_000
    saved = json.loads((out / "summary.json").read_text())
    g = _group(saved["groups"], "GRPO")
    assert g["seeds"] == [0, 1, 2] and "_sort" not in g
    assert saved["files"] == summary["files"]
    assert (out / "table.md").read_text() == rs.format_table(rs.aggregate(_all(runs)))


def _main(*args):
    return rs.main(["report_single", *map(str, args)])


def test_card_task_and_unfinished_runs_refused(tmp_path, capsys, runs):
    card = _write(tmp_path, "card", {"task": "NumberLine", "seed": 0, "cot": True,
                                     "ppo": {"thought_lambda": 0.5}, "sft": {"steps": 3}},
                  {"sft_eval": {"success_rate": 0.1}, "ppo_eval": {"success_rate": 0.5}})
    out = tmp_path / "rep"
    assert _main(*runs["grpo"], card, "--out", out) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and card in err and "card-task" in err
    assert "python -m rlvlm_jax.report" in err
    running = _write(tmp_path, "running", _config(5), None)
    assert _main(*runs["grpo"], running, "--out", out) == 2
    err = capsys.readouterr().err
    assert running in err and "results.json" in err and "in progress" in err
    short = _write(tmp_path, "short", _config(6), {"sft_eval": {}, "evals": [{"epoch": 1}]})
    assert _main(short, "--out", out) == 2
    assert "1 epoch evaluations but rl.epochs is 3" in capsys.readouterr().err
    assert _main(tmp_path / "nowhere", "--out", out) == 2
    assert "no such directory" in capsys.readouterr().err
    assert not out.exists()
    # and the card-task report points single-turn runs here
    assert report.main(["report", runs["grpo"][0], "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "python -m rlvlm_jax.report_single" in err
    assert not out.exists()


def test_mixed_configs_refused_unless_grouped(tmp_path, capsys):
    rng = np.random.default_rng(2)
    wds = [_run(tmp_path / "r", f"s{s}", _config(s, "grpo", rl__lr=lr), rng)
           for s, lr in ((0, 1e-4), (1, 3e-5), (2, 1e-4))]
    out = tmp_path / "rep"
    assert _main(*wds, "--out", out) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'GRPO' differ in config rl.lr" in err
    assert "--group-by rl.lr" in err and all(w in err for w in wds) and not out.exists()
    # The start does not depend on the RL section: one start row, RL rows split by rl.lr.
    groups = rs.aggregate(wds, group_by=["rl.lr"])
    assert [g["method"] for g in groups] == ["GRPO start (SFT)", "GRPO rl.lr=3e-05",
                                             "GRPO rl.lr=0.0001"]
    assert _group(groups, "GRPO rl.lr=0.0001")["seeds"] == [0, 2]
    assert _group(groups, "GRPO start (SFT)")["seeds"] == [0, 1, 2]
    # Seed 0 again with a third lr shares its SFT stage: still one start value per seed.
    again = _run(tmp_path / "r", "again", _config(0, "grpo", rl__lr=1e-5), rng)
    groups = rs.aggregate([*wds, again], group_by=["rl.lr"])
    assert _group(groups, "GRPO start (SFT)")["n"] == 3
    assert _main(*wds, "--out", out, "--group-by", "rl.nope") == 2
    assert "rl.nope" in capsys.readouterr().err
    sft = [_run(tmp_path / "q", f"s{s}", _config(s, "grpo", sft__steps=2 + s), rng)
           for s in range(2)]
    with pytest.raises(rs.ReportError, match="start \\(SFT\\)' differ in config sft.steps"):
        rs.aggregate(sft)


def test_duplicate_seeds_refused(runs, tmp_path, capsys):
    copy = _run(tmp_path / "c", "copy", _config(1, "grpo"), np.random.default_rng(3))
    assert _main(*runs["grpo"], copy, "--out", tmp_path / "rep") == 2
    err = capsys.readouterr().err
    assert "duplicate seed 1" in err and copy in err and runs["grpo"][1] in err
    assert _main(runs["sft"][0], runs["sft"][0], "--out", tmp_path / "rep") == 2
    assert "twice" in capsys.readouterr().err
    assert not (tmp_path / "rep").exists()


def test_out_dir_rules(runs, tmp_path, capsys):
    out = tmp_path / "rep"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert _main(*runs["rpp"], "--out", out) == 2
    assert "notes.txt" in capsys.readouterr().err and os.listdir(out) == ["notes.txt"]
    assert _main(*runs["rpp"], "--out", out, "--force") == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "table.md").exists()
    # A re-run over its own output drops its stale files (SFT-only: no training curves).
    own = tmp_path / "own"
    assert _main(*runs["rpp"], "--out", own) == 0
    assert (own / "response_length.png").exists()
    assert _main(*runs["sft"], "--out", own) == 0
    assert not (own / "response_length.png").exists() and (own / "table.md").exists()
    assert not any(n.startswith(".report-") for n in os.listdir(own))
    assert _main(*runs["sft"], "--out", own / "table.md") == 2
    assert "is a file" in capsys.readouterr().err
    assert _main(*runs["sft"]) == 2  # no --out
    assert capsys.readouterr().err.startswith("error: ")


def test_seeds_aggregates_single_turn_runs(runs, tmp_path, monkeypatch, capsys):
    """seeds over train_single: its program accepted, the runs summarised by this module."""
    made = {s: runs["grpo"][s] for s in range(3)}

    def call(cmd):
        seed = int(next(a for a in cmd if a.startswith("--config.seed=")).split("=")[1])
        wd = cmd[cmd.index("--workdir") + 1]
        os.makedirs(wd)
        for name in ("config.json", "results.json"):
            with open(os.path.join(made[seed], name)) as f, open(os.path.join(wd, name), "w") as g:
                g.write(f.read())
        return 0

    monkeypatch.setattr(seeds.subprocess, "call", call)
    out = str(tmp_path / "sweep")
    config = os.path.join(ROOT, "experiments", "suite_test.py") + ":grpo"
    assert seeds.main(["seeds", "--program", "rlvlm_jax.train_single", "--config", config,
                       "--workdir", out, "--seeds", "3"]) == 0
    with open(os.path.join(out, seeds.SEEDS_FILE)) as f:
        saved = {g["method"]: g for g in json.load(f)}
    assert list(saved) == ["GRPO start (SFT)", "GRPO"]
    expected = _group(rs.aggregate(runs["grpo"]), "GRPO")
    assert saved["GRPO"]["final"] == expected["final"]
    assert "[seeds] GRPO (%, final epoch" in capsys.readouterr().out


@pytest.mark.slow
def test_two_real_seeds_of_the_single_turn_test_config(tmp_path):
    """Two seeds of suite_test.py (Reinforce++) through the real entry points."""
    out = str(tmp_path / "sweep")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "rlvlm_jax.seeds", "--program",
                    "rlvlm_jax.train_single", "--config", "experiments/suite_test.py",
                    "--workdir", out, "--seeds", "2"], check=True, cwd=ROOT, env=env)
    with open(os.path.join(out, seeds.SEEDS_FILE)) as f:
        groups = {g["method"]: g for g in json.load(f)}
    assert list(groups) == ["Reinforce++ start (SFT)", "Reinforce++"]
    for g in groups.values():
        assert g["seeds"] == [0, 1] and g["n"] == 2
        keys = rs.setting_keys(2)  # suite_test.py: eval.pass_k = 2
        assert set(g["final"]) == set(keys)
        for key in keys:
            cell = g["final"][key]
            assert cell["n"] == 2 and 0.0 <= cell["mean"] <= 100.0 and cell["std"] >= 0.0
            np.testing.assert_allclose(cell["std"], np.std(cell["values"], ddof=1))
    assert groups["Reinforce++"]["response_length"]["n"] == 2
    rep = str(tmp_path / "rep")
    subprocess.run([sys.executable, "-m", "rlvlm_jax.report_single", out + "/seed_0",
                    out + "/seed_1", "--out", rep], check=True, cwd=ROOT, env=env,
                   capture_output=True)
    assert "table.md" in os.listdir(rep)


def test_accuracy_per_question_kind(tmp_path):
    """The suite's per-kind accuracies (test pass@1 T0.01) get their own table, final epoch."""
    rng = np.random.default_rng(5)
    dirs, want = [], {}
    for seed in range(3):
        wd = _run(tmp_path, f"grpo_{seed}", _config(seed, "grpo"), rng)
        path = os.path.join(wd, "results.json")
        results = json.load(open(path))
        for name in ("blackjack_action", "numberline_steps"):
            value = float(np.round(rng.uniform(), 3))
            results["evals"][-1][f"{rs.GAIN_KEY}/{name}"] = value
            results["sft_eval"][f"{rs.GAIN_KEY}/{name}"] = 0.5
            want.setdefault(name, []).append(100 * value)
        json.dump(results, open(path, "w"))
        dirs.append(wd)
    rl = [g for g in rs.aggregate(dirs) if g["kind"] == "rl"][0]
    for name, values in want.items():
        assert rl["kinds"][name]["mean"] == pytest.approx(np.mean(values))
        assert rl["kinds"][name]["std"] == pytest.approx(np.std(values, ddof=1))
    table = rs.format_table(rs.aggregate(dirs))
    assert "| Method | blackjack_action | numberline_steps |" in table
    assert "| GRPO start (SFT) | 50.0 ± 0.0 (3) | 50.0 ± 0.0 (3) |" in table
