"""The speech reproduction row (for REPRODUCTION.md; [alzantot2019 §3.5.1, §3.6]) from finished runs.

Reads the records of a targeted ``experiment=genattack_speech_fsdd`` run, optionally its untargeted
twin (``..._untargeted``) and the white-box ceiling on the same pairs (``..._ceiling``), and prints,
for each: attacked rows, success rate, median queries and median generations of the successes
(generation g >= 1 costs pop_size - elite_size = 18 queries after the 20 of generation 0, so a success
at query q is in generation ceil((q - 20) / 18)), mean SNR and dB_x of the successes; for the
targeted run also its success on the pairs the ceiling reached and on the others; and it draws the
10 x 10 source-by-target success matrix (the thesis's Fig. 3.2) as a PNG (and SVG) with the figure
``robench report --plots`` draws for every targeted run.

    python benchmarks/speech_fsdd.py --targeted RUN [--untargeted RUN] [--ceiling RUN] [--matrix out.png]
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

POP, ELITE = 20, 2


def generation(q: float) -> int:
    return 0 if q <= POP else math.ceil((q - POP) / (POP - ELITE))


def load(run: str) -> pd.DataFrame:
    f = Path(run) / "records.csv"
    if not f.exists():
        raise SystemExit(f"error: {f} not found: pass a finished `robench attack` run folder")
    df = pd.read_csv(f)
    for c in ("attacked", "success"):
        df[c] = df[c].astype(str).str.lower().isin(("true", "1", "1.0"))
    return df[df["attacked"]]


def row(name: str, df: pd.DataFrame, genetic: bool) -> str:
    s = df[df["success"]]
    med_q = s["queries_at_success"].median() if len(s) else float("nan")
    med_g = s["queries_at_success"].map(generation).median() if genetic and len(s) else float("nan")
    db = s["db_x"].mean() if "db_x" in s and len(s) else float("nan")
    snr = s["snr_db"].mean() if "snr_db" in s and len(s) else float("nan")
    return (f"| {name} | {len(df)} | {len(s)} ({len(s) / max(len(df), 1):.1%}) | {med_q:.0f} | "
            f"{'-' if not genetic else f'{med_g:.0f}'} | {snr:.1f} | {db:.1f} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--targeted", required=True)
    p.add_argument("--untargeted")
    p.add_argument("--ceiling")
    p.add_argument("--matrix", help="write the source x target success matrix of the targeted run here (PNG)")
    a = p.parse_args(argv)
    tg = load(a.targeted)
    print("| run | attacked | successes | median queries | median generations | mean SNR dB | mean dB_x |")
    print("|---|---|---|---|---|---|---|")
    print(row("genattack_audio, targeted (every pair)", tg, True))
    if a.untargeted:
        print(row("genattack_audio, untargeted", load(a.untargeted), True))
    if a.ceiling:
        ce = load(a.ceiling)
        print(row("white-box ceiling: targeted PGD-100", ce, False))
        key = ["index", "target"]
        both = tg[key + ["success"]].merge(ce[key + ["success"]], on=key, suffixes=("", "_wb"))
        reach = both["success_wb"]
        print(f"\nsame pairs: {len(both)} of {len(tg)}; ceiling reached {int(reach.sum())}; genattack_audio on those "
              f"{int(both['success'][reach].sum())}, on the others {int(both['success'][~reach].sum())}")
    if a.matrix:
        # robench report's own source-by-target matrix (robench/report/plots.py), for this one run
        import numpy as np

        from robench.report.plots import target_matrix, target_rates

        rate, _ = target_rates(tg, 10)
        print("\nsuccess matrix (rows: source digit, columns: target digit, %):")
        print(pd.DataFrame(np.round(rate * 100), index=range(10), columns=range(10)).to_string(na_rep="-"))
        out = Path(a.matrix)
        out.parent.mkdir(parents=True, exist_ok=True)
        made = target_matrix({"targeted": True, "run": a.targeted}, out.parent, out.with_suffix("").name,
                             "genattack_audio on FSDD / kws_cnn: targeted success")
        print("wrote " + ", ".join(map(str, made)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
