"""The score-based attack family: its base :class:`ScoreAttack` (the preamble every score attack runs)
and the helpers it shares (probabilities in, losses out; shapes). The Lp geometry is
:mod:`robench.geometry`; the active-set step is :func:`robench.attacks.base.keep_active`.

Every score attack sees only ``oracle.scores`` (softmax probabilities, NaN rows where the oracle did
not answer). Log-probabilities are taken of probabilities clamped at :data:`P_MIN`, so a class the
victim gives probability 0 (float underflow) has a large but finite log-probability.

Every row a score attack in this package sends to the oracle is a valid image: inside [0, 1]
(finite-difference probes included, which are clipped like everything else).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from robench.attacks.base import Attack, AttackView
from robench.errors import RobenchError
from robench.geometry import Geometry, bview, geometry  # noqa: F401  (bview: used by the score attacks)

#: probabilities are clamped here before the log
P_MIN = 1e-30


def log_probs(p: torch.Tensor) -> torch.Tensor:
    """log of clamped probabilities (NaN rows stay NaN)."""
    return p.clamp_min(P_MIN).log()


def own_and_other(logp: torch.Tensor, cls: torch.Tensor):
    """(log p_cls, max_{j != cls} log p_j) per row."""
    own = logp.gather(1, cls[:, None]).squeeze(1)
    other = logp.scatter(1, cls[:, None], float("-inf")).amax(1)  # the class's own entry out (one op; one_hot took ~8)
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


def upsample(e: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize of (B, C, h, w) perturbations to (B, C, H, W) ([alzantot2019 §2.5.1.1]; S of [chen2017zoo])."""
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


@dataclass
class ScoreTask:
    """What every score attack reads from the oracle before its first query (:meth:`ScoreAttack.run`).

    ``x0``, ``y``, ``targets`` are over all samples of the batch (index them with a row's sample);
    ``idx`` are the samples active at the start; ``shape`` is one input's (C, H, W) or (C, T); ``box``
    the input domain's bounds.
    """

    eps: float
    norm: str
    geometry: Geometry
    idx: torch.Tensor
    x0: torch.Tensor
    y: torch.Tensor
    targets: Optional[torch.Tensor]
    shape: Tuple[int, ...]
    device: torch.device
    box: Tuple[float, float] = (0.0, 1.0)  # the input domain's [low, high] (robench/domain.py)

    def classes(self, rows: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(true label, target or None) of each row's sample: the ``y, targets`` arguments of the losses."""
        return self.y[rows], None if self.targets is None else self.targets[rows]


class ScoreAttack(Attack):
    """Base of the score-based, eps-bounded attacks (``eps_policy = "finite"``: the run checks the budget
    before it starts). :meth:`run` is the template: it returns at once when no sample is active, reads
    the batch into a :class:`ScoreTask` and calls :meth:`_attack`, the one method a subclass writes.
    No query is made and no random number drawn before :meth:`_attack`."""

    access = "scores"
    eps_policy = "finite"
    #: the registry name, for error messages
    name: str = ""

    def run(self, oracle: AttackView, generator: torch.Generator) -> None:
        idx = oracle.active_indices()
        if len(idx) == 0:
            return
        x0 = oracle.x0
        task = ScoreTask(eps=float(oracle.eps), norm=oracle.norm, geometry=geometry(oracle.norm), idx=idx, x0=x0,
                         y=oracle.y, targets=oracle.targets, shape=tuple(x0.shape[1:]), device=oracle.device,
                         box=(oracle.low, oracle.high))
        self._attack(oracle, generator, task)

    def _attack(self, oracle: AttackView, generator: torch.Generator, task: ScoreTask) -> None:
        raise NotImplementedError
