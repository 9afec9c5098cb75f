from __future__ import annotations

from typing import Any, Dict, List

import torch

from robench.attacks.base import AttackView
from robench.attacks.universal.base import PLACEMENTS, SharedAttack, SharedPerturbation, paste, patch_side
from robench.errors import RobenchError
from robench.registry import ATTACKS


@ATTACKS.register("patch")
class AdversarialPatch(SharedAttack):
    """A shared patch: the spatially constrained objective with a mask M (the slide "Adversarial Examples
    with Spatial Constraints" of [zhao2020slides]) and Brown et al.'s adversarial patch [brown2017patch],
    white-box, built on a build set and evaluated on the test slice (the shared protocol,
    robench/evaluation/protocols.py).

    Papers: Adversarial patch (2017), https://arxiv.org/abs/1712.09665; the survey's
    ``min_delta sum_i L(theta, x_i + M_x . delta, y') + lambda ||M_x . delta||_p``. Distance: L0
    (``budget.norm=l0``): the patch is an ``s x s`` square, ``s = floor(sqrt(budget.eps))`` (budget.eps=64:
    8 x 8), so it changes at most eps positions. Arguments: ``placement`` (``random``: a corner drawn
    uniformly per image, in the build and in the evaluation, Brown et al.'s location draw; ``fixed``: at
    ``row``, ``col``), ``steps`` (500), ``batch`` (16 build images per step) and ``lr`` (Adam's step size,
    0.02 in box widths): ART's AdversarialPatch defaults (its learning rate 5.0 on a 0..255 scale, rescaled);
    the paper gives none. ``build_*``: the build set (robench/attacks/universal/base.py). Usage:
    ``robench attack attack=patch budget=l0_24 budget.eps=64 budget.targeted=true budget.target=3``.

    The patch starts grey (the box's centre, as ART) and is trained with Adam to minimise, over
    mini-batches of build images with the patch pasted in, the cross-entropy of the target (targeted:
    Brown et al.'s ``max E log Pr(y' | A(p, x, l))``) or minus that of the label (untargeted); after each
    step it is clipped to the box. Pasting replaces the image under the patch (the mask M of the survey's
    objective, with the penalty weight lambda = 0: the patch's area is the budget). Deviation: Brown et al.
    also draw rotations and scales; robench draws locations only, so the L0 count of every placed patch
    is the budget.

    Queries: one gradient row per build image in each step's mini-batch (the gradient with respect to the
    patch is the input gradient summed over the patch's area, chain rule of the paste); images without
    queries left are not drawn. ``attack_extra`` holds the mini-batch loss every 50 steps.
    """

    access = "gradient"
    norms = ("l0",)

    #: numeric ranges the registry checks before construction (robench.registry.validate_params)
    param_ranges = {"steps": ">=1", "batch": ">=1", "lr": ">0", "row": ">=0", "col": ">=0",
                    "build_samples": ">=1", "build_offset": ">=0"}

    def __init__(self, placement: str = "random", row: int = 0, col: int = 0, steps: int = 500, batch: int = 16,
                 lr: float = 0.02, build_split: str = "train", build_samples: int = 1000, build_offset: int = 0):
        super().__init__(build_split, build_samples, build_offset)
        if placement not in PLACEMENTS:
            raise RobenchError(f"patch placement must be one of {', '.join(PLACEMENTS)}, got '{placement}'")
        if int(steps) < 1 or int(batch) < 1 or not lr > 0 or int(row) < 0 or int(col) < 0:
            raise RobenchError(f"patch needs steps >= 1, batch >= 1, lr > 0, row >= 0 and col >= 0 "
                               f"(got {steps}, {batch}, {lr}, {row}, {col})")
        self.placement, self.row, self.col = placement, int(row), int(col)
        self.steps, self.batch, self.lr = int(steps), int(batch), float(lr)
        self.losses: List[float] = []

    def summary_extra(self) -> Dict[str, Any]:
        return {"patch": {"loss_every_50_steps": [round(v, 6) for v in self.losses]}}

    def build(self, oracle: AttackView, generator: torch.Generator) -> SharedPerturbation:
        x0, y, t = oracle.x0, oracle.y, oracle.targets
        if x0.dim() != 4:
            raise RobenchError("patch works on images (N x C x H x W)")
        lo, hi, dev = oracle.low, oracle.high, x0.device
        n, c, h, w = x0.shape
        s = patch_side(oracle.eps, h, w)
        if self.placement == "fixed" and (self.row > h - s or self.col > w - s):
            raise RobenchError(f"patch: a {s} x {s} patch at ({self.row}, {self.col}) does not fit the {h} x {w} image")
        p = torch.full((c, s, s), (lo + hi) / 2, device=dev, dtype=x0.dtype)
        self.losses = []
        if s == 0:
            return SharedPerturbation("patch", p, self.placement, self.row, self.col)
        opt = torch.optim.Adam([p.requires_grad_(True)], lr=self.lr)
        cls = t if t is not None else y
        sign = 1.0 if t is not None else -1.0    # targeted: minimise CE(target); untargeted: maximise CE(label)
        queue: List[int] = []   # build images in a random order, refilled with a fresh permutation when short
        si = torch.arange(s, device=dev)
        for step in range(self.steps):
            live = oracle.remaining >= oracle.eot_samples
            if not bool(live.any()):
                break
            ok = live.tolist()
            queue = [i for i in queue if ok[i]]
            if len(queue) < self.batch:
                have = set(queue)
                perm = torch.randperm(n, generator=generator, device=generator.device).tolist()
                queue += [i for i in perm if ok[i] and i not in have]
            idx = torch.tensor(queue[:self.batch], dtype=torch.long, device=dev)
            queue = queue[self.batch:]
            m = len(idx)
            if self.placement == "random":
                rows = torch.randint(0, h - s + 1, (m,), generator=generator, device=generator.device).to(dev)
                cols = torch.randint(0, w - s + 1, (m,), generator=generator, device=generator.device).to(dev)
            else:
                rows = torch.full((m,), self.row, device=dev)
                cols = torch.full((m,), self.col, device=dev)
            xa = paste(x0[idx], p.detach(), rows, cols)
            target = cls[idx]

            def loss_fn(logits, r, tt=target):
                reps = len(r) // len(tt)
                return sign * torch.nn.functional.cross_entropy(logits, tt.repeat(reps), reduction="none")

            logits, g = oracle.gradient(xa, loss_fn, idx)
            answered = ~torch.isnan(logits[:, 0])
            # d loss / d patch: the input gradient over each row's patch area, summed over rows
            rr = (rows[:, None] + si[None])[:, :, None].expand(m, s, s)
            cc = (cols[:, None] + si[None])[:, None, :].expand(m, s, s)
            ar = torch.arange(m, device=dev)[:, None, None].expand(m, s, s)
            gp = g.permute(0, 2, 3, 1)[ar, rr, cc]                        # (m, s, s, c)
            gp = gp[answered].sum(0).permute(2, 0, 1) / max(1, int(answered.sum()))
            opt.zero_grad()
            p.grad = gp.detach().clone()
            opt.step()
            with torch.no_grad():
                p.clamp_(lo, hi)
            if step % 50 == 0 and bool(answered.any()):
                lv = loss_fn(logits[answered], idx[answered], target[answered])
                self.losses.append(float(lv.mean()))
        return SharedPerturbation("patch", p.detach(), self.placement, self.row, self.col)
