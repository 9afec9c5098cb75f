from __future__ import annotations

import torch

from robench.defenses.base import InputDefense
from robench.errors import RobenchError
from robench.registry import DEFENSES


@DEFENSES.register("bit_depth")
class BitDepth(InputDefense):
    """Bit-depth reduction (Xu et al. [xu2018], feature squeezing; Guo et al. [guo2018]).

    Each value in [0, 1] is rounded to the nearest of ``2**bits`` evenly spaced levels:
    ``round(x * (2**bits - 1)) / (2**bits - 1)`` (Xu et al.'s squeezer; 1 bit = thresholding at 0.5).

    Settings in the papers: ``bits=5`` (8-bit images with **3 bits removed**, as GenAttack attacks it,
    [alzantot2019 §2.6.2.2, Table 2.4], following [guo2018]) is the default here; feature squeezing
    uses **1 bit on MNIST** and **4 bits on ImageNet** ([xu2018], as tabulated in [zhao2020slides]), e.g.
    ``defense.input.bit_depth.bits=1``. Whether [guo2018] rounds or truncates the removed bits is not
    stated in [alzantot2019]; rounding (Xu et al.'s form) is chosen deliberately: it never moves a value by more than
    half a level.

    Not differentiable (its gradient is zero almost everywhere): the BPDA backward is the identity
    (Athalye et al. [athalye2018]).
    """

    differentiable = False
    randomized = False

    def __init__(self, bits: int = 5):
        super().__init__()
        if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 16:
            raise RobenchError(f"bit_depth bits (levels kept = 2**bits) must be an integer in 1..16, got '{bits}'")
        self.bits = bits

    def describe(self) -> dict:
        return {"bits": self.bits}

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        m = float(2 ** self.bits - 1)
        return torch.round(x.clamp(0, 1) * m) / m
