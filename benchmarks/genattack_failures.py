"""Why GenAttack fails where it fails: the (image, target) pairs of a finished or partial GenAttack run.

For a run folder of ``robench attack attack=genattack`` (targeted), this prints

* the target's logit gap ``max_j z_j - z_t`` at the clean image for the failed and the successful
  pairs, and whether the float32 softmax probability of the target is below 1e-30 (where
  :func:`robench.attacks.score.genattack.genattack_fitness` clamps it, so that a population would
  see a flat fitness), and the correlation of the gap with log(queries) over the successes;
* with ``--rerun``: GenAttack again on the failed pairs only, through ``robench.evaluate``, with other
  parameters (``--rerun adaptive``: the adaptive rho/alpha of [alzantot2019 §2.5.1.2]; ``--rerun 0.3``:
  temperature 0.3) and another seed, at the same 100,000-query cap.

    python benchmarks/genattack_failures.py --run RUNS/t21_1000/genattack \
        --checkpoint CKPT/mnist-torchvision/cw_mnist-dropout0.5/none.pt [--rerun adaptive] [--seed 1]
"""
from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

import robench
from robench.models.checkpoint import load_checkpoint
from robench.data import load_dataset
from robench.models import build_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="a genattack run folder (config.yaml, records.csv)")
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--rerun", default=None, help="'adaptive', or a temperature")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    run = Path(a.run)
    cfg = OmegaConf.load(run / "config.yaml")
    splits = load_dataset(cfg.dataset)
    model = build_model(cfg.model.name, splits, OmegaConf.to_container(cfg.model.get("params") or {}))
    load_checkpoint(Path(a.checkpoint), model)
    model.eval()
    rows = [r for r in csv.DictReader(open(run / "records.csv")) if r["attacked"] == "True"
            and r.get("pending", "") in ("", "False")]
    idx = torch.tensor([int(r["index"]) for r in rows])
    t = torch.tensor([int(r["target"]) for r in rows])
    y = torch.tensor([int(r["label"]) for r in rows])
    x = torch.stack([splits.test[i][0] for i in idx.tolist()])
    with torch.no_grad():
        z = model(x).double()
    gap = z.max(1).values - z.gather(1, t[:, None]).squeeze(1)
    p32 = torch.softmax(z.float(), 1).gather(1, t[:, None]).squeeze(1)
    fail = torch.tensor([r["success"] != "True" for r in rows])
    q = torch.tensor([float(r["queries"]) for r in rows])
    print(f"{len(rows)} pairs, {int(fail.sum())} failed")
    print("failed pairs' target logit gaps:", [round(v, 1) for v in sorted(gap[fail].tolist())])
    qs = gap[~fail].quantile(torch.tensor([0.1, 0.5, 0.9, 0.99], dtype=gap.dtype))
    print("successes' gap quantiles 10/50/90/99%:", [round(v, 1) for v in qs.tolist()], "max", round(float(gap[~fail].max()), 1))
    print("float32 target probability < 1e-30 at the clean image: failed", int((p32[fail] < 1e-30).sum()),
          "successes", int((p32[~fail] < 1e-30).sum()))
    g, lq = gap[~fail], q[~fail].double().log()
    print("correlation of gap and log(queries) over successes:", round(float(torch.corrcoef(torch.stack([g, lq]))[0, 1]), 3))
    if a.rerun:
        params = {"adaptive": True} if a.rerun == "adaptive" else {"temperature": float(a.rerun)}
        sel = fail.nonzero().squeeze(1)
        t0 = time.time()
        res = robench.evaluate(model, x[sel], y[sel], attack="genattack", targets=t[sel], seed=a.seed,
                               budget=robench.Budget("linf", float(cfg.budget.eps), max_queries=int(cfg.budget.max_queries)),
                               **params)
        r = res.records
        print(f"rerun {params} seed {a.seed} on the {len(sel)} failed pairs: {int(r.success.sum())} succeed, "
              f"queries {sorted(int(v) for v in r.queries[r.success])}, {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
