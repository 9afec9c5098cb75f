"""Queries at the speed of the victim? The time robench's own work adds to a query-based attack, per attack.

For a query-based attack the floor on a given device is the victim's forward pass over the rows it queries.
This benchmark runs each attack through ``robench.evaluate`` (the engine, the oracle, the guard, the
flusher: what a user runs) on one thread, against two MNIST victims, and measures in the same process:

* ``wall``: the seconds of the ``robench.evaluate`` call;
* ``victim``: the seconds a bare copy of the victim (the same weights, no instance forwards, no wrapper) takes on every
  batch of rows the victim is asked for during that call, timed right before or after the real forward on the
  same rows (interleaved, so load on a shared machine hits both alike; alternating, because whichever runs
  second finds warm caches);
* ``ratio = (wall - victim) / victim``: the run's time per unit of bare forward time (1.00: robench adds nothing;
  the real forward carries the guard's forward wrappers, which count as robench's).

Victims: ``lenet`` (LeNet-5: conv 6@5x5, pool, conv 16@5x5, pool, FC 120, 84, 10; 44k weights) and
``cw_mnist`` (robench's registered C&W MNIST CNN; 312k weights), each trained here for a few epochs on the
4,000 embedded MNIST training images (``--weights trained``, seeded, cached under ``--cache``) or left at
their random initialisation (``--weights random``; the labels are then the victim's own predictions).
Images: the first ``--n`` test images per attack (one oracle batch). Attacks and budgets: see ``ATTACKS``.

Each (victim, attack) runs ``--repeats`` times (the order alternates attacks every round); the median ratio is
reported with its min..max, and a digest of the records (time columns aside), which must not change with a
speed-up (``--digest-only`` prints just those). Last line: ``MAX_RATIO <value>`` over the table.

``--channels-last`` / ``--compile`` give robench's victim ``victim_speed`` (the bare copy stays plain: a ratio
below 1 is the speed-up); ``--count-ops`` prints, instead of timings, the tensor operations dispatched outside
the victim's forward per victim call (``OPS <victim> <attack> <value>``).

    OMP_NUM_THREADS=1 python benchmarks/bench_overhead.py [--victims lenet,cw_mnist] [--attacks square,...]
        [--repeats 3] [--weights trained|random] [--cache DIR] [--channels-last] [--compile] [--count-ops]
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

#: attack -> (registered name, parameters, budget (norm, eps, max_queries), samples): the shipped parameters,
#: budgets long enough that the attack's steady state dominates
ATTACKS = {
    "square": ("square", {}, ("linf", 0.15, 1000), 50),
    "signopt": ("signopt", {}, ("l2", None, 3000), 20),
    "hsja": ("hsja", {}, ("l2", None, 3000), 20),
    "genattack": ("genattack", {}, ("linf", 0.15, 1500), 50),
    "nes": ("nes", {}, ("linf", 0.15, 2000), 20),
    "boundary": ("boundary", {}, ("l2", None, 1500), 20),
}


def lenet() -> nn.Module:
    """LeNet-5 on 28x28 inputs (padding 2 on the first convolution, max pooling, ReLU)."""
    return nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                         nn.Linear(84, 10))


def build(name: str, splits) -> nn.Module:
    from robench.models import build_model

    return lenet() if name == "lenet" else build_model(name, splits)


def trained(name: str, splits, cache: Path, epochs: int) -> nn.Module:
    """The victim trained for ``epochs`` epochs (Adam 1e-3, batches of 64, seed 0) on the embedded training split."""
    f = cache / f"{name}_e{epochs}.pt"
    torch.manual_seed(0)
    model = build(name, splits)
    if f.exists():
        model.load_state_dict(torch.load(f, weights_only=True))
        return model.eval()
    xs, ys = zip(*(splits.train[i][:2] for i in range(len(splits.train))))
    x, y = torch.stack(xs).float(), torch.as_tensor(ys)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=g)
        for s in range(0, len(y), 64):
            i = perm[s:s + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[i]), y[i]).backward()
            opt.step()
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), f)
    return model.eval()


class Timed(nn.Module):
    """The victim as robench gets it, with a bare copy timed on every batch of rows it is asked for."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.__dict__["bare"] = copy.deepcopy(model)  # not a submodule: the guard's forward wrappers never reach it
        self.bare_seconds = 0.0
        self.rows = 0
        self.sizes = []  # rows per call, in order (the floor loop replays them)

    def _bare(self, x):
        with torch.no_grad():
            t = time.perf_counter()
            self.bare(x.detach())
            self.bare_seconds += time.perf_counter() - t

    #: True while a forward runs (--count-ops: operations in there are the victim's)
    inside = False

    def forward(self, x):
        Timed.inside = True
        first = len(self.sizes) % 2 == 1  # alternate which runs first: the second runs on warm caches (about 8%
        if first:                         # faster on LeNet), so neither side gets that advantage every time
            self._bare(x)
        out = self.model(x)
        if not first:
            self._bare(x)
        self.rows += x.shape[0]
        self.sizes.append(x.shape[0])
        Timed.inside = False
        return out


def count_ops(model, x, y, key: str) -> float:
    """Tensor operations dispatched outside the victim's forward per victim call, in one :func:`run_one` (a
    ``TorchDispatchMode`` counts every operation; those inside :class:`Timed`'s forward are not counted)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    n = [0]

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not Timed.inside:
                n[0] += 1
            return func(*args, **(kwargs or {}))

    with Count():
        sizes = run_one(model, x, y, key)[5]
    return n[0] / max(1, len(sizes))


def digest(records) -> str:
    cols = [c for c in records.columns if c not in ("seconds", "batch_seconds", "seconds_at_success")]
    return hashlib.sha256(records[cols].to_csv(index=False).encode()).hexdigest()[:12]


def floor_loop(model, x, y, sizes, eps: float = 0.15, seed: int = 0):
    """The floor of any eager-mode query loop: for each call of the robench run (``sizes``: its rows per call, in
    order), a minimal random-search step without robench (a random +-eps candidate, clamped, one forward of that
    many rows, the margin, keep the better): about ten tensor operations besides the forward. Returns
    (wall, bare) measured as for ``run_one``: its ratio is what PyTorch's per-call and per-operation costs alone
    add on this victim and these batch sizes."""
    timed = Timed(model)
    g = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    best = torch.full((n,), float("inf"))
    cur = x.clone()
    t = time.perf_counter()
    with torch.no_grad():
        for b in sizes:
            rows = torch.arange(b) % n
            cand = (cur[rows] + eps * torch.sign(torch.randn(cur[rows].shape, generator=g))).clamp(0, 1)
            z = timed(cand)
            own = z.gather(1, y[rows, None]).squeeze(1)
            m = own - z.scatter(1, y[rows, None], float("-inf")).amax(1)
            better = m < best[rows]
            best[rows] = torch.where(better, m, best[rows])
            cur[rows] = torch.where(better[:, None, None, None], cand, cur[rows])
    return time.perf_counter() - t, timed.bare_seconds


def run_one(model, x, y, key: str, speed=None):
    """(wall seconds, bare forward seconds, rows, record digest, records, rows per call) of one robench.evaluate
    call."""
    import robench

    name, params, (norm, eps, mq), _ = ATTACKS[key]
    if speed is not None:  # robench converts the victim it gets in place: a copy, so the next bare copy is plain
        model = copy.deepcopy(model)
    timed = Timed(model)
    kw = {} if speed is None else {"victim_speed": speed}
    t = time.perf_counter()
    res = robench.evaluate(timed, x, y, attack=name, budget=robench.Budget(norm, eps, max_queries=mq), seed=0,
                           batch_size=len(y), **kw, **params)
    wall = time.perf_counter() - t
    return wall, timed.bare_seconds, timed.rows, digest(res.records), res.records, timed.sizes


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--victims", default="lenet,cw_mnist")
    p.add_argument("--attacks", default=",".join(ATTACKS))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--weights", choices=("trained", "random"), default="trained")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--cache", default=os.environ.get("ROBENCH_BENCH_CACHE", str(Path.home() / ".cache" / "robench" / "bench_overhead")))
    p.add_argument("--n", type=int, default=None, help="images per attack (default: the attack's row of ATTACKS)")
    p.add_argument("--digest-only", action="store_true", help="one run each; print the record digests")
    p.add_argument("--channels-last", action="store_true",
                   help="victim_speed.channels_last for robench's victim (the bare copy stays as it is)")
    p.add_argument("--compile", action="store_true", help="victim_speed.compile for robench's victim (likewise)")
    p.add_argument("--count-ops", action="store_true",
                   help="one run each under a dispatch counter; print the tensor operations per victim call outside "
                        "the forward (OPS lines; no timing)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    speed = {k: True for k, on in (("channels_last", args.channels_last), ("compile", args.compile)) if on} or None

    from omegaconf import OmegaConf

    from robench.data import eval_slice, load_dataset
    from robench.registry import configs_dir

    splits = load_dataset(OmegaConf.load(configs_dir() / "dataset" / "mnist.yaml"))
    victims = [v for v in args.victims.split(",") if v]
    keys = [a for a in args.attacks.split(",") if a]
    bad = [a for a in keys if a not in ATTACKS]
    if bad:
        print(f"unknown attack(s) {bad}; valid: {', '.join(ATTACKS)}")
        return 2
    if args.repeats < 1 or (args.n is not None and args.n < 1) or args.epochs < 1:
        print(f"--repeats, --n and --epochs must be >= 1 (got {args.repeats}, {args.n}, {args.epochs})")
        return 2
    for v in victims:  # LeNet here, or an MNIST model of robench's registry
        try:
            build(v, splits)
        except Exception as e:
            print(f"victim {v!r}: {(str(e).splitlines() or [type(e).__name__])[0]}")
            return 2
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), weights {args.weights}, "
          f"repeats {args.repeats}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    worst = 0.0
    for vname in victims:
        model = trained(vname, splits, Path(args.cache), args.epochs) if args.weights == "trained" else \
            (torch.manual_seed(0), build(vname, splits))[1].eval()
        _, x, y = eval_slice(splits, 200)
        if args.weights == "random":
            with torch.no_grad():
                y = model(x).argmax(1)
        with torch.no_grad():
            acc = (model(x).argmax(1) == y).float().mean().item()
        data = {k: (x[:args.n or ATTACKS[k][3]], y[:args.n or ATTACKS[k][3]]) for k in keys}
        if args.count_ops:
            for k in keys:
                print(f"OPS {vname} {k} {count_ops(model, *data[k], k):.1f}")
            continue
        run_one(model, x[:4], y[:4], "square")  # warm-up: imports, first-call costs
        print(f"\nvictim {vname} ({sum(p.numel() for p in model.parameters()):,} weights, clean accuracy {acc:.1%} "
              f"on 200 test images)")
        rows = {k: [] for k in keys}
        for r in range(1 if args.digest_only else args.repeats):
            for k in (keys if r % 2 == 0 else keys[::-1]):
                wall, bare, n_rows, dg, _, sizes = run_one(model, *data[k], k, speed)
                fw, fb = floor_loop(model, *data[k], sizes)
                rows[k].append(((wall - bare) / bare, wall, bare, n_rows, dg, (fw - fb) / fb))
        print(f"{'attack':10s} {'budget':18s} {'n':>3s} {'rows':>8s} {'wall s':>8s} {'victim s':>8s} "
              f"{'us/row':>7s} {'ratio':>6s} {'min..max':>12s} {'floor':>6s} digest")
        for k in keys:
            rs = rows[k]
            ratio = statistics.median(v[0] for v in rs)
            worst = max(worst, ratio)
            dgs = {v[4] for v in rs}
            wall, bare, n_rows = (statistics.median(v[i] for v in rs) for i in (1, 2, 3))
            norm, eps, mq = ATTACKS[k][2]
            print(f"{k:10s} {f'{norm} {eps} {mq}q':18s} {len(data[k][1]):3d} {int(n_rows):8d} {wall:8.2f} {bare:8.2f} "
                  f"{1e6 * bare / n_rows:7.1f} {ratio:6.3f} {f'{min(v[0] for v in rs):.3f}..{max(v[0] for v in rs):.3f}':>12s} "
                  f"{statistics.median(v[5] for v in rs):6.3f} {','.join(sorted(dgs))}")
            print(f"RATIO {vname} {k} {ratio:.4f}")
            print(f"FLOOR {vname} {k} {statistics.median(v[5] for v in rs):.4f}")
    print(f"MAX_RATIO {worst:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
