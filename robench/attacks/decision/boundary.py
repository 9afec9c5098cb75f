from __future__ import annotations

import torch

from robench.attacks.base import Attack, AttackView
from robench.attacks.decision.common import adversarial, noise_init, targeted_pool, view_b
from robench.errors import RobenchError
from robench.registry import ATTACKS


@ATTACKS.register("boundary")
class BoundaryAttack(Attack):
    """Boundary attack (Brendel, Rauber, Bethge [brendel2018]), hard-label, batched over samples.

    A random walk along the decision boundary that shrinks the L2 distance to x0: each step draws a
    Gaussian perturbation orthogonal to the direction towards x0, scaled to ``spherical_step`` times
    the current distance and projected back on the sphere around x0 (the "orthogonal step"), then
    moves ``source_step`` times the distance towards x0 (the "step towards the original"); the
    candidate replaces the current point when adversarial and closer. Step sizes adapt as in the
    paper (§3): every ``update_stats_every_k`` steps the orthogonal candidate is also queried;
    over the last 100 such checks, a success rate above 0.5 multiplies both steps by
    ``step_adaptation`` (below 0.2 divides them), and over the last 30 checks of the full
    candidate, above 0.25 multiplies the source step (below 0.1 divides it).

    [cheng2021 §2.5] compares the Foolbox [rauber2017foolbox] implementation with unstated settings; robench follows
    Foolbox 3's ``BoundaryAttack`` and its defaults (spherical_step = source_step = 0.01,
    step_adaptation = 1.5, update_stats_every_k = 10, convergence at source_step < 1e-7) and its
    initialisation (uniform noise until adversarial, then a blend search towards x0, here bisection;
    targeted runs try target-class training images first, needs :meth:`prepare`). The walk is L2 by
    design; with a Linf budget the oracle still keeps the point of smallest Linf distortion it saw.
    """

    access = "label"
    layouts = ("NCHW", "NCT")
    requires = ("class_images",)
    minimizes_distortion = True

    #: numeric ranges the registry checks before construction (robench.registry.validate_params)
    param_ranges = {"spherical_step": ">0", "source_step": ">0", "step_adaptation": ">1", "update_stats_every_k": ">=1",
                    "source_step_convergence": ">=0"}

    def __init__(self, spherical_step: float = 0.01, source_step: float = 0.01, step_adaptation: float = 1.5,
                 update_stats_every_k: int = 10, source_step_convergence: float = 1e-7, max_steps: int = 10_000_000):
        if spherical_step <= 0 or source_step <= 0 or step_adaptation <= 1 or update_stats_every_k < 1:
            raise RobenchError("boundary needs spherical_step, source_step > 0, step_adaptation > 1 and "
                               "update_stats_every_k >= 1")
        self.spherical_step, self.source_step, self.step_adaptation = spherical_step, source_step, step_adaptation
        self.k, self.conv, self.max_steps = update_stats_every_k, source_step_convergence, max_steps
        self.class_images = None  # ClassImages of the training split, from prepare()

    def prepare(self, context) -> None:
        """Keep the training images by class (targeted θ0 / starting points; AttackContext.class_images)."""
        self.class_images = context.class_images

    def run(self, oracle: AttackView, generator: torch.Generator) -> None:
        x0 = oracle.x0
        n, dev = x0.shape[0], x0.device
        best, found = noise_init(oracle, generator, pool=targeted_pool(self.class_images, oracle, 100, generator))
        sph = torch.full((n,), self.spherical_step, device=dev)
        src = torch.full((n,), self.source_step, device=dev)
        sph_stats = torch.full((n, 100), float("nan"), device=dev)  # queues of the last checks (NaN: empty)
        step_stats = torch.full((n, 30), float("nan"), device=dev)
        n_sph = torch.zeros(n, dtype=torch.long, device=dev)
        n_step = torch.zeros(n, dtype=torch.long, device=dev)
        a = self.step_adaptation
        going = found & (src >= self.conv)  # src changes only on the steps that update the statistics
        den = torch.sqrt(sph ** 2 + 1)[:, None]  # so does sph: the orthogonal step's normaliser, kept
        for step in range(1, self.max_steps + 1):
            s = (going & oracle.active).nonzero().flatten()
            if len(s) == 0:
                return
            full = len(s) == n  # every sample (s is then 0..n-1): no gathers
            xo, xb = (x0, best) if full else (x0[s], best[s])
            sph_s, src_s, den_s = (sph, src, den) if full else (sph[s], src[s], den[s])
            xof = xo.flatten(1)
            diff = (xo - xb).flatten(1)
            dnorm = diff.norm(dim=1).clamp_min_(1e-12)
            unit = diff / dnorm[:, None]
            eta = torch.randn(diff.shape, generator=generator, device=dev)
            eta -= (eta * unit).sum(1, keepdim=True) * unit
            eta *= (sph_s * dnorm / eta.norm(dim=1).clamp_min_(1e-12))[:, None]
            # (the same operations as x0 + (eta - diff) / sqrt(sph^2 + 1) etc., in place where a buffer is free)
            sph_c = eta.sub_(diff).div_(den_s).add_(xof).clamp_(oracle.low, oracle.high)
            new_dir = xof - sph_c
            new_norm = new_dir.norm(dim=1).clamp_min_(1e-12)
            length = (src_s * dnorm + new_norm - dnorm).clamp_min_(0).div_(new_norm)
            cand = new_dir.mul_(length[:, None]).add_(sph_c).clamp_(oracle.low, oracle.high).view_as(xb)
            check = step % self.k == 0
            if check:  # the orthogonal candidate and the full candidate, one call
                adv2, _ = adversarial(oracle, torch.cat([sph_c.view_as(xb), cand]), torch.cat([s, s]))
                sph_adv, adv = adv2[:len(s)], adv2[len(s):]
            else:
                adv, _ = adversarial(oracle, cand, s)
            closer = (cand.flatten(1) - xof).norm(dim=1) < dnorm
            ok = adv & closer
            best[s[ok]] = cand[ok]
            if check:
                sph_stats[s, n_sph[s] % 100] = sph_adv.float()
                step_stats[s, n_step[s] % 30] = adv.float()
                n_sph[s] += 1
                n_step[s] += 1
                full = n_sph[s] >= 100
                p = sph_stats[s].mean(1)
                up, down = full & (p > 0.5), full & (p < 0.2)
                f = torch.where(up, a, torch.where(down, 1 / a, 1.0))
                sph[s] *= f
                src[s] *= f
                reset = s[up | down]
                sph_stats[reset], n_sph[reset] = float("nan"), 0
                full = n_step[s] >= 30
                p = step_stats[s].mean(1)
                up, down = full & (p > 0.25), full & (p < 0.1)
                src[s] *= torch.where(up, a, torch.where(down, 1 / a, 1.0))
                reset = s[up | down]
                step_stats[reset], n_step[reset] = float("nan"), 0
                going = found & (src >= self.conv)
                den = torch.sqrt(sph ** 2 + 1)[:, None]
