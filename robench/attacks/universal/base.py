"""The base of attacks whose one perturbation serves many samples (docs/attacks/l0-and-universal.md, "Perturbations shared across
samples"; DESIGN.md, "Shared perturbations").

A :class:`SharedAttack` never attacks a test sample itself. The shared protocol
(robench/evaluation/protocols.py, Shared) hands its :meth:`SharedAttack.build` an oracle view over the *build set*
(correctly classified images of the split the attack names, every query counted against each image's
``budget.max_queries``); ``build`` returns a :class:`SharedPerturbation`, plain data, and the referee
itself applies it to every test sample and asks the victim once per sample, so success is judged and
certified as for any attack.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from robench.attacks.base import Attack, AttackView
from robench.errors import RobenchError

#: how a shared perturbation is placed on an input
KINDS = ("additive", "patch")
PLACEMENTS = ("fixed", "random")


@dataclass
class SharedPerturbation:
    """What :meth:`SharedAttack.build` returns (the referee validates it before using it).

    * ``kind="additive"``: ``values`` is one input's shape (C x H x W); every test input becomes
      ``clip(x + values)`` (the box). Its norm must be within the budget's eps (``budget.norm``).
    * ``kind="patch"``: ``values`` is C x s x s with ``s = floor(sqrt(budget.eps))`` (``budget.norm=l0``:
      the patch covers at most eps positions); it replaces the input on the square whose top-left
      corner is (``row``, ``col``) (``placement="fixed"``), or at a corner drawn uniformly per test input
      by the referee (``placement="random"``, Brown et al.'s patch).
    """

    kind: str
    values: torch.Tensor
    placement: str = "fixed"
    row: int = 0
    col: int = 0


def patch_side(eps: Optional[float], h: int, w: int) -> int:
    """The side of a square patch for an L0 budget of ``eps`` positions on an h x w image."""
    if eps is None:
        raise RobenchError("a patch attack needs budget.eps (the patch's area in pixels), e.g. budget.eps=64")
    s = int(float(eps) ** 0.5 + 1e-9)
    return max(0, min(s, h, w))


def paste(x0: torch.Tensor, patch: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``x0`` (N, C, H, W) with ``patch`` (C, s, s) (or one per row: (N, C, s, s)) pasted with its top-left
    corner at (rows[i], cols[i]); differentiable in ``patch``."""
    n, c, h, w = x0.shape
    s = patch.shape[-1]
    r = torch.arange(h, device=x0.device)[None] - rows[:, None]          # (n, h): offset inside the patch
    q = torch.arange(w, device=x0.device)[None] - cols[:, None]
    inside = ((r >= 0) & (r < s))[:, :, None] & ((q >= 0) & (q < s))[:, None, :]   # (n, h, w)
    rr = r.clamp(0, s - 1)[:, :, None].expand(n, h, w)
    qq = q.clamp(0, s - 1)[:, None, :].expand(n, h, w)
    pp = patch if patch.dim() == 4 else patch[None].expand(n, c, s, s)
    ar = torch.arange(n, device=x0.device)[:, None, None].expand(n, h, w)
    full = pp.permute(0, 2, 3, 1)[ar, rr, qq].permute(0, 3, 1, 2)     # (n, c, h, w)
    return torch.where(inside[:, None], full, x0)


class SharedAttack(Attack):
    """Base: ``build(view, generator) -> SharedPerturbation`` over the build set (see the module docstring).

    ``build_split`` (``train`` or ``test``), ``build_samples`` and ``build_offset`` name the images the
    build set is cut from (the first ``build_samples`` from ``build_offset``; those the victim
    misclassifies, and in targeted runs those already of the target class, are left out by the referee).
    A build set drawn from the test split may not overlap the evaluated slice.
    """

    requires = ("build_set",)
    eps_policy = "finite"

    def __init__(self, build_split: str = "train", build_samples: int = 1000, build_offset: int = 0):
        if build_split not in ("train", "test"):
            raise RobenchError(f"build_split must be train or test, got '{build_split}'")
        if int(build_samples) < 1 or int(build_offset) < 0:
            raise RobenchError(f"build_samples must be >= 1 and build_offset >= 0 (got {build_samples}, {build_offset})")
        self.build_split, self.build_samples, self.build_offset = build_split, int(build_samples), int(build_offset)

    def build(self, oracle: AttackView, generator: torch.Generator) -> SharedPerturbation:
        raise NotImplementedError

    def run(self, oracle: AttackView, generator: torch.Generator) -> None:
        raise RobenchError(f"{type(self).__name__} builds one perturbation for many samples: it runs through the "
                           f"shared protocol (robench attack / robench.evaluate), not per batch")
