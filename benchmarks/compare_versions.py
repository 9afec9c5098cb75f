"""Is this tree slower than an earlier commit? One command runs a benchmark script from both trees.

The earlier commit (``--base``, any git ref) is exported with ``git archive`` into a temporary folder;
the benchmark (``bench_oracle.py`` by default, or ``bench_torchattacks.py``) then runs from the base
tree and from this tree in alternating subprocesses (``--rounds`` of each, the order swapping every
round, so drift of the CPU's clock or of other load hits both alike), each with ``PYTHONPATH`` set to
its own tree and the same arguments. Each run's ``RATIO`` lines (robench's time over the same work
done without robench, measured inside that one process) are collected; the ratio of ratios
``median(new) / median(base)`` is robench's slowdown (> 1) or speed-up (< 1) against the base,
with the machine's speed divided out.

    python benchmarks/compare_versions.py --base 53f45bc [--rounds 3] [--script bench_oracle.py] -- --n 500 --repeats 3 --checkpoint PATH

The last line is ``SLOWDOWN <name> <median new/base>`` for every ratio the script prints.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def export(ref: str, dest: Path) -> Path:
    """The tree of ``ref`` under ``dest`` (robench/, configs/, benchmarks/ and the rest, no .git)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def ratios(tree: Path, script: str, args: list) -> dict:
    """{name: ratio} from one run of ``script`` in ``tree`` (lines ``RATIO <value>``, ``RATIO <name> <value> ...`` or
    bench_overhead.py's ``RATIO <victim> <attack> <value>``)."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    p = subprocess.run([sys.executable, str(tree / "benchmarks" / script), *args], cwd=tree, env=env,
                       capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{script} failed in {tree}:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    out = parse_ratios(p.stdout)
    if not out:
        sys.exit(f"{script} printed no RATIO line in {tree}")
    return out


def parse_ratios(stdout: str) -> dict:
    """{name: ratio} of a benchmark's ``RATIO`` lines (see :func:`ratios`)."""
    out = {}
    for line in stdout.splitlines():
        two = re.fullmatch(r"RATIO\s+(\S+)\s+(\S+)\s+([0-9.]+)", line.strip())  # bench_overhead: victim, attack
        if two and not two.group(2).replace(".", "").isdigit():
            out[f"{two.group(1)}/{two.group(2)}"] = float(two.group(3))
            continue
        m = re.match(r"RATIO\s+(?:(\S+)\s+)?([0-9.]+)", line.strip())
        if m and not (m.group(1) or "").replace(".", "").isdigit():
            out[m.group(1) or "oracle"] = float(m.group(2))
    return out


def main() -> None:
    argv = sys.argv[1:]
    rest = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", required=True, help="git ref of the earlier tree (e.g. a commit of main)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--script", default="bench_oracle.py")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="robench-base-") as tmp:
        base = export(a.base, Path(tmp))
        got = {"base": [], "new": []}
        for r in range(a.rounds):
            order = [("base", base), ("new", ROOT)] if r % 2 == 0 else [("new", ROOT), ("base", base)]
            for label, tree in order:
                res = ratios(tree, a.script, rest)
                got[label].append(res)
                print(f"round {r + 1} {label}: " + ", ".join(f"{k} {v:.3f}" for k, v in res.items()), flush=True)
    for name in got["new"][0]:
        nb = statistics.median(x[name] for x in got["base"])
        nn = statistics.median(x[name] for x in got["new"])
        print(f"{name}: robench/reference ratio, median of {a.rounds}: base {nb:.3f}, new {nn:.3f}")
    for name in got["new"][0]:
        nb = statistics.median(x[name] for x in got["base"])
        nn = statistics.median(x[name] for x in got["new"])
        print(f"SLOWDOWN {name} {nn / nb:.3f}")


if __name__ == "__main__":
    main()
