from __future__ import annotations

import torch

from robench.attacks.score._common import ScoreAttack, ScoreTask
from robench.errors import RobenchError
from robench.attacks.base import AttackView
from robench.registry import ATTACKS


@ATTACKS.register("noise")
class RandomNoise(ScoreAttack):
    """Random-noise baseline: what chance achieves with the same budget and threat model.

    Every query is an independent draw around the clean image: Linf, uniform in the ball
    (``U(-ε, ε)`` per feature); L2, a uniformly random direction (normalised Gaussian) at radius ε
    (on the sphere), then clipped to the input box; L0, ``ε`` positions chosen uniformly (a pixel
    across its channels, or a time step) set to values uniform in the box, per channel (the other
    positions untouched). It never learns from the answers (it uses ``scores``
    access only so that it sits in the same tables as the score-based attacks; it reads nothing).

    ``draws_per_step`` draws per active sample go to the oracle in one call (fewer when a sample's
    remaining budget is smaller), so the whole budget is spent in ``max_queries / draws_per_step``
    calls. Samples leave as soon as the oracle has seen one draw succeed.
    """

    name = "noise"
    layouts = ("NCHW", "NCT")
    norms = ("linf", "l2", "l0")

    def __init__(self, draws_per_step: int = 100):
        if int(draws_per_step) < 1:
            raise RobenchError(f"noise draws_per_step must be >= 1, got {draws_per_step}")
        self.k = int(draws_per_step)

    def _attack(self, oracle: AttackView, generator: torch.Generator, task: ScoreTask) -> None:
        eps, x0_all, shape, dev, geo = task.eps, task.x0, task.shape, task.device, task.geometry
        idx = task.idx
        while True:
            k = int(min(self.k, int(oracle.remaining[idx].max())))
            B = len(idx)
            x0 = x0_all[idx].repeat_interleave(k, 0)
            if task.norm == "l0":  # eps random positions, each set to uniform values in the box
                lo, hi = task.box
                moved = geo.random_in_ball((B * k, *shape), eps, generator, dev) != 0
                where = moved.any(1, keepdim=True) if len(shape) > 1 else moved
                vals = lo + (hi - lo) * torch.rand((B * k, *shape), generator=generator, device=dev)
                x = torch.where(where, vals, x0)
            else:
                if task.norm == "linf":  # uniform in the ball
                    d = geo.random_in_ball((B * k, *shape), eps, generator, dev)
                else:  # uniform on the sphere
                    d = geo.normalize(torch.randn((B * k, *shape), generator=generator, device=dev)) * eps
                x = (x0 + d).clamp(*task.box)
            oracle.scores(x, idx.repeat_interleave(k))
            idx = oracle.active_indices()
            if len(idx) == 0:
                return
