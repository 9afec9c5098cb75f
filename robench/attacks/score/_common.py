"""Helpers shared by the score-based attacks (probabilities in, losses out; shapes and projections).

Every score attack sees only ``oracle.scores`` (softmax probabilities, NaN rows where the oracle did
not answer). Log-probabilities are taken of probabilities clamped at :data:`P_MIN`, so a class the
victim gives probability 0 (float underflow) has a large but finite log-probability.

Every row a score attack in this package sends to the oracle is a valid image: inside [0, 1]
(finite-difference probes included, which are clipped like everything else).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from robench.errors import RobenchError
from robench.attacks.whitebox.pgd import project_delta
from robench.oracle import Oracle

#: probabilities are clamped here before the log
P_MIN = 1e-30


def log_probs(p: torch.Tensor) -> torch.Tensor:
    """log of clamped probabilities (NaN rows stay NaN)."""
    return p.clamp_min(P_MIN).log()


def own_and_other(logp: torch.Tensor, cls: torch.Tensor):
    """(log p_cls, max_{j != cls} log p_j) per row."""
    own = logp.gather(1, cls[:, None]).squeeze(1)
    other = logp.masked_fill(F.one_hot(cls, logp.shape[1]).bool(), float("-inf")).amax(1)
    return own, other


def margin_loss(p: torch.Tensor, y: torch.Tensor, targets: Optional[torch.Tensor], kappa: float = 0.0) -> torch.Tensor:
    """C&W-style margin on log-probabilities, to MINIMISE (ZOO eq. (4)/(5) with the log of scores):
    untargeted ``max(log p_y - max_{j!=y} log p_j, -kappa)``, targeted
    ``max(max_{j!=t} log p_j - log p_t, -kappa)``. The logit margin and the log-probability margin are
    the same number (the softmax normaliser cancels). Negative exactly when the row is adversarial."""
    logp = log_probs(p)
    if targets is None:
        own, other = own_and_other(logp, y)
        m = own - other
    else:
        own, other = own_and_other(logp, targets)
        m = other - own
    return m.clamp_min(-kappa)


def ce_loss(p: torch.Tensor, y: torch.Tensor, targets: Optional[torch.Tensor]) -> torch.Tensor:
    """Cross-entropy form, to MINIMISE: targeted ``-log p_t``; untargeted ``log p_y`` (minus the CE of y)."""
    logp = log_probs(p)
    if targets is None:
        return logp.gather(1, y[:, None]).squeeze(1)
    return -logp.gather(1, targets[:, None]).squeeze(1)


def need_eps(oracle: Oracle, name: str, norms=("linf", "l2")) -> float:
    if oracle.eps is None:
        raise RobenchError(f"{name} is an eps-bounded attack: set budget.eps to a number")
    if oracle.norm not in norms:
        raise RobenchError(f"{name} supports budget.norm {' or '.join(norms)}, got '{oracle.norm}'")
    return float(oracle.eps)


def bview(v: torch.Tensor, dim: int) -> torch.Tensor:
    """A per-row vector shaped to broadcast against a tensor of ``dim`` dimensions."""
    return v.view(-1, *([1] * (dim - 1)))


def upsample(e: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize of (B, C, h, w) perturbations to (B, C, H, W) (GenAttack §2.5.1.1, AutoZOOM/ZOO's S)."""
    if tuple(e.shape[-2:]) == tuple(size):
        return e
    return F.interpolate(e, size=tuple(size), mode="bilinear", align_corners=False)


def reduced_shape(shape, resize: Optional[int]):
    """(C, h, w) of the search space: the image's own (C, H, W), or (C, resize, resize)."""
    c, h, w = shape
    if resize is None:
        return (c, h, w)
    if int(resize) < 1:
        raise RobenchError(f"resize must be a positive integer (the side of the reduced search space) or null, got {resize}")
    return (c, int(resize), int(resize))


def l2_project(d: torch.Tensor, eps: float) -> torch.Tensor:
    """Scale each row of d into the L2 ball of radius eps."""
    n = d.flatten(1).norm(dim=1)
    return d * bview(torch.clamp(eps / n.clamp_min(1e-12), max=1.0), d.dim())


#: x0 + d projected onto B(x0, eps) and [0, 1]: the same projection white-box PGD uses
project_box = project_delta


def keep_active(oracle: Oracle, idx: torch.Tensor, *tensors):
    """Drop the rows of samples the oracle no longer answers. Returns (idx, tensors...) or None if empty."""
    keep = oracle.active[idx]
    if bool(keep.all()):
        return (idx, *tensors)
    if not bool(keep.any()):
        return None
    return (idx[keep], *[t[keep] for t in tensors])
