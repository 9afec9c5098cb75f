"""What does ``isolate=true`` cost per query? And what does the referee's in-process guard cost?

Runs a score-based attack (square, Linf eps 0.1) and a hard-label attack (signopt, L2, minimal
distortion) on the first ``--n`` MNIST test images against cw_mnist, three ways, in one process:

* **bare**: ``attack.run`` on ``Oracle(...).view()`` directly (no engine, no guard);
* **engine**: ``robench.evaluate`` (the engine with the referee's guard: counting victim, forward
  hooks, integrity checks, independent final check);
* **isolated**: ``robench.evaluate(..., isolate=True)``: the attack in a bubblewrap sandbox, every query
  a typed frame over a socket (robench/referee/isolation). The script also runs in a tree from before
  issue 25 (then: a spawned child, pickled messages over a pipe), so ``compare_versions``-style runs
  of both trees measure what the boundary costs against the old isolation.

The engine and isolated runs give identical records (the script checks), so their time difference
over the same queries is the isolation's overhead; the child's start (spawn, importing torch) is
timed on its own and reported apart (the sandbox's start: bwrap, a fresh interpreter importing torch
and robench, building the attack). Medians over ``--repeats`` rounds (order rotated each round).
Weights: ``--checkpoint`` (a robench checkpoint of cw_mnist) or, by default, the randomly
initialised network (seed 0): timing only, the numbers of queries are what they are.

    python benchmarks/bench_isolate.py [--n 20] [--repeats 3] [--checkpoint PATH]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

import robench
from robench.data import eval_slice, load_dataset
from robench.models import build_model

try:
    from robench.referee.oracle import Oracle
except ImportError:  # a tree from before issue 26's layout
    from robench.oracle import Oracle
from robench.registry import ATTACKS, instantiate

CASES = [("square", robench.Budget(norm="linf", eps=0.1, max_queries=500), {}),
         ("signopt", robench.Budget(norm="l2", eps=None, max_queries=500), {"q": 20, "n_init": 20})]


def bare(model, name, params, budget, x, y):
    atk = instantiate(ATTACKS, name, params, "attack")
    t = time.perf_counter()
    o = Oracle(model, x, y, access=atk.access, norm=budget.norm, eps=budget.eps, max_queries=budget.max_queries,
               num_classes=10, stop_on_success=not atk.minimizes_distortion)
    atk.run(o.view(), torch.Generator().manual_seed(0))
    q = int(o.finalize().queries.sum())
    return time.perf_counter() - t, q


def engine(model, name, params, budget, x, y, isolate):
    t = time.perf_counter()
    r = robench.evaluate(model, x, y, attack=name, budget=budget, batch_size=len(y), correct_only=False,
                         isolate=isolate, **params)
    return time.perf_counter() - t, int(r.summary["total_queries"]), r.records


def spawn_seconds(name, params):
    try:
        from robench.evaluation.spec import AttackSpec, freeze
        from robench.referee.isolation import IsolatedAttack
    except ImportError:  # a tree from before issue 25: the spawned child of robench/isolate.py
        from robench.isolate import IsolatedRunner

        atk = instantiate(ATTACKS, name, params, "attack")
        t = time.perf_counter()
        IsolatedRunner(atk, name).close()
        return time.perf_counter() - t
    t = time.perf_counter()
    IsolatedAttack.start(AttackSpec(name, freeze(params))).close()
    return time.perf_counter() - t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--checkpoint", default=None)
    a = ap.parse_args(argv)
    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "configs" / "dataset" / "mnist.yaml")
    splits = load_dataset(cfg)
    torch.manual_seed(0)
    model = build_model("cw_mnist", splits)
    if a.checkpoint:
        from robench.models.checkpoint import load_checkpoint

        load_checkpoint(Path(a.checkpoint), model)
    model.eval()
    _, x, y = eval_slice(splits, a.n)
    print(f"cw_mnist ({'checkpoint ' + a.checkpoint if a.checkpoint else 'random init'}), {a.n} images, "
          f"{torch.get_num_threads()} threads, {a.repeats} rounds (medians)")
    for name, budget, params in CASES:
        _, _, rec_e = engine(model, name, params, budget, x, y, False)  # warm-up, and the equality check
        _, _, rec_i = engine(model, name, params, budget, x, y, True)
        same = rec_e.drop(columns=["seconds", "batch_seconds"]).fillna(-1).equals(
            rec_i.drop(columns=["seconds", "batch_seconds"]).fillna(-1))
        times = {"bare": [], "engine": [], "isolated": [], "spawn": []}
        for r in range(a.repeats):
            order = ["bare", "engine", "isolated", "spawn"]
            for k in order[r % 4:] + order[:r % 4]:
                if k == "bare":
                    s, qb = bare(model, name, params, budget, x, y)
                elif k == "spawn":
                    s = spawn_seconds(name, params)
                else:
                    s, q, _ = engine(model, name, params, budget, x, y, k == "isolated")
                times[k].append(s)
        m = {k: statistics.median(v) for k, v in times.items()}
        per = {k: m[k] / (qb if k == "bare" else q) * 1e6 for k in ("bare", "engine", "isolated")}
        over = (m["isolated"] - m["spawn"] - m["engine"]) / q * 1e6
        print(f"{name}: {q} queries (bare: {qb}); records identical isolated vs engine: {same}")
        print(f"  us/query: bare {per['bare']:.1f}, engine (guarded) {per['engine']:.1f}, "
              f"isolated {per['isolated']:.1f} (incl. child start {m['spawn']:.2f} s)")
        print(f"  ISOLATE_OVERHEAD_US_PER_QUERY {name} {over:.1f}  (isolated - child start - engine, per query)")
        print(f"  ENGINE_VS_BARE_US_PER_QUERY {name} {per['engine'] - per['bare']:.1f}  (evaluate incl. its fixed setup and the guard, minus bare; "
              f"different generator seeds, so per query)")


if __name__ == "__main__":
    main()
