from __future__ import annotations

from typing import Optional

import torch

from robench.attacks.base import Attack, AttackView, attack_loss, keep_active
from robench.errors import RobenchError
from robench.geometry import geometry
from robench.registry import ATTACKS


@ATTACKS.register("mifgsm")
class MIFGSM(Attack):
    """Momentum iterative FGSM (Dong et al. [dong2018 Algorithm 1]), Linf and L2.

        g_{t+1} = mu * g_t + grad_x loss(x_t) / ||grad_x loss(x_t)||_1
        Linf: x_{t+1} = Clip_{x0,eps}( x_t + alpha * sign(g_{t+1}) )                 (eq. 6)
        L2:   x_{t+1} = Clip_{x0,eps}( x_t + alpha * g_{t+1} / ||g_{t+1}||_2 )        (eq. 8)

    with ``x_0 = x0``. Defaults are the paper's §4: ``T = 10`` iterations, ``alpha = eps / T``,
    decay ``mu = 1.0``. Targeted budgets descend the target's cross-entropy (§3.1, the targeted form).
    ``Clip`` also keeps the point in [0, 1] (the paper clips to the image range too).

    Cost: one gradient query per step per active sample, one label query for the final iterate.
    """

    access = "gradient"
    eps_policy = "finite"
    layouts = ("NCHW", "NCT")

    def __init__(self, steps: int = 10, decay: float = 1.0, step_size: Optional[float] = None, loss: str = "ce"):
        if steps < 1:
            raise RobenchError(f"mifgsm needs steps >= 1, got {steps}")
        if decay < 0:
            raise RobenchError(f"mifgsm decay must be >= 0, got {decay}")
        if loss not in ("ce", "cw"):
            raise RobenchError(f"mifgsm loss must be 'ce' or 'cw', got '{loss}'")
        self.steps, self.decay, self.step_size, self.loss = steps, decay, step_size, loss

    def run(self, oracle: AttackView, generator: torch.Generator) -> None:
        eps, box = oracle.eps, (oracle.low, oracle.high)
        alpha = self.step_size if self.step_size is not None else eps / self.steps
        geo, x0, y, t = geometry(oracle.norm), oracle.x0, oracle.y, oracle.targets

        def loss_fn(logits, i):
            return attack_loss(self.loss, logits, y[i], None if t is None else t[i])

        idx = oracle.active_indices()
        x = x0[idx].clone()
        mom = torch.zeros_like(x)
        for _ in range(self.steps):
            if len(idx) == 0:
                return
            _, g = oracle.gradient(x, loss_fn, idx)
            l1 = g.flatten(1).abs().sum(1).clamp_min(1e-12).view(-1, *[1] * (g.dim() - 1))
            mom = self.decay * mom + g / l1
            x = geo.project_point(x + geo.step(mom, alpha), x0[idx], eps, box)
            idx, x, mom = keep_active(oracle, idx, x, mom)
        if len(idx):
            oracle.labels(x, idx)
