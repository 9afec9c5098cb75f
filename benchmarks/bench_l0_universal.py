"""robench's L0 and shared-perturbation attacks next to a peer implementation, same victim, same images, one
process per comparison (benchmarks/README.md, "bench_l0_universal.py").

Needs the peers in the benchmark environment only (never robench dependencies)::

    pip install torchattacks==3.5.1 adversarial-robustness-toolbox==1.20.1

and the default victim's checkpoint (``robench train-defense dataset=mnist model=cw_mnist defense=none``).

* ``jsma``: robench ``jsma`` vs ``torchattacks.JSMA`` (targeted, target (y + 1) mod 10, theta 1, gamma 0.1:
  torchattacks' defaults; robench with ``budget.eps=null`` so gamma is the only cap);
* ``one_pixel``: robench ``one_pixel`` vs ART's ``PixelAttack`` (DE, ``th`` pixels, untargeted); ART's DE
  (scipy's best1bin, population about 400) runs ``--de-iters`` generations; robench gets the same number of
  queries per image as ART's population times (generations + 1), population 400 and ``strategy=best1``
  (the row "paper" runs the paper's rand1);
* ``uap``: robench ``uap`` vs ART's ``UniversalPerturbation`` (DeepFool, max_iter 10, overshoot 0.02: the
  authors' settings) built on the same correctly classified training images, Linf ``--eps``, ``--passes``
  passes at most, delta 0.2, evaluated on held-out test images;
* ``patch``: robench ``patch`` vs ART's ``AdversarialPatchPyTorch`` (square patch, no rotation, Adam, 500
  steps, batch 16), targeted to ``--target``, random location per image, evaluated on held-out test images.

Queries of the peers are counted by a wrapper around the victim (forward rows; a backward row counts with
its forward). Prints one table row per attack: success, median L0 (or the perturbation's norm), mean
queries per image, seconds.
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

import robench


class Counted(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.rows = model, 0

    def forward(self, x):
        self.rows += x.shape[0]
        return self.model(x)


def correct(victim, x, y, n):
    with torch.no_grad():
        ok = victim(x).argmax(1) == y
    return x[ok][:n], y[ok][:n]


def l0(xa, x):
    return (xa - x).abs().amax(1).flatten(1).gt(1e-6).sum(1).float()


def row(name, succ, dist, queries, secs, what="median L0"):
    d = float(dist.median()) if len(dist) else float("nan")
    print(f"| {name} | {100 * succ:.1f}% | {what} {d:.3g} | {queries:.1f} | {secs:.1f} |", flush=True)


def art_classifier(victim, clip=(0.0, 1.0)):
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(model=victim, loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 28, 28), nb_classes=10,
                             clip_values=clip, device_type="cpu")


def bench_jsma(victim, x, y, a):
    import torchattacks

    t = (y + 1) % 10
    t0 = time.perf_counter()
    r = robench.evaluate(victim, x, y, attack="jsma", budget=robench.Budget("l0", None, max_queries=10000), targets=t,
                         theta=1.0, gamma=0.1)
    s = r.summary
    succ = torch.tensor(r.records.success.values)
    row("robench jsma", s["success_rate"], torch.tensor(r.records.l0.values)[succ], s["mean_queries_all"],
        time.perf_counter() - t0)
    cv = Counted(victim)
    atk = torchattacks.JSMA(cv, theta=1.0, gamma=0.1)
    atk.set_mode_targeted_by_function(lambda im, lab: (lab + 1) % 10)
    t0 = time.perf_counter()
    xa = atk(x, y)
    secs = time.perf_counter() - t0
    with torch.no_grad():
        ok = victim(xa).argmax(1) == t
    row("torchattacks JSMA", float(ok.float().mean()), l0(xa, x)[ok], cv.rows / len(y), secs)


def bench_one_pixel(victim, x, y, a):
    from art.attacks.evasion import PixelAttack

    cv = Counted(victim)
    atk = PixelAttack(art_classifier(cv), th=a.pixels, es=1, max_iter=a.de_iters, targeted=False, verbose=False)
    t0 = time.perf_counter()
    xa = torch.tensor(atk.generate(x.numpy()))
    secs = time.perf_counter() - t0
    with torch.no_grad():
        ok = victim(xa.float()).argmax(1) != y
    art_q = cv.rows / len(y)
    dims = a.pixels * 3
    pop = max(1, 400 // dims) * dims
    budget = pop * (a.de_iters + 1)
    for name, strategy in (("robench one_pixel (best1)", "best1"), ("robench one_pixel (paper: rand1)", "rand1")):
        t0 = time.perf_counter()
        r = robench.evaluate(victim, x, y, attack="one_pixel",
                             budget=robench.Budget("l0", float(a.pixels), max_queries=budget),
                             population=pop, generations=a.de_iters, strategy=strategy)
        s = r.summary
        succ = torch.tensor(r.records.success.values)
        row(name, s["success_rate"], torch.tensor(r.records.l0.values)[succ], s["mean_queries_all"],
            time.perf_counter() - t0)
    row("ART PixelAttack (DE)", float(ok.float().mean()), l0(xa.float(), x)[ok], art_q, secs)
    print(f"(queries per image allowed to robench: {budget}; ART's population {pop})")


def build_images(victim, splits, n):
    xs, ys = zip(*(splits.train[i][:2] for i in range(n)))
    x, y = torch.stack(xs).float(), torch.as_tensor(ys)
    with torch.no_grad():
        ok = victim(x).argmax(1) == y
    return x[ok], y[ok]


def bench_uap(victim, x, y, a, splits):
    from art.attacks.evasion import UniversalPerturbation

    t0 = time.perf_counter()
    r = robench.evaluate(victim, x, y, attack="uap", budget=robench.Budget("linf", a.eps, max_queries=100000),
                         train_data=splits.train, build_samples=a.build, max_passes=a.passes)
    sh = r.summary["shared"]
    row("robench uap", r.summary["success_rate"], torch.tensor([sh["perturbation_linf"]]),
        sh["build_queries"] / sh["build_used"], time.perf_counter() - t0, what="Linf")
    print(f"(robench: build success {sh['build_success_rate']:.3f} on {sh['build_used']} images, "
          f"passes {r.summary['attack_extra']['uap']['passes']})")
    xb, yb = build_images(victim, splits, a.build)
    cv = Counted(victim)
    atk = UniversalPerturbation(art_classifier(cv), attacker="deepfool",
                                attacker_params={"max_iter": 10, "epsilon": 0.02, "nb_grads": 10, "verbose": False},
                                delta=0.2, max_iter=a.passes, eps=a.eps, norm=np.inf, verbose=False)
    t0 = time.perf_counter()
    atk.generate(xb.numpy(), y=np.eye(10)[yb.numpy()])
    secs = time.perf_counter() - t0
    v = torch.tensor(atk.noise).float()
    with torch.no_grad():
        ok = victim((x + v).clamp(0, 1)).argmax(1) != y
    row("ART UniversalPerturbation", float(ok.float().mean()), v.abs().amax().view(1), cv.rows / len(yb), secs,
        what="Linf")
    print(f"(ART: fooling rate on its build set {atk.fooling_rate:.3f})")


def bench_patch(victim, x, y, a, splits):
    from art.attacks.evasion import AdversarialPatchPyTorch

    s = int(math.isqrt(a.area))
    keep = y != a.target
    x, y = x[keep], y[keep]
    t0 = time.perf_counter()
    r = robench.evaluate(victim, x, y, attack="patch",
                         budget=robench.Budget("l0", float(a.area), max_queries=100000, targeted=True,
                                               target=a.target),
                         train_data=splits.train, build_samples=a.build, steps=a.steps)
    sh = r.summary["shared"]
    row("robench patch", r.summary["success_rate"], torch.tensor([float(s * s)]),
        sh["build_queries"] / sh["build_used"], time.perf_counter() - t0, what="area")
    xb, yb = build_images(victim, splits, a.build)
    xb = xb[yb != a.target]
    cv = Counted(victim)
    atk = AdversarialPatchPyTorch(art_classifier(cv), rotation_max=0.0, scale_min=s / 28, scale_max=s / 28,
                                  learning_rate=5.0 / 255, max_iter=a.steps, batch_size=16, patch_shape=(1, 28, 28),
                                  patch_type="square", optimizer="Adam", targeted=True, verbose=False)
    t0 = time.perf_counter()
    patch, mask = atk.generate(xb.numpy(), y=np.eye(10)[np.full(len(xb), a.target)])
    secs = time.perf_counter() - t0
    xa = torch.tensor(atk.apply_patch(x.numpy(), scale=s / 28)).float()
    with torch.no_grad():
        ok = victim(xa).argmax(1) == a.target
    row("ART AdversarialPatchPyTorch", float(ok.float().mean()), l0(xa, x).median().view(1), cv.rows / len(xb), secs,
        what="changed pixels")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--only", default="jsma,one_pixel,uap,patch")
    p.add_argument("--checkpoint-dir", default="checkpoints")
    p.add_argument("--n", type=int, default=100, help="evaluated test images (first correctly classified ones)")
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--pixels", type=int, default=3)
    p.add_argument("--de-iters", type=int, default=10)
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--build", type=int, default=100)
    p.add_argument("--area", type=int, default=64)
    p.add_argument("--target", type=int, default=3)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    np.random.seed(0)
    import random

    random.seed(0)
    victim = robench.load_victim("mnist", "cw_mnist", "none", checkpoint_dir=a.checkpoint_dir)
    from omegaconf import OmegaConf

    from robench.data import load_dataset
    from robench.registry import configs_dir

    splits = load_dataset(OmegaConf.load(configs_dir() / "dataset" / "mnist.yaml"))
    xs, ys = robench.load_data("mnist", None)
    x, y = correct(victim, xs[a.offset:], ys[a.offset:], a.n)
    print("| attack | success | distortion | queries per image | seconds |\n|---|---|---|---|---|")
    for name in a.only.split(","):
        {"jsma": lambda: bench_jsma(victim, x, y, a), "one_pixel": lambda: bench_one_pixel(victim, x, y, a),
         "uap": lambda: bench_uap(victim, x, y, a, splits), "patch": lambda: bench_patch(victim, x, y, a, splits)}[name]()


if __name__ == "__main__":
    main()
