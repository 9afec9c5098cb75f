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
  with ``robust_accuracy``), one point per recipe.

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
    return made, notes
