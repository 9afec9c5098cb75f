"""The protocol of [cheng2021 §2.5, Table 2.2] for robench's hard-label attacks, one run each.

    python benchmarks/hardlabel_table.py [--jobs 5] [--out results/hardlabel_table] [override ...]

Runs ``robench attack experiment=cheng_table2_2_mnist attack=<a>`` for opt, signopt, boundary,
guessing_smart [brunner2019], svm_opt and zo_signsgd ([cheng2021 §2.4.3, §2.5.0.3]), hsja and rays
(``--jobs`` at once, each a separate process with OMP_NUM_THREADS=1), extra arguments are
passed to every run as Hydra overrides (e.g. ``dataset.n_samples=52`` for 50 attacked images on
the default victim), then prints the attacks x budgets table of median / mean L2 and success rate
at the threshold from each run's summary.json ``checkpoints``. The Linf variant [cheng2021 §2.4.2]:
``--experiment paper_table2_2_mnist_linf --attacks opt,signopt,svm_opt`` (distances in the budget's norm).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ATTACKS = ["opt", "signopt", "boundary", "guessing_smart", "svm_opt", "zo_signsgd", "hsja", "rays"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=len(ATTACKS))
    ap.add_argument("--out", default="results/hardlabel_table")
    ap.add_argument("--experiment", default="cheng_table2_2_mnist")
    ap.add_argument("--attacks", default=",".join(ATTACKS))
    ap.add_argument("--table-only", action="store_true", help="only print the table of runs already under --out")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    if a.table_only:
        return print_table(Path(a.out), a.attacks.split(","))
    out = Path(a.out)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    todo, running, t0 = a.attacks.split(","), [], time.time()
    while todo or running:
        while todo and len(running) < a.jobs:
            name = todo.pop(0)
            cmd = [sys.executable, "-m", "robench", "attack", f"experiment={a.experiment}", f"attack={name}",
                   "progress=false", f"hydra.run.dir={out / name}", *a.overrides]
            out.mkdir(parents=True, exist_ok=True)
            log = open(out / f"{name}.log", "w")
            running.append((name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)))
        time.sleep(2)
        for r in list(running):
            if r[1].poll() is not None:
                running.remove(r)
                print(f"{r[0]} finished (exit {r[1].returncode}) after {time.time() - t0:.0f} s", flush=True)
    print_table(out, a.attacks.split(","))


def print_table(out: Path, attacks) -> None:
    print("| attack | norm | queries | median dist | mean dist | success rate (<= eps) | attacked |")
    print("|---|---|---|---|---|---|---|")
    for name in attacks:
        f = out / name / "summary.json"
        if f.exists():
            s = json.loads(f.read_text())
            cps, n_att, norm = s["checkpoints"], s["n_attacked"], s.get("norm", "?")
        elif (out / name / "records.csv").exists():  # an unfinished run: the batches finished so far
            import pandas as pd
            import yaml

            from robench.evaluation.results import checkpoint_summary
            df = pd.read_csv(out / name / "records.csv")
            budget = yaml.safe_load((out / name / "config.yaml").read_text())["budget"]
            eps, norm = budget["eps"], budget["norm"]
            att = df[df.attacked.astype(bool) & (df.queries > 0)]
            cps, n_att = checkpoint_summary(att, eps), f"{len(att)} (partial)"
        else:
            print(f"| {name} | | (no records) | | | | |")
            continue
        for c in cps:
            med = c["median_distortion"]
            print(f"| {name} | {norm} | {c['queries']} | {'inf' if med is None else f'{med:.3f}'} | "
                  f"{c['mean_distortion']:.3f} | {c['success_rate']:.0%} | {n_att} |")


if __name__ == "__main__":
    main()
