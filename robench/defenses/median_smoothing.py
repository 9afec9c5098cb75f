from __future__ import annotations

import torch

from robench.defenses.base import InputDefense
from robench.errors import RobenchError
from robench.registry import DEFENSES


def symmetric_pad(x: torch.Tensor, before: int, after: int, dim: int) -> torch.Tensor:
    """Pad ``dim`` by mirroring with the edge repeated (numpy 'symmetric', scipy.ndimage 'reflect')."""
    n = x.shape[dim]
    idx = torch.cat([torch.arange(before - 1, -1, -1), torch.arange(n), torch.arange(n - 1, n - 1 - after, -1)])
    return x.index_select(dim, idx.clamp(0, n - 1).to(x.device))


@DEFENSES.register("median_smoothing")
class MedianSmoothing(InputDefense):
    """Local median smoothing over a ``size`` x ``size`` window, per channel (Xu et al. [xu2018], feature
    squeezing's spatial-smoothing squeezer).

    Xu et al. use 2x2 on MNIST and 2x2 / 3x3 on CIFAR-10 and ImageNet ([xu2018]; [saha2020 §2.3]
    names "smoothed" squeezers without a size), so the default is ``size=2``. Window placement,
    borders and even sizes follow ``scipy.ndimage.median_filter`` (what Xu et al.'s code calls):
    borders mirrored with the edge repeated, an even window covers offsets ``-size//2 .. size - 1 -
    size//2``, and the value taken is the element of rank ``size*size // 2`` (for an even window the
    upper of the two middle values).

    The median picks one input value per output, so autograd gives its exact (sub)gradient: the
    transform counts as differentiable and needs no BPDA.
    """

    differentiable = True
    randomized = False

    def __init__(self, size: int = 2):
        super().__init__()
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise RobenchError(f"median_smoothing size must be an integer >= 1, got '{size}'")
        self.size = size

    def describe(self) -> dict:
        return {"size": self.size}

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        k = self.size
        if k == 1:
            return x
        before, after = k // 2, k - 1 - k // 2
        xp = symmetric_pad(symmetric_pad(x, before, after, 2), before, after, 3)
        win = xp.unfold(2, k, 1).unfold(3, k, 1).reshape(*x.shape, k * k)
        return win.kthvalue(k * k // 2 + 1, dim=-1).values
