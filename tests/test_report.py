"""The report over fake workdirs with known numbers: statistics, table, plots and refusals."""

import json
import os

import numpy as np
import pytest

from rlvlm_jax import report

PNG = b"\x89PNG\r\n\x1a\n"


def _config(task, seed, cot=True, lam=0.5, method=None, **over):
    c = {"task": task, "seed": seed, "cot": cot, "checkpoint_every": 20, "log_every": 5,
         "mesh": "", "model": {"init_seed": seed, "text_layers": 2},
         "ppo": {"thought_lambda": lam, "iterations": 10, "lr": 3e-5},
         "sft": {"steps": 100, "lr": 1e-3}, "eval": {"episodes": 100, "every": 5}}
    if method is not None:
        c = {"task": task, "seed": seed, "method": method, "ppo": {"lr": 2.5e-4}}
    for key, value in over.items():  # ppo__lr=1e-4 sets c["ppo"]["lr"]
        *path, last = key.split("__")
        node = c
        for p in path:
            node = node.setdefault(p, {})
        node[last] = value
    return c


def _history(final, n=10, per_iter=128, reflection=False):
    out = []
    for i in range(n):
        h = {"iteration": i + 1, "env_steps": (i + 1) * per_iter, "episodes": 8,
             "success_rate": final * (i + 1) / n, "response_length": 40.0 - i}
        if reflection and i % 2 == 0:
            h.update(reflection_ratio=0.1 * (i % 4), reflection_in_correct=0.2,
                     reflection_in_incorrect=float("nan"), correct_among_reflective=0.5,
                     correct_among_nonreflective=0.4)
        out.append(h)
    return out


def _run(root, name, config, sft=None, ppo=None, history=None, wall=100.0, results=True):
    wd = root / name
    wd.mkdir(parents=True)
    (wd / "config.json").write_text(json.dumps(config))
    if results:
        r = {"wall_seconds": wall, "evals": [], "history": history or []}
        if sft is not None:
            r["sft_eval"] = {"success_rate": sft, "episodes": 100}
        if ppo is not None:
            r["ppo_eval"] = {"success_rate": ppo, "episodes": 100}
        (wd / "results.json").write_text(json.dumps(r))
    return str(wd)


SFT_NL, PPO_NL = [0.20, 0.25, 0.31], [0.60, 0.70, 0.95]


@pytest.fixture
def runs(tmp_path):
    """NumberLine: 3 CoT seeds, 2 no-CoT seeds, a λ=0.1 seed, Random, Oracle, CNN (2 seeds);
    EZPoints: 2 CoT seeds. Given in a shuffled order (EZPoints first)."""
    r = tmp_path / "runs"
    wds = [_run(r, f"ez{s}", _config("EZPoints", s), 0.5, 0.8 + 0.1 * s,
                _history(0.9, reflection=True)) for s in range(2)]
    wds += [_run(r, f"nl{s}", _config("NumberLine", s), SFT_NL[s], PPO_NL[s],
                 _history(PPO_NL[s], reflection=True), wall=1000.0) for s in (2, 0, 1)]
    wds += [_run(r, f"nlno{s}", _config("NumberLine", s, cot=False), 0.3, 0.4 + 0.1 * s,
                 _history(0.5)) for s in range(2)]
    wds.append(_run(r, "lam", _config("NumberLine", 0, lam=0.1), SFT_NL[0], 0.5, _history(0.5)))
    wds.append(_run(r, "rand", _config("NumberLine", 0, method="random"), ppo=0.1, wall=1.0))
    wds.append(_run(r, "orac", _config("NumberLine", 0, method="oracle"), ppo=1.0, wall=1.0))
    wds += [_run(r, f"cnn{s}", _config("NumberLine", s, method="cnn_ppo"), ppo=0.3 + 0.2 * s,
                 history=_history(0.3 + 0.2 * s, per_iter=256)) for s in range(2)]
    return wds


def _group(groups, task, method):
    (g,) = [g for g in groups if g["task"] == task and g["method"] == method]
    return g


def test_statistics_match_numpy(runs):
    groups = report.aggregate(runs)
    rl = _group(groups, "NumberLine", "RL (CoT)")
    assert rl["seeds"] == [0, 1, 2] and rl["n"] == 3 and rl["source"] == "ppo_eval"
    ppo = 100 * np.asarray(PPO_NL)
    np.testing.assert_allclose(rl["values"], ppo)
    np.testing.assert_allclose(rl["mean"], np.mean(ppo))
    np.testing.assert_allclose(rl["std"], np.std(ppo, ddof=1))
    gain = 100 * (np.asarray(PPO_NL) - np.asarray(SFT_NL))
    np.testing.assert_allclose(rl["gain"]["values"], gain)
    np.testing.assert_allclose(rl["gain"]["std"], np.std(gain, ddof=1))
    sft = _group(groups, "NumberLine", "SFT")
    np.testing.assert_allclose(sft["values"], 100 * np.asarray(SFT_NL))
    assert sft["gain"] is None and sft["wall_seconds"] == 3000.0
    # The λ=0.1 run shares seed 0's SFT stage: one SFT value per seed, not a duplicate.
    assert len(sft["workdirs"]) == 3 and not any(w.endswith("lam") for w in sft["workdirs"])
    lam = _group(groups, "NumberLine", "RL (CoT, λ=0.1)")
    assert lam["n"] == 1 and lam["std"] is None
    cnn = _group(groups, "NumberLine", "CNN + RL")
    np.testing.assert_allclose(cnn["values"], [30.0, 50.0])
    assert cnn["gain"] is None
    assert _group(groups, "NumberLine", "Random")["values"] == [10.0]


def test_table_rows_columns_and_gains(runs):
    text = report.format_table(report.aggregate(runs))
    lines = text.splitlines()
    assert lines[2] == "| Method | NumberLine | EZPoints |"
    rows = [line.split(" | ")[0].lstrip("| ") for line in lines[4:]
            if line.startswith("| ")][:8]
    assert rows == ["Random", "Oracle", "CNN + RL", "SFT", "SFT (no CoT)", "RL (CoT)",
                    "RL (no CoT)", "RL (CoT, λ=0.1)"]
    ppo = 100 * np.asarray(PPO_NL)
    cell = f"{np.mean(ppo):.1f} ± {np.std(ppo, ddof=1):.1f} (3)"
    assert f"| RL (CoT) | {cell} | 85.0 ± 7.1 (2) |" in lines
    assert "| Random | 10.0 (1) | — |" in lines
    assert "| RL (CoT, λ=0.1) | 50.0 (1) | — |" in lines
    assert "ddof=1" in text
    gain = 100 * (np.asarray(PPO_NL) - np.asarray(SFT_NL))
    gains = lines[lines.index("# RL − SFT gain (percentage points)"):]
    cell = f"{np.mean(gain):+.1f} ± {np.std(gain, ddof=1):.1f} (3)"
    assert f"| RL (CoT) | {cell} | +35.0 ± 7.1 (2) |" in gains
    assert not any(line.startswith("| SFT") or line.startswith("| CNN") for line in gains)
    (time_line,) = [line for line in lines if line.startswith("Machine time")]
    # Overall: 3 x 1000 (NL CoT) + 2 + 2 x 100 (EZ) + 2 x 100 (no CoT) + 100 (λ) + 2 x 100 (CNN).
    assert "RL (CoT) 3200 s" in time_line and "overall 3702 s" in time_line


def test_write_report_files_and_plots(runs, tmp_path):
    out = tmp_path / "rep"
    summary = report.write_report(runs, str(out), warn=pytest.fail)
    names = sorted(os.listdir(out))
    assert names == sorted(summary["files"])
    for task in ("NumberLine", "EZPoints"):
        for kind in ("success", "response_length", "reflection", "reflection_vs_length"):
            assert f"{kind}_{task}.png" in names
    for name in names:
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == PNG
    assert (out / "overview.png").stat().st_size < 150_000
    saved = json.loads((out / "summary.json").read_text())
    assert saved["tasks"] == ["NumberLine", "EZPoints"]
    g = _group(saved["groups"], "NumberLine", "RL (CoT)")
    assert g["seeds"] == [0, 1, 2] and len(g["workdirs"]) == 3
    np.testing.assert_allclose(g["std"], np.std(100 * np.asarray(PPO_NL), ddof=1))
    assert saved["wall_seconds"]["overall"] == 3702.0
    assert (out / "table.md").read_text() == report.format_table(report.aggregate(runs))


def test_no_reflection_plots_without_the_keys(tmp_path):
    wds = [_run(tmp_path, f"s{s}", _config("Blackjack", s), 0.3, 0.4, _history(0.4))
           for s in range(2)]
    out = tmp_path / "rep"
    report.write_report(wds, str(out))
    names = set(os.listdir(out))
    assert {"success_Blackjack.png", "response_length_Blackjack.png", "overview.png"} <= names
    assert not any(n.startswith("reflection") for n in names)


def test_series_and_band():
    hist = [{"env_steps": 10, "episodes": 4, "success_rate": 0.5},
            {"env_steps": 20, "episodes": 0, "success_rate": 0.0},  # nothing finished: dropped
            {"env_steps": 30, "episodes": 4, "success_rate": 1.0},
            {"env_steps": 40, "episodes": 4, "success_rate": float("nan")}]
    run = report.RunRecord("w", {}, {"history": hist}, "NumberLine", 0, None, True, 0.5, True)
    x, y = report._series(run, "success_rate", 1)
    np.testing.assert_allclose(x, [10, 30])
    np.testing.assert_allclose(y, [0.5, 1.0])
    _, ys = report._series(run, "success_rate", 5)  # edges average over what exists
    np.testing.assert_allclose(ys, [0.75, 0.75])
    a = (np.asarray([0.0, 10.0]), np.asarray([0.0, 1.0]))
    b = (np.asarray([5.0, 20.0]), np.asarray([1.0, 1.0]))
    grid, mean, std = report.band([a, b])
    assert grid[0] == 5.0 and grid[-1] == 10.0
    np.testing.assert_allclose(mean, (grid / 10 + 1) / 2)
    np.testing.assert_allclose(std, np.std([grid / 10, np.ones_like(grid)], axis=0, ddof=1))


def _main(*args):
    return report.main(["report", *map(str, args)])


def test_mixed_configs_refused_unless_grouped(tmp_path, capsys):
    wds = [_run(tmp_path / "r", f"s{s}", _config("NumberLine", s, ppo__lr=lr), 0.2, 0.5 + s / 10)
           for s, lr in ((0, 1e-4), (1, 3e-5), (2, 1e-4))]
    out = tmp_path / "rep"
    assert _main(*wds, "--out", out) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ppo.lr" in err and all(w in err for w in wds)
    assert not out.exists()
    assert _main(*wds, "--out", out, "--group-by", "ppo.lr") == 0
    groups = report.aggregate(wds, group_by=("ppo.lr",))
    labels = [g["method"] for g in groups]
    # SFT does not depend on the PPO section: one SFT row; RL rows split by the learning rate.
    assert labels == ["SFT", "RL (CoT) ppo.lr=3e-05", "RL (CoT) ppo.lr=0.0001"]
    assert _group(groups, "NumberLine", "RL (CoT) ppo.lr=0.0001")["seeds"] == [0, 2]
    assert "| RL (CoT) ppo.lr=0.0001 | 60.0 ± 14.1 (2) |" in (out / "table.md").read_text()
    assert _main(*wds, "--out", tmp_path / "o2", "--group-by", "ppo.nope") == 2
    assert "ppo.nope" in capsys.readouterr().err


def test_sft_config_difference_refused(tmp_path, capsys):
    wds = [_run(tmp_path, f"s{s}", _config("NumberLine", s, sft__steps=100 + s), 0.2, 0.5)
           for s in range(2)]
    assert _main(*wds, "--out", tmp_path / "rep") == 2
    assert "sft.steps" in capsys.readouterr().err


def test_fields_added_later_count_as_their_defaults(tmp_path, capsys):
    """A seed run before `env.style` existed groups with one that states the default; a seed
    with another value is refused."""
    old = _run(tmp_path, "s0", _config("NumberLine", 0), 0.2, 0.5)
    new = _run(tmp_path, "s1", _config("NumberLine", 1, env__style="default",
                                       model__family="llava"), 0.2, 0.7)
    other = _run(tmp_path, "s2", _config("NumberLine", 2, env__style="original"), 0.2, 0.9)
    groups = report.aggregate([old, new])
    assert _group(groups, "NumberLine", "RL (CoT)")["seeds"] == [0, 1]
    assert _main(old, new, other, "--out", tmp_path / "rep") == 2
    assert "env.style" in capsys.readouterr().err


def test_missing_results_refused(tmp_path, capsys):
    done = _run(tmp_path, "done", _config("NumberLine", 0), 0.2, 0.5)
    running = _run(tmp_path, "running", _config("NumberLine", 1), results=False)
    out = tmp_path / "rep"
    assert _main(done, running, "--out", out) == 2
    err = capsys.readouterr().err
    assert running in err and "results.json" in err and "in progress" in err
    assert not out.exists()
    assert _main(done, tmp_path / "nowhere", "--out", out) == 2
    assert "no such directory" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _main(done, empty, "--out", out) == 2
    assert "config.json" in capsys.readouterr().err
    assert not out.exists()


def test_duplicate_seeds_refused(tmp_path, capsys):
    a = _run(tmp_path, "a", _config("NumberLine", 0), 0.2, 0.5)
    b = _run(tmp_path, "b", _config("NumberLine", 0), 0.2, 0.6)
    assert _main(a, b, "--out", tmp_path / "rep") == 2
    err = capsys.readouterr().err
    assert "duplicate seed 0" in err and a in err and b in err
    assert _main(a, a, "--out", tmp_path / "rep") == 2
    assert "twice" in capsys.readouterr().err
    c = _run(tmp_path, "c", _config("NumberLine", 1, method="random"), ppo=0.1)
    d = _run(tmp_path, "d", _config("NumberLine", 1, method="random"), ppo=0.1)
    assert _main(c, d, "--out", tmp_path / "rep") == 2
    assert not (tmp_path / "rep").exists()


def test_out_dir_rules(tmp_path, capsys):
    wds = [_run(tmp_path / "r", f"s{s}", _config("NumberLine", s), 0.2, 0.5) for s in range(2)]
    out = tmp_path / "rep"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert _main(*wds, "--out", out) == 2
    assert "notes.txt" in capsys.readouterr().err and os.listdir(out) == ["notes.txt"]
    assert _main(*wds, "--out", out, "--force") == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "table.md").exists()
    # A re-run over its own output is fine and drops its stale files (EZPoints is gone).
    ez = _run(tmp_path / "r", "ez", _config("EZPoints", 0), 0.2, 0.5)
    own = tmp_path / "own"
    assert _main(*wds, ez, "--out", own) == 0
    assert (own / "success_EZPoints.png").exists()
    assert _main(*wds, "--out", own) == 0
    assert not (own / "success_EZPoints.png").exists()
    assert not any(n.startswith(".report-") for n in os.listdir(own))
    assert _main(*wds) == 2  # no --out
    assert capsys.readouterr().err.startswith("error: ")
    assert _main(*wds, "--out", own / "table.md") == 2


def test_unknown_method_refused(tmp_path, capsys):
    wd = _run(tmp_path, "x", _config("NumberLine", 0, method="ppo_magic"), ppo=0.5)
    assert _main(wd, "--out", tmp_path / "rep") == 2
    assert "ppo_magic" in capsys.readouterr().err


def test_older_run_without_a_key_is_labelled_na(tmp_path):
    old = _config("NumberLine", 0)
    del old["ppo"]["lr"]
    wds = [_run(tmp_path, "old", old, 0.2, 0.5), _run(tmp_path, "new", _config("NumberLine", 0),
                                                      0.2, 0.6)]
    with pytest.raises(report.ReportError, match="differ in config ppo.lr"):
        report.aggregate(wds)  # named before the seeds are compared
    groups = report.aggregate(wds, group_by=["ppo.lr"])
    assert [g["method"] for g in groups] == ["SFT", "RL (CoT) ppo.lr=3e-05", "RL (CoT) ppo.lr=n/a"]
    assert _group(groups, "NumberLine", "SFT")["n"] == 1  # one SFT stage, shared


def test_failure_while_writing_leaves_nothing(tmp_path, monkeypatch):
    wds = [_run(tmp_path / "r", f"s{s}", _config("NumberLine", s), 0.2, 0.5) for s in range(2)]
    assert _main(*wds, "--out", tmp_path / "old") == 0
    before = sorted(os.listdir(tmp_path / "old"))

    def broken(*args):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(report, "write_plots", broken)
    for out in (tmp_path / "new" / "deeper", tmp_path / "old"):
        with pytest.raises(RuntimeError):
            report.write_report(wds, str(out))
    assert not (tmp_path / "new").exists()
    assert sorted(os.listdir(tmp_path / "old")) == before  # the earlier report, untouched
