from __future__ import annotations

from typing import Literal, Optional

import torch

from robench.attacks.base import Attack, AttackView, attack_loss, keep_active
from robench.errors import RobenchError
from robench.geometry import geometry
from robench.registry import ATTACKS


@ATTACKS.register("pgd")
class PGD(Attack):
    """Projected gradient descent (Madry et al. [madry2018]), Linf or L2, random start and restarts.

    Update ([madry2018 eq. 2]; [saha2020 eq. 2.15], with the gradient taken at the
    iterate and ``sign`` for Linf, which the printed formula drops):

        Linf: x <- Proj_{B(x0, eps) ∩ [0,1]}( x + alpha * sign(grad) )
        L2:   x <- Proj_{B(x0, eps) ∩ [0,1]}( x + alpha * grad / ||grad||_2 )

    Defaults: 40 steps, step size ``alpha = 2.5 * eps / steps`` (the rule of thumb of Madry et
    al.'s robustness library, so that a step budget can walk across the ball 2.5 times; the Cheng
    thesis [cheng2021 §4.2.4.2] uses eps/5 with 100-1000 steps, set ``step_size`` to reproduce that), uniform random
    start in the ball, one restart. Targeted runs descend the loss of the target class. ``loss``:
    ``ce`` (cross-entropy) or ``cw`` (Carlini-Wagner margin, i.e. "C&W-Linf" of [cheng2021 §4.2.4.2]).

    Every step is one gradient query per active sample; the final iterate of each restart costs one
    more forward query (the oracle sees it). With ``early_stop`` (default) a sample leaves the batch
    as soon as the oracle has seen it succeed. (Which rows reach the model is the oracle's decision:
    in an eps-bounded run it answers no row of a successful sample, so ``early_stop=False`` only keeps
    PGD's own arrays full; the benchmark also sets the oracle's ``stop_on_success=False``.)
    """

    access = "gradient"
    eps_policy = "finite"
    layouts = ("NCHW", "NCT")

    def __init__(self, steps: int = 40, step_size: Optional[float] = None, random_start: bool = True,
                 restarts: int = 1, loss: Literal["ce", "cw"] = "ce", early_stop: bool = True):
        self.steps, self.step_size, self.random_start = steps, step_size, random_start
        self.restarts, self.loss, self.early_stop = restarts, loss, early_stop

    def run(self, oracle: AttackView, generator: torch.Generator) -> None:
        eps, box = oracle.eps, (oracle.low, oracle.high)
        alpha = self.step_size if self.step_size is not None else 2.5 * eps / self.steps
        geo, x0 = geometry(oracle.norm), oracle.x0
        y, t = oracle.y, oracle.targets

        def loss_fn(logits, i):
            return attack_loss(self.loss, logits, y[i], None if t is None else t[i])

        for _ in range(self.restarts):
            idx = oracle.active_indices()
            if len(idx) == 0:
                return
            x = x0[idx].clone()
            if self.random_start:
                x = geo.random_start(x, eps, generator, box)
            for _ in range(self.steps):
                _, g = oracle.gradient(x, loss_fn, idx)
                x = geo.project_point(x + geo.step(g, alpha), x0[idx], eps, box)
                if self.early_stop:  # drop samples the oracle has seen succeed (or out of budget)
                    idx, x = keep_active(oracle, idx, x)
                    if len(idx) == 0:
                        return
            oracle.labels(x, idx)  # the final iterate is a point the attack proposes: it must be evaluated
