from __future__ import annotations

import torch.nn.functional as F

from robench.defenses.adversarial import check_threat, peek_logits, pgd, warm
from robench.defenses.base import TrainingRecipe
from robench.errors import RobenchError
from robench.registry import DEFENSES


@DEFENSES.register("fast_at")
class FastAT(TrainingRecipe):
    """"Fast is better than free" (Wong, Rice and Kolter, ICLR 2020): FGSM adversarial training from
    a uniform random start in the eps ball, step ``alpha = 1.25 eps`` (their recommended step),
    projected back on the ball; the loss is that of the adversarial batch only. One gradient step per
    batch instead of PGD's ``steps``, so an epoch costs about a third of 7-step PGD-AT's.

    Wong et al. also use a cyclic learning rate and early stopping against catastrophic
    overfitting; here the loop's schedule applies (cosine by default) and ``warmup_epochs`` (not in
    the paper) ramps eps linearly from 0.
    """

    adversarial = True

    def __init__(self, eps: float = 0.3, norm: str = "linf", alpha: float = 1.25, warmup_epochs: float = 0.0):
        check_threat(norm, eps, "fast_at")
        if alpha <= 0 or warmup_epochs < 0:
            raise RobenchError(f"fast_at needs alpha > 0 and warmup_epochs >= 0 (got {alpha}, {warmup_epochs})")
        self.eps, self.norm, self.alpha, self.warmup_epochs = float(eps), norm, float(alpha), float(warmup_epochs)

    def batch_loss(self, model, x, y, index):
        eps = warm(self.eps, self.epoch, self.warmup_epochs)
        xa = pgd(model, x, y, eps=eps, steps=1, step_size=self.alpha * eps, norm=self.norm, rand_init=True)
        adv_logits = model(xa)
        return F.cross_entropy(adv_logits.float(), y), peek_logits(model, x), adv_logits
