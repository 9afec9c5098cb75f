"""The data of ``robench report --plots``: collected runs -> :class:`Figure` (series of points, short
labels, axis names), drawn by :mod:`robench.report.plots` without looking at a run again.

Labels name only what differs between the runs of one figure (:func:`short_labels`): the attack,
defense, budget, model or dataset when they differ, and each override key whose value differs,
shortened to its last dotted part (``attack.params.p_init=0.05`` -> ``p_init=0.05``) or to as many
parts as tell two keys apart. What all runs share goes into the figure's subtitle instead.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pandas as pd

from robench.report.collect import read_run_records
from robench.report.tables import access_of

#: run fields a label may name, in label order (the rest of a label: override keys, in first-seen order)
LABEL_FIELDS = ("attack", "defense", "budget", "model", "dataset")
#: override keys never named in a label as such: the fields above name them (``dataset.shard``
#: becomes ``shard``, and only on a shard that was not merged)
_NOT_IN_LABELS = LABEL_FIELDS + ("dataset.shard",)
#: overrides the ``budget`` field spells already (``<norm>_<eps>[_targeted]``, robench.evaluation.runner)
_IN_BUDGET = ("budget.norm", "budget.eps", "budget.targeted")


#: an attack's access level -> the family name its series are styled by (robench.report.plots.FAMILY_STYLES)
FAMILIES = {"gradient": "white-box", "scores": "score-based", "label": "hard-label"}


@dataclass
class Series:
    label: str
    x: List[float]
    y: List[float]
    family: str = ""                       # a FAMILIES value: drawn in that family's line style


@dataclass
class Figure:
    """One plot: ``kind`` is ``step`` (a staircase), ``line`` (points joined) or ``scatter`` (points
    annotated with their labels)."""

    name: str
    title: str
    xlabel: str
    ylabel: str
    kind: str
    series: List[Series]
    subtitle: str = ""                     # what the plotted runs share
    xlog: bool = False
    xlim: Optional[Tuple[float, float]] = None
    ylim: Optional[Tuple[float, float]] = None
    diagonal: bool = False                 # the y = x line
    legend: bool = True


def run_fields(s: Dict[str, Any], drop: Sequence[str] = ()) -> Dict[str, str]:
    """What identifies a run: LABEL_FIELDS and its overrides (``key: value``), minus ``drop``."""
    f = {k: str(s.get(k)) for k in LABEL_FIELDS if k not in drop}
    for o in re.sub(r"\(merged \d+ shards\)", "", str(s.get("overrides", ""))).split():
        if "=" in o:
            k, v = o.split("=", 1)
            k = k.lstrip("+~")
            if k == "dataset.shard":  # a shard not merged (a merged run is the whole run: no shard)
                f["shard"] = v
            elif k not in _NOT_IN_LABELS and k not in drop and not (k in _IN_BUDGET and "budget" in f):
                f[k] = v
    return f


def short_keys(keys: Sequence[str]) -> Dict[str, str]:
    """Each dotted key -> its shortest dotted suffix that no other key of ``keys`` ends with."""
    out = {}
    for k in keys:
        parts = k.split(".")
        for n in range(1, len(parts) + 1):
            suffix = ".".join(parts[-n:])
            if not any(o != k and (o == suffix or o.endswith("." + suffix)) for o in keys):
                break
        out[k] = suffix
    return out


def short_labels(fields: List[Dict[str, str]], fallback: Sequence[str], names: Sequence[str]) -> Tuple[List[str], str]:
    """(one label per run: the values that differ between the runs, ``key=value`` but the attack's
    bare name; what the runs share of LABEL_FIELDS and ``norm``, as "dataset/model, defense none, ...").
    ``fallback``: the label of a run with nothing to tell it apart; ``names``: appended, in
    parentheses, to labels that would otherwise be equal."""
    keys: Dict[str, None] = {}
    for f in fields:
        keys.update(dict.fromkeys(f))
    varying = [k for k in keys if len({f.get(k) for f in fields}) > 1]
    short = short_keys(varying)
    labels = [", ".join(f[k] if k == "attack" else f"{short[k]}={f[k]}" for k in varying if k in f) or str(fb)
              for f, fb in zip(fields, fallback)]
    counts = pd.Series(labels).value_counts() if labels else {}
    labels = [f"{lab} ({n})" if counts[lab] > 1 else lab for lab, n in zip(labels, names)]
    same = {k: fields[0][k] for k in keys if k not in varying and (k in LABEL_FIELDS or k == "norm")} if fields else {}
    shared = [f"{same.pop('dataset')}/{same.pop('model')}"] if "dataset" in same and "model" in same else []
    shared += [f"{k} {same[k]}" for k in ("dataset", "model", "attack", "defense", "budget", "norm") if k in same]
    return labels, ", ".join(shared)


def natural_key(text: str) -> List[Any]:
    """Sort key under which "steps=5" comes before "steps=20"."""
    return [(0, float(p), "") if re.fullmatch(r"\d+(\.\d*)?", p) else (1, 0.0, p)
            for p in re.split(r"(\d+(?:\.\d*)?)", text) if p]


def _labels(runs: List[Dict[str, Any]], drop: Sequence[str] = (), extra=lambda s: {}) -> Tuple[List[str], str]:
    fields = [{**run_fields(s, drop), **extra(s)} for s in runs]
    return short_labels(fields, [str(s.get("attack")) for s in runs], [Path(str(s.get("run"))).name for s in runs])


def success_curve(s: Dict[str, Any]) -> Optional[Tuple[List[float], List[float]]]:
    """(queries, success rate within that many queries) for one run: exact from records, else the
    summary's ``success_at_queries`` points."""
    df = read_run_records(s)
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


def _float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def figure_data(attacks: List[Dict[str, Any]], trains: List[Dict[str, Any]]) -> Tuple[List[Figure], List[str]]:
    """Every figure some runs carry data for, and a note for each one that none does."""
    figs: List[Figure] = []
    notes: List[str] = []
    access = {id(s): (s.get("access") or access_of(s.get("attack"))) for s in attacks}

    curves = [(s, success_curve(s)) for s in attacks if access[id(s)] == "scores"]
    curves = [(s, c) for s, c in curves if c]
    if curves:
        labels, shared = _labels([s for s, _ in curves])
        figs.append(Figure("success_vs_queries", "success rate vs queries (score-based attacks)", "queries per sample",
                           "attack success rate", "step", [Series(lab, c[0], c[1]) for lab, (_, c) in zip(labels, curves)],
                           subtitle=shared, xlog=True, ylim=(-0.02, 1.02)))
    else:
        notes.append("no score-based runs: success_vs_queries not drawn")

    hard = [s for s in attacks if access[id(s)] == "label" and s.get("checkpoints")]
    if hard:
        labels, shared = _labels(hard)
        series = []
        for lab, s in zip(labels, hard):
            cps = sorted(s["checkpoints"], key=lambda c: c["queries"])
            series.append(Series(lab, [c["queries"] for c in cps], [_float(c.get("median_distortion")) for c in cps]))
        figs.append(Figure("distortion_vs_queries", "median distortion vs queries (hard-label attacks)",
                           "queries per sample", f"median {hard[0].get('norm') or ''} distortion of the best point so far",
                           "line", series, subtitle=shared, xlog=True))
    else:
        notes.append("no hard-label runs with checkpoints: distortion_vs_queries not drawn")

    # robust accuracy vs eps: every run with an eps (white-box, score-based and hard-label alike), one
    # series per setting (all but the budget), drawn when the runs span two or more eps values
    eps_drop = ("budget", "budget.eps", "eps")
    norm = lambda s: {"norm": str(s.get("norm"))}
    groups: Dict[str, List[Dict[str, Any]]] = {}
    for s in attacks:
        if _float(s.get("eps")) == _float(s.get("eps")):  # minimal-distortion runs (no eps) have no such point
            key = repr(sorted({**run_fields(s, eps_drop), **norm(s)}.items()))
            groups.setdefault(key, []).append(s)
    if len({float(s["eps"]) for v in groups.values() for s in v}) >= 2:
        labels, shared = _labels([v[0] for v in groups.values()], eps_drop, norm)
        series = []
        for lab, runs in sorted(zip(labels, groups.values()), key=lambda lr: natural_key(lr[0])):
            pts = pd.DataFrame({"eps": [float(s["eps"]) for s in runs],
                                "ra": [_float(s.get("robust_accuracy")) for s in runs]}).groupby("eps")["ra"].mean().sort_index()
            series.append(Series(lab, list(pts.index), list(pts.values), FAMILIES.get(str(access[id(runs[0])]), "")))
        fams = [f for f in FAMILIES.values() if any(s.family == f for s in series)]
        figs.append(Figure("robust_acc_vs_eps", "robust accuracy vs eps (" + ", ".join(fams) + ")", "eps",
                           "robust accuracy", "line", series, subtitle=shared, ylim=(-0.02, 1.02)))
    else:
        notes.append("no runs at two or more eps: robust_acc_vs_eps not drawn")

    pts = [s for s in trains if s.get("robust_accuracy") is not None and s.get("clean_accuracy") is not None]
    if pts:
        series = [Series(f"{s.get('defense')} ({s.get('model')})", [s["clean_accuracy"]], [s["robust_accuracy"]]) for s in pts]
        figs.append(Figure("clean_vs_robust", "training recipes: clean vs robust accuracy", "clean accuracy",
                           "robust accuracy (PGD at the eval eps)", "scatter", series, xlim=(-0.02, 1.02),
                           ylim=(-0.02, 1.02), diagonal=True, legend=False))
    else:
        notes.append("no training runs with robust_accuracy: clean_vs_robust not drawn")
    return figs, notes
