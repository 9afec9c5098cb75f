from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from robench.defenses.adversarial import check_threat, eval_mode, pgd, warm
from robench.defenses.base import TrainingRecipe
from robench.errors import RobenchError
from robench.registry import DEFENSES


def _kl(adv_logits: torch.Tensor, clean_logits: torch.Tensor) -> torch.Tensor:
    """Per-row KL(f(x) || f(x')) with f = softmax: the TRADES boundary term."""
    p = F.softmax(clean_logits.float(), 1)
    return (p * (F.log_softmax(clean_logits.float(), 1) - F.log_softmax(adv_logits.float(), 1))).sum(1)


@DEFENSES.register("trades")
class TRADES(TrainingRecipe):
    """TRADES (Zhang et al. [zhang2019trades]; row "TRADES" of [cheng2021 Table 5.1]):

        min_θ E [ CE(f(x), y) + β max_{x' ∈ B(x, eps)} KL(f(x) || f(x')) ]

    The inner max as in the authors' reference code: start at x + 0.001·N(0, I), ``steps`` signed
    ascent steps on the KL term (clean distribution fixed), projection on the ball and [0, 1], in
    eval mode. Defaults: β = 6 and 10 steps (their CIFAR-10 setting; their MNIST one is β = 1 and 40
    steps of 0.01), step size 2.5·eps/steps when null (eps/4 at 10 steps: their CIFAR 0.007 at
    0.031). ``warmup_epochs`` (not in the paper) ramps eps linearly from 0.
    """

    adversarial = True

    def __init__(self, eps: float = 0.3, norm: str = "linf", beta: float = 6.0, steps: int = 10,
                 step_size: Optional[float] = None, warmup_epochs: float = 0.0):
        check_threat(norm, eps, "trades")
        if steps < 1 or beta < 0 or warmup_epochs < 0:
            raise RobenchError(f"trades needs steps >= 1, beta >= 0 and warmup_epochs >= 0 (got {steps}, {beta}, {warmup_epochs})")
        self.eps, self.norm, self.beta, self.steps = float(eps), norm, float(beta), int(steps)
        self.step_size, self.warmup_epochs = step_size, float(warmup_epochs)

    def batch_loss(self, model, x, y, index):
        eps = warm(self.eps, self.epoch, self.warmup_epochs)
        ss = None if self.step_size is None else self.step_size * eps / self.eps
        with torch.no_grad(), eval_mode(model):
            target = model(x)
        x0 = (x + 0.001 * torch.randn_like(x)).clamp(0, 1)
        kl = lambda logits, _y: _kl(logits, target)
        xa = pgd(model, x, y, eps=eps, steps=self.steps, step_size=ss, norm=self.norm, start=x0, loss_fn=kl)
        logits, adv_logits = model(x), model(xa)
        loss = F.cross_entropy(logits.float(), y) + self.beta * _kl(adv_logits, logits).mean()
        return loss, logits, adv_logits

