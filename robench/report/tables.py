"""Stage 2 of ``robench report``: collected runs (:mod:`robench.report.collect`) -> pandas tables.

Nothing here reads files or writes them: each function takes the collected summaries and returns a
frame (the renderers, :mod:`robench.report.render`, turn frames into CSV, Markdown, HTML and rich).

* :func:`runs_frame`: one row per attack run (``report.csv``, ``report.md``);
* :func:`pivots`: ``--rows`` x ``--cols`` for each of ``--values`` (``pivot-<value>.csv``), with every
  setting that differs between the runs of a cell added to an axis (``--average``: averaged instead);
* :func:`recipes_frame` and :func:`train_frame`: training runs (``recipes.csv``, ``train_report.*``);
* :func:`checkpoints_frame`: the anytime curves of hard-label runs (``checkpoints.csv``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import pandas as pd

from robench.errors import RobenchError

#: report columns: (summary key, column name)
COLUMNS = [("dataset", "dataset"), ("model", "model"), ("defense", "defense"), ("attack", "attack"),
           ("budget", "budget"), ("n_samples", "samples"), ("clean_accuracy", "clean acc"),
           ("success_rate", "success rate"), ("robust_accuracy", "robust acc"), ("mean_queries", "mean queries"),
           ("median_queries", "median queries"), ("mean_l2", "mean L2"), ("median_l2", "median L2"),
           ("mean_linf", "mean Linf"), ("median_linf", "median Linf"), ("seconds", "seconds"),
           ("queries_per_second", "queries/s"), ("overrides", "overrides"), ("run", "run")]

#: the compact table printed to the terminal (CSV and Markdown hold every column)
PRINTED = ["victim", "attack", "budget", "overrides", "samples", "clean acc", "success rate", "robust acc",
           "median queries", "median L2", "median Linf", "seconds"]

#: keys kept from the summaries besides COLUMNS (for pivots, grouping and plots)
EXTRA_KEYS = ["norm", "eps", "max_queries", "targeted", "access", "shards"]

#: names accepted by --values (aliases -> summary key)
VALUE_ALIASES = {"success": "success_rate", "asr": "success_rate", "robust": "robust_accuracy",
                 "clean": "clean_accuracy", "queries": "median_queries", "l2": "median_l2", "linf": "median_linf"}
DEFAULT_VALUES = "success_rate,median_queries,median_l2,robust_accuracy"
PERCENT_KEYS = {"clean_accuracy", "success_rate", "robust_accuracy", "train_accuracy"}


# ---------------------------------------------------------------------------------------- tables
def varying_overrides(runs: List[Dict[str, Any]]) -> Dict[int, str]:
    """{id(run): its overrides minus those every run shares}: what tells the runs apart."""
    sets = [set(str(s.get("overrides", "")).split()) for s in runs]
    common = set.intersection(*sets) if sets else set()
    return {id(s): " ".join(o for o in str(s.get("overrides", "")).split() if o not in common) for s in runs}


def _overrides_dict(ov: str) -> Dict[str, str]:
    return dict(o.split("=", 1) for o in str(ov).split() if "=" in o)


def runs_frame(runs: List[Dict[str, Any]]) -> pd.DataFrame:
    """One row per run: COLUMNS (renamed), EXTRA_KEYS, budget-curve columns and override keys
    (``ov:<key>``) for pivots and grouping."""
    rows = []
    shown = varying_overrides(runs)
    for s in runs:
        row = {name: s.get(k, float("nan")) for k, name in COLUMNS}
        row["varying"] = shown[id(s)]
        for k in EXTRA_KEYS:
            row[k] = s.get(k, float("nan"))
        if row["access"] != row["access"] or row["access"] is None:
            row["access"] = access_of(s.get("attack"))
        for q, v in sorted((s.get("success_at_queries") or {}).items(), key=lambda kv: float(kv[0])):
            row[f"success@{q}"] = v
        for cp in s.get("checkpoints") or []:
            q = cp.get("queries")
            row[f"median dist@{q}"] = cp.get("median_distortion")
            if f"success@{q}" not in row and cp.get("success_rate") is not None:
                row[f"success@{q}"] = cp.get("success_rate")
        for k, v in _overrides_dict(s.get("overrides", "")).items():
            row[f"ov:{k}"] = v
        rows.append(row)
    df = pd.DataFrame(rows)
    curve = sorted([c for c in df.columns if c.startswith("success@")], key=lambda c: float(c.split("@")[1]))
    dist = sorted([c for c in df.columns if c.startswith("median dist@")], key=lambda c: float(c.split("@")[1]))
    ov = sorted(c for c in df.columns if c.startswith("ov:"))
    base = [name for _, name in COLUMNS]
    return df[base[:-2] + curve + dist + base[-2:] + EXTRA_KEYS + ["varying"] + ov]


def access_of(attack: Any) -> Any:
    """The registered attack's access level (gradient, scores, label), for summaries that lack it."""
    try:
        from robench.registry import ATTACKS

        return getattr(ATTACKS.get(str(attack)), "access", None)
    except Exception:
        return None


#: pivot dimension names -> column of runs_frame
DIMENSIONS = {"attack": "attack", "defense": "defense", "model": "model", "dataset": "dataset", "budget": "budget",
              "eps": "eps", "norm": "norm", "max_queries": "max_queries", "targeted": "targeted", "access": "access"}

#: override keys that spell a run field of DIMENSIONS (``budget.eps=0.1`` is the run's eps): never a second axis
OVERRIDE_FIELDS = {"attack": "attack", "defense": "defense", "model": "model", "dataset": "dataset", "budget": "budget",
                   "budget.eps": "eps", "budget.norm": "norm", "budget.max_queries": "max_queries",
                   "budget.targeted": "targeted"}

#: the run fields that may tell the runs of a cell apart, in the order they join an axis; the override keys
#: that differ come after them (sorted), and ``budget`` (a name spelling norm, eps and targeted) last
AXIS_ORDER = ("eps", "norm", "targeted", "max_queries", "attack", "defense", "model", "dataset")


def _dim_column(df: pd.DataFrame, dim: str) -> str:
    if dim in DIMENSIONS:
        return DIMENSIONS[dim]
    if f"ov:{dim}" in df.columns:
        return f"ov:{dim}"
    if dim in df.columns:
        return dim
    valid = sorted(set(DIMENSIONS) | {c[3:] for c in df.columns if c.startswith("ov:")})
    raise RobenchError(f"robench report: unknown row/column '{dim}'; valid here: {', '.join(valid)}")


def _value_column(df: pd.DataFrame, value: str) -> Tuple[str, str]:
    """(runs_frame column, summary-style key used for formatting and file names)."""
    key = VALUE_ALIASES.get(value, value)
    names = dict(COLUMNS)
    if key in names and names[key] in df.columns:
        return names[key], key
    if value in df.columns:
        return value, value
    valid = sorted({k for k, _ in COLUMNS[5:-2]} | set(VALUE_ALIASES)
                   | {c for c in df.columns if "@" in c})
    raise RobenchError(f"robench report: unknown value '{value}'; valid: {', '.join(valid)}")


def _axis_frame(df: pd.DataFrame, columns: List[str]) -> pd.DataFrame:
    """The axis columns as pivot keys: numbers sort as numbers (5 before 20), the rest as text ('-' for none)."""
    g = pd.DataFrame(index=df.index)
    for k in columns:
        num = pd.to_numeric(df[k], errors="coerce")
        g[k] = num if num.notna().all() else df[k].map(lambda v: "-" if v is None or v != v else str(v))
    return g


def _differs_within(df: pd.DataFrame, keys: List[str], dim: str) -> bool:
    """Whether ``dim`` takes two values (none counted as a value) among the runs of one cell of ``keys``."""
    col = _dim_column(df, dim)
    vals = df[col].map(lambda v: "-" if v is None or v != v else str(v))
    if not keys:
        return vals.nunique() > 1
    return bool((vals.groupby([_axis_frame(df, keys)[k] for k in keys]).nunique() > 1).any())


def separating_keys(df: pd.DataFrame, axes: List[str]) -> List[str]:
    """The settings that differ between runs sharing a cell of ``axes`` (dimension names), fewest first:
    each key, in AXIS_ORDER then the override keys then ``budget``, is taken when it still differs within
    a cell of the axes and the keys taken before it (so ``budget`` is not taken once ``eps`` tells its
    runs apart, and ``budget.eps`` is ``eps``)."""
    cols = [_dim_column(df, d) for d in axes]
    on_axis = set(cols)
    overrides = sorted(c[3:] for c in df.columns if c.startswith("ov:") and c[3:].lstrip("+~") not in OVERRIDE_FIELDS)
    taken: List[str] = []
    for dim in list(AXIS_ORDER) + overrides + ["budget"]:
        if _dim_column(df, dim) in on_axis:
            continue
        if _differs_within(df, [_dim_column(df, d) for d in axes + taken], dim):
            taken.append(dim)
    return taken


def pivots(df: pd.DataFrame, rows: List[str], cols: List[str], values: List[str],
           average: bool = False) -> Tuple[Dict[str, pd.DataFrame], List[str], List[str], List[str]]:
    """{value key: pivot table}, the notes on them, and the row and column dimensions used.

    A cell never averages runs of different settings unless ``average``: every setting that differs
    between the runs of a cell (:func:`separating_keys`) joins an axis, the first one the columns when
    they tell no runs apart (a single defense, say), the others the rows. With ``average`` the cells
    show their runs' mean and a note names those settings. Runs of equal settings (repeats) share a cell
    and show their mean, with a note."""
    extra = separating_keys(df, rows + cols)
    notes = []
    if extra and not average:
        flat_cols = not cols or all(df[_dim_column(df, c)].map(str).nunique() <= 1 for c in cols)
        to_cols = extra[:1] if flat_cols else []
        rows, cols = rows + [d for d in extra if d not in to_cols], cols + to_cols
        in_rows = [d for d in extra if d not in to_cols]
        where = " and ".join(([f"{', '.join(to_cols)} to the columns"] if to_cols else [])
                             + ([f"{', '.join(in_rows)} to the rows"] if in_rows else []))
        notes.append(f"added {where}: {'they differ' if len(extra) > 1 else 'it differs'} between runs that would "
                     f"otherwise share a cell (--average averages such runs instead)")
    rcols = [_dim_column(df, d) for d in rows]
    ccols = [_dim_column(df, d) for d in cols]
    keys = rcols + ccols
    g = df.copy()
    g[keys] = _axis_frame(df, keys)
    sizes = g.groupby(keys).size() if keys else pd.Series([len(g)])
    multi = int((sizes > 1).sum())
    if multi and extra and average:
        notes.append(f"{multi} cell(s) average runs of different settings: they differ in {', '.join(extra)} "
                     f"(without --average they go on an axis)")
    elif multi:
        notes.append(f"{multi} cell(s) hold repeated runs of the same settings: their mean is shown")
    out = {}
    for v in values:
        col, key = _value_column(df, v)
        vals = pd.to_numeric(g[col], errors="coerce")
        if ccols:  # every cell a run has, none it has not (dropna=False keeps a row whose value is none)
            p = g.assign(_v=vals).pivot_table(index=rcols, columns=ccols, values="_v", aggfunc="mean", dropna=False)
            p = p.loc[_observed(p.index, g, rcols), _observed(p.columns, g, ccols)]
        else:
            p = g.assign(_v=vals).groupby(rcols)["_v"].mean().to_frame(key)
        p.index.names = [_dim_name(n) for n in p.index.names]
        if ccols:
            p.columns.names = [_dim_name(n) for n in p.columns.names]
        out[key] = p
    return out, notes, rows, cols


def _observed(index: pd.Index, g: pd.DataFrame, columns: List[str]) -> List[bool]:
    """Which entries of a pivot's ``index`` (or columns) some run has (pivot_table's product of levels
    holds combinations no run has)."""
    seen = set(map(tuple, g[columns].itertuples(index=False, name=None)))
    return [(e if isinstance(e, tuple) else (e,)) in seen for e in index]


def _dim_name(column: Any) -> str:
    return str(column)[3:] if str(column).startswith("ov:") else str(column)


def flat_columns(p: pd.DataFrame) -> pd.DataFrame:
    """A pivot with its column levels joined by " / " (CSV, Markdown, the terminal)."""
    if isinstance(p.columns, pd.MultiIndex):
        p = p.copy()
        p.columns = [" / ".join(str(x) for x in c) for c in p.columns]
    return p


def recipes_frame(trains: List[Dict[str, Any]]) -> pd.DataFrame:
    cols = ["dataset", "model", "defense", "clean_accuracy", "robust_accuracy", "train_accuracy", "epochs",
            "seconds", "checkpoint", "run"]
    return pd.DataFrame([{k: s.get(k, float("nan")) for k in cols} for s in trains], columns=cols)


def public(df: pd.DataFrame) -> pd.DataFrame:
    """The runs table as written: override helper columns and empty extras dropped."""
    return df[[c for c in df.columns if not c.startswith("ov:") and c != "varying"]]


# ---------------------------------------------------------------- anytime curves (hard-label attacks)
CHECKPOINT_COLUMNS = ["victim", "attack", "budget", "overrides", "queries", "mean dist", "median dist", "success rate"]


def checkpoints_frame(attacks: List[Dict[str, Any]]) -> pd.DataFrame:
    """One row per (run, checkpoint) from the ``checkpoints`` list of each attack run (merged shards
    as one run)."""
    rows = []
    for s in attacks:
        for c in s.get("checkpoints") or []:
            med = c.get("median_distortion")
            rows.append({"victim": f"{s.get('dataset')}/{s.get('model')}/{s.get('defense')}",
                         "attack": s.get("attack"), "budget": s.get("budget"),
                         "overrides": s.get("overrides", ""), "queries": c.get("queries"),
                         "mean dist": c.get("mean_distortion"),
                         "median dist": float("inf") if med is None else med,
                         "success rate": c.get("success_rate"), "run": s.get("run")})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- training runs (issue 8 layout)
#: train-defense runs: (summary key, column name); the layout of [cheng2021 Tables 4.2, 5.6]
TRAIN_COLUMNS = [("dataset", "dataset"), ("model", "model"), ("model_params", "model params"), ("defense", "defense"),
                 ("init_from", "init from"), ("epochs", "epochs"), ("train_accuracy", "train acc"),
                 ("train_adv_accuracy", "train adv acc"), ("clean_accuracy", "clean acc"),
                 ("robust_accuracy", "robust acc"), ("robust_eval", "robust eval"), ("train_seconds", "train seconds"),
                 ("overrides", "overrides"), ("run", "run")]


def _eval_label(e) -> str:
    if not isinstance(e, dict):
        return "-"
    return f"{e.get('attack')}-{(e.get('params') or {}).get('steps', '?')} {e.get('norm')} {e.get('eps')} n={e.get('n_samples')}"


def train_frame(trains: List[Dict[str, Any]]) -> pd.DataFrame:
    """One row per train-defense run (TRAIN_COLUMNS), sorted by dataset, model, model params, defense."""
    rows = []
    for t in trains:
        s = dict(t)
        s["model_params"] = " ".join(f"{k}={v}" for k, v in sorted((s.get("model_params") or {}).items()))
        s["robust_eval"] = _eval_label(s.get("robust_eval"))
        s.setdefault("train_seconds", s.get("seconds"))
        rows.append(s)
    df = pd.DataFrame(rows)
    for k, _ in TRAIN_COLUMNS:
        if k not in df:
            df[k] = float("nan")
    df = df[[k for k, _ in TRAIN_COLUMNS]].rename(columns=dict(TRAIN_COLUMNS))
    return df.sort_values(["dataset", "model", "model params", "defense"], kind="stable").reset_index(drop=True)


# ---------------------------------------------------------------------------------------- all tables
@dataclass
class Tables:
    """Every table of one report (None / empty where no run carries the data) and the notes on them."""

    runs: Optional[pd.DataFrame]          # runs_frame of the attack runs
    pivots: Dict[str, pd.DataFrame]       # value key -> pivot
    rows: List[str]
    cols: List[str]
    recipes: Optional[pd.DataFrame]       # recipes_frame of the training runs
    train: Optional[pd.DataFrame]         # train_frame of the training runs
    checkpoints: pd.DataFrame             # checkpoints_frame of the attack runs
    notes: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)  # summaries collect skipped (the files say so; stderr did)


def build(attacks: List[Dict[str, Any]], trains: List[Dict[str, Any]], rows: List[str], cols: List[str],
          values: List[str], notes: List[str] = (), skipped: List[str] = (), average: bool = False) -> Tables:
    """All tables of the collected runs; ``notes`` (from collecting) come first in the result's notes.
    ``rows``/``cols``: the pivots' axes as asked; the result holds them with the settings
    :func:`pivots` added (none with ``average``)."""
    notes = list(notes)
    df = runs_frame(attacks) if attacks else None
    piv: Dict[str, pd.DataFrame] = {}
    if df is not None:
        piv, pnotes, rows, cols = pivots(df, rows, cols, values, average)
        notes += pnotes
    return Tables(runs=df, pivots=piv, rows=rows, cols=cols, recipes=recipes_frame(trains) if trains else None,
                  train=train_frame(trains) if trains else None, checkpoints=checkpoints_frame(attacks), notes=notes,
                  skipped=list(skipped))
