"""``robench report DIR...``: aggregate attack runs (multirun sweep folders included) into one table."""
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


def collect(dirs: List[str]) -> pd.DataFrame:
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
    if not rows:
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
    df = collect(args.dirs)
    out = Path(args.out) if args.out else Path(args.dirs[0])
    if out.is_file():
        out = out.parent
    atomic_write_text(out / "report.csv", df.to_csv(index=False))
    atomic_write_text(out / "report.md", to_markdown(df))
    print_table(df)
    print(f"wrote {out / 'report.csv'} and {out / 'report.md'}")
    cp = collect_checkpoints(args.dirs)
    if len(cp):
        atomic_write_text(out / "checkpoints.csv", cp.to_csv(index=False))
        print_checkpoints(cp)
        print(f"wrote {out / 'checkpoints.csv'}")


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
