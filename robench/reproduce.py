"""``robench reproduce DIR [DIR ...]``: the papers' tables next to robench's finished runs.

Reads every finished run folder below the given folders (``summary.json``, ``records.csv`` and the
saved ``config.yaml``), recognises the runs that follow a paper table's protocol on MNIST and prints,
per table, the paper's number, robench's, the difference, and the white-box reference measured on
the same images (and targets) where the table has one:

* GenAttack Table 2.1, MNIST column [alzantot2019 §2.6.1, Table 2.1]: targeted Linf 0.3 runs
  (``experiment=paper_table2_1_mnist``); success rate and median queries over successes. Where a
  black-box success rate falls short of the paper's, the white-box run's success rate on the same
  (image, target) pairs is the ceiling.
* Sign-OPT Table 2.2, MNIST column [cheng2021 §2.5, Table 2.2]: untargeted L2 runs with query
  checkpoints (``experiment=paper_table2_2_mnist``); mean and median L2 and success at 1.5 per
  checkpoint, on the images every run attacked. The white-box floor is the per-image minimum over the
  white-box runs (cw_l2, fmn) on those images, and each hard-label mean is also given as a ratio to
  the floor's mean, next to the paper's ratio to its C&W row (0.88).
* Its Linf variant [cheng2021 §2.4.2] (``experiment=paper_table2_2_mnist_linf``): mean and median Linf
  and success at the budget's eps per checkpoint (the thesis prints no Linf table: no paper column).
* Saha Table 5.1 [saha2020 §5.4]: train runs of ``small_cnn`` depth 2 ("shallow") and 3 ("deep"),
  natural then PGD-AT (``experiment=paper_table5_1_mnist``); train and test accuracy before and after.

Numbers are only ever read from runs; a paper row without a matching run prints ``-``.
"""
from __future__ import annotations

import argparse  # noqa: F401
import json
from pathlib import Path
from typing import Any, Dict, List, Optional

from robench.errors import RobenchError

#: [alzantot2019 Table 2.1] (p.23), MNIST (Linf 0.30): (success rate, median queries over successes).
PAPER_T21 = {"C&W": (1.00, None), "ZOO": (0.98, 2_118_222), "GenAttack": (1.00, 996)}
T21_ROWS = {"cw_linf": "C&W", "cw_l2": "C&W", "pgd": "C&W", "zoo": "ZOO", "genattack": "GenAttack"}

#: [cheng2021 Table 2.2] (§2.5.0.1), MNIST: queries -> (average L2, success rate at L2 1.5).
PAPER_T22 = {
    "Boundary": {4000: (4.24, 0.010), 8000: (4.24, 0.010), 14000: (2.13, 0.163)},
    "OPT": {4000: (3.65, 0.030), 8000: (2.41, 0.180), 14000: (1.76, 0.360)},
    "Guessing Smart": {4000: (1.74, 0.410), 8000: (1.69, 0.420), 14000: (1.68, 0.430)},
    "Sign-OPT": {4000: (1.54, 0.460), 8000: (1.18, 0.840), 14000: (1.09, 0.940)},
    "C&W (white-box)": {None: (0.88, 0.990)},
}
T22_ROWS = {"boundary": "Boundary", "opt": "OPT", "guessing_smart": "Guessing Smart", "signopt": "Sign-OPT",
            "svm_opt": "SVM-OPT", "zo_signsgd": "ZO-SignSGD (sign oracle)", "hsja": "HSJA", "rays": "RayS"}
WHITEBOX_L2 = {"cw_l2": "C&W (white-box)", "fmn": "FMN (white-box)", "deepfool": "DeepFool (white-box)"}
PAPER_CW_L2 = 0.88

#: [saha2020 Table 5.1] (percent): model -> (train, test, train after AT, test after AT).
PAPER_T51 = {"shallow": (99.50, 98.80, 88.67, 94.91), "deep": (98.70, 98.36, 94.05, 97.33)}
T51_DEPTH = {2: "shallow", 3: "deep"}


def _load_runs(folders: List[Path]) -> List[Dict[str, Any]]:
    runs = []
    for folder in folders:
        if not folder.exists():
            raise RobenchError(f"{folder} does not exist")
        for f in sorted(folder.rglob("summary.json")):
            try:
                s = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            run = {"dir": f.parent, "summary": s, "config": _config(f.parent)}
            runs.append(run)
    return runs


def _config(run_dir: Path) -> Dict[str, Any]:
    import yaml

    for p in (run_dir / "config.yaml", run_dir / ".hydra" / "config.yaml"):
        if p.exists():
            try:
                return yaml.safe_load(p.read_text()) or {}
            except (OSError, yaml.YAMLError):
                return {}
    return {}


def _records(run: Dict[str, Any]):
    import pandas as pd

    p = run["dir"] / "records.csv"
    if not p.exists():
        return None
    df = pd.read_csv(p)
    for c in ("attacked", "success"):
        df[c] = df[c].astype(str).str.lower().isin(("true", "1", "1.0"))
    return df[df.attacked]


def _fmt(v: Optional[float], spec: str) -> str:
    if v is None or v != v:
        return "-"
    return format(v, spec)


def _diff(ours: Optional[float], paper: Optional[float], spec: str) -> str:
    if ours is None or paper is None or ours != ours:
        return "-"
    return ("+" if ours - paper >= 0 else "") + format(ours - paper, spec)


def _is_mnist(s: Dict[str, Any]) -> bool:
    return str(s.get("dataset", "")).startswith("mnist")


def _source(run: Dict[str, Any]) -> str:
    return str((run["config"].get("dataset") or {}).get("source", "?"))


def table_2_1(runs: List[Dict[str, Any]]) -> List[str]:
    rows = [r for r in runs if r["summary"].get("command") == "attack" and _is_mnist(r["summary"])
            and r["summary"].get("targeted") and r["summary"].get("norm") == "linf"
            and abs(float(r["summary"].get("eps") or 0) - 0.3) < 1e-9 and r["summary"].get("attack") in T21_ROWS]
    if not rows:
        return []
    white = [r for r in rows if T21_ROWS[r["summary"]["attack"]] == "C&W"]
    wdf = _records(white[0]) if white else None
    out = ["## GenAttack Table 2.1, MNIST [alzantot2019 Table 2.1]: targeted, Linf 0.3", "",
           "| row | attack | source | attacked | paper success | robench success | diff | paper median queries | "
           "robench median queries | diff | white-box success on the same pairs | run |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: list(PAPER_T21).index(T21_ROWS[r["summary"]["attack"]])):
        s, name = r["summary"], T21_ROWS[r["summary"]["attack"]]
        p_sr, p_q = PAPER_T21[name]
        sr, mq = s.get("success_rate"), s.get("median_queries")
        ceiling = "-"
        df = _records(r)
        if wdf is not None and df is not None and name != "C&W" and sr is not None and sr < p_sr:
            key = ["index", "target"]
            m = df[key].merge(wdf[key + ["success"]], on=key)
            if len(m):
                ceiling = f"{m.success.mean():.1%} of {len(m)}"
        out.append(f"| {name} | {s['attack']} | {_source(r)} | {s.get('n_attacked')} | {p_sr:.1%} | {_fmt(sr, '.1%')} | "
                   f"{_diff(None if sr is None else 100 * sr, 100 * p_sr, '.1f')} pt | {_fmt(p_q, ',')} | "
                   f"{_fmt(mq, ',.0f')} | {_diff(mq, p_q, ',.0f')} | {ceiling} | {r['dir']} |")
    return out + [""]


def _final_dist(df):
    """Per record: the L2 of the best adversarial point at the end (the last ``dist_at_<q>`` column
    when the run has checkpoints; otherwise ``l2``), inf where none was found. Not ``success``: with
    an eps, success means within eps, and a floor must average every adversarial point."""
    import pandas as pd

    cols = [c for c in df.columns if c.startswith("dist_at_")]
    col = max(cols, key=lambda c: int(c[len("dist_at_"):])) if cols else "l2"
    d = pd.to_numeric(df[col], errors="coerce").astype(float)
    if not cols:
        d = d.where(df["success"], float("inf"))
    return d.fillna(float("inf"))


def table_2_2(runs: List[Dict[str, Any]]) -> List[str]:
    import pandas as pd

    from robench.evaluation.results import checkpoint_summary

    rows = [r for r in runs if r["summary"].get("command") == "attack" and _is_mnist(r["summary"])
            and not r["summary"].get("targeted") and r["summary"].get("norm") == "l2"
            and r["summary"].get("attack") in {**T22_ROWS, **WHITEBOX_L2}]
    rows = [r for r in rows if _records(r) is not None]
    if not rows:
        return []
    dfs = {id(r): _records(r) for r in rows}
    common = None
    for df in dfs.values():
        common = set(df["index"]) if common is None else common & set(df["index"])
    common = sorted(common or [])
    if not common:
        return ["## Sign-OPT Table 2.2, MNIST: the runs share no attacked image", ""]
    eps = 1.5
    white = [r for r in rows if r["summary"]["attack"] in WHITEBOX_L2]
    floor = None
    for r in white:
        d = _final_dist(dfs[id(r)].set_index("index").loc[common])
        floor = d if floor is None else pd.concat([floor, d], axis=1).min(axis=1)
    floor_mean = float(floor[floor < float("inf")].mean()) if floor is not None else None
    floor_med = float(floor.median()) if floor is not None else None
    out = ["## Sign-OPT Table 2.2, MNIST [cheng2021 Table 2.2]: untargeted L2", "",
           f"{len(common)} images attacked by every run below. White-box floor: the per-image minimum over "
           f"{', '.join(sorted(r['summary']['attack'] for r in white)) or 'no white-box run'}: mean L2 "
           f"{_fmt(floor_mean, '.3f')}, median {_fmt(floor_med, '.3f')} (paper's C&W: mean {PAPER_CW_L2}).", "",
           "| row | queries | paper mean L2 | robench mean L2 | diff | robench median L2 | paper SR@1.5 | robench SR@1.5 | "
           "diff | paper mean / its C&W | robench mean / floor mean |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    order = list(T22_ROWS) + list(WHITEBOX_L2)
    for r in sorted(rows, key=lambda r: order.index(r["summary"]["attack"])):
        a = r["summary"]["attack"]
        df = dfs[id(r)].set_index("index").loc[common].reset_index()
        if a in WHITEBOX_L2:
            name = WHITEBOX_L2[a]
            d = _final_dist(df).reset_index(drop=True)
            has = d < float("inf")
            paper = PAPER_T22.get(name, {}).get(None)
            mean = float(d[has].mean()) if has.any() else None
            sr = float((d <= eps + 1e-5).mean())
            out.append(f"| {name} | {int(df.queries.max())} max | {_fmt(paper and paper[0], '.2f')} | {_fmt(mean, '.3f')} | "
                       f"{_diff(mean, paper and paper[0], '.3f')} | {float(d.median()):.3f} | "
                       f"{_fmt(paper and paper[1], '.1%')} | {sr:.1%} | "
                       f"{_diff(100 * sr, paper and 100 * paper[1], '.1f')} | {'1.00' if paper else '-'} | "
                       f"{_fmt(mean / floor_mean if mean and floor_mean else None, '.2f')} |")
            continue
        name = T22_ROWS[a]
        for c in checkpoint_summary(df, eps):
            q = c["queries"]
            paper = PAPER_T22.get(name, {}).get(q)
            mean, med, sr = c["mean_distortion"], c["median_distortion"], c["success_rate"]
            out.append(f"| {name} | {q:,} | {_fmt(paper and paper[0], '.2f')} | {_fmt(mean, '.3f')} | "
                       f"{_diff(mean, paper and paper[0], '.3f')} | {_fmt(med, '.3f')} | {_fmt(paper and paper[1], '.1%')} | "
                       f"{_fmt(sr, '.1%')} | {_diff(100 * sr, paper and 100 * paper[1], '.1f')} | "
                       f"{_fmt(paper and paper[0] / PAPER_CW_L2, '.2f')} | "
                       f"{_fmt(mean / floor_mean if floor_mean and mean == mean else None, '.2f')} |")
    return out + [""]


def table_2_2_linf(runs: List[Dict[str, Any]]) -> List[str]:
    """The Linf variant (``experiment=paper_table2_2_mnist_linf``): the hard-label rows run with an
    untargeted Linf budget, on the images every such run attacked; the thesis prints no Linf table, so
    there is no paper column."""
    from robench.evaluation.results import checkpoint_summary

    rows = [r for r in runs if r["summary"].get("command") == "attack" and _is_mnist(r["summary"])
            and not r["summary"].get("targeted") and r["summary"].get("norm") == "linf"
            and r["summary"].get("attack") in T22_ROWS and _records(r) is not None]
    if not rows:
        return []
    dfs = {id(r): _records(r) for r in rows}
    common = sorted(set.intersection(*(set(df["index"]) for df in dfs.values())))
    eps = float(rows[0]["summary"].get("eps") or 0.3)
    out = [f"## Table 2.2's Linf variant, MNIST [cheng2021 §2.4.2]: untargeted Linf (no paper numbers)", "",
           f"{len(common)} images attacked by every run below; success at Linf {eps:g}.", "",
           "| row | queries | mean Linf | median Linf | SR | run |", "|---|---|---|---|---|---|"]
    order = list(T22_ROWS)
    for r in sorted(rows, key=lambda r: order.index(r["summary"]["attack"])):
        df = dfs[id(r)].set_index("index").loc[common].reset_index()
        for c in checkpoint_summary(df, eps):
            out.append(f"| {T22_ROWS[r['summary']['attack']]} | {c['queries']:,} | {_fmt(c['mean_distortion'], '.4f')} | "
                       f"{_fmt(c['median_distortion'], '.4f')} | {_fmt(c['success_rate'], '.1%')} | {r['dir']} |")
    return out + [""]


def table_5_1(runs: List[Dict[str, Any]]) -> List[str]:
    rows = [r for r in runs if r["summary"].get("command") == "train-defense" and _is_mnist(r["summary"])
            and r["summary"].get("model") == "small_cnn"
            and int((r["summary"].get("model_params") or {}).get("depth", 0)) in T51_DEPTH
            and r["summary"].get("defense") in ("none", "pgd_at")]
    if not rows:
        return []
    out = ["## Saha Table 5.1 [saha2020 §5.4]: natural, then PGD-AT from it (percent)", "",
           "| model | width | source | condition | paper | robench | diff | run |", "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["summary"]["model_params"].get("width", 0),
                                         r["summary"]["model_params"]["depth"], r["summary"]["defense"])):
        s = r["summary"]
        kind = T51_DEPTH[int(s["model_params"]["depth"])]
        p = PAPER_T51[kind]
        after = s["defense"] == "pgd_at"
        for label, ours, paper in (("train accuracy" + (" (post AT)" if after else ""), s.get("train_accuracy"), p[2 if after else 0]),
                                   ("test accuracy" + (" (post AT)" if after else ""), s.get("clean_accuracy"), p[3 if after else 1])):
            v = None if ours is None else 100 * float(ours)
            out.append(f"| {kind} (depth {s['model_params']['depth']}) | {s['model_params'].get('width', '-')} | "
                       f"{_source(r)} | {label} | {paper:.2f} | {_fmt(v, '.2f')} | {_diff(v, paper, '.2f')} | {r['dir']} |")
    return out + [""]


def reproduce(folders: List[Path]) -> str:
    runs = _load_runs(folders)
    parts = table_2_1(runs) + table_2_2(runs) + table_2_2_linf(runs) + table_5_1(runs)
    if not parts:
        raise RobenchError(f"no finished run below {', '.join(map(str, folders))} follows a reproduced table's protocol "
                           f"(experiment=paper_table2_1_mnist, paper_table2_2_mnist(_linf) or paper_table5_1_mnist)")
    return "\n".join(parts)


def main(argv: List[str]) -> None:
    from robench.errors import OneLineParser

    ap = OneLineParser(prog="robench reproduce", description="the papers' tables next to robench's runs")
    ap.add_argument("folders", nargs="+", type=Path, help="run folders, or folders holding them (searched recursively)")
    a = ap.parse_args(argv)
    print(reproduce(a.folders), end="")
