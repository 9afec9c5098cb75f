from __future__ import annotations

import torch.nn.functional as F

from robench.defenses.base import TrainingRecipe
from robench.errors import RobenchError
from robench.registry import DEFENSES


@DEFENSES.register("label_smoothing")
class LabelSmoothing(TrainingRecipe):
    """Label smoothing (Szegedy et al. [szegedy2016]; "LS (SVI16)" of [cheng2021 Table 5.1]): cross-entropy
    against h(y) = (1 - α) y + α u with u = 1/K uniform. α = 0.1, Szegedy et al.'s value (the thesis
    states none)."""

    #: numeric ranges the registry checks before construction (robench.registry.validate_params)
    param_ranges = {"alpha": "[0,1)"}

    def __init__(self, alpha: float = 0.1):
        if not 0 <= alpha <= 1:
            raise RobenchError(f"label_smoothing needs 0 <= alpha <= 1, got {alpha}")
        self.alpha = float(alpha)

    def batch_loss(self, model, x, y, index):
        logits = model(x)
        return F.cross_entropy(logits.float(), y, label_smoothing=self.alpha), logits
