"""What does GenAttack cost per query, next to the victim's own forward pass per row?

GenAttack (targeted, Linf 0.3, the Table 2.1 defaults N=6, rho=0.05, alpha=1.0) on the first ``--n``
originally-correct MNIST test images against the default victim (mnist / cw_mnist / defense none),
timed two ways in one process:

* (a) robench: ``GenAttack`` driving an ``Oracle`` for ``--generations`` generations
  (``max_queries = N + G (N - 1)``), ``finalize()`` included; seconds / queries made.
  Equal work for every sample needs the oracle to keep answering samples it has seen succeed, so
  (a) uses ``stop_on_success=False`` (GenAttack follows the oracle's ``active``, so every sample
  stays in every generation's batch);
* (b) raw victim: ``model(rows)`` under ``no_grad`` on a batch of the same shape as one generation
  of (a) (``n * (N - 1)`` rows, the children of every sample in one call), ``G`` times; seconds / rows.

Warm-up once, then ``--repeats`` rounds (the order of (a) and (b) swaps every round); medians are
reported with the ratio (a)/(b) as a final line ``RATIO <value>``. An information row times the
usual run (the oracle's default ``stop_on_success=True``: samples leave when they succeed, so later
generations are smaller batches, whose forward costs more per row).

    python benchmarks/bench_genattack.py [--n 100] [--generations 100] [--repeats 5] [--device auto]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from robench.attacks.score.genattack import GenAttack
from robench.models.checkpoint import checkpoint_path, load_checkpoint
from robench.config import resolve_device
from robench.data import eval_slice, load_dataset
from robench.errors import RobenchError
from robench.models import build_model
from robench.referee.oracle import Oracle

EPS, SEED, N = 0.3, 0, 6


def config_dir() -> Path:
    try:
        import robench.configs as c
        d = Path(c.__file__).parent
        if (d / "dataset" / "mnist.yaml").exists():
            return d
    except ImportError:
        pass
    return Path("configs")


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_genattack(model, x0, y, t, max_queries, stop_on_success, device):
    sync(device)
    s = time.perf_counter()
    o = Oracle(model, x0, y, access="scores", norm="linf", eps=EPS, max_queries=max_queries, targets=t,
               num_classes=10, stop_on_success=stop_on_success)
    GenAttack(pop_size=N).run(o, torch.Generator(device=device).manual_seed(SEED))
    r = o.finalize()
    sync(device)
    return time.perf_counter() - s, int(r.queries.sum()), r


def run_raw(model, rows, generations, device):
    sync(device)
    s = time.perf_counter()
    with torch.no_grad():
        for _ in range(generations):
            model(rows).softmax(1)
    sync(device)
    return time.perf_counter() - s, generations * len(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=100, help="originally-correct MNIST test images (one batch)")
    p.add_argument("--generations", type=int, default=100)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--checkpoint", default=None)
    args = p.parse_args(argv)
    cdir = config_dir()
    dcfg = OmegaConf.load(cdir / "dataset" / "mnist.yaml")
    mcfg = OmegaConf.to_container(OmegaConf.load(cdir / "model" / "cw_mnist.yaml"), resolve=True)
    path = Path(args.checkpoint) if args.checkpoint else checkpoint_path(
        "checkpoints", OmegaConf.to_container(dcfg, resolve=True), mcfg, "none")
    if not path.exists():
        print(f"no checkpoint at {path}: run `robench train-defense` (dataset=mnist model=cw_mnist defense=none) first")
        return 2
    try:
        device = resolve_device(args.device)
        splits = load_dataset(dcfg)
        model = build_model(mcfg["name"], splits, mcfg.get("params"))
        load_checkpoint(path, model)
    except RobenchError as e:
        print(f"error: {e}")
        return 2
    model = model.to(device).eval()
    _, x, y = eval_slice(splits, None)
    x, y = x.to(device), y.to(device)
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    x0, y = x[ok][:args.n], y[ok][:args.n]
    t = (y + torch.randint(1, 10, y.shape, generator=torch.Generator().manual_seed(SEED)).to(device)) % 10
    n, G = len(y), args.generations
    mq = N + G * (N - 1)
    rows = x0.repeat_interleave(N - 1, 0).clone()
    print(f"victim {path} on {device} ({torch.get_num_threads()} threads), n={n}, GenAttack targeted linf {EPS}, "
          f"N={N}, {G} generations (max_queries {mq}), raw batch {len(rows)} rows, repeats={args.repeats}")

    _, q, r = run_genattack(model, x0, y, t, mq, False, device)  # warm-up + check
    assert q == n * mq, f"expected every sample to spend {mq} queries, got {q} in all"
    run_raw(model, rows, G, device)
    ta, tb, ti = [], [], []
    qi = 0
    for k in range(args.repeats):
        for which in (("a", "b") if k % 2 == 0 else ("b", "a")):
            if which == "a":
                s, q, _ = run_genattack(model, x0, y, t, mq, False, device)
                ta.append(s / q)
            else:
                s, m = run_raw(model, rows, G, device)
                tb.append(s / m)
        s, qi, ri = run_genattack(model, x0, y, t, mq, True, device)
        ti.append(s / qi)
        print(f"round {k + 1}/{args.repeats}: genattack {ta[-1] * 1e6:.1f} us/query  raw forward {tb[-1] * 1e6:.1f} us/row  "
              f"(usual run {ti[-1] * 1e6:.1f} us/query)")
    ma, mb, mi = statistics.median(ta), statistics.median(tb), statistics.median(ti)
    paired = statistics.median(a / b for a, b in zip(ta, tb))
    print(f"median: genattack {ma * 1e6:.1f} us/query (equal work, {n * mq} queries), raw forward {mb * 1e6:.1f} us/row "
          f"({len(rows)}-row batches); usual run (stop on success) {mi * 1e6:.1f} us/query over {qi} queries, "
          f"success {ri.success.float().mean().item():.1%} within {mq} queries")
    print(f"genattack/raw: ratio of medians {ma / mb:.3f}, median of per-round ratios {paired:.3f}, "
          f"ratio of minimums {min(ta) / min(tb):.3f}; usual run / raw {mi / mb:.3f}")
    print(f"RATIO {ma / mb:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
