from __future__ import annotations

from typing import Tuple

from torch import nn

from robench.registry import MODELS


def _flat_size(features: nn.Module, shape: Tuple[int, int, int]) -> int:
    import torch

    with torch.no_grad():
        return int(features(torch.zeros(1, *shape)).numel())


@MODELS.register("cw_mnist")
def cw_mnist(num_classes: int = 10, shape=(1, 28, 28), dropout: float = 0.0) -> nn.Module:
    """Carlini-Wagner MNIST CNN: 2x conv32, pool, 2x conv64, pool, FC 200, FC 200, FC 10 [carlini2017]."""
    c = shape[0]
    features = nn.Sequential(
        nn.Conv2d(c, 32, 3), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.Conv2d(64, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten())
    n = _flat_size(features, shape)
    return nn.Sequential(features, nn.Linear(n, 200), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, num_classes))


@MODELS.register("small_cnn")
def small_cnn(num_classes: int = 10, shape=(1, 28, 28), depth: int = 2, width: int = 32, bn: bool = False) -> nn.Module:
    """Plain CNN with `depth` conv blocks of `width`.. channels (capacity study, [saha2020 §5.4, Table 5.1]);
    ``bn``: a BatchNorm after each convolution (``small_cnn_bn``)."""
    if depth < 1 or width < 1:
        from robench.errors import RobenchError
        raise RobenchError(f"small_cnn needs depth >= 1 and width >= 1, got depth={depth} width={width}")
    layers, c, hw = [], shape[0], shape[1]
    for i in range(depth):
        out = width * 2 ** min(i // 2, 2)
        layers += [nn.Conv2d(c, out, 3, padding=1)] + ([nn.BatchNorm2d(out)] if bn else []) + [nn.ReLU()]
        c = out
        if i % 2 == 1 and hw >= 4:  # pool after every second conv while the map is large enough
            layers.append(nn.MaxPool2d(2))
            hw //= 2
    features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(4), nn.Flatten())
    return nn.Sequential(features, nn.Linear(c * 16, 128), nn.ReLU(), nn.Linear(128, num_classes))


@MODELS.register("small_cnn_bn")
def small_cnn_bn(num_classes: int = 10, shape=(1, 28, 28), depth: int = 2, width: int = 32) -> nn.Module:
    """``small_cnn`` with a BatchNorm after each convolution: the MNIST model of the BN experiments of
    [cheng2021 §6] (bn_finetune, advprop, robmask), whose batch-norm layers
    robench/models/conditional_bn.py conditions."""
    return small_cnn(num_classes, shape, depth, width, bn=True)
