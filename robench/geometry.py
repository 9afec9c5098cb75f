"""Lp geometry of the threat model, in one place (the pattern of foolbox's ``LinfBaseGradientDescent`` /
``L2BaseGradientDescent``, [rauber2017foolbox]): per-row distance, projection onto the eps-ball,
normalisation, the steepest-ascent step and the uniform random start.

One class per norm (:class:`Linf`, :class:`L2`) overrides the norm-specific operations; the
operations built from them (:meth:`Geometry.clip`, :meth:`Geometry.project_point`) live once on the
base. :func:`geometry` returns the shared instance for a budget's ``norm`` string. The oracle (success
judged inside the ball), every eps-bounded attack and the adversarial-training recipes use these
functions, so "inside the ball" means the same thing to all of them. Points are clipped to the input
domain's ``box`` (robench/domain.py: [0, 1] for images, the default; [-1, 1] for audio).

:class:`L0` counts changed *positions*: a pixel of an N x C x H x W image (all its channels together,
as Sparse-RS, the one-pixel attack and the L0 literature count), or a time step of an N x C x T signal.

Conventions: a batch is a tensor whose first dimension is the row; per-row quantities are 1-D
tensors of that length; ``eps`` is a float or a tensor that broadcasts against the batch (e.g. CAT's
per-example eps as ``(B, 1, 1, 1)``). Divisions by a norm clamp it at :data:`TINY`, so a zero vector
stays zero.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import torch

Eps = Union[float, torch.Tensor]
Box = Tuple[float, float]
#: the image box, every geometry operation's default (robench/domain.py)
UNIT: Box = (0.0, 1.0)

#: norms are clamped here before dividing by them
TINY = 1e-12

#: an element counts as changed for L0 when it moved by more than this (well below 1/255)
L0_THRESHOLD = 1e-6


def bview(v: torch.Tensor, dim: int) -> torch.Tensor:
    """A per-row vector shaped to broadcast against a tensor of ``dim`` dimensions."""
    return v.view(-1, *([1] * (dim - 1)))


class Geometry:
    """The operations of one Lp norm. Subclasses override :meth:`distance`, :meth:`normalize`,
    :meth:`project`, :meth:`step` and :meth:`random_in_ball`; :meth:`clip`, :meth:`project_point` and
    :meth:`random_start` are built from them."""

    name: str = ""

    def distance(self, delta: torch.Tensor) -> torch.Tensor:
        """Per-row norm of a perturbation batch."""
        raise NotImplementedError

    def normalize(self, v: torch.Tensor) -> torch.Tensor:
        """Each row scaled to unit norm (zero rows stay zero)."""
        return v / bview(self.distance(v).clamp_min(TINY), v.dim())

    def project(self, delta: torch.Tensor, eps: Eps) -> torch.Tensor:
        """Each row of ``delta`` projected onto the ball of radius ``eps`` around 0."""
        raise NotImplementedError

    def step(self, g: torch.Tensor, alpha: Eps) -> torch.Tensor:
        """The steepest-ascent step of length ``alpha`` along the gradient ``g`` (Linf: ``alpha sign(g)``;
        L2: ``alpha g / ||g||_2``)."""
        raise NotImplementedError

    def random_in_ball(self, shape, eps: float, generator: Optional[torch.Generator], device) -> torch.Tensor:
        """Perturbations drawn uniformly from the ball of radius ``eps`` (one per row of ``shape``)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ built from the above
    def clip(self, x0: torch.Tensor, delta: torch.Tensor, eps: Eps, box: Box = UNIT) -> torch.Tensor:
        """The point ``x0 + delta`` projected onto B(x0, eps), then onto the domain's box (ball first,
        then box: for Linf this is the exact projection onto the intersection; for L2 the box clip only
        shrinks |delta_i|, so the point stays in the ball; for L0 it changes no further position)."""
        return (x0 + self.project(delta, eps)).clamp(box[0], box[1])

    def project_point(self, x: torch.Tensor, x0: torch.Tensor, eps: Eps, box: Box = UNIT) -> torch.Tensor:
        """``x`` projected onto B(x0, eps) ∩ box (:meth:`clip` of ``x - x0``)."""
        return self.clip(x0, x - x0, eps, box)

    def random_start(self, x0: torch.Tensor, eps: Eps, generator: Optional[torch.Generator] = None,
                     box: Box = UNIT) -> torch.Tensor:
        """A uniform point of B(x0, eps), clipped to the box (the random start of [madry2018]). A tensor
        ``eps`` (per-row radii) scales a draw from the unit ball."""
        if isinstance(eps, torch.Tensor):
            return (x0 + self.random_in_ball(x0.shape, 1.0, generator, x0.device) * eps).clamp(box[0], box[1])
        return (x0 + self.random_in_ball(x0.shape, eps, generator, x0.device)).clamp(box[0], box[1])


class Linf(Geometry):
    name = "linf"

    def distance(self, delta):
        return delta.flatten(1).abs().amax(1)

    def project(self, delta, eps):
        return delta.clamp(-eps, eps)

    def step(self, g, alpha):
        return alpha * g.sign()

    def random_in_ball(self, shape, eps, generator, device):
        """``U(-eps, eps)`` per feature."""
        return (torch.rand(shape, generator=generator, device=device) * 2 - 1) * eps


class L2(Geometry):
    name = "l2"

    def distance(self, delta):
        return delta.flatten(1).norm(p=2, dim=1)

    def project(self, delta, eps):
        # per-row eps (a (B, 1, ...) tensor) broadcasts against the norm viewed the same way
        return delta * self.shrink(bview(self.distance(delta), delta.dim()), eps)

    @staticmethod
    def shrink(n: torch.Tensor, eps: Eps) -> torch.Tensor:
        """The factor ``min(1, eps / n)`` that scales a row of norm ``n`` into the ball (also for a
        linear image of the row whose norm was measured elsewhere, e.g. ZOO's resized search space)."""
        return torch.clamp(eps / n.clamp_min(TINY), max=1.0)

    def step(self, g, alpha):
        return alpha * g / bview(self.distance(g).clamp_min(TINY), g.dim())

    def random_in_ball(self, shape, eps, generator, device):
        """Gaussian direction, radius ``eps * U^(1/d)`` (uniform in the ball's volume)."""
        d = torch.randn(shape, generator=generator, device=device)
        dim = d[0].numel()
        r = torch.rand(shape[0], generator=generator, device=device) ** (1.0 / dim) * eps
        return d / bview(self.distance(d).clamp_min(TINY), len(shape)) * bview(r, len(shape))


def positions(delta: torch.Tensor) -> torch.Tensor:
    """Per-row, per-position magnitude of a perturbation: the L2 norm over the channel axis (dim 1) of an
    N x C x ... batch, flattened to (N, positions); a 2-D batch is its own positions."""
    if delta.dim() <= 2:
        return delta.abs()
    return delta.norm(p=2, dim=1).flatten(1)


class L0(Geometry):
    """The number of changed positions (pixels across channels, or time steps); ``eps`` is a count.

    ``project`` keeps the ``eps`` positions that changed most (L2 over channels) and zeroes the rest;
    ``random_in_ball`` changes ``eps`` random positions to uniform values in [-1, 1] per channel (the
    caller's clip to the box keeps the point valid); ``step`` moves the single position of largest
    gradient magnitude by ``alpha`` along the gradient's sign; ``normalize`` is L2's (a direction)."""

    name = "l0"

    def distance(self, delta):
        return (positions(delta) > L0_THRESHOLD).sum(1).to(delta.dtype)

    def normalize(self, v):
        return L2_BALL.normalize(v)

    def project(self, delta, eps):
        if isinstance(eps, torch.Tensor):
            raise ValueError("the l0 projection takes a number of positions, not a tensor")
        k = int(eps)
        mag = positions(delta)
        if k >= mag.shape[1]:
            return delta
        keep = torch.zeros_like(mag, dtype=torch.bool)
        if k > 0:
            keep.scatter_(1, mag.topk(k, dim=1).indices, True)
        shape = (delta.shape[0], 1, *delta.shape[2:]) if delta.dim() > 2 else delta.shape
        return delta * keep.view(shape).to(delta.dtype)

    def step(self, g, alpha):
        mag = positions(g)
        one = torch.zeros_like(mag).scatter_(1, mag.argmax(1, keepdim=True), 1.0)
        shape = (g.shape[0], 1, *g.shape[2:]) if g.dim() > 2 else g.shape
        return alpha * g.sign() * one.view(shape)

    def random_in_ball(self, shape, eps, generator, device):
        n = shape[0]
        npos = 1
        for s_ in shape[2:] if len(shape) > 2 else shape[1:]:
            npos *= s_
        k = min(int(eps), npos)
        score = torch.rand((n, npos), generator=generator, device=device)
        keep = torch.zeros((n, npos), dtype=torch.bool, device=device)
        if k > 0:
            keep.scatter_(1, score.topk(k, dim=1).indices, True)
        vals = torch.rand(shape, generator=generator, device=device) * 2 - 1
        mshape = (n, 1, *shape[2:]) if len(shape) > 2 else shape
        return vals * keep.view(mshape).to(vals.dtype)


LINF_BALL, L2_BALL, L0_BALL = Linf(), L2(), L0()
GEOMETRIES: Dict[str, Geometry] = {"linf": LINF_BALL, "l2": L2_BALL, "l0": L0_BALL}


def geometry(norm: str) -> Geometry:
    """The geometry of a budget's ``norm`` ('linf', 'l2' or 'l0')."""
    try:
        return GEOMETRIES[str(norm)]
    except KeyError:
        raise ValueError(f"unknown norm {norm!r} (use 'linf', 'l2' or 'l0')") from None


def l0_distance(delta: torch.Tensor) -> torch.Tensor:
    """Per-row count of positions (pixels across channels, time steps) moved by more than :data:`L0_THRESHOLD`."""
    return L0_BALL.distance(delta)


def distortion(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-row norm of a perturbation batch (norm in {'linf', 'l2', 'l0'})."""
    g = GEOMETRIES.get(str(norm))
    if g is None:
        raise ValueError(f"unknown norm {norm!r}")
    return g.distance(delta)
