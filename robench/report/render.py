"""Stage 3 of ``robench report``: tables (:mod:`robench.report.tables`) -> files and the terminal.

One cell format (:func:`fmt_cell`: rates as percentages, other numbers to 4 significant digits, ``-``
for none) serves every renderer: CSV (pandas), Markdown (:func:`to_markdown`), one self-contained
HTML page (:func:`to_html`, plots embedded) and rich tables (:func:`print_report`).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, List, Tuple

import pandas as pd

from robench.report.tables import CHECKPOINT_COLUMNS, PERCENT_KEYS, PRINTED, Tables, flat_columns, public
from robench.evaluation.results import atomic_write_text


def fmt_cell(v: Any, key: str = "") -> str:
    """One table cell as text: rates (``key`` names one) as percentages, other floats to 4 digits."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        pct = key in PERCENT_KEYS or key.startswith("success") or key in ("clean acc", "success rate", "robust acc")
        return f"{v:.2%}" if pct else f"{v:.4g}"
    return str(v)


def to_markdown(df: pd.DataFrame, index: bool = False, key: str = "") -> str:
    """A GitHub Markdown table of ``df`` (its index as the first columns when ``index``)."""
    if index:
        df = df.reset_index()
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt_cell(v, key or c) for v, c in zip(row, cols)) + " |"
              for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------- HTML
#: The page fits its window at any width from about 800 px: each table scrolls inside its own box (its
#: header row kept in view), long text cells wrap, plots shrink to the page (tests/test_browser.py checks
#: it in headless Chromium at 1,280 px).
_CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:100%}
h1{font-size:1.5em;overflow-wrap:anywhere}h2{margin-top:1.6em;font-size:1.15em;overflow-wrap:anywhere}
.note{color:#a60;overflow-wrap:anywhere}code{background:#f4f4f4;padding:1px 4px}
.table{overflow:auto;width:fit-content;max-width:100%;max-height:80vh;margin:1em 0;border:1px solid #ddd}
table{border-collapse:separate;border-spacing:0;font-size:13px}
th,td{border-right:1px solid #ddd;border-bottom:1px solid #ddd;padding:3px 8px;text-align:right;white-space:nowrap}
thead{position:sticky;top:0;z-index:1}thead th{background:#f0f0f0}th.axis,td.axis{text-align:left;background:#fafafa}
thead th.axis{background:#e8e8e8}td.text{text-align:left;white-space:normal;min-width:26em;max-width:40em;
overflow-wrap:anywhere}figure{margin:1em 0}figure img{max-width:100%;height:auto;display:block}
figcaption,.caption{font-size:12px;color:#555}th[colspan]{text-align:center}"""

def _th(text: str, cls: str = "", span: int = 1) -> str:
    import html

    attrs = (f" class='{cls}'" if cls else "") + (f" colspan='{span}'" if span > 1 else "")
    return f"<th{attrs}>{html.escape(text)}</th>"


def _html_table(df: pd.DataFrame, key: str = "", index: bool = False) -> str:
    """One table in its own scroll box, its header kept in view. With ``index`` (a pivot) the index
    levels are the first columns; a pivot with named column levels gets one header row per level (its
    name in the corner, equal neighbours merged) and a last one naming the index levels."""
    import html

    levels = [str(n) for n in df.index.names] if index else []
    d = df.reset_index() if index else df
    values = df.columns if index else d.columns
    named = index and any(n is not None for n in values.names)
    head = []
    if named:
        tuples = [c if isinstance(c, tuple) else (c,) for c in values]
        for lv, name in enumerate(values.names):
            runs, prev = [], None
            for t in tuples:
                if runs and t[: lv + 1] == prev:
                    runs[-1][1] += 1
                else:
                    runs.append([str(t[lv]), 1])
                prev = t[: lv + 1]
            head.append("<tr>" + _th(str(name), "axis", len(levels)) + "".join(_th(s, span=n) for s, n in runs) + "</tr>")
        head.append("<tr>" + "".join(_th(n, "axis") for n in levels) + _th("", span=len(tuples)) + "</tr>")
    else:
        head.append("<tr>" + "".join(_th(n, "axis") for n in levels) + "".join(_th(str(c)) for c in values) + "</tr>")
    cols = list(d.columns)

    def cell(v, c, i):
        cls = "axis" if i < len(levels) else ("text" if str(c) in _TEXT_COLUMNS else "")
        return f"<td{f' class={cls!r}' if cls else ''}>{html.escape(fmt_cell(v, key or str(c)))}</td>"

    body = "".join("<tr>" + "".join(cell(v, c, i) for i, (v, c) in enumerate(zip(r, cols))) + "</tr>"
                   for r in d.itertuples(index=False))
    return f"<div class='table'><table><thead>{''.join(head)}</thead><tbody>{body}</tbody></table></div>"


#: columns of free text (wrapped in the HTML page instead of widening it)
_TEXT_COLUMNS = {"overrides", "run", "checkpoint", "robust eval", "model params"}


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
            parts.append(f"<figure><img alt='{html.escape(p.stem)}' src='data:image/png;base64,{b64}'>"
                         f"<figcaption>{html.escape(p.stem)} ({html.escape(p.name)}, {html.escape(p.stem)}.svg)"
                         f"</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------- files
def write_report(out: Path, t: Tables, images: List[Path], plot_files: List[Path], notes: List[str],
                 title: str) -> List[Path]:
    """Write every table of ``t`` into ``out`` (CSV, Markdown, the HTML page with ``images``); returns
    the files written, ``plot_files`` among them. ``notes``: the plots' notes (the HTML page shows
    them after ``t.skipped`` and ``t.notes``; report.md, written from the tables alone, does not)."""
    written, sections, md = [], [], []
    df, key_of = t.runs, lambda k: k.replace("@", "_at_").replace(" ", "_")
    if df is not None:
        atomic_write_text(out / "report.csv", public(df).to_csv(index=False))
        md = [to_markdown(public(df))]
        for key, p in t.pivots.items():
            f = out / f"pivot-{key_of(key)}.csv"
            atomic_write_text(f, flat_columns(p).to_csv())
            written.append(f)
            heading = f"{key}: {' x '.join(t.rows)}" + (f" by {' x '.join(t.cols)}" if t.cols else "")
            md += [f"\n## {heading}\n", to_markdown(flat_columns(p), index=True, key=key)]
            sections.append((heading, _html_table(p, key, index=True)))
        shown = public(df.assign(overrides=df["varying"]))  # what tells the runs apart (all of them in report.csv)
        sections.append(("all runs", _html_table(shown) + "<p class='caption'>overrides: those that differ between "
                         "the runs (report.csv has them all)</p>"))
        written = [out / "report.csv", out / "report.md"] + written
    rf = t.recipes
    if rf is not None:
        atomic_write_text(out / "recipes.csv", rf.to_csv(index=False))
        written.append(out / "recipes.csv")
        sections.insert(0, ("training recipes: clean vs robust accuracy", _html_table(rf)))
    if df is not None:
        md_text = "".join(md)
        if rf is not None:
            md_text += "\n## training recipes\n\n" + to_markdown(rf)
        atomic_write_text(out / "report.md", md_text + "".join(f"\n> {n}\n" for n in t.skipped + t.notes))
    elif rf is not None:
        atomic_write_text(out / "report.md", "## training recipes\n\n" + to_markdown(rf)
                          + "".join(f"\n> {n}\n" for n in t.skipped))
        written.append(out / "report.md")
    written += plot_files
    atomic_write_text(out / "report.html", to_html(title, sections, images, t.skipped + t.notes + notes))
    written.append(out / "report.html")
    if len(t.checkpoints):
        atomic_write_text(out / "checkpoints.csv", t.checkpoints.to_csv(index=False))
        written.append(out / "checkpoints.csv")
    if t.train is not None and len(t.train):  # clean vs robust per recipe, the layout of [cheng2021 Tables 4.2, 5.6]
        atomic_write_text(out / "train_report.csv", t.train.to_csv(index=False))
        atomic_write_text(out / "train_report.md", to_markdown(t.train))
        written += [out / "train_report.csv", out / "train_report.md"]
    return written


# ---------------------------------------------------------------------------------------- terminal
def print_report(t: Tables, notes: List[str], written: List[Path]) -> None:
    """Every table with rich, then the notes (``t.notes`` and ``notes``) and the files written."""
    from rich.console import Console

    console = Console(width=max(200, Console().width))
    rows_, cols_ = t.rows, t.cols
    if t.runs is not None:
        print_table(t.runs, console)
        for key, p in t.pivots.items():
            print_pivot(p, key, f"{key} ({' x '.join(rows_)}{' by ' + ' x '.join(cols_) if cols_ else ''})", console)
    if t.recipes is not None:
        print_pivot(t.recipes.set_index(["dataset", "model", "defense"]).drop(columns=["checkpoint", "run"]), "",
                    "training recipes", console)
    for n in t.notes + notes:
        console.print(f"[yellow]note:[/yellow] {n}")
    if len(t.checkpoints):
        print_checkpoints(t.checkpoints)
    if t.train is not None and len(t.train):
        print_train_table(t.train)
    console.print("wrote " + ", ".join(str(p) for p in written))


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
        t.add_row(*(fmt_cell(v, c) for c, v in row.items()))
    (console or Console(width=max(180, Console().width))).print(t)


def print_pivot(p: pd.DataFrame, key: str, title: str, console) -> None:
    from rich.table import Table

    d = flat_columns(p).reset_index()
    t = Table(show_header=True, header_style="bold", title=title, title_justify="left")
    for i, c in enumerate(d.columns):
        t.add_column(str(c), justify="left" if i < len(p.index.names) else "right")
    for row in d.itertuples(index=False):
        t.add_row(*(fmt_cell(v, key or str(c)) for v, c in zip(row, d.columns)))
    console.print(t)



TRAIN_PRINTED = ["model", "model params", "defense", "init from", "train acc", "clean acc", "robust acc", "robust eval",
                 "train seconds", "overrides"]


def print_train_table(df: pd.DataFrame) -> None:
    """Clean vs robust accuracy per (model, recipe): [cheng2021 Tables 4.2, 5.6], [saha2020 Table 5.1]."""
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
