from __future__ import annotations

import torch
import torch.nn.functional as F

from robench.defenses.base import TrainingRecipe
from robench.errors import RobenchError
from robench.registry import DEFENSES


@DEFENSES.register("mixup")
class Mixup(TrainingRecipe):
    """Mixup (Zhang et al. [zhang2018mixup]; "ZCD18" of [cheng2021 Table 5.1]): x~ = (1 - λ) x_i + λ x_j,
    y~ = (1 - λ) y_i + λ y_j, λ ~ Beta(a, a), one λ per batch and j a random permutation of the
    batch, as in the authors' code. a = 1.0 is Zhang et al.'s CIFAR-10 setting (SPROUT's mixup uses
    0.2, see ``sprout``). λ is folded to min(λ, 1 - λ) (Beta(a, a) is symmetric, so the vicinity is
    unchanged) so that x_i dominates and the batch accuracy against y_i is meaningful."""

    #: numeric ranges the registry checks before construction (robench.registry.validate_params)
    param_ranges = {"a": ">0"}

    def __init__(self, a: float = 1.0):
        if a <= 0:
            raise RobenchError(f"mixup needs a > 0, got {a}")
        self.a = float(a)

    def batch_loss(self, model, x, y, index):
        lam = float(torch.distributions.Beta(self.a, self.a).sample())
        lam = min(lam, 1 - lam)
        perm = torch.randperm(len(y), device=x.device)
        logits = model((1 - lam) * x + lam * x[perm])
        loss = (1 - lam) * F.cross_entropy(logits.float(), y) + lam * F.cross_entropy(logits.float(), y[perm])
        return loss, logits
