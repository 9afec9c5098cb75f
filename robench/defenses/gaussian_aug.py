from __future__ import annotations

import torch
import torch.nn.functional as F

from robench.defenses.base import TrainingRecipe
from robench.errors import RobenchError
from robench.registry import DEFENSES


@DEFENSES.register("gaussian_aug")
class GaussianAug(TrainingRecipe):
    """Gaussian data augmentation (Zantedeschi et al. [zantedeschi2017]; "GA (ZNR17)" of [cheng2021 Table 5.1]):
    the vicinity N(x, Δ²) with the label kept, i.e. cross-entropy on x + N(0, σ²). σ = Δ = 0.1, the
    value SPROUT uses "within the suggested range in (ZNR17)" [cheng2021 §5.3.4.1]. The noisy image is not
    clipped to [0, 1] (the vicinity is N(x, Δ²) as written)."""

    def __init__(self, sigma: float = 0.1):
        if sigma < 0:
            raise RobenchError(f"gaussian_aug needs sigma >= 0, got {sigma}")
        self.sigma = float(sigma)

    def batch_loss(self, model, x, y, index):
        logits = model(x + self.sigma * torch.randn_like(x))
        return F.cross_entropy(logits.float(), y), logits
