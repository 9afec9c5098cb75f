"""Train every recipe on the embedded MNIST with cw_mnist and print clean accuracy, PGD-40 robust
accuracy at Linf 0.3 and training seconds (the layout of [cheng2021 Table 4.2] and [cheng2021 Table 5.6]).

Each recipe runs as the user runs it, `robench train-defense dataset=mnist model=cw_mnist defense=X`
(shipped defaults: 8 epochs, Adam, cosine schedule, the recipe's configs/defense/X.yaml), in its own
subprocess, with the end-of-training evaluation on the whole 1,000-image test split
(`eval.n_samples=null`: PGD-40 through the oracle, the number `robench attack` reports). Recipes that
need another checkpoint run after it (sprout starts from `none`, distillation from
`distillation_teacher`). Timings are wall-clock training seconds (the evaluation excluded): compare
them only within one invocation, on a quiet machine.

    .venv/bin/python benchmarks/bench_recipes.py [--recipes none,pgd_at,...] [--out DIR] [--threads N] [-- extra overrides]

Prints a rich table and writes DIR/bench_recipes.md; the runs' folders stay under DIR for
`robench report DIR`.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ALL = ["none", "pgd_at", "fast_at", "fgsm_at", "trades", "cat", "sprout", "gaussian_aug", "mixup", "label_smoothing",
       "distillation_teacher", "distillation"]
NEEDS = {"sprout": "none", "distillation": "distillation_teacher"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", default=",".join(ALL))
    ap.add_argument("--out", default="results/bench_recipes")
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the runs (default: torch's)")
    ap.add_argument("extra", nargs="*", help="extra Hydra overrides for every run (after --)")
    args = ap.parse_args()
    want = [r for r in args.recipes.split(",") if r]
    order = [r for r in ALL if r in want] + [r for r in want if r not in ALL]
    for r, dep in NEEDS.items():  # a recipe's prerequisite runs first
        if r in order and dep not in order:
            order.insert(order.index(r), dep)
    out = Path(args.out)
    ck = out / "checkpoints"
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    rows = []
    for r in order:
        run = out / r
        cmd = [sys.executable, "-m", "robench", "train-defense", "dataset=mnist", "model=cw_mnist", f"defense={r}",
               "budget=linf_0.3", "eval.n_samples=null", "progress=false", f"checkpoint_dir={ck}",
               f"hydra.run.dir={run}", *args.extra]
        print("$", " ".join(shlex.quote(c) for c in cmd[2:]), flush=True)
        t = time.perf_counter()
        p = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if p.returncode != 0:
            print(p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit {p.returncode}", flush=True)
            continue
        s = json.loads((run / "summary.json").read_text())
        rows.append((r, s["clean_accuracy"], s.get("robust_accuracy"), s["train_seconds"], time.perf_counter() - t))
        print(f"  {r}: clean {s['clean_accuracy']:.2%}  robust {s.get('robust_accuracy') or 0:.2%}  "
              f"train {s['train_seconds']:.1f}s", flush=True)
    md = ["| recipe | clean acc | PGD-40 robust acc (Linf 0.3) | training seconds |", "|---|---|---|---|"]
    md += [f"| {r} | {c:.2%} | {rb:.2%} | {t:.1f} |" for r, c, rb, t, _ in rows]
    text = "\n".join(md) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_recipes.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
