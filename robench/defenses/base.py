from __future__ import annotations

import torch
from torch import nn


class TrainingRecipe:
    """A training-time defense: supplies the loss of one batch to the shared loop in ``train.py``.

    ``batch_loss(model, x, y, index)`` returns ``(loss, logits_clean_or_adv)``; ``index`` holds the
    training-set indices of the batch, for recipes with per-example state.
    """

    kind = "train"

    def setup(self, n_train: int, num_classes: int, device: torch.device) -> None:
        """Called once before training (allocate per-example state here)."""

    def batch_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor):
        raise NotImplementedError


class InputDefense(nn.Module):
    """An inference-time defense: an ``nn.Module`` placed in front of the model.

    ``randomized`` input transforms make the oracle's final re-check repeat; non-differentiable
    ones must provide a BPDA backward.
    """

    kind = "input"
    randomized = False
