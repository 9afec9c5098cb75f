from __future__ import annotations

import math

import torch

from robench.attacks.base import Attack, AttackView
from robench.attacks.decision.common import adversarial, flat_norm, noise_init, normalize, targeted_pool, view_b
from robench.errors import RobenchError
from robench.registry import ATTACKS


@ATTACKS.register("hsja")
class HopSkipJump(Attack):
    """HopSkipJumpAttack (Chen, Jordan, Wainwright [chen2020hsja Algorithm 2]), hard-label, L2 or Linf, batched.

    Each iteration t: (1) bisect between x0 and the current point to the boundary (threshold
    theta = gamma / d^(3/2) for L2, gamma / d^2 for Linf, where the Linf bisection runs over the
    Linf radius with threshold min(theta * dist, theta)); (2) estimate the boundary's normal with
    B_t = min(init_evals * sqrt(t), max_evals) probes x + delta u (u uniform on the sphere for L2,
    uniform in the cube then L2-normalised for Linf), delta_t = sqrt(d) theta dist_{t-1} (L2) or
    d theta dist_{t-1} (Linf), 0.1 at t = 1, with the paper's baseline (mean of the +/-1 answers)
    subtracted; (3) step along the estimate (L2: normalised; Linf: its sign) by the geometric
    progression xi = dist / sqrt(t), halved until the point is adversarial.

    Defaults are the authors' code's: gamma = 1, init_evals = 100, max_evals = 10,000, geometric step
    search. Initialisation: uniform noise until adversarial, then bisection of the blend (the authors'
    code); targeted runs try target-class training images first (needs :meth:`prepare`).
    """

    access = "label"
    layouts = ("NCHW", "NCT")
    requires = ("class_images",)
    minimizes_distortion = True

    #: numeric ranges the registry checks before construction (robench.registry.validate_params)
    param_ranges = {"max_halvings": ">=0"}

    def __init__(self, gamma: float = 1.0, init_evals: int = 100, max_evals: int = 10_000,
                 max_iterations: int = 100_000, max_halvings: int = 30):
        if gamma <= 0 or init_evals < 1 or max_evals < init_evals:
            raise RobenchError(f"hsja needs gamma > 0 and 1 <= init_evals <= max_evals "
                               f"(got gamma={gamma}, init_evals={init_evals}, max_evals={max_evals})")
        self.gamma, self.init_evals, self.max_evals = gamma, init_evals, max_evals
        self.max_iterations, self.max_halvings = max_iterations, max_halvings
        self.class_images = None  # ClassImages of the training split, from prepare()

    def prepare(self, context) -> None:
        """Keep the training images by class (targeted θ0 / starting points; AttackContext.class_images)."""
        self.class_images = context.class_images

    def _bisect(self, oracle, x0, xa, s, theta):
        """HSJA's binary_search_batch: move each point of ``xa`` (rows of samples ``s``) to the boundary."""
        norm = oracle.norm
        dev = x0.device
        if norm == "linf":
            hi = flat_norm(xa - x0, "linf")
            thr = torch.clamp(hi * theta, max=theta)
        else:
            hi = torch.ones(len(s), device=dev)
            thr = torch.full((len(s),), theta, device=dev)
        lo = torch.zeros_like(hi)

        def project(a, r=slice(None)):
            xr, x0r, a = xa[r], x0[r], view_b(a, x0)
            if norm == "linf":
                return torch.minimum(torch.maximum(xr, x0r - a), x0r + a)
            return x0r + a * (xr - x0r)

        live = torch.ones(len(s), dtype=torch.bool, device=dev)
        while True:
            r = (live & ((hi - lo) > thr)).nonzero().flatten()
            if len(r):
                r = r[oracle.active[s[r]]]
            if len(r) == 0:
                break
            mid = (hi[r] + lo[r]) / 2
            adv, ans = adversarial(oracle, project(mid, r), s[r])
            hi[r[adv]] = mid[adv]
            lo[r[~adv & ans]] = mid[~adv & ans]
            live[r[~ans]] = False
        return project(hi)

    def run(self, oracle: AttackView, generator: torch.Generator) -> None:
        norm, x0 = oracle.norm, oracle.x0
        n, dev = x0.shape[0], x0.device
        d = x0[0].numel()
        theta = self.gamma / (d ** 1.5) if norm == "l2" else self.gamma / d ** 2
        pool = targeted_pool(self.class_images, oracle, 100, generator)
        xa, found = noise_init(oracle, generator, pool=pool)
        s = found.nonzero().flatten()
        if len(s) == 0:
            return
        xa[s] = self._bisect(oracle, x0[s], xa[s], s, theta)
        dist = flat_norm(xa - x0, norm)
        for t in range(1, self.max_iterations + 1):
            s = (found & oracle.active).nonzero().flatten()
            if len(s) == 0:
                return
            xs, x0s = xa[s], x0[s]
            delta = torch.full((len(s),), 0.1, device=dev) if t == 1 else (
                math.sqrt(d) * theta * dist[s] if norm == "l2" else d * theta * dist[s])
            B = int(min(self.init_evals * math.sqrt(t), self.max_evals))
            shape = (len(s), B, *x0.shape[1:])
            u = torch.randn(shape, generator=generator, device=dev) if norm == "l2" else \
                torch.rand(shape, generator=generator, device=dev) * 2 - 1
            u = normalize(u.flatten(0, 1), "l2").view(shape)
            dl = delta.view(-1, 1, *[1] * (x0.dim() - 1))
            probe = (xs[:, None] + dl * u).clamp(oracle.low, oracle.high)
            u = (probe - xs[:, None]) / dl
            rows = s.repeat_interleave(B)
            adv, ans = adversarial(oracle, probe.flatten(0, 1), rows)
            f = (2 * adv.float() - 1) * ans.float()
            f = f.view(len(s), B)
            cnt = ans.view(len(s), B).float().sum(1).clamp_min(1)
            mean = f.sum(1) / cnt
            fb = torch.where(mean.abs()[:, None] == 1, f, (f - mean[:, None]) * ans.view(len(s), B).float())
            grad = (fb.view(len(s), B, *[1] * (x0.dim() - 1)) * u).sum(1) / view_b(cnt, x0s)
            update = normalize(grad, "l2") if norm == "l2" else grad.sign()
            # geometric progression of the step size, halved until adversarial
            xi = flat_norm(xs - x0s, norm) / math.sqrt(t)
            cand = xs.clone()
            todo = torch.ones(len(s), dtype=torch.bool, device=dev)
            for _ in range(self.max_halvings):
                r = todo.nonzero().flatten()
                if len(r):
                    r = r[oracle.active[s[r]]]
                if len(r) == 0:
                    break
                c = (xs[r] + view_b(xi[r], x0s) * update[r]).clamp(oracle.low, oracle.high)
                a, an = adversarial(oracle, c, s[r])
                cand[r[a]] = c[a]
                todo[r[a | ~an]] = False
                xi[r[~a]] /= 2
            moved = ~todo  # samples whose step found an adversarial point (others keep theirs)
            new = xs.clone()
            if bool(moved.any()):
                new[moved] = self._bisect(oracle, x0s[moved], cand[moved], s[moved], theta)
            xa[s] = new
            dist[s] = flat_norm(new - x0s, norm)

