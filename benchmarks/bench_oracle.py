"""How much does the oracle cost? PGD through robench vs. the same PGD calling the model directly.

PGD Linf (eps 0.3, step size 0.01, random start, 1 restart) on the first ``--n`` MNIST test images
against the default victim (mnist / cw_mnist / defense none), timed two ways in one process:

* (a) robench: ``PGD(early_stop=False)`` driving an ``Oracle`` (then ``finalize()``);
* (b) direct: a plain loop over the model doing the identical computation: the same random start
  (a generator with the same seed), ``steps`` times ``x = clamp(x0 + clamp(x + a*sign(g) - x0, -eps, eps), 0, 1)``
  with ``g = autograd.grad(sum CE)``, all samples in one batch every step, and one final forward.

Equal work needs the oracle to keep answering samples it has already seen succeed: with its default
``stop_on_success=True`` it drops them from the model's batch itself (whatever the attack's
``early_stop``), so (a) uses ``stop_on_success=False``. Two informational rows show robench as it
is normally run: ``early_stop=True`` (the default) and ``early_stop=False`` with the oracle's default
``stop_on_success=True``.

Warm-up once, then ``--repeats`` rounds (the order of (a) and (b) swaps every round to be fair to
CPU frequency/thermal drift); medians are reported, with the ratio (a)/(b) as a final line
``RATIO <value>``.

    python benchmarks/bench_oracle.py [--n 500] [--steps 40] [--repeats 5] [--device auto] [--checkpoint PATH]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from robench.attacks.whitebox.pgd import PGD
from robench.models.checkpoint import checkpoint_path, load_checkpoint
from robench.config import resolve_device
from robench.data import eval_slice, load_dataset
from robench.errors import RobenchError
from robench.models import build_model
from robench.referee.oracle import Oracle

EPS, STEP_SIZE, MAX_QUERIES, SEED = 0.3, 0.01, 10_000, 0


def config_dir() -> Path:
    """The package's configs (robench.configs), falling back to ./configs."""
    try:
        import robench.configs as c
        d = Path(c.__file__).parent
        if (d / "dataset" / "mnist.yaml").exists():
            return d
    except ImportError:
        pass
    return Path("configs")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_robench(model, x0, y, steps: int, early_stop: bool, stop_on_success: bool, device):
    """(seconds, robust accuracy, oracle result): PGD through the oracle, finalize included."""
    sync(device)
    t = time.perf_counter()
    gen = torch.Generator(device=device).manual_seed(SEED)
    oracle = Oracle(model, x0, y, access="gradient", norm="linf", eps=EPS, max_queries=MAX_QUERIES,
                    num_classes=10, stop_on_success=stop_on_success)
    PGD(steps=steps, step_size=STEP_SIZE, early_stop=early_stop).run(oracle.view(), gen)  # what the engine hands an attack
    res = oracle.finalize()
    sync(device)
    secs = time.perf_counter() - t
    return secs, 1.0 - res.success.float().mean().item(), res


def run_direct(model, x0, y, steps: int, device, track: bool = False):
    """(seconds, robust accuracy of the final iterate, ever-fooled mask or None): the plain loop."""
    sync(device)
    t = time.perf_counter()
    gen = torch.Generator(device=device).manual_seed(SEED)
    x = (x0 + (torch.rand(x0.shape, generator=gen, device=device) * 2 - 1) * EPS).clamp(0, 1)
    fooled = torch.zeros(len(y), dtype=torch.bool, device=device) if track else None
    for _ in range(steps):
        xr = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(xr)
            g, = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), xr)
        if track:
            fooled |= logits.argmax(1) != y
        x = (x0 + ((x + STEP_SIZE * g.sign()) - x0).clamp(-EPS, EPS)).clamp(0, 1)
    with torch.no_grad():
        pred = model(x).argmax(1)
    acc = (pred == y).float().mean().item()
    sync(device)
    secs = time.perf_counter() - t
    if track:
        fooled |= pred != y
    return secs, acc, fooled


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=500, help="MNIST test images (one batch)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--checkpoint", default=None,
                   help="victim weights (default: the conventional path under ./checkpoints)")
    args = p.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    console = Console()
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
    _, x, y = eval_slice(splits, args.n)
    x0, y = x.to(device), y.to(device)
    n = len(y)
    with torch.no_grad():
        clean = (model(x0).argmax(1) == y).float().mean().item()
    console.print(f"victim {path} on {device} ({torch.get_num_threads()} threads), n={n}, clean acc {clean:.1%}; "
                  f"PGD linf eps={EPS} steps={args.steps} step={STEP_SIZE}, repeats={args.repeats}")

    # Correctness (untimed): with stop_on_success=False both follow the same trajectory, so the
    # oracle's successes are exactly the samples misclassified at some evaluated iterate.
    _, acc_a, res = run_robench(model, x0, y, args.steps, False, False, device)
    _, acc_b, fooled = run_direct(model, x0, y, args.steps, device, track=True)
    mism = int((res.success != fooled.cpu()).sum())
    assert int(res.queries.min()) == int(res.queries.max()) == args.steps + 1, "robench did not query every sample every step"

    # warm-up of everything timed
    run_robench(model, x0, y, args.steps, True, True, device)
    run_robench(model, x0, y, args.steps, False, True, device)
    run_direct(model, x0, y, args.steps, device)

    ta, tb, te, tl = [], [], [], []
    acc = {}
    for r in range(args.repeats):
        order = ("a", "b") if r % 2 == 0 else ("b", "a")
        for k in order:
            if k == "a":
                s, acc["a"], _ = run_robench(model, x0, y, args.steps, False, False, device)
                ta.append(s)
            else:
                s, acc["b"], _ = run_direct(model, x0, y, args.steps, device)
                tb.append(s)
        s, acc["e"], res_e = run_robench(model, x0, y, args.steps, True, True, device)
        te.append(s)
        s, acc["l"], res_l = run_robench(model, x0, y, args.steps, False, True, device)
        tl.append(s)
        console.print(f"round {r + 1}/{args.repeats}: robench {ta[-1]:.3f}s  direct {tb[-1]:.3f}s  "
                      f"early_stop {te[-1]:.3f}s  stop_on_success {tl[-1]:.3f}s")

    ma, mb, me, ml = (statistics.median(v) for v in (ta, tb, te, tl))
    ratio = ma / mb
    t = Table(title=f"PGD linf {EPS}, {args.steps} steps, n={n}, {device}: median of {args.repeats}")
    t.add_column("run")
    t.add_column("median s", justify="right")
    t.add_column("min..max", justify="right")
    t.add_column("/direct", justify="right")
    t.add_column("grad queries", justify="right")
    t.add_column("robust acc", justify="right")
    full = n * (args.steps + 1)
    t.add_row("(a) robench", f"{ma:.3f}", f"{min(ta):.3f}..{max(ta):.3f}",
              f"{ratio:.3f}", f"{int(res.grad_queries.sum())}", f"{acc['a']:.1%}")
    t.add_row("(b) direct", f"{mb:.3f}", f"{min(tb):.3f}..{max(tb):.3f}", "1.000",
              f"{n * args.steps}", f"{acc['b']:.1%}")
    t.add_row("robench default", f"{me:.3f}", f"{min(te):.3f}..{max(te):.3f}",
              f"{me / mb:.3f}", f"{int(res_e.grad_queries.sum())}", f"{acc['e']:.1%}")
    t.add_row("robench no-early", f"{ml:.3f}", f"{min(tl):.3f}..{max(tl):.3f}",
              f"{ml / mb:.3f}", f"{int(res_l.grad_queries.sum())}", f"{acc['l']:.1%}")
    console.print(t)
    console.print("(a) PGD early_stop=False, Oracle stop_on_success=False (equal work); (b) plain loop "
                  "(robust acc of the final iterate); info rows: 'robench default' early_stop=True, "
                  "'robench no-early' early_stop=False with the oracle's default stop_on_success=True")
    paired = statistics.median(a / b for a, b in zip(ta, tb))
    console.print(f"robench/direct: ratio of medians {ratio:.3f}, median of per-round ratios {paired:.3f}, "
                  f"ratio of minimums {min(ta) / min(tb):.3f} (the last two resist load from other processes)")
    console.print(f"agreement: robust acc robench {acc_a:.1%} vs direct {acc_b:.1%} (final iterate), "
                  f"{abs(acc_a - acc_b) * n:.0f} sample(s) apart; robench successes vs direct 'fooled at any "
                  f"iterate': {mism} mismatch(es); full-work queries {full} per run")
    print(f"RATIO {ratio:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
