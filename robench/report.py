"""``robench report DIR...``: aggregate attack runs (multirun sweep folders included) into one table,
and ``robench train-defense`` runs into a second one (clean vs robust accuracy per recipe)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import List

import pandas as pd

from robench.errors import RobenchError
from robench.results import atomic_write_text

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


def run_overrides(run_dir: Path) -> str:
    """The Hydra overrides that made this run (from .hydra/overrides.yaml), minus display-only ones."""
    f = run_dir / ".hydra" / "overrides.yaml"
    if not f.exists():
        return ""
    import yaml

    try:
        ov = yaml.safe_load(f.read_text()) or []
    except yaml.YAMLError:
        return ""
    return " ".join(o for o in ov if not str(o).startswith(("progress=", "hydra.")))


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


def collect(dirs: List[str], allow_empty: bool = False) -> pd.DataFrame:
    rows = []
    for d in dirs:
        p = Path(d)
        if not p.exists():
            raise RobenchError(f"robench report: {p} does not exist")
        files = [p] if p.is_file() else sorted(p.rglob("summary.json"))
        for f in files:
            try:
                s = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise RobenchError(f"robench report: {f} is not valid JSON ({e.__class__.__name__}); delete or re-run it") from None
            if s.get("command") != "attack":
                continue
            s["run"] = str(f.parent)
            s["overrides"] = run_overrides(f.parent)
            rows.append(s)
    if not rows and not allow_empty:
        raise RobenchError(f"robench report: no attack runs (summary.json) under {' '.join(dirs)}")
    df = pd.DataFrame(rows)
    for k, _ in COLUMNS:
        if k not in df:
            df[k] = float("nan")
    return df[[k for k, _ in COLUMNS]].rename(columns=dict(COLUMNS))


def to_markdown(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    fmt = lambda v: "-" if isinstance(v, float) and pd.isna(v) else (f"{v:.4g}" if isinstance(v, float) else str(v))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def main(argv: List[str]) -> None:
    ap = argparse.ArgumentParser(prog="robench report", description=__doc__)
    ap.add_argument("dirs", nargs="+", help="run folders, sweep folders or summary.json files")
    ap.add_argument("--out", help="folder for report.csv and report.md (default: the first DIR)")
    args = ap.parse_args(argv)
    df = collect(args.dirs, allow_empty=True)
    tdf = collect_train(args.dirs)
    if df.empty and tdf.empty:
        raise RobenchError(f"robench report: no attack or train-defense runs (summary.json) under {' '.join(args.dirs)}")
    out = Path(args.out) if args.out else Path(args.dirs[0])
    if out.is_file():
        out = out.parent
    if not df.empty:
        atomic_write_text(out / "report.csv", df.to_csv(index=False))
        atomic_write_text(out / "report.md", to_markdown(df))
        print_table(df)
        print(f"wrote {out / 'report.csv'} and {out / 'report.md'}")
    if not tdf.empty:
        atomic_write_text(out / "train_report.csv", tdf.to_csv(index=False))
        atomic_write_text(out / "train_report.md", to_markdown(tdf))
        print_train_table(tdf)
        print(f"wrote {out / 'train_report.csv'} and {out / 'train_report.md'}")


def print_table(df: pd.DataFrame) -> None:
    from rich.console import Console
    from rich.table import Table

    df = df.assign(victim=df["dataset"] + "/" + df["model"] + "/" + df["defense"])
    t = Table(show_header=True, header_style="bold")
    for c in PRINTED:
        t.add_column(c, justify="left" if df[c].dtype == object else "right", overflow="fold")
    pct = {"clean acc", "success rate", "robust acc"}
    for _, row in df[PRINTED].iterrows():
        t.add_row(*("-" if isinstance(v, float) and pd.isna(v) else (f"{v:.2%}" if c in pct else f"{v:.4g}")
                    if isinstance(v, float) else str(v) for c, v in row.items()))
    Console(width=max(180, Console().width)).print(t)


#: the compact train table printed to the terminal
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
