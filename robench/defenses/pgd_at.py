from __future__ import annotations

from typing import Optional

import torch.nn.functional as F

from robench.defenses.adversarial import check_threat, peek_logits, pgd, warm
from robench.defenses.base import TrainingRecipe
from robench.errors import RobenchError
from robench.registry import DEFENSES


@DEFENSES.register("pgd_at")
class PGDAT(TrainingRecipe):
    """PGD adversarial training (Madry et al. [madry2018]; objective (4.1) of [cheng2021 §4.1]).

    min_θ E max_{x' ∈ B(x, eps)} CE(f_θ(x'), y), the inner max by ``steps`` PGD steps from a uniform
    random start in the ball, step size ``2.5 * eps / steps`` when ``step_size`` is null (the rule of
    the evaluation attack; Madry's CIFAR setting, 7 steps of 2/255 at 8/255, walks 1.75 eps, this
    rule 2.5 eps). ``steps=7`` is Madry's CIFAR-10 setting, the one [cheng2021 §5.3] quotes for the
    cost of adversarial training; his MNIST setting is 40 steps of 0.01 at 0.3. ``eps`` and
    ``norm`` default to the run's budget (configs/defense/pgd_at.yaml).

    ``clean_weight`` w mixes in the clean loss: (1 - w) CE(x') + w CE(x) (the min-max with both terms on the
    adversarial-training slides of [zhao2020slides] is w = 0.5; Madry is w = 0). ``warmup_epochs`` (not in the paper)
    ramps eps linearly from 0 over the first epochs, which short MNIST runs at eps 0.3 need to
    escape the all-one-class plateau.
    """

    adversarial = True

    def __init__(self, eps: float = 0.3, norm: str = "linf", steps: int = 7, step_size: Optional[float] = None,
                 random_start: bool = True, clean_weight: float = 0.0, warmup_epochs: float = 0.0):
        check_threat(norm, eps, "pgd_at")
        if steps < 1 or not 0.0 <= clean_weight <= 1.0 or warmup_epochs < 0:
            raise RobenchError(f"pgd_at needs steps >= 1, 0 <= clean_weight <= 1 and warmup_epochs >= 0 "
                               f"(got {steps}, {clean_weight}, {warmup_epochs})")
        self.eps, self.norm, self.steps, self.step_size = float(eps), norm, int(steps), step_size
        self.random_start, self.clean_weight, self.warmup_epochs = bool(random_start), float(clean_weight), float(warmup_epochs)

    def batch_loss(self, model, x, y, index):
        eps = warm(self.eps, self.epoch, self.warmup_epochs)
        ss = None if self.step_size is None else self.step_size * eps / self.eps
        xa = pgd(model, x, y, eps=eps, steps=self.steps, step_size=ss, norm=self.norm, rand_init=self.random_start)
        adv_logits = model(xa)
        loss = F.cross_entropy(adv_logits.float(), y)
        if self.clean_weight > 0:
            logits = model(x)
            loss = (1 - self.clean_weight) * loss + self.clean_weight * F.cross_entropy(logits.float(), y)
        else:
            logits = peek_logits(model, x)
        return loss, logits, adv_logits
