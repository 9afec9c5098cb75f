from __future__ import annotations

from typing import Literal, Optional

import torch

from robench.attacks.base import Attack, AttackView, attack_loss, keep_active
from robench.errors import RobenchError
from robench.geometry import geometry
from robench.registry import ATTACKS


def kurakin_steps(eps: float) -> int:
    """[kurakin2017 §2.1]: min(eps + 4, 1.25 eps) iterations, eps on the 0..255 scale."""
    e = eps * 255.0
    return max(1, int(round(min(e + 4.0, 1.25 * e))))


@ATTACKS.register("bim")
class BIM(Attack):
    """Basic iterative method / I-FGSM (Kurakin, Goodfellow and Bengio [kurakin2017]), Linf (and an L2 analogue).

    Update ([saha2020 eq. 2.13], corrected where the printed formula is off: the gradient is taken at
    the current iterate ``x^n``, not at the clean image, and Linf steps use ``sign``):

        x^0 = x0,   x^{n+1} = Clip_{x0,eps}( x^n + alpha * sign( grad_x loss(x^n, y) ) )

    where ``Clip_{x0,eps}`` keeps the point inside the eps-ball around x0 and inside [0, 1]. No
    random start (that, with a projection, is PGD). Targeted budgets descend the target's
    cross-entropy ([saha2020 eq. 2.14]).

    Defaults are [kurakin2017 §2.1] for Linf: ``alpha = 1/255`` and ``min(eps*255 + 4,
    1.25*eps*255)`` iterations (80 at eps 0.3). The paper is Linf-only; under an L2 budget we
    choose (deliberately) 10 steps of ``2.5 * eps / steps`` along ``grad / ||grad||_2``.

    Cost: one gradient query per step per active sample, and one label query for the final iterate.
    Samples the oracle has seen succeed drop out.
    """

    access = "gradient"
    eps_policy = "finite"
    layouts = ("NCHW", "NCT")
    name = "bim"

    def __init__(self, steps: Optional[int] = None, step_size: Optional[float] = None, loss: Literal["ce", "cw"] = "ce"):
        self.steps, self.step_size, self.loss = steps, step_size, loss

    def schedule(self, eps: float, norm: str) -> tuple[int, float]:
        if norm == "linf":
            n = self.steps or kurakin_steps(eps)
            return n, self.step_size if self.step_size is not None else 1.0 / 255
        n = self.steps or 10
        return n, self.step_size if self.step_size is not None else 2.5 * eps / n

    def loss_targets(self, oracle: AttackView) -> Optional[torch.Tensor]:
        """Class to descend per sample (None: ascend the loss of the true label)."""
        return oracle.targets

    def run(self, oracle: AttackView, generator: torch.Generator) -> None:
        eps, box = oracle.eps, (oracle.low, oracle.high)
        steps, alpha = self.schedule(eps, oracle.norm)
        geo, x0, y = geometry(oracle.norm), oracle.x0, oracle.y
        t = self.loss_targets(oracle)

        def loss_fn(logits, i):
            return attack_loss(self.loss, logits, y[i], None if t is None else t[i])

        idx = oracle.active_indices()
        x = x0[idx].clone()
        for _ in range(steps):
            if len(idx) == 0:
                return
            _, g = oracle.gradient(x, loss_fn, idx)
            x = geo.project_point(x + geo.step(g, alpha), x0[idx], eps, box)
            idx, x = keep_active(oracle, idx, x)
        if len(idx):
            oracle.labels(x, idx)
