from __future__ import annotations

import torch.nn.functional as F

from robench.defenses.base import TrainingRecipe
from robench.registry import DEFENSES


@DEFENSES.register("none")
class Natural(TrainingRecipe):
    """No defense: natural (empirical-risk) training with cross-entropy on clean images."""

    def batch_loss(self, model, x, y, index):
        logits = model(x)
        return F.cross_entropy(logits, y), logits
