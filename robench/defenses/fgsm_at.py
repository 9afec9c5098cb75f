from __future__ import annotations

import torch.nn.functional as F

from robench.defenses.adversarial import check_threat, pgd, warm
from robench.defenses.base import TrainingRecipe
from robench.errors import RobenchError
from robench.registry import DEFENSES


@DEFENSES.register("fgsm_at")
class FGSMAT(TrainingRecipe):
    """FGSM adversarial training, Goodfellow et al.'s α-mixture [goodfellow2015 §6]:

        J~(θ, x, y) = α J(θ, x, y) + (1 - α) J(θ, x + eps sign(∇_x J(θ, x, y)), y)

    [zhao2020slides] prints the loss with no α; ``alpha = 0.5`` is the value of [goodfellow2015 §6]. The FGSM point
    is taken at the clean input (no random start: that is ``fast_at``), crafted in eval mode with the
    current weights ("adversarial examples are continually updated given current model"), clipped
    to [0, 1]. ``warmup_epochs`` (not in the paper) ramps eps linearly from 0.
    """

    adversarial = True

    def __init__(self, eps: float = 0.3, norm: str = "linf", alpha: float = 0.5, warmup_epochs: float = 0.0):
        check_threat(norm, eps, "fgsm_at")
        if not 0.0 <= alpha <= 1.0 or warmup_epochs < 0:
            raise RobenchError(f"fgsm_at needs 0 <= alpha <= 1 and warmup_epochs >= 0 (got {alpha}, {warmup_epochs})")
        self.eps, self.norm, self.alpha, self.warmup_epochs = float(eps), norm, float(alpha), float(warmup_epochs)

    def batch_loss(self, model, x, y, index):
        eps = warm(self.eps, self.epoch, self.warmup_epochs)
        xa = pgd(model, x, y, eps=eps, steps=1, step_size=eps, norm=self.norm, rand_init=False)
        logits, adv_logits = model(x), model(xa)
        loss = self.alpha * F.cross_entropy(logits.float(), y) + (1 - self.alpha) * F.cross_entropy(adv_logits.float(), y)
        return loss, logits, adv_logits
