"""Do two trees compute the same records? The same ``robench attack`` commands in an earlier commit and in
this tree, with one checkpoint, then a diff of every records.csv (time columns aside).

The earlier commit (``--base``, any git ref) is exported with ``git archive`` into a temporary folder;
each command runs there and here as ``python -m robench attack ...`` with ``PYTHONPATH`` set to the
tree (its ``robench/configs`` linked to its own ``configs/``), the same ``checkpoint_dir`` and a run
folder of its own. The commands cover PGD, Square, Sign-OPT, GenAttack, the adaptive re-run, the
detection protocol and a sharded run. It prints one line per command (``SAME`` or the columns and
rows that differ) and, last, ``DIFFERENCES <n>``.

    python benchmarks/compare_records.py --base 60f3c98 --checkpoint-dir checkpoints [--only pgd,square] [--keep DIR]

It needs the default victim's checkpoint (``robench train-defense``) under ``--checkpoint-dir``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
TIME_COLUMNS = ["seconds", "batch_seconds"]

COMMANDS = {
    "pgd": ["attack=pgd", "dataset.n_samples=100", "attack.params.steps=10"],
    "square": ["attack=square", "dataset.n_samples=40", "budget.max_queries=300"],
    "signopt": ["attack=signopt", "dataset.n_samples=8", "budget=l2_2.0", "budget.eps=null", "budget.max_queries=600"],
    "genattack": ["attack=genattack", "dataset.n_samples=20", "budget.max_queries=400"],
    "adaptive": ["attack=pgd", "defense=[none,jpeg]", "adaptive=true", "dataset.n_samples=30", "attack.params.steps=5"],
    "detection": ["attack=pgd", "defense=[none,feature_squeeze_detect]", "dataset.n_samples=30", "attack.params.steps=5"],
    "sharded": ["attack=pgd", "dataset.n_samples=100", "dataset.shard=1/2", "attack.batch_size=25", "attack.params.steps=5"],
}


def export(ref: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def run(tree: Path, name: str, args: list, ckpt: Path, out: Path) -> Path:
    link = tree / "robench" / "configs"
    if not link.exists():
        link.symlink_to(tree / "configs")
    run_dir = out / name
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    p = subprocess.run([sys.executable, "-m", "robench", "attack", *args, "progress=false", "quiet=true",
                        f"checkpoint_dir={ckpt}", f"hydra.run.dir={run_dir}"], cwd=tree, env=env,
                       capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{name} failed in {tree}:\n{p.stdout[-1500:]}\n{p.stderr[-1500:]}")
    return run_dir


def diff(a: Path, b: Path) -> str:
    ra = pd.read_csv(a / "records.csv").drop(columns=TIME_COLUMNS)
    rb = pd.read_csv(b / "records.csv").drop(columns=TIME_COLUMNS)
    if list(ra.columns) != list(rb.columns):
        return f"columns differ: {sorted(set(ra.columns) ^ set(rb.columns))}"
    if ra.shape != rb.shape:
        return f"shapes differ: {ra.shape} vs {rb.shape}"
    neq = ~((ra == rb) | (ra.isna() & rb.isna()))
    if not neq.values.any():
        return "SAME"
    cols = [c for c in ra.columns if neq[c].any()]
    rows = neq.any(axis=1).sum()
    return f"{rows} row(s) differ in {', '.join(cols)}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", required=True, help="git ref of the earlier tree")
    ap.add_argument("--checkpoint-dir", required=True)
    ap.add_argument("--only", default="", help="comma-separated command names (default: all)")
    ap.add_argument("--keep", default=None, help="keep the run folders here")
    a = ap.parse_args()
    names = [n for n in a.only.split(",") if n] or list(COMMANDS)
    bad = [n for n in names if n not in COMMANDS]
    if bad:
        sys.exit(f"unknown command name(s) {bad}; valid: {', '.join(COMMANDS)}")
    ckpt = Path(a.checkpoint_dir).absolute()
    tmp = Path(tempfile.mkdtemp(prefix="robench-compare-"))
    base = export(a.base, tmp / "base")
    here = tmp / "here"
    here.mkdir()
    for d in ("robench", "configs"):
        shutil.copytree(ROOT / d, here / d, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "configs"))
    n_diff = 0
    for n in names:
        ra = run(base, n, COMMANDS[n], ckpt, tmp / "out_base")
        rb = run(here, n, COMMANDS[n], ckpt, tmp / "out_here")
        d = diff(ra, rb)
        n_diff += d != "SAME"
        print(f"{n:10s} {d}", flush=True)
    print(f"DIFFERENCES {n_diff}")
    if a.keep:
        shutil.copytree(tmp, a.keep, dirs_exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
