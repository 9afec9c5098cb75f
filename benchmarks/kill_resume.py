"""Records on disk while a run goes, and SIGKILL + rerun = an uninterrupted run (README, "What a run writes").

1. A reference `robench attack` run (default: `attack=square`, the default 1,000-image embedded MNIST
   test split) without interruption: seconds from the command's start to the first row in
   records.csv, and to its end.
2. The same command in another folder, killed with SIGKILL at ``--kills`` seeded random times (each
   uniform in [--min, --max] seconds after that (re)start) and rerun into the same folder after each
   kill; the last rerun goes to the end. Each kill prints what records.csv held (completed rows,
   pending rows).
3. The two records.csv files compared, the wall-time columns (seconds, batch_seconds) left out.
   Last line: ``IDENTICAL True`` or ``IDENTICAL False``.

Every process runs with OMP_NUM_THREADS=1 under ``nice -n 5``. Extra arguments after ``--`` are
Hydra overrides for both runs (e.g. ``-- dataset.n_samples=100 budget.max_queries=1000``).

    .venv/bin/python benchmarks/kill_resume.py --checkpoint-dir checkpoints --out /tmp/kr [--kills 3] [--seed 17]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

TIME_COLUMNS = ["seconds", "batch_seconds"]


def command(run_dir: Path, args) -> list:
    return ["nice", "-n", "5", sys.executable, "-m", "robench", "attack", f"attack={args.attack}",
            f"checkpoint_dir={Path(args.checkpoint_dir).resolve()}", "progress=false", f"hydra.run.dir={run_dir}",
            *args.overrides]


def rows_on_disk(run_dir: Path):
    """(completed rows, pending rows) in records.csv now."""
    f = run_dir / "records.csv"
    if not f.exists():
        return 0, 0
    df = pd.read_csv(f)
    pend = int(df["pending"].sum()) if "pending" in df else 0
    return len(df) - pend, pend


def reference(run_dir: Path, args, env) -> None:
    t0 = time.monotonic()
    p = subprocess.Popen(command(run_dir, args), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = None
    while p.poll() is None:
        if first is None and sum(rows_on_disk(run_dir)):
            first = time.monotonic() - t0
            print(f"reference: first rows on disk after {first:.1f} s ({'%d completed, %d pending' % rows_on_disk(run_dir)})",
                  flush=True)
        time.sleep(0.2)
    if p.returncode != 0:
        sys.exit(f"reference run failed (exit {p.returncode}); run the command by hand to see why")
    print(f"reference: finished after {time.monotonic() - t0:.1f} s", flush=True)


def killed(run_dir: Path, args, env) -> None:
    rng = random.Random(args.seed)
    for k in range(args.kills + 1):
        p = subprocess.Popen(command(run_dir, args), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if k == args.kills:
            if p.wait() != 0:
                sys.exit(f"final rerun failed (exit {p.returncode})")
            break
        t = rng.uniform(args.min, args.max)
        try:
            p.wait(timeout=t)
            sys.exit(f"the run ended before kill {k + 1} at {t:.1f} s: lower --min/--max or use a longer run")
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            p.wait()
        prog = json.loads((run_dir / "progress.json").read_text()) if (run_dir / "progress.json").exists() else {}
        done, pend = rows_on_disk(run_dir)
        print(f"kill {k + 1} at {t:.1f} s after (re)start: records.csv {done} completed rows, {pend} pending, "
              f"batches done {prog.get('batches_done')}", flush=True)
    s = json.loads((run_dir / "summary.json").read_text())
    print(f"killed run: finished, resumed_batches {s['resumed_batches']}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint-dir", default="checkpoints")
    ap.add_argument("--out", required=True, help="folder for the two run folders (emptied first)")
    ap.add_argument("--attack", default="square")
    ap.add_argument("--kills", type=int, default=3)
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("--min", type=float, default=60.0)
    ap.add_argument("--max", type=float, default=300.0)
    ap.add_argument("--skip-reference", action="store_true", help="reuse OUT/ref from an earlier call")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if not args.skip_reference:
        shutil.rmtree(out / "ref", ignore_errors=True)
        reference(out / "ref", args, env)
    shutil.rmtree(out / "killed", ignore_errors=True)
    killed(out / "killed", args, env)
    a, b = (pd.read_csv(out / d / "records.csv") for d in ("ref", "killed"))
    same = list(a.columns) == list(b.columns) and \
        a.drop(columns=TIME_COLUMNS).to_csv(index=False) == b.drop(columns=TIME_COLUMNS).to_csv(index=False)
    print(f"IDENTICAL {same}")


if __name__ == "__main__":
    main()
