"""Robustness checks beside attacks, as [cheng2021] uses them: invariance to simple transformations
(``robench invariance``: accuracy under a 10° rotation, brightness ×1.5, contrast ×2 and greyscale)
and loss landscapes (``robench landscape``: the loss on a grid over the gradient-sign direction ×
a random Rademacher direction, [cheng2021 Fig 4.2, Fig 5.4]).

Both load the checkpoints ``robench train-defense`` writes (``--defenses none,pgd_at``: one row or
panel each) and write a CSV and a PNG into ``--out``:

    robench invariance --defenses none,pgd_at [--dataset mnist --model cw_mnist --n 1000 --out DIR]
    robench landscape  --defenses none,pgd_at [--eps 0.3 --grid 21 --n 200 --out DIR]

The landscape at each grid point (a, b) is the mean cross-entropy over the first ``--n`` test images
of f(clip(x + a·sign(∇_x CE(f(x), y)) + b·r)), r ∈ {−1, +1}^d drawn once per image (seed
``--seed``), a and b in [−eps, eps]; the CSV also holds the accuracy there. A flat, low surface is
what adversarial training buys; the naturally trained model's loss climbs steeply along the sign
direction.
"""
from __future__ import annotations

import argparse  # noqa: F401
import csv
from pathlib import Path
from typing import List

import torch
import torch.nn.functional as F

from robench.errors import RobenchError

ROOT = Path(__file__).resolve().parents[1]


def _parser(prog: str, doc: str) -> argparse.ArgumentParser:
    from robench.errors import OneLineParser

    ap = OneLineParser(prog=prog, description=doc)
    ap.add_argument("--defenses", default="none,pgd_at", help="comma-separated training recipes (their checkpoints)")
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--model", default="cw_mnist")
    ap.add_argument("--checkpoint-dir", default="checkpoints")
    ap.add_argument("--n", type=int, default=None, help="test images (first n)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--seed", type=int, default=0)
    return ap


def _load(args, defense: str, splits):
    from omegaconf import OmegaConf

    from robench.victim import model_from_checkpoint

    dcfg = OmegaConf.to_container(_dataset_cfg(args), resolve=True)
    return model_from_checkpoint(args.checkpoint_dir, dcfg, _model_cfg(args), defense, splits)[0].eval()


def _model_cfg(args) -> dict:
    from omegaconf import OmegaConf

    mpath = ROOT / "configs" / "model" / f"{args.model}.yaml"
    if not mpath.exists():
        raise RobenchError(f"unknown model '{args.model}' (no configs/model/{args.model}.yaml)")
    return OmegaConf.to_container(OmegaConf.load(mpath), resolve=True)


def _dataset_cfg(args):
    from omegaconf import OmegaConf

    p = ROOT / "configs" / "dataset" / f"{args.dataset}.yaml"
    if not p.exists():
        raise RobenchError(f"unknown dataset '{args.dataset}' (no configs/dataset/{args.dataset}.yaml)")
    return OmegaConf.load(p)


def _test_tensors(args):
    from robench.data import load_dataset

    splits = load_dataset(_dataset_cfg(args))
    n = len(splits.test) if args.n is None else min(int(args.n), len(splits.test))
    if n < 1:
        raise RobenchError(f"--n must be >= 1, got {args.n}")
    xs, ys = zip(*(splits.test[i] for i in range(n)))
    return splits, torch.stack(xs).float(), torch.as_tensor(ys)


def _defenses(args) -> List[str]:
    ds = [d for d in args.defenses.split(",") if d]
    if not ds:
        raise RobenchError("--defenses needs at least one training recipe")
    return ds


def _out(args, what: str) -> Path:
    out = Path(args.out or f"results/{what}/{args.dataset}/{args.model}")
    out.mkdir(parents=True, exist_ok=True)
    return out


# ---------------------------------------------------------------- invariance

def transforms():
    """name -> (description, function on a (B, C, H, W) batch in [0, 1])."""
    import torchvision.transforms.functional as TF

    def grey(x):
        return x if x.shape[1] == 1 else TF.rgb_to_grayscale(x, num_output_channels=3)

    return {"clean": ("no transformation", lambda x: x),
            "rotation_10": ("rotation by 10 degrees (bilinear, zero fill)",
                            lambda x: TF.rotate(x, 10.0, interpolation=TF.InterpolationMode.BILINEAR)),
            "brightness_1.5": ("brightness x1.5, clipped to [0, 1]", lambda x: TF.adjust_brightness(x, 1.5)),
            "contrast_2": ("contrast x2 around the mean grey level, clipped", lambda x: TF.adjust_contrast(x, 2.0)),
            "greyscale": ("greyscale (identity on 1-channel images)", grey)}


@torch.no_grad()
def invariance_accuracy(model, x, y, batch_size: int = 500) -> dict:
    res = {}
    for name, (_, fn) in transforms().items():
        correct = 0
        for s in range(0, len(x), batch_size):
            xb = fn(x[s:s + batch_size]).clamp(0, 1)
            correct += int((model(xb).argmax(1) == y[s:s + batch_size]).sum())
        res[name] = correct / len(x)
    return res


def invariance_main(argv: List[str]) -> None:
    args = _parser("robench invariance", "accuracy under rotation 10°, brightness 1.5, contrast 2, greyscale").parse_args(argv)
    splits, x, y = _test_tensors(args)
    rows = [{"defense": d, **invariance_accuracy(_load(args, d, splits), x, y)} for d in _defenses(args)]
    out = _out(args, "invariance")
    with open(out / "invariance.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [k for k in rows[0] if k != "defense"]
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2, 3.6))
    wdt = 0.8 / len(rows)
    for i, r in enumerate(rows):
        bars = ax.bar([j + i * wdt for j in range(len(names))], [100 * r[k] for k in names], wdt, label=r["defense"])
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    ax.set_xticks([j + wdt * (len(rows) - 1) / 2 for j in range(len(names))], names)
    ax.set_ylabel(f"accuracy (%), {len(x)} test images")
    ax.set_ylim(0, 100)
    ax.set_title(f"invariance: {args.dataset}/{args.model}")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(out / "invariance.png", dpi=120)
    _print_table("invariance (accuracy)", rows, names, lambda v: f"{100 * v:.2f}%")
    print(f"wrote {out / 'invariance.csv'} and {out / 'invariance.png'}")


# ---------------------------------------------------------------- landscape

def loss_landscape(model, x, y, eps: float, grid: int, seed: int = 0, batch_size: int = 250):
    """(a values, b values, mean loss (grid, grid), accuracy (grid, grid)); rows index a (sign direction)."""
    a_vals = torch.linspace(-eps, eps, grid)
    loss = torch.zeros(grid, grid)
    acc = torch.zeros(grid, grid)
    gen = torch.Generator().manual_seed(seed)
    for s in range(0, len(x), batch_size):
        xb, yb = x[s:s + batch_size], y[s:s + batch_size]
        xg = xb.clone().requires_grad_(True)
        g, = torch.autograd.grad(F.cross_entropy(model(xg), yb, reduction="sum"), xg)
        d1 = g.sign()
        d2 = torch.randint(0, 2, xb.shape, generator=gen).float() * 2 - 1
        with torch.no_grad():
            for i, a in enumerate(a_vals):
                for j, b in enumerate(a_vals):
                    logits = model((xb + a * d1 + b * d2).clamp(0, 1))
                    loss[i, j] += F.cross_entropy(logits, yb, reduction="sum")
                    acc[i, j] += (logits.argmax(1) == yb).sum()
    return a_vals, a_vals.clone(), loss / len(x), acc / len(x)


def landscape_main(argv: List[str]) -> None:
    ap = _parser("robench landscape", "loss over gradient-sign x Rademacher directions ([cheng2021 Fig 4.2, 5.4])")
    ap.add_argument("--eps", type=float, default=0.3, help="half-width of the grid along each direction")
    ap.add_argument("--grid", type=int, default=21)
    args = ap.parse_args(argv)
    if not args.eps > 0 or args.grid < 2:
        raise RobenchError(f"landscape needs --eps > 0 and --grid >= 2 (got {args.eps}, {args.grid})")
    import robench.models  # noqa: F401  (registers the models)
    from robench.registry import MODELS
    from robench.victim import gradient_free

    reason = gradient_free(MODELS.get(_model_cfg(args)["name"]))
    if reason:  # before the data and checkpoints load: the landscape's first axis is the loss gradient's sign
        raise RobenchError(f"{reason}: robench landscape needs the loss gradient (its first axis is the gradient "
                           f"sign); use robench invariance, or a model with gradients")
    if args.n is None:
        args.n = 200
    splits, x, y = _test_tensors(args)
    out = _out(args, "landscape")
    surfaces, rows = [], []
    for d in _defenses(args):
        a, b, loss, acc = loss_landscape(_load(args, d, splits), x, y, args.eps, args.grid, args.seed)
        surfaces.append((d, a, b, loss))
        rows += [{"defense": d, "a_sign": f"{float(a[i]):.4f}", "b_rademacher": f"{float(b[j]):.4f}",
                  "loss": f"{float(loss[i, j]):.5f}", "accuracy": f"{float(acc[i, j]):.4f}"}
                 for i in range(len(a)) for j in range(len(b))]
    with open(out / "landscape.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    zmax = max(float(s[3].max()) for s in surfaces)
    fig = plt.figure(figsize=(5.2 * len(surfaces), 4.6))
    for k, (d, a, b, loss) in enumerate(surfaces):
        ax = fig.add_subplot(1, len(surfaces), k + 1, projection="3d")
        A, B = torch.meshgrid(a, b, indexing="ij")
        ax.plot_surface(A.numpy(), B.numpy(), loss.numpy(), cmap="viridis", linewidth=0)
        ax.set_xlabel("gradient-sign a")
        ax.set_ylabel("Rademacher b")
        ax.set_zlabel("cross-entropy")
        ax.set_zlim(0, zmax)
        ax.set_title(f"{d}: loss at 0 {float(loss[len(a) // 2, len(b) // 2]):.3f}, max {float(loss.max()):.2f}")
    fig.suptitle(f"loss landscape, {args.dataset}/{args.model}, {len(x)} test images, |a|, |b| <= {args.eps:g}")
    fig.tight_layout()
    fig.savefig(out / "landscape.png", dpi=110)
    summary = [{"defense": d, "loss_center": float(l[len(a) // 2, len(b) // 2]), "loss_max": float(l.max()),
                "loss_at_a_max": float(l[-1, len(b) // 2])} for d, a, b, l in surfaces]
    _print_table("loss landscape", summary, ["loss_center", "loss_at_a_max", "loss_max"], lambda v: f"{v:.3f}")
    print(f"wrote {out / 'landscape.csv'} and {out / 'landscape.png'}")


def _print_table(title, rows, cols, fmt) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    t.add_column("defense")
    for c in cols:
        t.add_column(c, justify="right")
    for r in rows:
        t.add_row(r["defense"], *[fmt(r[c]) for c in cols])
    Console().print(t)
