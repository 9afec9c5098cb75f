"""robench report on synthetic runs of every format (score-based, hard-label with checkpoints, shards,
training recipes with robust accuracy, extra summary keys), in-process and fast."""
import json
import math
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from robench.evaluation import results as R
from robench.data.base import eval_indices
from robench.errors import RobenchError
from robench.report import main as report_main


def rec(i, success, q, l2=float("nan"), batch=0, **extra):
    return {"index": i, "label": 1, "target": -1, "clean_pred": 1, "attacked": True, "success": success,
            "queries": q, "grad_queries": 0, "queries_at_success": q if success else -1, "l0": float("nan"),
            "l2": l2 if success else float("nan"), "linf": float("nan"), "seconds": 0.1, "batch": batch,
            "batch_seconds": 1.0, "recheck_failed": False, **extra}


def make_run(folder, records, meta, cfg=None, overrides=(), extra=None):
    folder.mkdir(parents=True)
    R.write_records(folder / "records.csv", records)
    s = R.summarize(records, {"max_queries": 1000, "seconds": R.record_totals(records)["seconds"], **meta})
    s.update(extra or {})
    (folder / "summary.json").write_text(json.dumps(s, default=R.json_default))
    (folder / "summary.md").write_text(R.summary_markdown(s))
    (folder / ".hydra").mkdir()
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
    if cfg is not None:
        (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    return s


def hard_records(offset, n, seed):
    """Hard-label records with the anytime columns dist_at_100 / dist_at_1000 (issue 4's format)."""
    out = []
    for k in range(n):
        d100, d1000 = 2.0 + (k * seed) % 5, 1.0 + (k * seed) % 3 * 0.5
        out.append(rec(offset + k, True, 1000, l2=d1000, batch=(offset + k) // 2, dist_at_100=d100, dist_at_1000=d1000))
    return out


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    base = {"model": "cw_mnist", "dataset": "mnist", "norm": "l2", "eps": None, "budget": "l2_None"}
    # two score-based runs (attack "square" is not registered here: access comes from the summary)
    make_run(root / "score_a", [rec(0, True, 5, 1.0), rec(1, True, 50, 2.0), rec(2, False, 1000)],
             {**base, "attack": "square", "defense": "none"}, extra={"access": "scores", "ensemble_share": [0.5, 0.5]})
    make_run(root / "score_b", [rec(0, True, 500, 1.5), rec(1, False, 1000), rec(2, False, 1000)],
             {**base, "attack": "square", "defense": "jpeg"}, extra={"access": "scores"})
    # a hard-label run whose summary carries checkpoints, and one split into two shards without them
    hr = hard_records(0, 6, 3)
    make_run(root / "hard", hr, {**base, "attack": "signopt", "defense": "none"},
             extra={"access": "label", "checkpoints": [
                 {"queries": 100, "mean_distortion": 3.0, "median_distortion": 3.0, "success_rate": 0.5},
                 {"queries": 1000, "mean_distortion": 1.5, "median_distortion": 1.5, "success_rate": 1.0}]})
    cfg = {"seed": 0, "dataset": {"name": "mnist", "n_samples": 6, "shard": None}, "attack": {"name": "hsja"}}
    for i, part in enumerate((hr[:4], hr[4:])):
        c = json.loads(json.dumps(cfg))
        c["dataset"]["shard"] = f"{i}/2"
        make_run(root / "shards" / str(i), part, {**base, "attack": "hsja", "defense": "none"}, cfg=c,
                 overrides=[f"dataset.shard={i}/2"], extra={"access": "label", "shard": f"{i}/2"})
    # training recipes, one without robust accuracy yet
    for name, clean, robust in (("none", 0.99, 0.01), ("pgd_at", 0.97, 0.89), ("trades", 0.96, None)):
        d = root / "train" / name
        d.mkdir(parents=True)
        s = {"command": "train-defense", "model": "cw_mnist", "dataset": "mnist", "defense": name,
             "clean_accuracy": clean, "train_accuracy": clean, "epochs": 1, "seconds": 1.0}
        if robust is not None:
            s["robust_accuracy"] = robust
        (d / "summary.json").write_text(json.dumps(s))
    return root, hr


def test_report_tables_html_and_plots(runs, tmp_path):
    root, hr = runs
    out = tmp_path / "out"
    report_main([str(root), "--out", str(out), "--plots", "--quiet"])
    df = pd.read_csv(out / "report.csv")
    assert len(df) == 4  # score_a, score_b, hard, and the two shards merged into one
    # budget-curve columns appear because the runs recorded them
    assert {"success@1", "success@10", "success@100", "success@1000", "median dist@100", "median dist@1000"} <= set(df.columns)
    a = df[df.run.str.endswith("score_a")].iloc[0]
    assert a["success@10"] == pytest.approx(1 / 3) and a["success@100"] == pytest.approx(2 / 3)
    # merged shards: numbers recomputed from the concatenated records equal the one-piece run's
    m = df[df.attack == "hsja"].iloc[0]
    h = df[df.attack == "signopt"].iloc[0]
    assert m["shards"] == 2 and m["samples"] == 6 and "merged 2 shards" in m["overrides"]
    for c in ("success rate", "median queries", "median L2", "mean L2", "seconds"):
        assert m[c] == pytest.approx(h[c]), c
    # checkpoints computed generically from the dist_at_ columns for the merged run
    d = pd.Series([r["dist_at_100"] for r in hr])
    assert m["median dist@100"] == pytest.approx(d.median()) and h["median dist@100"] == 3.0
    # pivot: attack x defense
    p = pd.read_csv(out / "pivot-success_rate.csv", index_col=0)
    assert p.loc["square", "none"] == pytest.approx(2 / 3) and p.loc["square", "jpeg"] == pytest.approx(1 / 3)
    assert math.isnan(p.loc["signopt", "jpeg"])
    assert (out / "pivot-robust_accuracy.csv").exists() and (out / "pivot-median_queries.csv").exists()
    r = pd.read_csv(out / "recipes.csv")
    assert list(r.defense) == ["none", "pgd_at", "trades"] and r.robust_accuracy.isna().sum() == 1
    md = (out / "report.md").read_text()
    assert "## success_rate: attack by defense" in md and "## training recipes" in md
    # every plot that has data, as PNG and SVG; the HTML page embeds the PNGs (self-contained)
    for name in ("success_vs_queries", "distortion_vs_queries", "clean_vs_robust"):
        assert (out / f"{name}.png").stat().st_size > 5000 and (out / f"{name}.svg").exists(), name
    assert not (out / "robust_acc_vs_eps.png").exists()  # no eps sweep among these runs (all minimal-distortion)
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "<table>" in html and "src='http" not in html
    assert "no runs at two or more eps: robust_acc_vs_eps not drawn" in html


def test_report_rows_cols_values_and_errors(runs, tmp_path, capsys):
    root, _ = runs
    out = tmp_path / "o2"
    report_main([str(root / "score_a"), str(root / "score_b"), "--out", str(out), "--rows", "defense", "--cols", "",
                 "--values", "success,success@100"])
    p = pd.read_csv(out / "pivot-success_at_100.csv", index_col=0)
    assert p.loc["jpeg"].iloc[0] == 0.0 and p.loc["none"].iloc[0] == pytest.approx(2 / 3)
    printed = capsys.readouterr().out
    assert "success_rate (defense)" in printed and "66.67%" in printed
    with pytest.raises(RobenchError, match="unknown value 'nope'"):
        report_main([str(root / "score_a"), "--out", str(out), "--values", "nope", "-q"])
    with pytest.raises(RobenchError, match="unknown row/column 'nope'"):
        report_main([str(root / "score_a"), "--out", str(out), "--rows", "nope", "-q"])


def test_incomplete_shards_are_not_merged(runs, tmp_path):
    root, _ = runs
    import shutil

    shutil.rmtree(root / "shards" / "1")
    report_main([str(root / "shards"), "--out", str(tmp_path / "o3"), "-q"])
    df = pd.read_csv(tmp_path / "o3" / "report.csv")
    assert len(df) == 1 and df.samples.iloc[0] == 4
    assert "shards 0 of 2 found" in (tmp_path / "o3" / "report.md").read_text()


def test_plots_without_matplotlib_is_one_line(runs, tmp_path, monkeypatch):
    root, _ = runs
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(RobenchError, match=r"--plots needs matplotlib: pip install 'robench\[plots\]'"):
        report_main([str(root / "score_a"), "--out", str(tmp_path / "o4"), "--plots", "-q"])


def test_shards_are_whole_batches():
    full = eval_indices(1000, 95, 5, None).tolist()
    parts = [eval_indices(1000, 95, 5, f"{i}/3", unit=10).tolist() for i in range(3)]
    assert sum(parts, []) == full
    assert [len(p) for p in parts] == [40, 30, 25]  # 10 batches of 10 (the last holds 5): 4, 3, 3 batches
    assert all((p[0] - 5) % 10 == 0 for p in parts)  # each shard starts at a batch boundary
    with pytest.raises(RobenchError, match="is empty"):
        eval_indices(1000, 20, 0, "2/3", unit=10)


def test_list_experiments_shows_the_table_comment(capsys, monkeypatch):
    from robench.cli import list_plugins, preset_comment

    monkeypatch.setenv("COLUMNS", "250")  # content, not layout: a narrow terminal folds the cells (never cuts them)

    assert preset_comment("# @package _global_\n# Table 2.1 of X.\n# second line\n\n# usage\nkey: 1\n") == \
        "Table 2.1 of X. second line"
    list_plugins(["experiments"])
    out = capsys.readouterr().out
    assert "pgd_eps_sweep" in out and "experiment=pgd_eps_sweep" in out and "Not a paper table" in out


def test_checkpoints_table_holds_merged_shards_once(runs, tmp_path):
    """checkpoints.csv comes from the collected runs: a merged shard set is one run whose curve is
    results.summarize's (a sample with no adversarial point counts as +inf in the median)."""
    root, hr = runs
    report_main([str(root), "--out", str(tmp_path / "o"), "-q"])
    cp = pd.read_csv(tmp_path / "o" / "checkpoints.csv")
    merged = cp[cp.attack == "hsja"]
    assert list(merged.queries) == [100, 1000] and merged.run.str.endswith("shards/{0,1}").all()
    att = pd.DataFrame(hr)
    want = R.checkpoint_summary(att, None)
    assert list(merged["median dist"]) == pytest.approx([c["median_distortion"] for c in want])
    assert not cp.overrides.fillna("").str.contains("dataset.shard").any()


def _summary(folder, obj):
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(obj if isinstance(obj, str) else json.dumps(obj))


def test_unusable_summaries_are_skipped_with_one_line_each(runs, tmp_path, capsys):
    root, _ = runs
    _summary(root / "bad" / "broken", "{broken")
    _summary(root / "bad" / "old", {"command": "attack", "attack": "square", "model": "cw_mnist", "dataset": "mnist"})
    _summary(root / "bad" / "other", {"accuracy": 0.5})
    _summary(root / "bad" / "list", [1, 2])
    out = tmp_path / "o"
    report_main([str(root), "--out", str(out)])
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 4, err  # one line per skipped file, naming it and what is wrong
    by = {Path(line.split("skipped ", 1)[1].split(": ", 1)[0]).parent.name: line for line in err}
    assert "not valid JSON (JSONDecodeError)" in by["broken"]
    assert "attack summary lacks defense, budget, n_samples, clean_accuracy, success_rate, robust_accuracy" in by["old"]
    assert "lacks a valid 'command'" in by["other"] and "not a JSON object" in by["list"]
    assert len(pd.read_csv(out / "report.csv")) == 4  # the usable runs are all there
    md = (out / "report.md").read_text()
    assert md.count("> skipped ") == 4 and str(root / "bad" / "broken" / "summary.json") in md
    # --quiet: nothing printed, the files still say it
    report_main([str(root), "--out", str(tmp_path / "q"), "-q"])
    assert capsys.readouterr().err == "" and (tmp_path / "q" / "report.md").read_text().count("> skipped ") == 4
    # summaries found but none usable: one line saying why, never a bare "no runs"
    with pytest.raises(RobenchError, match=r"no usable runs under .*: skipped .*broken/summary.json: not valid JSON"
                                           r".*\(and 3 more\)$"):
        report_main([str(root / "bad"), "-q"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(RobenchError, match=r"no runs \(summary.json\) under"):
        report_main([str(tmp_path / "empty"), "-q"])


def test_run_overrides_drop_display_only_keys(tmp_path):
    from robench.report.collect import run_overrides

    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(
        ["attack=square", "progress=false", "hydra.job.chdir=true", "budget.eps=0.1", "launcher=joblib"]))
    assert run_overrides(tmp_path) == "attack=square budget.eps=0.1"
    assert run_overrides(tmp_path / "nowhere") == ""


def test_short_labels_name_only_what_differs():
    from robench.report.figures import _labels, short_keys

    assert short_keys(["attack.params.steps", "train.steps", "budget.eps"]) == \
        {"attack.params.steps": "params.steps", "train.steps": "train.steps", "budget.eps": "eps"}
    base = {"attack": "square", "model": "cw_mnist", "dataset": "mnist", "budget": "linf_0.3", "defense": "none"}
    runs = [dict(base, run="r/0", overrides="attack=square attack.params.p_init=0.05 budget.max_queries=300"),
            dict(base, run="r/1", defense="jpeg", overrides="attack=square attack.params.p_init=0.1 budget.max_queries=300"),
            dict(base, run="r/2", attack="noise", overrides="attack=noise budget.max_queries=300")]
    labels, shared = _labels(runs)
    assert labels == ["square, defense=none, p_init=0.05", "square, defense=jpeg, p_init=0.1", "noise, defense=none"]
    assert shared == "mnist/cw_mnist, budget linf_0.3"
    # nothing differs: the attack's name; equal labels get their run folder; shards: merged is the whole run
    assert _labels([dict(base, run="a/0", overrides="")])[0] == ["square"]
    same = _labels([dict(base, run="a/x", overrides="seed=1"), dict(base, run="b/y", overrides="seed=1")])[0]
    assert same == ["square (x)", "square (y)"]
    merged = dict(base, run="s/{0,1}", shards=2, overrides="budget.max_queries=300 (merged 2 shards)")
    lone = dict(base, run="t/0", overrides="budget.max_queries=300 dataset.shard=0/3")
    assert _labels([merged, lone])[0] == ["square", "shard=0/3"]
    # budget.eps is in the budget's name already; the eps figure drops the budget and names the norm
    eps = [dict(base, run=f"e/{e}", budget=f"linf_{e}", overrides=f"budget.eps={e}") for e in (0.1, 0.2)]
    assert _labels(eps)[0] == ["budget=linf_0.1", "budget=linf_0.2"]
    assert _labels(eps, ("budget", "budget.eps", "eps"), lambda s: {"norm": "linf"})[1] == \
        "mnist/cw_mnist, attack square, defense none, norm linf"


def test_plot_legends_sit_outside_the_axes(runs, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from robench.report import plots

    boxes = {}
    save = plots._save

    def spy(fig, out, name):
        fig.canvas.draw()
        ax = fig.axes[0]
        leg = ax.get_legend()
        if leg is not None:
            r = fig.canvas.get_renderer()
            boxes[name] = (leg.get_window_extent(r), ax.get_window_extent(r), [t.get_text() for t in leg.get_texts()])
        return save(fig, out, name)

    monkeypatch.setattr(plots, "_save", spy)
    root, _ = runs
    report_main([str(root), "--out", str(tmp_path / "o"), "--plots", "-q"])
    assert set(boxes) == {"success_vs_queries", "distortion_vs_queries"}
    for name, (leg, ax, texts) in boxes.items():
        assert leg.x0 >= ax.x1, name  # right of the axes: it covers no curve
        assert all(len(t) <= 30 for t in texts), texts
    assert boxes["success_vs_queries"][2] == ["defense=none", "defense=jpeg"]


def eps_sweep_runs(root, attacks=(("pgd", "gradient"), ("square", "scores"), ("hsja", "label")),
                   eps=(0.1, 0.2, 0.3), defenses=("none",), repeat=1):
    """Synthetic runs of `robench attack -m budget.eps=... attack=...`: 10 samples each, the number of
    successes different in every run (so an averaged cell shows a number no run has)."""
    k = 0
    for rep in range(repeat):
        for d in defenses:
            for a, access in attacks:
                for e in eps:
                    k += 1
                    n_succ = (k * 3) % 10
                    recs = [rec(i, i < n_succ, 5 + i, linf=e) for i in range(10)]
                    meta = {"model": "cw_mnist", "dataset": "mnist", "norm": "linf", "eps": e, "budget": f"linf_{e}",
                            "attack": a, "defense": d}
                    make_run(root / f"{rep}-{d}-{a}-{e}", recs, meta, extra={"access": access},
                             overrides=[f"attack={a}", f"budget.eps={e}"] + ([f"defense={d}"] if len(defenses) > 1 else []))
    return root


def test_swept_settings_go_on_an_axis_never_into_an_average(tmp_path):
    """The issue-30 sweep (budget.eps=0.1,0.2,0.3 attack=pgd,square,hsja): the default pivot is attack
    by defense, and eps, which differs between the runs of each cell, joins the columns (the defense is
    the same for all); every cell is one run's number. --average keeps the old mean, with a note that
    names eps only (attack is on an axis, budget is eps's name)."""
    root = eps_sweep_runs(tmp_path / "runs")
    out = tmp_path / "o"
    report_main([str(root), "--out", str(out), "-q"])
    runs = pd.read_csv(out / "report.csv")
    p = pd.read_csv(out / "pivot-robust_accuracy.csv", index_col=0)
    assert list(p.columns) == ["none / 0.1", "none / 0.2", "none / 0.3"] and sorted(p.index) == ["hsja", "pgd", "square"]
    for _, r in runs.iterrows():
        assert p.loc[r.attack, f"none / {r.budget.split('_')[1]}"] == pytest.approx(r["robust acc"])
    assert p.size == len(runs) == 9 and not p.isna().any().any()
    md = (out / "report.md").read_text()
    assert "## robust_accuracy: attack by defense x eps" in md and "cell(s) average" not in md
    assert "> added eps to the columns: it differs between runs" in md
    html = (out / "report.html").read_text()
    assert "<th class='axis'>eps</th>" in html and "<th colspan='3'>none</th>" in html

    report_main([str(root), "--out", str(tmp_path / "avg"), "--average", "-q"])
    a = pd.read_csv(tmp_path / "avg" / "pivot-robust_accuracy.csv", index_col=0)
    assert list(a.columns) == ["none"]
    for att in ("pgd", "square", "hsja"):
        assert a.loc[att, "none"] == pytest.approx(runs[runs.attack == att]["robust acc"].mean())
    note = [line for line in (tmp_path / "avg" / "report.md").read_text().splitlines() if "average" in line]
    assert note == ["> 3 cell(s) average runs of different settings: they differ in eps (without --average they go "
                    "on an axis)"]


def test_settings_join_the_rows_when_the_columns_tell_runs_apart(tmp_path):
    """Two defenses on the columns: eps joins the rows; a sweep run twice (repeats of equal settings)
    shares its cells, with a note saying the cells hold repeats, not different settings."""
    root = eps_sweep_runs(tmp_path / "runs", attacks=(("pgd", "gradient"),), eps=(0.1, 0.3), defenses=("none", "jpeg"),
                          repeat=2)
    out = tmp_path / "o"
    report_main([str(root), "--out", str(out), "-q", "--values", "robust"])
    p = pd.read_csv(out / "pivot-robust_accuracy.csv", index_col=[0, 1])
    assert list(p.index.names) == ["attack", "eps"] and list(p.index) == [("pgd", 0.1), ("pgd", 0.3)]
    assert sorted(p.columns) == ["jpeg", "none"]
    md = (out / "report.md").read_text()
    assert "> added eps to the rows: it differs" in md
    assert "> 4 cell(s) hold repeated runs of the same settings: their mean is shown" in md
    runs = pd.read_csv(out / "report.csv")
    want = runs[(runs.defense == "jpeg") & (runs.budget == "linf_0.3")]["robust acc"]
    assert len(want) == 2 and p.loc[("pgd", 0.3), "jpeg"] == pytest.approx(want.mean())


def test_robust_acc_vs_eps_draws_every_family_in_its_own_style(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from robench.report import plots

    root = eps_sweep_runs(tmp_path / "runs")
    lines = {}
    save = plots._save

    def spy(fig, out, name):
        ax = fig.axes[0]
        lines[name] = {ln.get_label(): (ln.get_linestyle(), ln.get_marker(), list(ln.get_xdata()))
                       for ln in ax.get_lines()}
        lines[name + ":legend"] = [t.get_text() for t in ax.get_legend().get_texts()]
        return save(fig, out, name)

    monkeypatch.setattr(plots, "_save", spy)
    report_main([str(root), "--out", str(tmp_path / "o"), "--plots", "-q"])
    got = lines["robust_acc_vs_eps"]
    assert got["pgd"] == ("-", "o", [0.1, 0.2, 0.3])
    assert got["square"] == ("--", "s", [0.1, 0.2, 0.3])
    assert got["hsja"] == (":", "^", [0.1, 0.2, 0.3])
    assert lines["robust_acc_vs_eps:legend"] == ["hsja", "pgd", "square", "white-box", "score-based", "hard-label"]
