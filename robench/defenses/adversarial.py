"""Shared pieces of the recipes that craft adversarial examples during training (not a recipe).

Training is not an attack run: recipes craft their examples on the model directly (no oracle, no
query counting), with the Lp geometry of :mod:`robench.geometry` (the oracle's and the attacks'
random start, step and projection). Examples are crafted
with the model in eval mode (no dropout, batch-norm running statistics neither used as batch
statistics nor updated by adversarial batches, as in the TRADES reference code) and the mode is
restored afterwards. ``eps`` may be a float or a per-example tensor (CAT's eps_i).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from robench.errors import RobenchError
from robench.geometry import geometry

Eps = Union[float, torch.Tensor]


@contextmanager
def eval_mode(model: nn.Module):
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


def _bcast(eps: Eps, x: torch.Tensor) -> Eps:
    """A per-example eps as a (B, 1, 1, 1) tensor so it broadcasts over images; floats stay floats."""
    if isinstance(eps, torch.Tensor):
        return eps.to(x.device, x.dtype).view(-1, *[1] * (x.dim() - 1))
    return float(eps)


def random_start(x: torch.Tensor, norm: str, eps: Eps) -> torch.Tensor:
    """A uniform point of the eps ball around x (global RNG), clipped to [0, 1]."""
    return geometry(norm).random_start(x, _bcast(eps, x))


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-row cross-entropy; ``y`` class indices or a (B, K) soft-label matrix."""
    if y.dim() == 2:
        return -(y * F.log_softmax(logits.float(), 1)).sum(1)
    return F.cross_entropy(logits.float(), y, reduction="none")


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: Eps, steps: int, step_size: Optional[Eps] = None,
        norm: str = "linf", rand_init: bool = True, start: Optional[torch.Tensor] = None,
        loss_fn: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
    """PGD on the model (eval mode): ``steps`` ascent steps of ``loss_fn(logits, y)`` (per row; default
    cross-entropy) projected on B(x, eps) ∩ [0, 1]; step size ``2.5 * eps / steps`` by default (the
    evaluation attack's rule). ``steps=1`` with ``rand_init`` and ``step_size=1.25 eps`` is Wong et
    al.'s fast FGSM; without ``rand_init`` and ``step_size=eps`` it is FGSM. ``start``: the first
    iterate (instead of x or a random start); projections stay around x."""
    loss_fn = loss_fn or ce_loss
    e = _bcast(eps, x)
    a = _bcast(step_size, x) if step_size is not None else 2.5 * e / steps
    geo = geometry(norm)
    xa = start if start is not None else (random_start(x, norm, eps) if rand_init else x.clone())
    with eval_mode(model):
        for _ in range(steps):
            xa = xa.detach().requires_grad_(True)
            with torch.enable_grad():
                loss = loss_fn(model(xa), y).sum()
                g, = torch.autograd.grad(loss, xa)
            xa = geo.project_point(xa.detach() + geo.step(g.float(), a), x, e)
    return xa.detach()


@torch.no_grad()
def peek_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits without gradient in eval mode (clean accuracy for the progress bar)."""
    with eval_mode(model):
        return model(x)


def warm(eps: float, epoch: float, warmup_epochs: float) -> float:
    """Linear eps warm-up: eps * min(1, epoch / warmup_epochs) (eps itself without a warm-up)."""
    if warmup_epochs <= 0:
        return eps
    return eps * min(1.0, epoch / warmup_epochs)


def check_threat(norm: str, eps: float, what: str) -> None:
    if norm not in ("linf", "l2"):
        raise RobenchError(f"{what}: norm must be 'linf' or 'l2', got '{norm}' (it defaults to budget.norm: "
                           f"set defense.params.norm=linf or l2)")
    if eps is None or not float(eps) > 0:
        raise RobenchError(f"{what}: eps must be a number > 0, got '{eps}' (it defaults to budget.eps)")
