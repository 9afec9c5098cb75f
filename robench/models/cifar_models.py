"""CIFAR-sized architectures (32x32 inputs)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from robench.models.mnist_models import _flat_size
from robench.registry import MODELS


@MODELS.register("cw_cifar")
def cw_cifar(num_classes: int = 10, shape=(3, 32, 32), dropout: float = 0.0) -> nn.Module:
    """Carlini-Wagner CIFAR CNN: 2x conv64, pool, 2x conv128, pool, FC 256, FC 256, FC 10 [carlini2017]."""
    features = nn.Sequential(
        nn.Conv2d(shape[0], 64, 3), nn.ReLU(), nn.Conv2d(64, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3), nn.ReLU(), nn.Conv2d(128, 128, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten())
    n = _flat_size(features, shape)
    return nn.Sequential(features, nn.Linear(n, 256), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, num_classes))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        sc = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + sc


class ResNet(nn.Module):
    """ResNet for 32x32 inputs [he2016] (the CIFAR variant with a 3x3 stem, as in Madry's and TRADES' code)."""

    def __init__(self, block, num_blocks, num_classes: int, in_ch: int, preact: bool = False):
        super().__init__()
        self.preact = preact
        self.conv1 = nn.Conv2d(in_ch, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        layers, cin = [], 64
        for i, (w, n) in enumerate(zip((64, 128, 256, 512), num_blocks)):
            for s in [1 if i == 0 else 2] + [1] * (n - 1):
                layers.append(block(cin, w, s))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.bn_final = nn.BatchNorm2d(512) if preact else nn.Identity()
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x):
        out = self.conv1(x)
        out = self.layers(out if self.preact else F.relu(self.bn1(out)))
        if self.preact:
            out = F.relu(self.bn_final(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


@MODELS.register("resnet18")
def resnet18(num_classes: int = 10, shape=(3, 32, 32)) -> nn.Module:
    """ResNet-18, CIFAR variant (3x3 stem, no max-pool)."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, shape[0])


@MODELS.register("preact_resnet18")
def preact_resnet18(num_classes: int = 10, shape=(3, 32, 32)) -> nn.Module:
    """Pre-activation ResNet-18 [he2016identity], CIFAR variant, as in fast adversarial training [wong2020]."""
    return ResNet(PreActBlock, (2, 2, 2, 2), num_classes, shape[0], preact=True)


class WideBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, drop: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.drop = drop
        self.equal = cin == cout
        self.shortcut = None if self.equal else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        o = F.relu(self.bn1(x))
        y = self.conv1(o)
        y = F.relu(self.bn2(y))
        if self.drop > 0:
            y = F.dropout(y, p=self.drop, training=self.training)
        y = self.conv2(y)
        return y + (x if self.equal else self.shortcut(o))


class WideResNet(nn.Module):
    """Wide ResNet [zagoruyko2016], the layout used by Madry et al. [madry2018] and TRADES [zhang2019trades]."""

    def __init__(self, depth: int, widen: int, num_classes: int, in_ch: int, drop: float = 0.0):
        super().__init__()
        assert (depth - 4) % 6 == 0, "WRN depth must be 6n+4"
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_ch, widths[0], 3, 1, 1, bias=False)
        blocks, cin = [], widths[0]
        for g, stride in zip(range(3), (1, 2, 2)):
            for j in range(n):
                blocks.append(WideBlock(cin, widths[g + 1], stride if j == 0 else 1, drop))
                cin = widths[g + 1]
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        out = F.relu(self.bn(self.blocks(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


@MODELS.register("wrn_34_10")
def wrn_34_10(num_classes: int = 10, shape=(3, 32, 32), dropout: float = 0.0) -> nn.Module:
    """Wide ResNet-34-10 ([madry2018], [zhang2019trades])."""
    return WideResNet(34, 10, num_classes, shape[0], dropout)


@MODELS.register("vgg16")
def vgg16(num_classes: int = 10, shape=(3, 32, 32)) -> nn.Module:
    """VGG-16 [simonyan2015] with batch norm, CIFAR variant (one 512-wide classifier layer)."""
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    layers, c = [], shape[0]
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            c = v
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes))
