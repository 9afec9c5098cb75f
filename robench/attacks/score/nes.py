from __future__ import annotations

import math
from typing import Optional

import torch

from robench.attacks.base import AttackView, keep_active
from robench.attacks.score._common import ScoreAttack, ScoreTask, ce_loss, margin_loss
from robench.errors import RobenchError
from robench.registry import ATTACKS


@ATTACKS.register("nes")
class NES(ScoreAttack):
    """NES gradient estimation + projected steps (Ilyas et al. [ilyas2018], "Black-box adversarial
    attacks with limited queries and information", §2.2 Algorithm 1 and §2.3, the query-limited setting).

    Each step, for every active sample:

    * the loss is estimated along ``n_samples`` Gaussian directions drawn *antithetically* (n/2 draws
      u_i and their negatives, Algorithm 1): ``g = 1 / (n σ) Σ_i L(x + σ u_i) u_i``; the probes are
      clipped to [0, 1] (every queried image is valid);
    * Linf: ``x ← Π(x - η sign(g))``; L2: ``x ← Π(x - η_2 g / ||g||_2)`` (the paper's PGD steps; Π is
      the projection onto the budget's ball around the clean image, then onto [0, 1]);
    * momentum (optional, ``momentum`` > 0): the step uses ``m ← μ m + (1 - μ) g`` instead of g.

    Loss (to minimise): ``ce`` (default): targeted ``-log p_t`` (the paper's targeted loss);
    untargeted ``log p_y`` (robench's counterpart: raise the cross-entropy of the true class);
    ``margin``: the C&W margin on log-probabilities.

    Defaults: σ = 0.001, n = 50, η = 0.01 (Table 1 of the paper, query-limited ImageNet at ε = 0.05),
    no momentum. The paper is Linf only; for L2 robench takes a normalised step of the same L2 length
    as the Linf sign step, ``η_2 = η sqrt(d)`` (d = C·H·W), unless ``step_size_l2`` is given.

    Queries: every step evaluates the current point together with its n probes, in one call:
    n + 1 queries per sample per step (the current point is what the oracle judges for success, as
    the paper checks the iterate's label every step).
    """

    name = "nes"
    layouts = ("NCHW", "NCT")

    def __init__(self, n_samples: int = 50, sigma: float = 0.001, step_size: float = 0.01,
                 step_size_l2: Optional[float] = None, momentum: float = 0.0, loss: str = "ce"):
        if int(n_samples) < 2 or int(n_samples) % 2:
            raise RobenchError(f"nes n_samples must be an even integer >= 2 (antithetic pairs), got {n_samples}")
        if not sigma > 0 or not step_size > 0 or (step_size_l2 is not None and not step_size_l2 > 0):
            raise RobenchError("nes sigma, step_size and step_size_l2 must be > 0")
        if not 0 <= momentum < 1:
            raise RobenchError(f"nes momentum must be in [0, 1), got {momentum}")
        if loss not in ("ce", "margin"):
            raise RobenchError(f"nes loss must be 'ce' or 'margin', got '{loss}'")
        self.n, self.sigma, self.eta, self.eta2 = int(n_samples), float(sigma), float(step_size), step_size_l2
        self.momentum, self.loss = float(momentum), loss

    def _attack(self, oracle: AttackView, generator: torch.Generator, task: ScoreTask) -> None:
        eps, idx, dev, norm, geo = task.eps, task.idx, task.device, task.norm, task.geometry
        x0_all, shape = task.x0, task.shape
        dim = math.prod(shape)
        eta = self.eta if norm == "linf" else (self.eta2 if self.eta2 is not None else self.eta * math.sqrt(dim))
        half, n = self.n // 2, self.n
        x = x0_all[idx].clone()
        mom = torch.zeros_like(x)
        lossf = margin_loss if self.loss == "margin" else ce_loss

        while True:
            idx, x, mom = keep_active(oracle, idx, x, mom)
            if len(idx) == 0:
                return
            B = len(idx)
            u = torch.randn((B, half, *shape), generator=generator, device=dev)
            u = torch.cat([u, -u], 1)                                               # antithetic
            probes = (x[:, None] + self.sigma * u).clamp(*task.box)
            rows = torch.cat([x[:, None], probes], 1).view(B * (n + 1), *shape)
            ridx = idx.repeat_interleave(n + 1)
            p = oracle.scores(rows, ridx)
            kw = {"kappa": float("inf")} if self.loss == "margin" else {}
            l = lossf(p, *task.classes(ridx), **kw).view(B, n + 1)[:, 1:]
            l = torch.nan_to_num(l, nan=0.0)
            g = (l.view(B, n, *[1] * len(shape)) * u).sum(1) / (n * self.sigma)
            if self.momentum > 0:
                mom = self.momentum * mom + (1 - self.momentum) * g
                g = mom
            x0 = x0_all[idx]
            x = geo.clip(x0, x - geo.step(g, eta) - x0, eps, task.box)
