"""robench's PGD, APGD-CE and C&W L2 against torchattacks' [kim2020torchattacks], in one run on the same model and data.

On the default victim (mnist / cw_mnist / defense none, ``checkpoints/mnist/cw_mnist/none.pt``) and
the first ``--n`` MNIST test images it classifies correctly (``--n-cw`` of them for C&W), each attack
runs with matched settings through robench (an ``Oracle`` + the attack, ``finalize()`` included)
and through torchattacks (a dev/bench dependency: ``pip install -e .[bench]``):

* PGD Linf eps 0.3 (``--eps``), 40 steps, step 2.5 eps / 40 (robench's default), random start, 1 restart (``torchattacks.PGD``);
* APGD-CE Linf eps 0.3 (``--eps``), 100 steps, 1 restart, rho 0.75 (``torchattacks.APGD(loss='ce')``, the
  authors' code);
* C&W L2 with ONE constant ``c`` (``torchattacks.CW`` has no binary search): robench's
  ``CWL2(binary_search_steps=1, initial_const=c)``, ``--cw-steps`` Adam steps of lr 0.01, kappa 0,
  abort-early on both sides, both by the reference code's rule on the batch's total objective (robench's
  default since issue 16, ``abort_per_sample=False``; before it, robench stopped each stalled sample alone,
  which did less work than torchattacks).

robench is timed two ways: ``default`` (as ``robench attack`` runs it: the oracle stops answering a
sample once it has seen it succeed) and ``equal work`` (``stop_on_success=False`` and, for PGD,
``early_stop=False``: every sample for every step, as torchattacks does). Robust accuracy is over
the attacked (clean-correct) samples: torchattacks judges its returned images; robench's oracle
judges every iterate it evaluated, so it can only be lower or equal for the same iterates. Rounds
alternate the order of the two libraries; medians are reported and the last lines are
``RATIO <attack> <robench default / torchattacks> <robench equal work / torchattacks>``.

    python benchmarks/bench_torchattacks.py [--n 500] [--eps 0.3] [--n-cw 100] [--cw-steps 1000] [--cw-c 10]
                                            [--repeats 3] [--device auto] [--threads N]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from robench.attacks.whitebox.apgd import APGD
from robench.attacks.whitebox.cw import CWL2
from robench.attacks.whitebox.pgd import PGD
from robench.models.checkpoint import checkpoint_path, load_checkpoint
from robench.config import configs_dir, resolve_device
from robench.data import eval_slice, load_dataset
from robench.models import build_model
from robench.referee.oracle import Oracle

EPS, SEED = 0.3, 0


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t, out


def robench_run(model, x0, y, attack, norm, eps, equal_work, device):
    """Robust fraction, median L2 of successes, queries: through the oracle."""
    gen = torch.Generator(device=device).manual_seed(SEED)
    stop = not (equal_work or attack.minimizes_distortion)
    o = Oracle(model, x0, y, access="gradient", norm=norm, eps=eps, max_queries=100_000, num_classes=10,
               stop_on_success=stop)
    attack.run(o, gen)
    r = o.finalize()
    l2 = (r.best_x - x0.cpu()).flatten(1).norm(dim=1)[r.success]
    return 1 - r.success.float().mean().item(), (l2.median().item() if len(l2) else float("nan")), int(r.queries.sum())


def ta_run(model, x0, y, atk):
    adv = atk(x0, y)
    with torch.no_grad():
        ok = model(adv).argmax(1) == y
    l2 = (adv - x0).flatten(1).norm(dim=1)[~ok]
    return ok.float().mean().item(), (l2.median().item() if len(l2) else float("nan")), None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--eps", type=float, default=EPS, help="Linf eps of PGD and APGD")
    p.add_argument("--n-cw", type=int, default=100)
    p.add_argument("--cw-steps", type=int, default=1000)
    p.add_argument("--cw-c", type=float, default=10.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--only", default="pgd,apgd_ce,cw_l2")
    p.add_argument("--checkpoint", default=None)
    args = p.parse_args(argv)
    only = {a.strip() for a in args.only.split(",") if a.strip()}  # names, not substrings ("pgd" is in "apgd_ce")
    unknown = only - {"pgd", "apgd_ce", "cw_l2"}
    if unknown:
        print(f"--only: unknown attack(s) {sorted(unknown)}; valid: pgd, apgd_ce, cw_l2")
        return 2

    try:
        import torchattacks
    except ImportError:
        print("torchattacks is not installed: pip install -e .[bench]")
        return 2
    from rich.console import Console
    from rich.table import Table

    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console(width=180)
    eps_inf = args.eps
    dcfg = OmegaConf.load(configs_dir() / "dataset" / "mnist.yaml")
    mcfg = {"name": "cw_mnist", "params": {}}
    path = Path(args.checkpoint) if args.checkpoint else checkpoint_path(
        "checkpoints", OmegaConf.to_container(dcfg, resolve=True), mcfg, "none")
    if not path.exists():
        print(f"no checkpoint at {path}: run `robench train-defense` first")
        return 2
    device = resolve_device(args.device)
    splits = load_dataset(dcfg)
    model = build_model("cw_mnist", splits)
    load_checkpoint(path, model)
    model = model.to(device).eval()
    _, x, y = eval_slice(splits, None)
    x, y = x.to(device), y.to(device)
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    x, y = x[ok], y[ok]

    def cases():
        n, m = min(args.n, len(y)), min(args.n_cw, len(y))
        if "pgd" in only:
            a = 2.5 * eps_inf / 40  # 0.01875 at 0.3: PGD's own default rule
            yield ("pgd", x[:n], y[:n], "linf", eps_inf,
                   lambda ew: PGD(steps=40, step_size=a, early_stop=not ew),
                   lambda: torchattacks.PGD(model, eps=eps_inf, alpha=a, steps=40, random_start=True))
        if "apgd_ce" in only:
            yield ("apgd_ce", x[:n], y[:n], "linf", eps_inf, lambda ew: APGD(steps=100, restarts=1),
                   lambda: torchattacks.APGD(model, norm="Linf", eps=eps_inf, steps=100, n_restarts=1, loss="ce",
                                             rho=0.75, seed=SEED))
        if "cw_l2" in only:
            yield ("cw_l2", x[:m], y[:m], "l2", None,
                   lambda ew: CWL2(binary_search_steps=1, max_iterations=args.cw_steps, initial_const=args.cw_c),
                   lambda: torchattacks.CW(model, c=args.cw_c, kappa=0, steps=args.cw_steps, lr=0.01))

    console.print(f"Linf eps {eps_inf}; victim {path} on {device} ({torch.get_num_threads()} threads), repeats={args.repeats}; "
                  f"torchattacks {torchattacks.__version__}, torch {torch.__version__}")
    table = Table(title="robench vs torchattacks (median seconds; robust = fraction of attacked samples not broken)")
    for c in ("attack", "n", "torchattacks s", "robench default s", "robench equal-work s",
              "robust TA", "robust robench", "robust robench eq", "median L2 TA", "median L2 robench"):
        table.add_column(c, justify="right")
    ratios = []
    for name, x0, y0, norm, eps, mk_rb, mk_ta in cases():
        t_ta, t_rb, t_eq = [], [], []
        for rep in range(args.repeats + 1):  # round 0 is a warm-up
            order = ("ta", "rb", "eq") if rep % 2 else ("eq", "rb", "ta")
            for who in order:
                if who == "ta":
                    s, res_ta = timed(lambda: ta_run(model, x0, y0, mk_ta()), device)
                    (t_ta if rep else []).append(s)
                elif who == "rb":
                    s, res_rb = timed(lambda: robench_run(model, x0, y0, mk_rb(False), norm, eps, False, device), device)
                    (t_rb if rep else []).append(s)
                else:
                    s, res_eq = timed(lambda: robench_run(model, x0, y0, mk_rb(True), norm, eps, True, device), device)
                    (t_eq if rep else []).append(s)
        m_ta, m_rb, m_eq = (statistics.median(v) for v in (t_ta, t_rb, t_eq))
        table.add_row(name, str(len(y0)), f"{m_ta:.2f}", f"{m_rb:.2f}", f"{m_eq:.2f}", f"{res_ta[0]:.2%}",
                      f"{res_rb[0]:.2%}", f"{res_eq[0]:.2%}", f"{res_ta[1]:.3f}", f"{res_rb[1]:.3f}")
        ratios.append((name, m_rb / m_ta, m_eq / m_ta, res_rb[0] - res_ta[0]))
    console.print(table)
    for name, r1, r2, d in ratios:
        print(f"RATIO {name} {r1:.3f} {r2:.3f}  (robust accuracy robench - torchattacks: {d * 100:+.2f} pp)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
