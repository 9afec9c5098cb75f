"""A small table of RobustBench model-zoo architectures, for loading its checkpoints offline
[croce2021robustbench].

The ``robustbench`` package on PyPI (1.1.1) does not import: it needs ``autoattack``, which is
installed from git only, and ``pkg_resources``. So robench carries the architectures of the zoo
entries below and reads RobustBench's cache layout itself: ``<model_dir>/<dataset>/<threat_model>/
<name>.pt``, a dict with a ``state_dict`` (or the state dict itself) whose keys may carry
``module.`` / ``model.`` prefixes, exactly as ``robustbench.utils.load_model`` reads it. When a
working ``robustbench`` is importable, names not in this table are built by it.

The WideResNet below is RobustBench's ``model_zoo/architectures/wide_resnet.py`` (itself after
TRADES [zhang2019trades]), with the same module names so that the zoo's state dicts load strictly.
Its inputs are [0, 1] images (these entries normalise nothing).
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.equalInOut = cin == cout
        self.convShortcut = None if self.equalInOut else nn.Conv2d(cin, cout, 1, stride=stride, padding=0, bias=False)

    def forward(self, x):
        if not self.equalInOut:
            x = self.relu1(self.bn1(x))
            out = x
        else:
            out = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(out))))
        return torch.add(x if self.equalInOut else self.convShortcut(x), out)


class _Stage(nn.Module):
    def __init__(self, n: int, cin: int, cout: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(*[_Block(cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(n)])

    def forward(self, x):
        return self.layer(x)


class WideResNet(nn.Module):
    """RobustBench's WideResNet-depth-widen_factor (``sub_block1`` holds weights some checkpoints carry, unused)."""

    def __init__(self, depth: int = 28, num_classes: int = 10, widen_factor: int = 10, sub_block1: bool = False):
        super().__init__()
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        if (depth - 4) % 6:
            raise ValueError("WideResNet depth must be 6n + 4")
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(3, ch[0], 3, stride=1, padding=1, bias=False)
        self.block1 = _Stage(n, ch[0], ch[1], 1)
        if sub_block1:
            self.sub_block1 = _Stage(n, ch[0], ch[1], 1)
        self.block2 = _Stage(n, ch[1], ch[2], 2)
        self.block3 = _Stage(n, ch[2], ch[3], 2)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(ch[3], num_classes)
        self.nChannels = ch[3]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.data.normal_(0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                m.bias.data.zero_()

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        out = F.adaptive_avg_pool2d(out, 1) if out.shape[-1] != 8 else F.avg_pool2d(out, 8)
        return self.fc(out.flatten(1))


def _wrn(depth: int, width: int, sub_block1: bool = False, num_classes: int = 10) -> Callable[[], nn.Module]:
    return lambda: WideResNet(depth=depth, num_classes=num_classes, widen_factor=width, sub_block1=sub_block1)


#: (dataset, threat model) -> {zoo name: architecture factory}, as in robustbench/model_zoo/cifar10.py
ZOO: Dict[Tuple[str, str], Dict[str, Callable[[], nn.Module]]] = {
    ("cifar10", "Linf"): {
        "Standard": _wrn(28, 10),                                  # natural training, WRN-28-10
        "Carmon2019Unlabeled": _wrn(28, 10, sub_block1=True),
        "Wang2020Improving": _wrn(28, 10, sub_block1=True),       # MART
        "Zhang2019Theoretically": _wrn(34, 10, sub_block1=True),  # TRADES
    },
    ("cifar10", "L2"): {"Standard": _wrn(28, 10)},
    ("cifar10", "corruptions"): {"Standard": _wrn(28, 10)},
}

DATASET_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}


def strip_prefixes(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """RobustBench's ``rm_substr_from_state_dict(..., 'module.')`` then ``'model.'``."""
    for p in ("module.", "model."):
        state = {k.replace(p, "", 1) if k.startswith(p) else k: v for k, v in state.items()}
    return state
