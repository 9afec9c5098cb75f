from __future__ import annotations

import torch

from robench.attacks.base import Attack
from robench.attacks.score._common import need_eps
from robench.errors import RobenchError
from robench.oracle import Oracle
from robench.registry import ATTACKS


@ATTACKS.register("noise")
class RandomNoise(Attack):
    """Random-noise baseline: what chance achieves with the same budget and threat model.

    Every query is an independent draw around the clean image: Linf, uniform in the ball
    (``U(-ε, ε)`` per feature); L2, a uniformly random direction (normalised Gaussian) at radius ε
    (on the sphere), then clipped to [0, 1]. It never learns from the answers (it uses ``scores``
    access only so that it sits in the same tables as the score-based attacks; it reads nothing).

    ``draws_per_step`` draws per active sample go to the oracle in one call (fewer when a sample's
    remaining budget is smaller), so the whole budget is spent in ``max_queries / draws_per_step``
    calls. Samples leave as soon as the oracle has seen one draw succeed.
    """

    access = "scores"

    def __init__(self, draws_per_step: int = 100):
        if int(draws_per_step) < 1:
            raise RobenchError(f"noise draws_per_step must be >= 1, got {draws_per_step}")
        self.k = int(draws_per_step)

    def run(self, oracle: Oracle, generator: torch.Generator) -> None:
        eps = need_eps(oracle, "noise")
        x0_all = oracle.x0
        shape = tuple(x0_all.shape[1:])
        dev = oracle.device
        while True:
            idx = oracle.active_indices()
            if len(idx) == 0:
                return
            k = int(min(self.k, int(oracle.remaining[idx].max())))
            B = len(idx)
            if oracle.norm == "linf":
                d = (torch.rand((B, k, *shape), generator=generator, device=dev) * 2 - 1) * eps
            else:
                d = torch.randn((B, k, *shape), generator=generator, device=dev)
                d = d / d.flatten(2).norm(dim=2).clamp_min(1e-12).view(B, k, *[1] * len(shape)) * eps
            x = (x0_all[idx][:, None] + d).clamp(0, 1).view(B * k, *shape)
            oracle.scores(x, idx.repeat_interleave(k))
