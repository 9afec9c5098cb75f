from __future__ import annotations

import torch

from robench.attacks.base import Attack, AttackView, attack_loss
from robench.errors import RobenchError
from robench.geometry import geometry
from robench.registry import ATTACKS


@ATTACKS.register("fgsm")
class FGSM(Attack):
    """Fast gradient sign method (Goodfellow et al. [goodfellow2015]); with an L2 budget, the fast gradient L2 method.

    One gradient at the clean image, one step of the whole budget:

        Linf (FGSM, [saha2020 eq. 2.10]):           x = clip_[0,1]( x0 + eps * sign(grad) )
        L2   (fast gradient, [saha2020 eq. 2.12]):  x = Proj_{B(x0,eps) ∩ [0,1]}( x0 + eps * grad / ||grad||_2 )

    ``grad`` is that of the cross-entropy of the label (untargeted: ascend it) or of the target class
    (targeted: descend it, [saha2020 eq. 2.11]), or of the C&W margin with ``loss=cw``. ``step_size``
    (default: eps, the paper's single full step) can be set smaller. The norm is the budget's
    (``budget.norm``): the same attack is FGSM under ``linf_*`` budgets and FGM under ``l2_*`` ones.

    Cost: one gradient query and one label query (the proposed point) per sample.
    """

    access = "gradient"
    eps_policy = "finite"
    layouts = ("NCHW", "NCT")

    def __init__(self, loss: str = "ce", step_size: float | None = None):
        if loss not in ("ce", "cw"):
            raise RobenchError(f"fgsm loss must be 'ce' or 'cw', got '{loss}'")
        if step_size is not None and step_size <= 0:
            raise RobenchError(f"fgsm step_size must be > 0 (or null for eps), got {step_size}")
        self.loss, self.step_size = loss, step_size

    def run(self, oracle: AttackView, generator: torch.Generator) -> None:
        eps = oracle.eps
        alpha = eps if self.step_size is None else self.step_size
        x0, y, t = oracle.x0, oracle.y, oracle.targets
        idx = oracle.active_indices()
        if len(idx) == 0:
            return

        def loss_fn(logits, i):
            return attack_loss(self.loss, logits, y[i], None if t is None else t[i])

        _, g = oracle.gradient(x0[idx], loss_fn, idx)
        geo = geometry(oracle.norm)
        x = geo.project_point(x0[idx] + geo.step(g, alpha), x0[idx], eps, (oracle.low, oracle.high))
        oracle.labels(x, idx)
