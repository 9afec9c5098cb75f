"""Plots for ``robench report --plots`` (matplotlib, an optional extra: ``pip install 'robench[plots]'``).

Draws the figures of :mod:`robench.report.figures` (which holds their data and labels), each as PNG
and SVG beside the tables, and only when some runs carry its data:

* ``success_vs_queries``: attack success rate within q queries, for score-based runs (``access:
  scores``), from each run's records (every success's query count), log-scaled queries;
* ``distortion_vs_queries``: median distortion of the best point so far at the query checkpoints, for
  hard-label runs (``access: label``) whose summary has ``checkpoints``;
* ``robust_acc_vs_eps``: robust accuracy against eps for every run with an eps (white-box,
  score-based and hard-label runs alike), one line per setting (all but the budget), each family in
  its own line style and marker (:data:`FAMILY_STYLES`, named in the legend);
* ``clean_vs_robust``: clean against robust accuracy of trained victims (``train-defense`` summaries
  with ``robust_accuracy``), one point per recipe;
* ``examples-<attack>-<budget>-<n>``: for a run with saved examples (``save_adversarial=true``), a grid of
  clean input, adversarial point and perturbation (amplified, the factor in the title) for a few
  successes and failures, with the victim's labels;
* ``targets-<attack>-<budget>-<n>``: for a targeted run, the source-by-target success matrix.

Legends sit outside the axes, right of them, so they never cover a curve; a figure's title says what
its runs share and each legend entry only what tells its run apart.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Tuple

from robench.errors import RobenchError
from robench.report.figures import Figure, figure_data


#: family (robench.report.figures.FAMILIES) -> matplotlib line style and marker
FAMILY_STYLES = {"white-box": ("-", "o"), "score-based": ("--", "s"), "hard-label": (":", "^")}


def require():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: F401
    except ImportError:
        raise RobenchError("robench report --plots needs matplotlib: pip install 'robench[plots]'") from None
    return plt


def _save(fig, out: Path, name: str) -> List[Path]:
    paths = []
    for ext in ("png", "svg"):
        p = out / f"{name}.{ext}"
        tmp = p.with_name(f".{p.name}.tmp")
        fig.savefig(tmp, format=ext, dpi=120, bbox_inches="tight")
        tmp.replace(p)
        paths.append(p)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return paths


def draw(f: Figure, out: Path) -> List[Path]:
    """One figure as ``<out>/<name>.png`` and ``.svg``; returns both paths."""
    plt = require()
    fig, ax = plt.subplots(figsize=(6, 5) if f.kind == "scatter" else (7, 4.5))
    for s in f.series:
        if f.kind == "step":
            ax.step(s.x, s.y, where="post", label=s.label)
        elif f.kind == "line":
            ls, marker = FAMILY_STYLES.get(s.family, ("-", "o"))
            ax.plot(s.x, s.y, ls=ls, marker=marker, label=s.label)
        else:
            ax.scatter(s.x, s.y, s=40)
            ax.annotate(s.label, (s.x[0], s.y[0]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    if f.diagonal:
        ax.plot([0, 1], [0, 1], ls=":", c="gray", lw=0.8)
    if f.xlog:
        ax.set_xscale("log")
    if f.xlim:
        ax.set_xlim(*f.xlim)
    if f.ylim:
        ax.set_ylim(*f.ylim)
    ax.set_xlabel(f.xlabel)
    ax.set_ylabel(f.ylabel)
    ax.set_title(f.title + (f"\n{f.subtitle}" if f.subtitle else ""), fontsize=10)
    ax.grid(alpha=0.3)
    if f.legend and f.series:
        handles, labels = ax.get_legend_handles_labels()
        fams = [fam for fam in FAMILY_STYLES if any(s.family == fam for s in f.series)]
        if len(fams) > 1:  # the line styles explained, below the series
            from matplotlib.lines import Line2D

            handles += [Line2D([], [], color="gray", ls=FAMILY_STYLES[fam][0], marker=FAMILY_STYLES[fam][1])
                        for fam in fams]
            labels += fams
        ax.legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                  frameon=False, ncol=1 if len(labels) <= 18 else 2)
    return _save(fig, out, f.name)


def make_all(attacks: List[Dict[str, Any]], trains: List[Dict[str, Any]], out: Path) -> Tuple[List[Path], List[str]]:
    """Every figure the runs carry data for, drawn into ``out``; (files written, notes on figures not drawn)."""
    require()
    figs, notes = figure_data(attacks, trains)
    made: List[Path] = []
    for f in figs:
        made += draw(f, out)
    made += run_figures(attacks, out)  # saved examples as grids, targeted success matrices
    return made, notes


# ---------------------------------------------------------------------- saved examples and targets
#: samples per grid: successes first, then failures (attacked samples the attack did not break)
GRID_SUCCESSES, GRID_FAILURES = 6, 2


def _run_dirs(s: Dict[str, Any]) -> List[str]:
    return [str(r) for r in (s.get("shard_runs") or [s.get("run")]) if r]


def example_grid(s: Dict[str, Any], out: Path, name: str, title: str) -> List[Path]:
    """A grid for one run with saved examples (robench/evaluation/adversarial.py): for a few samples
    (successes first, then failures) the clean input, the adversarial point and the perturbation,
    amplified by the factor printed above it, each titled with the victim's label. Images are drawn as
    pictures, 1-D signals as curves. [] when the run saved none."""
    import numpy as np

    from robench.evaluation.adversarial import FOLDER, load_adversarial

    dirs = _run_dirs(s)
    if not dirs or not all((Path(d) / FOLDER).is_dir() for d in dirs):
        return []
    try:
        a = load_adversarial(dirs)
    except RobenchError:
        return []
    attacked = a.clean_pred == a.label
    ok = (a.success & attacked).nonzero().flatten()[:GRID_SUCCESSES]
    bad = (~a.success & attacked).nonzero().flatten()[:GRID_FAILURES]
    rows = ok.tolist() + bad.tolist()
    if not rows:
        return []
    plt = require()
    d = (a.x - a.x0)[rows]
    peak = float(d.abs().max())
    amp = 1.0 if peak <= 0 else float(min(100.0, max(1.0, 0.5 / peak)))
    image = a.x.dim() == 4
    fig, axes = plt.subplots(len(rows), 3, figsize=(6.6, 2.0 * len(rows)), squeeze=False)
    for i, k in enumerate(rows):
        tgt = int(a.target[k])
        verdict = "success" if bool(a.success[k]) else "failure"
        heads = [f"clean: label {int(a.label[k])}, predicted {int(a.clean_pred[k])}",
                 f"adversarial ({verdict}): predicted {int(a.pred[k])}" + (f", target {tgt}" if tgt >= 0 else ""),
                 f"perturbation x {amp:g}"]
        for j, (arr, head) in enumerate(zip((a.x0[k], a.x[k], d[i]), heads)):
            ax = axes[i][j]
            v = arr.numpy()
            if image:
                if j == 2:
                    v = np.clip(0.5 + amp * v, 0, 1)
                v = v[0] if v.shape[0] == 1 else np.transpose(v[:3], (1, 2, 0))
                ax.imshow(v, cmap="gray" if v.ndim == 2 else None, vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
            else:
                ax.plot((amp * v if j == 2 else v).T, lw=0.6)
                ax.set_yticks([])
            ax.set_title(head, fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, out, name)


def target_rates(records, num_classes=None):
    """The numbers of :func:`target_matrix`: over the attacked targeted rows of a run's records (a DataFrame
    with ``label``, ``target``, ``attacked``, ``success``; ``budget.target=all`` gives a row per pair),
    ``(rate, n)``: K x K arrays, rows the true (source) class, columns the target, ``n`` the attacked
    rows per cell and ``rate`` the share of them that succeeded (NaN where ``n`` is 0: the diagonal)."""
    import numpy as np

    r = records[records.attacked.astype(bool) & (records.target >= 0)]
    k = int(num_classes) if num_classes is not None else (int(max(r.label.max(), r.target.max())) + 1 if len(r) else 0)
    hit, n = np.zeros((k, k)), np.zeros((k, k))
    for lab, tgt, ok in zip(r.label.astype(int), r.target.astype(int), r.success.astype(bool)):
        n[lab, tgt] += 1
        hit[lab, tgt] += ok
    return np.where(n > 0, hit / np.maximum(n, 1), np.nan), n


def target_matrix(s: Dict[str, Any], out: Path, name: str, title: str) -> List[Path]:
    """Targeted runs: the source-by-target success matrix (rows: true class, columns: target class, cells:
    the share of attacked pairs that reached the target; the GenAttack thesis's Fig. 3.2). [] otherwise."""
    if not s.get("targeted"):
        return []
    from robench.report.collect import read_run_records

    r = read_run_records(s)
    if r is None or not len(r):
        return []
    rate, n = target_rates(r)
    if not n.sum():
        return []
    k = len(n)
    plt = require()
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    im = ax.imshow(rate, vmin=0, vmax=1, cmap="viridis")
    for i in range(k):
        for j in range(k):
            if n[i, j]:
                ax.text(j, i, f"{rate[i, j]:.0%}", ha="center", va="center", fontsize=6,
                        color="white" if rate[i, j] < 0.5 else "black")
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xlabel("target class")
    ax.set_ylabel("true (source) class")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, label="targeted success")
    return _save(fig, out, name)


def run_figures(attacks: List[Dict[str, Any]], out: Path) -> List[Path]:
    """Per attack run: its example grid (saved examples) and, targeted, its success matrix."""
    from robench.report.figures import natural_key

    made: List[Path] = []
    for i, s in enumerate(sorted(attacks, key=lambda s: natural_key(str(s.get("run"))))):
        tag = f"{s.get('attack')}-{s.get('budget')}-{i}"
        title = (f"{s.get('attack')} on {s.get('dataset')}/{s.get('model')}/{s.get('defense')}, {s.get('budget')} "
                 f"({Path(str(s.get('run'))).name})")
        made += example_grid(s, out, f"examples-{tag}", title)
        made += target_matrix(s, out, f"targets-{tag}", title)
    return made
