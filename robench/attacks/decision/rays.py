from __future__ import annotations

import math

import torch

from robench.attacks.base import Attack, AttackView
from robench.attacks.decision.common import adversarial, view_b
from robench.errors import RobenchError
from robench.registry import ATTACKS


@ATTACKS.register("rays")
class RayS(Attack):
    """RayS (Chen and Gu [chen2020rays Algorithms 1-3]), hard-label, Linf, batched over samples.

    Searches ray directions in {-1, +1}^d: the current sign vector s_t and radius r_t (the Linf
    boundary distance along s_t; initially all +1, r = inf). Hierarchically, at block level k the
    image is cut into 2^k blocks of consecutive coordinates (flattened C*H*W order, as the authors'
    code); each step flips the signs of the next block and asks whether x0 + r_t s' (clipped to
    [0, 1]) is adversarial: if so, a bisection finds the new, smaller radius along s' and s' becomes
    current. Level k+1 starts when all blocks of level k have been tried. One query per step plus
    the bisection, which runs to ``tol`` (1e-3 in the authors' code, on the radius measured as the
    L2 length of the direction r s / ||s||_2, i.e. tol / sqrt(d) in Linf units).

    With an L2 budget RayS still searches Linf rays; the oracle keeps the point of smallest L2
    distortion it saw.
    """

    access = "label"
    layouts = ("NCHW", "NCT")
    minimizes_distortion = True

    def __init__(self, tol: float = 1e-3, max_steps: int = 10_000_000):
        if tol <= 0:
            raise RobenchError(f"rays needs tol > 0, got {tol}")
        self.tol, self.max_steps = tol, max_steps

    def run(self, oracle: AttackView, generator: torch.Generator) -> None:
        x0 = oracle.x0
        n, dev = x0.shape[0], x0.device
        dim = x0[0].numel()
        tol = self.tol / math.sqrt(dim)
        sgn = torch.ones(n, dim, device=dev)
        r = torch.full((n,), float("inf"), device=dev)
        level, block = 0, 0

        def point(rows, sg, rad):
            return (x0[rows] + view_b(rad.clamp(max=oracle.high - oracle.low), x0[rows]) * sg.view_as(x0[rows])).clamp(oracle.low, oracle.high)

        for _ in range(self.max_steps):
            s = oracle.active_indices()
            if len(s) == 0:
                return
            size = math.ceil(dim / 2 ** level)
            start, end = block * size, min(dim, (block + 1) * size)
            att = sgn[s].clone()
            att[:, start:end] *= -1
            # the current radius along the new direction (r = inf: the farthest point, radius 1)
            adv, _ = adversarial(oracle, point(s, att, r[s]), s)
            rows, sg = s[adv], att[adv]
            lo = torch.zeros(len(rows), device=dev)
            hi = r[rows].clamp(max=1.0)
            while True:
                k = ((hi - lo) > tol).nonzero().flatten()
                if len(k):
                    k = k[oracle.active[rows[k]]]
                if len(k) == 0:
                    break
                mid = (lo[k] + hi[k]) / 2
                a, an = adversarial(oracle, point(rows[k], sg[k], mid), rows[k])
                hi[k[a]] = mid[a]
                lo[k[~a & an]] = mid[~a & an]
                lo[k[~an]] = hi[k[~an]]  # out of budget: stop with the last adversarial radius
            better = hi < r[rows]
            r[rows[better]] = hi[better]
            sgn[rows[better]] = sg[better]
            block += 1
            if block == 2 ** level or end == dim:
                level, block = level + 1, 0
