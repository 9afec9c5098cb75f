from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from robench.errors import RobenchError
from robench.registry import MODELS


class Normalize(nn.Module):
    """(x - mean) / std per channel: the first layer of every robench model, so attacks work in [0, 1]."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class NormalizedModel(nn.Sequential):
    """Normalize followed by the network; ``net`` is the architecture proper."""

    def __init__(self, norm: Normalize, net: nn.Module):
        super().__init__()
        self.norm = norm
        self.net = net


def build_model(name: str, splits, params: dict | None = None) -> nn.Module:
    """Instantiate model ``name`` for a dataset: ``factory(num_classes, shape, **params)`` behind Normalize."""
    factory = MODELS.get(name)
    params = dict(params or {})
    try:
        net = factory(num_classes=splits.num_classes, shape=tuple(splits.shape), **params)
    except TypeError as e:
        raise RobenchError(f"model '{name}' does not accept {sorted(params)}: {e}") from None
    return NormalizedModel(Normalize(splits.mean, splits.std), net)
