from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from robench.defenses.base import InputDefense
from robench.errors import RobenchError
from robench.registry import DEFENSES


@DEFENSES.register("random_resize_pad")
class RandomResizePad(InputDefense):
    """Random resizing and random padding (Xie et al. [xie2018]; [saha2020 §2.3] and
    [zhao2020slides slide "Passive Defense: Randomization"] name it without details).

    Xie et al. resize a 299x299 ImageNet image to a random ``rnd x rnd``, ``rnd`` in [299, 331),
    nearest-neighbour, then zero-pad it at a random position to 331x331, and feed that to the
    network. robench victims take a fixed input size, so robench keeps the canvas at the input
    size and the image inside at Xie et al.'s relative scale: a random integer side ``r`` in
    ``[ceil(min_scale * H), H]`` (default ``min_scale = 299/331``, i.e. 26..28 on MNIST, 29..32 on
    CIFAR-10, 271..299 on ImageNet), nearest-neighbour, placed at a uniformly random integer offset,
    the rest zero. A deliberate deviation: the image shrinks into the canvas instead of the canvas
    growing around it. Per image and per forward (one ``grid_sample`` for the batch), drawn from the
    defense's own generator.

    Differentiable (nearest-neighbour resampling and padding have exact gradients); randomized, so
    the adaptive attack is EOT (Athalye et al. [athalye2018]) and the re-check repeats.
    """

    differentiable = True
    randomized = True

    #: numeric ranges the registry checks before construction (robench.registry.validate_params)
    param_ranges = {"min_scale": "(0,1]"}

    def __init__(self, min_scale: float = 299 / 331):
        super().__init__()
        if not 0 < min_scale <= 1:
            raise RobenchError(f"random_resize_pad min_scale must be in (0, 1], got {min_scale}")
        self.min_scale = float(min_scale)

    def describe(self) -> dict:
        return {"min_scale": round(self.min_scale, 6)}

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        g = self.generator(x.device)
        dev, dt = x.device, x.dtype
        lo = max(1, math.ceil(self.min_scale * min(h, w) - 1e-9))
        side = torch.randint(lo, min(h, w) + 1, (n,), generator=g, device=dev)
        u = torch.rand(n, 2, generator=g, device=dev)
        top = (u[:, 0] * (h - side + 1)).floor().clamp_max(h - side)
        left = (u[:, 1] * (w - side + 1)).floor().clamp_max(w - side)
        # output pixel centre (i + 0.5) -> source coordinate ((i + 0.5 - top) * H / side), normalised
        # for align_corners=False; outside the placed image the source lies outside [-1, 1]: zeros
        rows = torch.arange(h, device=dev, dtype=dt) + 0.5
        cols = torch.arange(w, device=dev, dtype=dt) + 0.5
        sy = ((rows[None] - top[:, None].to(dt)) * h / side[:, None].to(dt)) * 2 / h - 1
        sx = ((cols[None] - left[:, None].to(dt)) * w / side[:, None].to(dt)) * 2 / w - 1
        grid = torch.stack([sx[:, None, :].expand(n, h, w), sy[:, :, None].expand(n, h, w)], -1)
        return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)
