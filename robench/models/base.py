from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from robench.errors import RobenchError
from robench.registry import MODELS


class Normalize(nn.Module):
    """(x - mean) / std per channel: the first layer of every robench model, so attacks work in the data's own
    domain ([0, 1] images, N x C x H x W; [-1, 1] waveforms, N x C x T)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            return (x - self.mean) / self.std
        shape = (1, -1) + (1,) * (x.dim() - 2)  # N x C x T signals (robench/domain.py): per channel too
        return (x - self.mean.reshape(shape)) / self.std.reshape(shape)


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
