"""``robench report DIR...``: runs (sweep folders included) -> tables, an HTML page and plots.

A pipeline of three stages, each reading only the previous one's output:

1. collect (:mod:`robench.report.collect`): one walk over the folders reads every ``summary.json``
   once (attack runs, ``command: attack``, and training runs, ``command: train-defense``), skips the
   unusable ones with a one-line note each, and merges shards: attack runs whose configs are equal
   except ``dataset.shard`` and that together hold every shard ``0/n .. n-1/n`` become one run, whose
   numbers are recomputed from the concatenated records (so they equal the unsharded run's; README,
   "Sharding");
2. tables (:mod:`robench.report.tables`): pandas frames, one row per run, pivots, training recipes,
   anytime curves; the plots' data (:mod:`robench.report.figures`) comes from the same collected runs;
3. renderers (:mod:`robench.report.render`, :mod:`robench.report.plots`): into ``--out`` (default:
   the first DIR), ``report.csv`` and ``report.md`` (one row per run, every column, budget-curve
   columns ``success@<q>`` and ``median dist@<q>`` when runs recorded them), ``pivot-<value>.csv``
   (``--rows`` x ``--cols`` for each of ``--values``; a setting that differs between the runs of a cell,
   such as a swept eps, joins an axis, never averaged unless ``--average``), ``recipes.csv`` and ``train_report.csv`` /
   ``.md`` (training runs), ``checkpoints.csv`` (anytime curves), ``report.html`` (all of it and the
   plots, self-contained) and, with ``--plots``, PNG and SVG figures. Prints the tables with rich
   unless ``--quiet``.
"""
from __future__ import annotations

import argparse  # noqa: F401
import sys
from pathlib import Path
from typing import List

from robench.report.tables import DEFAULT_VALUES


def main(argv: List[str]) -> None:
    from robench.errors import OneLineParser

    ap = OneLineParser(prog="robench report", description=__doc__.split("\n")[0])
    ap.add_argument("dirs", nargs="+", help="run folders, sweep folders or summary.json files")
    ap.add_argument("--out", help="folder for the report files (default: the first DIR)")
    ap.add_argument("--rows", default="attack", help="pivot rows, comma-separated (attack, defense, model, dataset, "
                    "budget, eps, norm, max_queries or any override key, e.g. attack.params.steps); default attack")
    ap.add_argument("--cols", default="defense", help="pivot columns, comma-separated; '' for none; default defense")
    ap.add_argument("--values", default=DEFAULT_VALUES, help=f"pivot values, comma-separated; default {DEFAULT_VALUES}")
    ap.add_argument("--average", action="store_true", help="let a pivot cell average runs that differ in a setting "
                    "not on an axis (default: every such setting is added to the rows or columns)")
    ap.add_argument("--plots", action="store_true", help="write PNG and SVG plots beside the tables (needs matplotlib)")
    ap.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")
    args = ap.parse_args(argv)
    split = lambda s: [x.strip() for x in s.split(",") if x.strip()]

    from robench.report import render, tables
    from robench.report.collect import collect

    runs = collect(args.dirs)
    if not args.quiet:
        for line in runs.skipped:
            print(f"robench report: {line}", file=sys.stderr)
    out = Path(args.out) if args.out else Path(args.dirs[0])
    if out.is_file():
        out = out.parent
    out.mkdir(parents=True, exist_ok=True)
    if args.plots:
        from robench.report import plots  # fails early, in one line, without matplotlib

        plots.require()
    t = tables.build(runs.attacks, runs.trains, split(args.rows), split(args.cols), split(args.values),
                     notes=runs.notes, skipped=runs.skipped, average=args.average)
    made, plot_notes = [], []
    if args.plots:
        made, plot_notes = plots.make_all(runs.attacks, runs.trains, out)
    title = f"robench report: {len(runs.attacks)} attack run(s), {len(runs.trains)} training run(s)"
    images = [p for p in made if p.suffix == ".png"]
    written = render.write_report(out, t, images, made, plot_notes, title)
    if not args.quiet:
        render.print_report(t, plot_notes, written)
