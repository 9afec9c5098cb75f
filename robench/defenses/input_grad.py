from __future__ import annotations

import torch
import torch.nn.functional as F

from robench.defenses.adversarial import peek_logits
from robench.defenses.base import TrainingRecipe
from robench.errors import RobenchError
from robench.registry import DEFENSES


@DEFENSES.register("input_grad_reg")
class InputGradientRegularization(TrainingRecipe):
    """Input-gradient regularisation ("double backpropagation"; Ross and Doshi-Velez [ross2018]; the
    thesis's "Gradient regularisation ... large gradients with respect to the input is penalized as part
    of the training procedure" [saha2020 §2.3.1]):

        min_θ  E [ CE(f_θ(x), y) + λ · || ∂ CE(f_θ(x), y) / ∂x ||_2^2 ]

    per example, the gradient taken with respect to the [0, 1] input (the model's normalisation is
    inside it) and kept in the graph (``create_graph``), so the penalty is differentiated a second time.
    Batch means of both terms (the paper sums both over the examples: the same λ).

    ``lam`` = λ. Neither the thesis nor the survey gives a value; Ross and Doshi-Velez tune it per
    dataset. robench's default, 10, is a starting point, not yet measured against other values
    (docs/defenses/training-recipes.md, "Defenses of the seeds").

    The thesis notes the penalty is "reasonably robust" when "combined with adversarial training";
    ``adv_weight`` > 0 adds that combination (robench's option): the loss becomes
    (1 - w) · [CE(x) + λ penalty] + w · CE(x_fgsm), with x_fgsm one FGSM step of size ``eps``.
    """

    adversarial = False

    #: numeric ranges the registry checks before construction (robench.registry.validate_params)
    param_ranges = {"lam": ">=0", "adv_weight": "[0,1]"}

    def __init__(self, lam: float = 10.0, adv_weight: float = 0.0, eps: float = 0.3, norm: str = "linf"):
        if not lam >= 0:
            raise RobenchError(f"input_grad_reg lam must be >= 0, got {lam}")
        if not 0.0 <= adv_weight <= 1.0:
            raise RobenchError(f"input_grad_reg adv_weight must be in [0, 1], got {adv_weight}")
        if adv_weight > 0:
            from robench.defenses.adversarial import check_threat
            check_threat(norm, eps, "input_grad_reg")
        self.lam, self.adv_weight, self.eps, self.norm = float(lam), float(adv_weight), float(eps), norm
        self.adversarial = self.adv_weight > 0

    def batch_loss(self, model, x, y, index):
        xr = x.detach().requires_grad_(True)
        logits = model(xr)
        ce = F.cross_entropy(logits.float(), y, reduction="sum")   # a sum: its input gradient is per example
        g, = torch.autograd.grad(ce, xr, create_graph=True)
        penalty = g.float().flatten(1).pow(2).sum(1).mean()
        loss = ce / len(y) + self.lam * penalty
        if self.adv_weight == 0:
            return loss, logits.detach()
        from robench.defenses.adversarial import pgd
        xa = pgd(model, x, y, eps=self.eps, steps=1, step_size=self.eps, norm=self.norm, rand_init=False)
        adv_logits = model(xa)
        loss = (1 - self.adv_weight) * loss + self.adv_weight * F.cross_entropy(adv_logits.float(), y)
        return loss, peek_logits(model, x), adv_logits
