"""robench's white-box L2 floor against foolbox's, in one process, on the same images and weights.

    python benchmarks/whitebox_floor.py --root DIR --checkpoint PATH [--n 100] [--cw-steps 10]
        [--cw-iters 1000] [--fmn-steps 1000] [--threshold 1.5]

Loads a robench checkpoint (its metadata names the architecture and parameters), takes the first
``--n`` correctly classified test images of full MNIST under ``--root`` (the four official .gz
files; ``--root embedded`` uses the embedded subset) and runs, untargeted L2:

* robench ``cw_l2`` and foolbox ``L2CarliniWagnerAttack`` [rauber2017foolbox] with the same binary
  search steps, iterations, Adam step 0.01, initial constant 1e-3, confidence 0, abort early;
* robench ``fmn`` and foolbox ``L2FMNAttack`` with the same number of steps (other settings: each
  library's defaults, which are [pintor2021]'s: alpha 1 -> 0.01, gamma 0.05 -> 0.001).

All four see the same batch of images. Prints, per attack, mean and median L2 over all images (an
image without an adversarial point counts as infinite in the median and is left out of the mean),
the share with an adversarial point, the share at L2 <= ``--threshold`` and the wall time, then
for each pair robench minus foolbox in mean and median (over the images both attacks broke, and
over all images) and whether robench is no worse. foolbox's C&W returns the all-zero image where it
found no adversarial point; that image counts as no adversarial point even when the victim
misclassifies it (counting it would add an L2 of about 9 to foolbox's mean).
robench's attacks run through its oracle (every query counted); foolbox calls the model directly.
Needs ``pip install foolbox`` (the ``bench`` extra).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


def _load(root: str, checkpoint: str):
    from omegaconf import OmegaConf

    from robench.models.checkpoint import load_checkpoint
    from robench.data import load_dataset
    from robench.models import build_model

    blob_meta = torch.load(checkpoint, map_location="cpu", weights_only=True).get("meta", {})
    dcfg = {"name": "mnist", "source": "embedded"} if root == "embedded" else \
        {"name": "mnist", "source": "torchvision", "root": root, "verify_md5": True}
    splits = load_dataset(OmegaConf.create(dcfg))
    model = build_model(blob_meta.get("model", "cw_mnist"), splits, blob_meta.get("model_params") or {})
    load_checkpoint(Path(checkpoint), model)
    return splits, model.eval()


def _dist(x0, adv, ok):
    d = (adv - x0).flatten(1).norm(dim=1)
    return torch.where(ok, d, torch.full_like(d, float("inf")))


def _compare(name, d_rb, d_fb):
    """robench minus foolbox: mean over the images both broke, median over all (inf = not broken)."""
    both = torch.isfinite(d_rb) & torch.isfinite(d_fb)
    dm = (d_rb[both].mean() - d_fb[both].mean()).item() if bool(both.any()) else 0.0
    m_rb, m_fb = d_rb.median().item(), d_fb.median().item()
    dmed = 0.0 if m_rb == m_fb else m_rb - m_fb  # (inf - inf would be nan)
    ok = dm <= 0 and dmed <= 0 and bool((torch.isfinite(d_rb) | ~torch.isfinite(d_fb)).all())
    print(f"{name}: robench - foolbox, mean over the {int(both.sum())} images both broke {dm:+.5f}, median {dmed:+.5f}, "
          f"robench broke {int(torch.isfinite(d_rb).sum())} / foolbox {int(torch.isfinite(d_fb).sum())}; "
          f"robench per image smaller / equal (1e-5) / larger: {int((d_rb < d_fb - 1e-5).sum())} / "
          f"{int(((d_rb - d_fb).abs() <= 1e-5).sum() + (~torch.isfinite(d_rb) & ~torch.isfinite(d_fb)).sum())} / "
          f"{int((d_rb > d_fb + 1e-5).sum())}; no worse: {'yes' if ok else 'NO'}", flush=True)


def _row(name, x0, adv, ok, seconds, thr, queries=None):
    d = _dist(x0, adv, ok)
    fin = d[torch.isfinite(d)]
    q = "-" if queries is None else f"{queries:.0f}"
    return (f"| {name} | {fin.mean().item() if len(fin) else float('nan'):.4f} | {d.median().item():.4f} | "
            f"{ok.float().mean().item():.1%} | {(d <= thr).float().mean().item():.1%} | {q} | {seconds:.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True, help="folder holding the four official MNIST .gz files, or 'embedded'")
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--cw-steps", type=int, default=10, help="binary search steps")
    ap.add_argument("--cw-iters", type=int, default=1000, help="Adam iterations per binary search step")
    ap.add_argument("--fmn-steps", type=int, default=1000)
    ap.add_argument("--threshold", type=float, default=1.5)
    ap.add_argument("--only", default="cw_l2,fb_cw,fmn,fb_fmn", help="comma list of cw_l2, fb_cw, fmn, fb_fmn")
    a = ap.parse_args()

    import foolbox as fb

    from robench.attacks.whitebox.cw import CWL2
    from robench.attacks.whitebox.fmn import FMN
    from robench.referee.oracle import Oracle
    from robench.training.loop import predict

    torch.manual_seed(0)
    splits, model = _load(a.root, a.checkpoint)
    xt, yt = splits.test.tensors if hasattr(splits.test, "tensors") else (None, None)
    x, y = xt[a.offset:a.offset + 4 * a.n + 100].float(), yt[a.offset:a.offset + 4 * a.n + 100]
    ok = predict(model, x).argmax(1) == y
    x0, y0 = x[ok][:a.n], y[ok][:a.n]
    print(f"{len(x0)} correctly classified test images from offset {a.offset}; checkpoint {a.checkpoint}")
    print(f"C&W: {a.cw_steps} x {a.cw_iters}, lr 0.01, c0 1e-3, kappa 0, abort early; FMN: {a.fmn_steps} steps\n")
    print("| attack | mean L2 | median L2 | adversarial | L2 <= %g | mean queries | seconds |" % a.threshold)
    print("|---|---|---|---|---|---|---|")
    only = a.only.split(",")

    def robench_run(attack, max_q):
        o = Oracle(model, x0, y0, access="gradient", norm="l2", eps=None, max_queries=max_q, num_classes=10,
                   stop_on_success=False)
        t = time.time()
        attack.run(o, torch.Generator().manual_seed(0))
        r = o.finalize()
        return r.best_x, r.success, time.time() - t, r.queries.float().mean().item()

    fmodel = fb.PyTorchModel(model, bounds=(0, 1))
    dists = {}
    if "cw_l2" in only:
        adv, s, sec, q = robench_run(CWL2(binary_search_steps=a.cw_steps, max_iterations=a.cw_iters),
                                     a.cw_steps * a.cw_iters)
        dists["cw_l2"] = _dist(x0, adv, s)
        print(_row(f"robench cw_l2 ({a.cw_steps} x {a.cw_iters})", x0, adv, s, sec, a.threshold, q), flush=True)
    if "fb_cw" in only:
        t = time.time()
        adv = fb.attacks.L2CarliniWagnerAttack(binary_search_steps=a.cw_steps, steps=a.cw_iters, stepsize=0.01,
                                               confidence=0, initial_const=1e-3, abort_early=True).run(fmodel, x0, y0)
        sec = time.time() - t
        found = (predict(model, adv).argmax(1) != y0) & (adv.flatten(1).abs().sum(1) > 0)  # zeros = nothing found
        dists["fb_cw"] = _dist(x0, adv, found)
        print(_row(f"foolbox L2CarliniWagnerAttack ({a.cw_steps} x {a.cw_iters})", x0, adv, found, sec, a.threshold),
              flush=True)
    if "fmn" in only:
        adv, s, sec, q = robench_run(FMN(steps=a.fmn_steps), a.fmn_steps)
        dists["fmn"] = _dist(x0, adv, s)
        print(_row(f"robench fmn ({a.fmn_steps} steps)", x0, adv, s, sec, a.threshold, q), flush=True)
    if "fb_fmn" in only:
        t = time.time()
        adv = fb.attacks.L2FMNAttack(steps=a.fmn_steps).run(fmodel, x0, y0)
        sec = time.time() - t
        found = predict(model, adv).argmax(1) != y0  # foolbox's FMN returns x0 itself where it found nothing
        dists["fb_fmn"] = _dist(x0, adv, found)
        print(_row(f"foolbox L2FMNAttack ({a.fmn_steps} steps)", x0, adv, found, sec, a.threshold), flush=True)
    print()
    for rb, fbk, name in (("cw_l2", "fb_cw", "C&W L2"), ("fmn", "fb_fmn", "FMN")):
        if rb in dists and fbk in dists:
            _compare(name, dists[rb], dists[fbk])


if __name__ == "__main__":
    main()
