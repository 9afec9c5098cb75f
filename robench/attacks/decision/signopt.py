from __future__ import annotations

import torch

from robench.attacks.base import Attack
from robench.attacks.decision.common import (adversarial, init_directions, line_search, normalize, ray_point,
                                             targeted_pool, view_b)
from robench.errors import RobenchError
from robench.oracle import Oracle
from robench.registry import ATTACKS


@ATTACKS.register("signopt")
class SignOPT(Attack):
    """Sign-OPT (Cheng, Singh, Chen, Chen, Liu, Hsieh 2020; the Cheng thesis §2.4.3, Algorithm 4), hard-label.

    Minimises the boundary distance g(theta) (thesis eq. 2.13/2.14) over directions theta. Each
    iteration estimates the gradient with the single-query sign oracle (eq. 2.17): for Q random unit
    directions u_q, one label query at x0 + g(theta) (theta + beta u_q)/||theta + beta u_q|| says
    whether g decreases along u_q (adversarial: sign -1); the estimate is (1/Q) sum_q sign_q u_q
    (eq. 2.18 with the proofs' 1/Q). The step comes from the line search of the OPT reference code
    (attackbox; :func:`~robench.attacks.decision.common.line_search`), with g of each candidate from
    the local search of Algorithm 2 (ratio 0.01, tolerance beta/500 as in the reference code).

    Defaults: Q = 200 (§2.5); theta_0 the best of 100 random Gaussian directions, or for targeted runs
    of 100 target-class training images (§2.5; needs :meth:`prepare` with the dataset, else random
    directions); initial bisection tolerance 1e-3. The thesis does not state the oracle's
    perturbation size (printed beta in Algorithm 4, epsilon in eq. 2.17): robench takes the reference
    code's beta = 0.001 and its initial step alpha = 0.2, and its stall rule: when alpha < 1e-4,
    alpha <- 1 and beta <- beta / 10; a sample stops once beta < 1e-8.

    Norms: L2 directions are L2-normalised. For Linf the direction is normalised by its Linf norm
    (x0 + lambda theta / ||theta||_inf), so g is the Linf boundary distance and the sign oracle
    compares exactly that (the thesis's smooth Linf surrogate belongs to OPT's value-based
    estimate, not to a sign oracle). Every point is clipped to [0, 1]; all label queries, those of
    the initialisation, the searches and the sign oracle, are counted by the oracle.
    """

    access = "label"
    requires = ("class_images",)
    minimizes_distortion = True

    def __init__(self, q: int = 200, beta: float = 0.001, alpha: float = 0.2, n_init: int = 100,
                 init_tol: float = 1e-3, search_tol: float | None = None, max_iterations: int = 100_000):
        if q < 1 or n_init < 1 or beta <= 0 or alpha <= 0 or init_tol <= 0:
            raise RobenchError(f"signopt needs q >= 1, n_init >= 1 and beta, alpha, init_tol > 0 "
                               f"(got q={q}, n_init={n_init}, beta={beta}, alpha={alpha}, init_tol={init_tol})")
        self.q, self.beta, self.alpha, self.n_init = q, beta, alpha, n_init
        self.init_tol, self.search_tol, self.max_iterations = init_tol, search_tol, max_iterations
        self.class_images = None  # ClassImages of the training split, from prepare()

    def prepare(self, context) -> None:
        """Keep the training images by class (targeted θ0 / starting points; AttackContext.class_images)."""
        self.class_images = context.class_images

    def run(self, oracle: Oracle, generator: torch.Generator) -> None:
        norm, x0 = oracle.norm, oracle.x0
        n, dev = x0.shape[0], x0.device
        pool = targeted_pool(self.class_images, oracle, self.n_init, generator)
        theta, g = init_directions(oracle, generator, norm, self.n_init, self.init_tol, pool)
        alpha = torch.full((n,), float(self.alpha), device=dev)
        beta = torch.full((n,), float(self.beta), device=dev)
        live = torch.isfinite(g)
        for _ in range(self.max_iterations):
            s = (live & oracle.active).nonzero().flatten()
            if len(s) == 0:
                return
            th, gs = theta[s], g[s]
            # sign oracle: Q rows per sample, one query each
            u = torch.randn((len(s), self.q, *x0.shape[1:]), generator=generator, device=dev)
            u = normalize(u.flatten(0, 1), "l2").view_as(u)
            b = beta[s].view(-1, 1, *[1] * (x0.dim() - 1))
            cand = normalize((th[:, None] + b * u).flatten(0, 1), norm)
            rows = s.repeat_interleave(self.q)
            adv, ans = adversarial(oracle, ray_point(x0[rows], cand, gs.repeat_interleave(self.q)), rows)
            sign = torch.where(adv, -1.0, 1.0) * ans.float()
            grad = (sign.view(len(s), self.q, *[1] * (x0.dim() - 1)) * u).mean(1)
            tol = beta[s] / 500 if self.search_tol is None else self.search_tol
            a = alpha[s].clone()
            new_t, new_g = line_search(oracle, x0[s], s, th, gs, grad, a, norm, tol)
            alpha[s] = a
            theta[s], g[s] = new_t, torch.minimum(new_g, gs)
            stall = a < 1e-4
            alpha[s[stall]] = 1.0
            beta[s[stall]] *= 0.1
            live[s[stall & (beta[s] < 1e-8)]] = False
