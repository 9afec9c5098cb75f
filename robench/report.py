"""``robench report DIR...``: runs (sweep folders included) -> tables, an HTML page and plots.

* Collects every ``summary.json`` below the given folders: attack runs (``command: attack``) and
  training runs (``command: train-defense``).
* Merges shards: attack runs whose configs are equal except ``dataset.shard`` and that together hold
  every shard ``0/n .. n-1/n`` become one run, whose numbers are recomputed from the concatenated
  records (so they equal the unsharded run's; README, "Sharding").
* Writes, into ``--out`` (default: the first DIR): ``report.csv`` and ``report.md`` (one row per run,
  every column, budget-curve columns ``success@<q>`` and ``median dist@<q>`` when runs recorded them),
  ``pivot-<value>.csv`` (``--rows`` x ``--cols`` for each of ``--values``), ``recipes.csv`` (training
  runs), ``report.html`` (all of it and the plots, self-contained) and, with ``--plots``, PNG and SVG
  figures (:mod:`robench.plots`). Prints the tables with rich unless ``--quiet``.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pandas as pd

from robench import results as R
from robench.errors import RobenchError
from robench.results import atomic_write_text, check_summary

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

#: override keys that never distinguish what a run computes
IGNORED_OVERRIDES = ("progress=", "quiet=", "resume=", "launcher=", "hydra.")


# ---------------------------------------------------------------------------------------- collect
def run_overrides(run_dir: Path) -> str:
    """The overrides that made this run, minus display-only ones (robench.results.run_overrides)."""
    from robench.results import run_overrides as overrides_of

    return overrides_of(run_dir)


def _read_json(f: Path) -> Dict[str, Any]:
    try:
        return json.loads(f.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RobenchError(f"robench report: {f} is not valid JSON ({e.__class__.__name__}); delete or re-run it") from None


def _run_config(run_dir: Path) -> Dict[str, Any]:
    import yaml

    f = run_dir / "config.yaml"
    try:
        return (yaml.safe_load(f.read_text()) or {}) if f.exists() else {}
    except yaml.YAMLError:
        return {}


def find_runs(dirs: List[str]) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """(attack summaries, train-defense summaries) below ``dirs``, each with ``run`` and ``overrides``."""
    attacks, trains, seen = [], [], set()
    for d in dirs:
        p = Path(d)
        if not p.exists():
            raise RobenchError(f"robench report: {p} does not exist")
        files = [p] if p.is_file() else sorted(p.rglob("summary.json"))
        for f in files:
            if f.resolve() in seen:
                continue
            seen.add(f.resolve())
            s = _read_json(f)
            check_summary(f, s)  # one line naming what a truncated or foreign summary lacks
            s["run"] = str(f.parent)
            s["overrides"] = run_overrides(f.parent)
            if s.get("command") == "attack":
                attacks.append(s)
            elif s.get("command") == "train-defense":
                trains.append(s)
    return attacks, trains


# ---------------------------------------------------------------------------------------- shards
def _shard_of(s: Dict[str, Any], cfg: Dict[str, Any]) -> Optional[Tuple[int, int]]:
    from robench.data import parse_shard

    shard = s.get("shard", (cfg.get("dataset") or {}).get("shard"))
    if shard in (None, "", "null"):
        return None
    try:
        i, n = parse_shard(shard)
    except RobenchError:
        return None
    return (i, n) if n > 1 else None


def merge_shards(runs: List[Dict[str, Any]]) -> Tuple[List[Dict[str, Any]], List[str]]:
    """Replace each complete set of shards (same config but ``dataset.shard``) by one merged run.

    Returns (runs, notes). Incomplete sets stay as separate rows, with a note."""
    out, groups, notes = [], {}, []
    for s in runs:
        cfg = _run_config(Path(s["run"]))
        sh = _shard_of(s, cfg)
        if sh is None:
            out.append(s)
            continue
        key_cfg = {k: v for k, v in cfg.items() if k not in R.VOLATILE_KEYS}
        key_cfg["dataset"] = {k: v for k, v in (key_cfg.get("dataset") or {}).items() if k != "shard"}
        key = json.dumps(key_cfg, sort_keys=True, default=str) + f"|n={sh[1]}"
        groups.setdefault(key, []).append((sh, s))
    for members in groups.values():
        n = members[0][0][1]
        have = sorted({sh[0] for sh, _ in members})
        if have != list(range(n)) or len(members) != n:
            notes.append(f"shards {','.join(map(str, have))} of {n} found (runs {', '.join(s['run'] for _, s in members)}): "
                         f"not merged; run the missing shards")
            out.extend(s for _, s in members)
            continue
        out.append(merged_summary([s for _, s in sorted(members, key=lambda m: m[0][0])]))
    return out, notes


def merged_summary(shards: List[Dict[str, Any]]) -> Dict[str, Any]:
    """One run's summary from its shards' records (recomputed, not averaged)."""
    records: List[Dict[str, Any]] = []
    for s in shards:
        f = Path(s["run"]) / "records.csv"
        if not f.exists():
            raise RobenchError(f"robench report: shard run {s['run']} has no records.csv; re-run that shard")
        records += R.read_records(f)
    records.sort(key=lambda r: r["index"])
    idx = [r["index"] for r in records]
    if len(set(idx)) != len(idx):
        raise RobenchError(f"robench report: shards {', '.join(s['run'] for s in shards)} overlap (a sample appears twice)")
    first = shards[0]
    totals = R.record_totals(records)
    meta = {k: first.get(k) for k in ("attack", "model", "dataset", "defense", "budget", "norm", "eps", "max_queries",
                                      "targeted", "target", "device", "seed", "robench_version")}
    meta.update(seconds=totals["seconds"], recheck_failed=totals["recheck_failed"],
                started=min(str(s.get("started")) for s in shards), finished=max(str(s.get("finished")) for s in shards))
    out = R.summarize(records, meta)
    if "checkpoints" not in out:
        cps = checkpoint_summary(records, first.get("eps"))
        if cps:
            out["checkpoints"] = cps
    for k in ("checkpoint", "access", "batch_size"):
        out[k] = first.get(k)
    out["shards"] = len(shards)
    out["shard_runs"] = [s["run"] for s in shards]
    common = Path(shards[0]["run"]).parent
    out["run"] = f"{common}/{{{','.join(Path(s['run']).name for s in shards)}}}"
    ov = [set(s["overrides"].split()) for s in shards]
    out["overrides"] = " ".join(o for o in shards[0]["overrides"].split() if all(o in x for x in ov)) + f" (merged {len(shards)} shards)"
    return out


def checkpoint_summary(records: List[Dict[str, Any]], eps: Any) -> List[Dict[str, Any]]:
    """Anytime curve from ``dist_at_<q>`` record columns (hard-label runs): per checkpoint, mean and
    median best distortion over attacked samples that have one, and the fraction of attacked samples
    whose best point is within eps (any adversarial point when eps is null). Used for merged shards
    when the summary itself does not carry ``checkpoints``."""
    df = pd.DataFrame(records)
    cols = sorted((c for c in df.columns if str(c).startswith("dist_at_")), key=lambda c: float(str(c)[8:]))
    if not cols:
        return []
    att = df[df["attacked"].astype(bool)]
    out = []
    for c in cols:
        d = pd.to_numeric(att[c], errors="coerce")
        ok = d.notna() & (d <= float(eps) + 1e-5 if eps is not None else True)
        fin = d.dropna()
        out.append({"queries": int(float(str(c)[8:])), "mean_distortion": float(fin.mean()) if len(fin) else float("nan"),
                    "median_distortion": float(fin.median()) if len(fin) else float("nan"),
                    "success_rate": float(ok.mean()) if len(att) else float("nan")})
    return out


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
            row["access"] = _access_of(s.get("attack"))
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


def _access_of(attack: Any) -> Any:
    try:
        from robench.registry import ATTACKS

        return getattr(ATTACKS.get(str(attack)), "access", None)
    except Exception:
        return None


#: pivot dimension names -> column of runs_frame
DIMENSIONS = {"attack": "attack", "defense": "defense", "model": "model", "dataset": "dataset", "budget": "budget",
              "eps": "eps", "norm": "norm", "max_queries": "max_queries", "targeted": "targeted", "access": "access"}


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


def pivots(df: pd.DataFrame, rows: List[str], cols: List[str], values: List[str]) -> Tuple[Dict[str, pd.DataFrame], List[str]]:
    """{value key: pivot table}; cells holding several runs show their mean (with a note)."""
    rcols = [_dim_column(df, d) for d in rows]
    ccols = [_dim_column(df, d) for d in cols]
    keys = rcols + ccols
    notes = []
    g = df.copy()
    for k in keys:  # numbers sort as numbers (5 before 20), the rest as text
        num = pd.to_numeric(g[k], errors="coerce")
        g[k] = num if num.notna().all() else g[k].fillna("-").astype(str)
    dup = g.groupby(keys).size()
    if (dup > 1).any():
        varying = [c[3:] for c in df.columns if c.startswith("ov:") and c not in keys and df[c].nunique(dropna=False) > 1]
        notes.append(f"{int((dup > 1).sum())} cell(s) average several runs"
                     + (f"; they differ in {', '.join(varying)}: add it to --rows or --cols" if varying else ""))
    out = {}
    for v in values:
        col, key = _value_column(df, v)
        vals = pd.to_numeric(g[col], errors="coerce")
        p = g.assign(_v=vals).pivot_table(index=rcols, columns=ccols or None, values="_v", aggfunc="mean", dropna=False) \
            if ccols else g.assign(_v=vals).groupby(rcols)["_v"].mean().to_frame(key)
        if isinstance(p.columns, pd.MultiIndex):
            p.columns = [" / ".join(str(x) for x in c if x != "_v") for c in p.columns]
        p.index.names = [n[3:] if str(n).startswith("ov:") else n for n in p.index.names]
        out[key] = p
    return out, notes


def recipes_frame(trains: List[Dict[str, Any]]) -> pd.DataFrame:
    cols = ["dataset", "model", "defense", "clean_accuracy", "robust_accuracy", "train_accuracy", "epochs",
            "seconds", "checkpoint", "run"]
    return pd.DataFrame([{k: s.get(k, float("nan")) for k in cols} for s in trains], columns=cols)


def _fmt_cell(v: Any, key: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        pct = key in PERCENT_KEYS or key.startswith("success") or key in ("clean acc", "success rate", "robust acc")
        return f"{v:.2%}" if pct else f"{v:.4g}"
    return str(v)


def to_markdown(df: pd.DataFrame, index: bool = False, key: str = "") -> str:
    if index:
        df = df.reset_index()
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt_cell(v, key or c) for v, c in zip(row, cols)) + " |"
              for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _public(df: pd.DataFrame) -> pd.DataFrame:
    """The runs table as written: override helper columns and empty extras dropped."""
    return df[[c for c in df.columns if not c.startswith("ov:") and c != "varying"]]


# ---------------------------------------------------------------------------------------- HTML
_CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0;
font-size:13px}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f0f0f0}
td:first-child,th:first-child{text-align:left}h2{margin-top:1.6em}.note{color:#a60}img{max-width:720px;display:block;
margin:1em 0}code{background:#f4f4f4;padding:1px 4px}"""


def _html_table(df: pd.DataFrame, key: str = "", index: bool = False) -> str:
    import html

    d = df.reset_index() if index else df
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in d.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt_cell(v, key or str(c)))}</td>" for v, c in zip(r, d.columns))
                   + "</tr>" for r in d.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def to_html(title: str, sections: List[Tuple[str, str]], images: List[Path], notes: List[str]) -> str:
    """A self-contained page: inline CSS, tables, PNG plots embedded as base64."""
    import base64
    import html

    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    parts += [f"<p class='note'>{html.escape(n)}</p>" for n in notes]
    for heading, body in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>{body}")
    if images:
        parts.append("<h2>plots</h2>")
        for p in images:
            b64 = base64.b64encode(p.read_bytes()).decode()
            parts.append(f"<img alt='{html.escape(p.stem)}' src='data:image/png;base64,{b64}'>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------- main
def main(argv: List[str]) -> None:
    ap = argparse.ArgumentParser(prog="robench report", description=__doc__.split("\n")[0])
    ap.add_argument("dirs", nargs="+", help="run folders, sweep folders or summary.json files")
    ap.add_argument("--out", help="folder for the report files (default: the first DIR)")
    ap.add_argument("--rows", default="attack", help="pivot rows, comma-separated (attack, defense, model, dataset, "
                    "budget, eps, norm, max_queries or any override key, e.g. attack.params.steps); default attack")
    ap.add_argument("--cols", default="defense", help="pivot columns, comma-separated; '' for none; default defense")
    ap.add_argument("--values", default=DEFAULT_VALUES, help=f"pivot values, comma-separated; default {DEFAULT_VALUES}")
    ap.add_argument("--plots", action="store_true", help="write PNG and SVG plots beside the tables (needs matplotlib)")
    ap.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")
    args = ap.parse_args(argv)
    split = lambda s: [x.strip() for x in s.split(",") if x.strip()]

    attacks, trains = find_runs(args.dirs)
    if not attacks and not trains:
        raise RobenchError(f"robench report: no runs (summary.json) under {' '.join(args.dirs)}")
    attacks, notes = merge_shards(attacks)
    out = Path(args.out) if args.out else Path(args.dirs[0])
    if out.is_file():
        out = out.parent
    out.mkdir(parents=True, exist_ok=True)
    if args.plots:
        from robench import plots  # fails early, in one line, without matplotlib

        plots.require()

    written, sections = [], []
    df = runs_frame(attacks) if attacks else None
    piv: Dict[str, pd.DataFrame] = {}
    rows_, cols_ = split(args.rows), split(args.cols)
    if df is not None:
        piv, pnotes = pivots(df, rows_, cols_, split(args.values))
        notes += pnotes
        atomic_write_text(out / "report.csv", _public(df).to_csv(index=False))
        md = [to_markdown(_public(df))]
        for key, p in piv.items():
            f = out / f"pivot-{key.replace('@', '_at_').replace(' ', '_')}.csv"
            atomic_write_text(f, p.to_csv())
            written.append(f)
            heading = f"{key}: {' x '.join(rows_)}" + (f" by {' x '.join(cols_)}" if cols_ else "")
            md += [f"\n## {heading}\n", to_markdown(p, index=True, key=key)]
            sections.append((heading, _html_table(p, key, index=True)))
        sections.append(("all runs", _html_table(_public(df))))
        written = [out / "report.csv", out / "report.md"] + written
    rf = recipes_frame(trains) if trains else None
    if rf is not None:
        atomic_write_text(out / "recipes.csv", rf.to_csv(index=False))
        written.append(out / "recipes.csv")
        sections.insert(0, ("training recipes: clean vs robust accuracy", _html_table(rf)))
    if df is not None:
        md_text = "".join(md)
        if rf is not None:
            md_text += "\n## training recipes\n\n" + to_markdown(rf)
        atomic_write_text(out / "report.md", md_text + "".join(f"\n> {n}\n" for n in notes))
    elif rf is not None:
        atomic_write_text(out / "report.md", "## training recipes\n\n" + to_markdown(rf))
        written.append(out / "report.md")

    images: List[Path] = []
    if args.plots:
        from robench import plots

        made, pn = plots.make_all(attacks, trains, df, out)
        notes += pn
        images = [p for p in made if p.suffix == ".png"]
        written += made
    title = f"robench report: {len(attacks)} attack run(s), {len(trains)} training run(s)"
    atomic_write_text(out / "report.html", to_html(title, sections, images, notes))
    written.append(out / "report.html")

    cp = collect_checkpoints(args.dirs)
    if len(cp):
        atomic_write_text(out / "checkpoints.csv", cp.to_csv(index=False))
        written.append(out / "checkpoints.csv")
    tdf = collect_train(args.dirs) if trains else None
    if tdf is not None and len(tdf):  # clean vs robust per recipe, the thesis's Tables 4.2 / 5.6 layout
        atomic_write_text(out / "train_report.csv", tdf.to_csv(index=False))
        atomic_write_text(out / "train_report.md", to_markdown(tdf))
        written += [out / "train_report.csv", out / "train_report.md"]
    if args.quiet:
        return
    from rich.console import Console

    console = Console(width=max(200, Console().width))
    if df is not None:
        print_table(df, console)
        for key, p in piv.items():
            print_pivot(p, key, f"{key} ({' x '.join(rows_)}{' by ' + ' x '.join(cols_) if cols_ else ''})", console)
    if rf is not None:
        print_pivot(rf.set_index(["dataset", "model", "defense"]).drop(columns=["checkpoint", "run"]), "",
                    "training recipes", console)
    for n in notes:
        console.print(f"[yellow]note:[/yellow] {n}")
    if len(cp):
        print_checkpoints(cp)
    if tdf is not None and len(tdf):
        print_train_table(tdf)
    console.print("wrote " + ", ".join(str(p) for p in written))


# ---------------------------------------------------------------- anytime curves (hard-label attacks)
CHECKPOINT_COLUMNS = ["victim", "attack", "budget", "overrides", "queries", "mean dist", "median dist", "success rate"]


def collect_checkpoints(dirs: List[str]) -> pd.DataFrame:
    """One row per (run, checkpoint) from the ``checkpoints`` list of each run's summary.json."""
    rows = []
    for d in dirs:
        p = Path(d)
        for f in ([p] if p.is_file() else sorted(p.rglob("summary.json"))):
            s = json.loads(f.read_text())
            if s.get("command") != "attack":
                continue
            for c in s.get("checkpoints") or []:
                med = c.get("median_distortion")
                rows.append({"victim": f"{s.get('dataset')}/{s.get('model')}/{s.get('defense')}",
                             "attack": s.get("attack"), "budget": s.get("budget"),
                             "overrides": run_overrides(f.parent), "queries": c["queries"],
                             "mean dist": c.get("mean_distortion"),
                             "median dist": float("inf") if med is None else med,
                             "success rate": c.get("success_rate"), "run": str(f.parent)})
    return pd.DataFrame(rows)


def print_checkpoints(cp: pd.DataFrame) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="anytime curves (distortion in the budget's norm; success: <= eps)", show_header=True,
              header_style="bold")
    for c in CHECKPOINT_COLUMNS:
        t.add_column(c, justify="left" if c in ("victim", "attack", "budget", "overrides") else "right", overflow="fold")
    for _, r in cp.iterrows():
        t.add_row(*(f"{r[c]:.2%}" if c == "success rate" and pd.notna(r[c]) else
                    (f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c])) for c in CHECKPOINT_COLUMNS))
    Console(width=max(180, Console().width)).print(t)


def print_table(df: pd.DataFrame, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    df = df.assign(victim=df["dataset"].astype(str) + "/" + df["model"].astype(str) + "/" + df["defense"].astype(str),
                   overrides=df["varying"])  # the overrides that tell runs apart (all of them in report.csv)
    t = Table(show_header=True, header_style="bold", title="runs", title_justify="left")
    for c in PRINTED:
        t.add_column(c, justify="right" if pd.api.types.is_numeric_dtype(df[c]) else "left", overflow="fold")
    for _, row in df[PRINTED].iterrows():
        t.add_row(*(_fmt_cell(v, c) for c, v in row.items()))
    (console or Console(width=max(180, Console().width))).print(t)


def print_pivot(p: pd.DataFrame, key: str, title: str, console) -> None:
    from rich.table import Table

    d = p.reset_index()
    t = Table(show_header=True, header_style="bold", title=title, title_justify="left")
    for i, c in enumerate(d.columns):
        t.add_column(str(c), justify="left" if i < len(p.index.names) else "right")
    for row in d.itertuples(index=False):
        t.add_row(*(_fmt_cell(v, key or str(c)) for v, c in zip(row, d.columns)))
    console.print(t)


# ---------------------------------------------------------------- training runs (issue 8 layout)
#: train-defense runs: (summary key, column name); the layout of the thesis's Tables 4.2 / 5.6
TRAIN_COLUMNS = [("dataset", "dataset"), ("model", "model"), ("model_params", "model params"), ("defense", "defense"),
                 ("init_from", "init from"), ("epochs", "epochs"), ("train_accuracy", "train acc"),
                 ("train_adv_accuracy", "train adv acc"), ("clean_accuracy", "clean acc"),
                 ("robust_accuracy", "robust acc"), ("robust_eval", "robust eval"), ("train_seconds", "train seconds"),
                 ("overrides", "overrides"), ("run", "run")]


def _eval_label(e) -> str:
    if not isinstance(e, dict):
        return "-"
    return f"{e.get('attack')}-{(e.get('params') or {}).get('steps', '?')} {e.get('norm')} {e.get('eps')} n={e.get('n_samples')}"


def collect_train(dirs: List[str]) -> pd.DataFrame:
    """One row per train-defense run below ``dirs`` (empty frame when there is none)."""
    rows = []
    for d in dirs:
        p = Path(d)
        for f in ([p] if p.is_file() else sorted(p.rglob("summary.json"))):
            try:
                s = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if s.get("command") != "train-defense":
                continue
            s["run"], s["overrides"] = str(f.parent), run_overrides(f.parent)
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


TRAIN_PRINTED = ["model", "model params", "defense", "init from", "train acc", "clean acc", "robust acc", "robust eval",
                 "train seconds", "overrides"]


def print_train_table(df: pd.DataFrame) -> None:
    """Clean vs robust accuracy per (model, recipe): the thesis's Tables 4.2 / 5.6, Saha's Table 5.1."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title="train-defense runs", title_justify="left", show_header=True, header_style="bold")
    for c in TRAIN_PRINTED:
        t.add_column(c, justify="left" if df[c].dtype == object else "right", overflow="fold")
    pct = {"train acc", "clean acc", "robust acc"}
    for _, row in df[TRAIN_PRINTED].iterrows():
        t.add_row(*("-" if v is None or (isinstance(v, float) and pd.isna(v)) else
                    (f"{v:.2%}" if c in pct else f"{v:.4g}") if isinstance(v, float) else str(v) for c, v in row.items()))
    Console(width=max(180, Console().width)).print(t)
