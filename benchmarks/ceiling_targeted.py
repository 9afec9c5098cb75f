"""How many of a targeted run's (image, target) pairs can ANY attack reach? A white-box ceiling.

A black-box attack's targeted success rate can only be judged against what is reachable at all: on a
small, smooth victim some (image, target class) pairs have no adversarial point inside the eps ball
that an attack with full gradients finds. This script takes a finished targeted ``robench attack`` run
(its ``config.yaml`` and ``records.csv``), rebuilds the same victim, and attacks exactly the same
(image, target) pairs with white-box attacks through one oracle (access ``gradient``, same norm, eps
and targets; every attack runs only on the pairs still unbroken, as in an ensemble):

1. APGD with targeted cross-entropy, ``--restarts`` restarts of 100 steps (Croce and Hein [croce2020]);
2. APGD with the targeted DLR loss, ``--restarts`` restarts;
3. PGD with the C&W margin loss (targeted), 200 steps, ``--restarts`` random restarts.

It prints each attack's contribution, ``CEILING k/n`` (pairs some white-box attack reaches), the run's
own success on the reachable and unreachable pairs, and the unreachable pairs (record index, label,
target, and what the run reached there). White-box success is a lower bound on reachability, so the
ceiling is one too; a pair listed as unreachable was missed by every attack above.

    python benchmarks/ceiling_targeted.py --run RUN_DIR [--restarts 2] [--device auto]
e.g. after ``robench attack attack=genattack budget.targeted=true n_correct=100 hydra.run.dir=/tmp/ga``:
    python benchmarks/ceiling_targeted.py --run /tmp/ga
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch
from omegaconf import OmegaConf

from robench.attacks.whitebox.apgd import APGD
from robench.attacks.whitebox.pgd import PGD
from robench.config import resolve_device
from robench.data import load_dataset
from robench.defenses.base import set_bpda
from robench.errors import RobenchError
from robench.referee.oracle import Oracle
from robench.victim import load_victim


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="a finished targeted `robench attack` run folder")
    p.add_argument("--restarts", type=int, default=2)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    run = Path(args.run)
    try:
        if not (run / "config.yaml").exists() or not (run / "records.csv").exists():
            raise RobenchError(f"{run} has no config.yaml and records.csv: pass the folder of a `robench attack` run")
        cfg = OmegaConf.load(run / "config.yaml")
        if not cfg.budget.targeted or cfg.budget.eps is None:
            raise RobenchError(f"{run} is not a targeted run with a finite budget.eps")
        rec = pd.read_csv(run / "records.csv")
        rec = rec[rec["attacked"].astype(bool) & (rec["target"] >= 0)].reset_index(drop=True)
        if rec.empty:
            raise RobenchError(f"{run}: no attacked targeted rows in records.csv")
        device = resolve_device(args.device)
        splits = load_dataset(cfg.dataset)
        model, _ = load_victim(cfg, splits, device)
    except RobenchError as e:
        print(f"error: {e}")
        return 2
    set_bpda(model, True)  # input transformations (if any): straight-through gradients
    x0 = torch.stack([splits.test[int(i)][0] for i in rec["index"]]).float().to(device)
    y = torch.as_tensor(rec["label"].to_numpy().copy(), device=device)
    t = torch.as_tensor(rec["target"].to_numpy().copy(), device=device)
    b = cfg.budget
    o = Oracle(model, x0, y, access="gradient", norm=str(b.norm), eps=float(b.eps), max_queries=10 ** 9,
               targets=t, num_classes=splits.num_classes, box=splits.domain.box)  # the data's box (audio: [-1, 1])
    gen = torch.Generator(device=device).manual_seed(0)
    n = len(rec)
    print(f"{run}: {n} attacked (image, target) pairs, {b.norm} eps {b.eps}, run success "
          f"{rec['success'].astype(bool).mean():.1%}; white-box through the oracle on {device}")
    attacks = [(f"apgd targeted ce x{args.restarts}", APGD(steps=100, restarts=args.restarts, loss="ce")),
               (f"apgd targeted dlr x{args.restarts}", APGD(steps=100, restarts=args.restarts, loss="dlr")),
               (f"pgd targeted cw 200 steps x{args.restarts}", PGD(steps=200, restarts=args.restarts, loss="cw",
                                                                  early_stop=True))]
    before = 0
    for name, att in attacks:
        if len(o.active_indices()) == 0:
            break
        att.run(o, gen)
        now = int(o.success.sum())
        print(f"  {name:34s} +{now - before:3d}  (reached so far {now}/{n})")
        before = now
    reach = o.finalize().success.cpu().numpy().astype(bool)
    ok = rec["success"].astype(bool).to_numpy()
    print(f"run success on reachable pairs: {ok[reach].sum()}/{reach.sum()}; on pairs no white-box attack "
          f"reached: {ok[~reach].sum()}/{(~reach).sum()}")
    if (~reach).any():
        print("unreachable pairs (index, label, target, run success, run queries):")
        for _, r in rec[~reach].iterrows():
            print(f"  {int(r['index'])}, {int(r['label'])}, {int(r['target'])}, {bool(r['success'])}, {int(r['queries'])}")
    print(f"CEILING {int(reach.sum())}/{n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
