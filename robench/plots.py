"""Plots for ``robench report --plots`` (matplotlib, an optional extra: ``pip install 'robench[plots]'``).

Each figure is written as PNG and SVG beside the tables, and only when some runs carry its data:

* ``success_vs_queries``: attack success rate within q queries, for score-based runs (``access:
  scores``), from each run's records (every success's query count), log-scaled queries;
* ``distortion_vs_queries``: median distortion of the best point so far at the query checkpoints, for
  hard-label runs (``access: label``) whose summary has ``checkpoints``;
* ``robust_acc_vs_eps``: robust accuracy against eps for white-box runs (``access: gradient``), one
  line per setting that was run at two or more eps values;
* ``clean_vs_robust``: clean against robust accuracy of trained victims (``train-defense`` summaries
  with ``robust_accuracy``), one point per recipe.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Tuple

import pandas as pd

from robench import results as R
from robench.errors import RobenchError


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


_SKIP_KEYS = ("budget=", "budget.eps=", "dataset.shard=")


def label(s: Dict[str, Any], shown: Tuple[str, ...] = ()) -> str:
    """attack (defense, budget) plus the overrides that distinguish the run from the others."""
    import re

    text = re.sub(r"\(merged \d+ shards\)", "", str(s.get("varying", s.get("overrides", ""))))
    ov = [o for o in text.split() if not o.startswith(shown) and not o.startswith(("attack=", "defense="))]
    if s.get("shards"):
        ov.append(f"[{s['shards']} shards merged]")
    base = f"{s.get('attack')} vs {s.get('defense')}"
    if "budget" not in shown:
        base += f", {s.get('budget')}"
    return base + (" " + " ".join(ov) if ov else "")


def _records(s: Dict[str, Any]) -> pd.DataFrame | None:
    runs = s.get("shard_runs") or [s.get("run")]
    frames = []
    for r in runs:
        f = Path(str(r)) / "records.csv"
        if not f.exists():
            return None
        frames.append(pd.DataFrame(R.read_records(f)))
    return pd.concat(frames, ignore_index=True)


def success_curve(s: Dict[str, Any]) -> Tuple[List[float], List[float]] | None:
    """(queries, success rate within that many queries) for one run: exact from records, else the
    summary's ``success_at_queries`` points."""
    df = _records(s)
    mq = float(s.get("max_queries") or 1)
    if df is not None and len(df):
        att = df[df["attacked"].astype(bool)]
        if not len(att):
            return None
        q = sorted(att.loc[att["success"].astype(bool), "queries_at_success"].astype(float))
        xs, ys = [1.0], [sum(v <= 1 for v in q) / len(att)]
        for i, v in enumerate(q):
            xs.append(max(v, 1.0))
            ys.append((i + 1) / len(att))
        xs.append(mq)
        ys.append(len(q) / len(att))
        return xs, ys
    pts = sorted((float(k), float(v)) for k, v in (s.get("success_at_queries") or {}).items())
    return ([p[0] for p in pts], [p[1] for p in pts]) if pts else None


def make_all(attacks: List[Dict[str, Any]], trains: List[Dict[str, Any]], df, out: Path) -> Tuple[List[Path], List[str]]:
    plt = require()
    from robench.report import varying_overrides

    shown = varying_overrides(attacks)
    attacks = [dict(s, varying=shown[id(s)]) for s in attacks]
    made: List[Path] = []
    notes: List[str] = []
    access = {id(s): (s.get("access") or _access_of(s.get("attack"))) for s in attacks}

    # success rate vs queries: score-based runs
    score = [s for s in attacks if access[id(s)] == "scores"]
    if score:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for s in score:
            c = success_curve(s)
            if c:
                ax.step(c[0], c[1], where="post", label=label(s))
        ax.set_xscale("log")
        ax.set_xlabel("queries per sample")
        ax.set_ylabel("attack success rate")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title("success rate vs queries (score-based attacks)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        made += _save(fig, out, "success_vs_queries")
    else:
        notes.append("no score-based runs: success_vs_queries not drawn")

    # median distortion vs queries: hard-label runs with checkpoints
    hard = [s for s in attacks if access[id(s)] == "label" and s.get("checkpoints")]
    if hard:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for s in hard:
            cps = sorted(s["checkpoints"], key=lambda c: c["queries"])
            ax.plot([c["queries"] for c in cps], [c["median_distortion"] for c in cps], marker="o", label=label(s))
        ax.set_xscale("log")
        ax.set_xlabel("queries per sample")
        ax.set_ylabel(f"median {hard[0].get('norm') or ''} distortion of the best point so far")
        ax.set_title("median distortion vs queries (hard-label attacks)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        made += _save(fig, out, "distortion_vs_queries")
    else:
        notes.append("no hard-label runs with checkpoints: distortion_vs_queries not drawn")

    # robust accuracy vs eps: white-box runs at 2+ eps values of the same setting
    groups: Dict[str, List[Dict[str, Any]]] = {}
    for s in attacks:
        if access[id(s)] != "gradient" or s.get("eps") is None:
            continue
        key = f"{s.get('dataset')}/{s.get('model')} {s.get('norm')} | " + label(s, shown=("budget",) + _SKIP_KEYS)
        groups.setdefault(key, []).append(s)
    groups = {k: v for k, v in groups.items() if len({float(s["eps"]) for s in v}) >= 2}
    if groups:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for k, runs in sorted(groups.items()):
            pts = pd.DataFrame({"eps": [float(s["eps"]) for s in runs],
                                "ra": [float(s.get("robust_accuracy", float("nan"))) for s in runs]})
            pts = pts.groupby("eps")["ra"].mean().sort_index()
            ax.plot(pts.index, pts.values, marker="o", label=k.split(" | ", 1)[1] + f" ({k.split(' | ')[0]})")
        ax.set_xlabel("eps")
        ax.set_ylabel("robust accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title("robust accuracy vs eps (white-box attacks)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        made += _save(fig, out, "robust_acc_vs_eps")
    else:
        notes.append("no white-box setting run at two or more eps: robust_acc_vs_eps not drawn")

    # clean vs robust accuracy: training recipes
    pts = [s for s in trains if s.get("robust_accuracy") is not None and s.get("clean_accuracy") is not None]
    if pts:
        fig, ax = plt.subplots(figsize=(6, 5))
        for s in pts:
            ax.scatter(s["clean_accuracy"], s["robust_accuracy"], s=40)
            ax.annotate(f"{s.get('defense')} ({s.get('model')})", (s["clean_accuracy"], s["robust_accuracy"]),
                        textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.set_xlabel("clean accuracy")
        ax.set_ylabel("robust accuracy (PGD at the eval eps)")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.plot([0, 1], [0, 1], ls=":", c="gray", lw=0.8)
        ax.set_title("training recipes: clean vs robust accuracy")
        ax.grid(alpha=0.3)
        made += _save(fig, out, "clean_vs_robust")
    else:
        notes.append("no training runs with robust_accuracy: clean_vs_robust not drawn")
    return made, notes


def _access_of(attack: Any) -> Any:
    from robench.report import _access_of as a

    return a(attack)
