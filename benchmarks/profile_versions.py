"""Where does the time go, in this tree and in an earlier commit? One attack, the same work, profiled in both.

``compare_versions.py`` measures robench's time over a reference library's, a ratio that carries
the noise of both timings. This script answers the follow-up question directly: it exports ``--base``
(``git archive``), then runs the same attack through the oracle (as ``bench_torchattacks.py`` does:
``Oracle`` + the attack + ``finalize()``) on the default victim, in a subprocess per tree, one after
the other: a warm-up, ``--repeats`` timed runs (seconds and total queries, i.e. the work done), then
one run under cProfile, whose top functions by own time are printed. Equal queries and equal
profiles mean equal engines; more queries mean the attack itself now does more work.

    python benchmarks/profile_versions.py --base 53f45bc --attack pgd [--n 500] [--repeats 3] [--threads 1] --checkpoint PATH
    python benchmarks/profile_versions.py --base 53f45bc --attack cw_l2 --n 100 --checkpoint PATH

``pgd``: Linf 0.3, 40 steps of 2.5 eps / 40, random start, early stop (robench's default);
``cw_l2``: one constant c = 10, 200 Adam steps of 0.01, abort early (the settings of
``bench_torchattacks.py``).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_versions import ROOT, export  # noqa: E402  (the same git-archive export of the base tree)

CHILD = r'''
import cProfile, pstats, sys, time, torch
from pathlib import Path
from omegaconf import OmegaConf
attack, n, repeats, threads, ckpt = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
if threads:
    torch.set_num_threads(threads)
from robench.models.checkpoint import load_checkpoint
from robench.config import configs_dir
from robench.data import eval_slice, load_dataset
from robench.models import build_model
from robench.referee.oracle import Oracle
splits = load_dataset(OmegaConf.load(configs_dir() / "dataset" / "mnist.yaml"))
model = build_model("cw_mnist", splits)
load_checkpoint(Path(ckpt), model)
model.eval()
_, x, y = eval_slice(splits, None)
with torch.no_grad():
    ok = model(x).argmax(1) == y
x, y = x[ok][:n], y[ok][:n]
def run():
    gen = torch.Generator().manual_seed(0)
    if attack == "pgd":
        from robench.attacks.whitebox.pgd import PGD
        o = Oracle(model, x, y, access="gradient", norm="linf", eps=0.3, max_queries=100_000, num_classes=10)
        PGD(steps=40, step_size=2.5 * 0.3 / 40, early_stop=True).run(o, gen)
    else:
        from robench.attacks.whitebox.cw import CWL2
        o = Oracle(model, x, y, access="gradient", norm="l2", eps=None, max_queries=100_000, num_classes=10,
                   stop_on_success=False)
        CWL2(binary_search_steps=1, max_iterations=200, initial_const=10.0).run(o, gen)
    return o.finalize()
run()
ts = []
for _ in range(repeats):
    t = time.perf_counter()
    r = run()
    ts.append(time.perf_counter() - t)
print(f"TIMES {' '.join(f'{v:.3f}' for v in ts)} QUERIES {int(r.queries.sum())} SUCCESS {int(r.success.sum())}/{len(y)}")
pr = cProfile.Profile()
pr.enable()
run()
pr.disable()
pstats.Stats(pr).sort_stats("tottime").print_stats(12)
'''


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", required=True)
    ap.add_argument("--attack", choices=("pgd", "cw_l2"), default="pgd")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "mnist" / "cw_mnist" / "none.pt"))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="robench-base-") as tmp:
        for label, tree in (("base " + a.base, export(a.base, Path(tmp))), ("this tree", ROOT)):
            print(f"===== {label}", flush=True)
            env = dict(os.environ, PYTHONPATH=str(tree))
            p = subprocess.run([sys.executable, "-c", CHILD, a.attack, str(a.n), str(a.repeats), str(a.threads),
                                a.checkpoint], cwd=tempfile.gettempdir(), env=env, capture_output=True, text=True)
            if p.returncode != 0:
                sys.exit(f"the {label} run failed:\n{p.stderr[-2000:]}")
            print("\n".join(ln for ln in p.stdout.splitlines() if ln.strip()), flush=True)


if __name__ == "__main__":
    main()
