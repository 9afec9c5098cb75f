"""Feature-denoising blocks (Xie et al. [xie2019denoise]) and the MNIST CNN that carries them."""
from __future__ import annotations

import math

import torch
from torch import nn

from robench.errors import RobenchError
from robench.registry import MODELS


class NonLocalDenoise(nn.Module):
    """A feature-denoising block [xie2019denoise §4.2, Figs. 4-5]: ``x + conv1x1(NLM(x))``, NLM the non-local
    means of [saha2020 §2.3.1, eqs. 2.17-2.18]:

        y_i = 1 / C(x) · Σ_j f(x_i, x_j) · x_j,      f(x_i, x_j) = exp( θ(x_i)^T φ(x_j) / sqrt(d) )

    over all positions j of the feature map, C(x) = Σ_j f(x_i, x_j) (the "Gaussian (softmax)" weighting,
    the best of Xie et al.'s), θ and φ 1x1 convolutions to d = C/2 channels initialised N(0, 0.01²),
    as in the authors' code (``softmax=True, embed=True``; https://github.com/facebookresearch/ImageNet-Adversarial-Training).
    ``embed=false`` uses θ = φ = identity (d = C); ``softmax=false`` the dot-product weighting
    f = θ^T φ with C(x) = the number of positions. The 1x1 convolution after the means starts at zero,
    so the block starts as the identity (the authors zero-initialise the γ of the batch norm that
    follows it; robench's MNIST CNNs have none).
    """

    def __init__(self, channels: int, embed: bool = True, softmax: bool = True):
        super().__init__()
        self.softmax = bool(softmax)
        if embed:
            d = max(1, channels // 2)
            self.theta, self.phi = nn.Conv2d(channels, d, 1), nn.Conv2d(channels, d, 1)
            for m in (self.theta, self.phi):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        else:
            self.theta = self.phi = None
        self.out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        th = (self.theta(x) if self.theta is not None else x).flatten(2)     # (n, d, hw)
        ph = (self.phi(x) if self.phi is not None else x).flatten(2)
        f = torch.einsum("ndi,ndj->nij", th, ph)                              # (n, hw, hw)
        if self.softmax:
            f = (f / math.sqrt(th.shape[1])).softmax(-1)
        else:
            f = f / (h * w)
        y = torch.einsum("nij,ncj->nci", f, x.flatten(2)).view(n, c, h, w)
        return x + self.out(y)


@MODELS.register("small_cnn_denoise")
def small_cnn_denoise(num_classes: int = 10, shape=(1, 28, 28), depth: int = 2, width: int = 32,
                      embed: bool = True, softmax: bool = True) -> nn.Module:
    """``small_cnn`` with a feature-denoising block (:class:`NonLocalDenoise`) after each of its pooling
    stages (Xie et al. put them after residual stages of their ResNets [xie2019denoise]): with the
    default depth 2 one block on the 32 x 14 x 14 map. Train it adversarially, as the paper does:
    ``robench train-defense model=small_cnn_denoise defense=pgd_at``."""
    if depth < 2 or width < 1:
        raise RobenchError(f"small_cnn_denoise needs depth >= 2 (a denoising block follows each pooling stage, "
                           f"every second convolution) and width >= 1, got depth={depth} width={width}")
    layers, c, hw = [], shape[0], shape[1]
    for i in range(depth):
        out = width * 2 ** min(i // 2, 2)
        layers += [nn.Conv2d(c, out, 3, padding=1), nn.ReLU()]
        c = out
        if i % 2 == 1 and hw >= 4:
            layers += [nn.MaxPool2d(2), NonLocalDenoise(c, embed=embed, softmax=softmax)]
            hw //= 2
    features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(4), nn.Flatten())
    return nn.Sequential(features, nn.Linear(c * 16, 128), nn.ReLU(), nn.Linear(128, num_classes))
