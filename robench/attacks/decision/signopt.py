from __future__ import annotations

import torch

from robench.attacks.decision.common import DirectionSearchAttack, adversarial, normalize, ray_point
from robench.errors import RobenchError
from robench.registry import ATTACKS


@ATTACKS.register("signopt")
class SignOPT(DirectionSearchAttack):
    """Sign-OPT (Cheng et al. [cheng2020signopt]; [cheng2021 §2.4.3, Algorithm 4]), hard-label.

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

    #: a sample stops once its beta falls below this (the reference code's stall rule)
    min_beta = 1e-8
    #: the registered name, for error messages (subclasses that reuse the constructor set their own)
    label = "signopt"

    def __init__(self, q: int = 200, beta: float = 0.001, alpha: float = 0.2, n_init: int = 100,
                 init_tol: float = 1e-3, search_tol: float | None = None, max_iterations: int = 100_000):
        if q < 1 or n_init < 1 or beta <= 0 or alpha <= 0 or init_tol <= 0:
            raise RobenchError(f"{self.label} needs q >= 1, n_init >= 1 and beta, alpha, init_tol > 0 "
                               f"(got q={q}, n_init={n_init}, beta={beta}, alpha={alpha}, init_tol={init_tol})")
        self.q, self.beta, self.alpha, self.n_init = q, beta, alpha, n_init
        self.init_tol, self.search_tol, self.max_iterations = init_tol, search_tol, max_iterations


    def _sign_queries(self, oracle, generator, x0, s, th, gs, beta):
        """The single-query sign oracle (eq. 2.17), Q rows per sample, one label query each: returns
        (u, sign) with u of shape (n, Q, C, H, W) (unit L2 rows) and sign of shape (n, Q): +1 where
        g(theta + beta u) > g(theta) (the point at distance g along the perturbed direction is not
        adversarial), -1 where it is, 0 for rows the oracle did not answer (out of budget)."""
        dev = x0.device
        u = torch.randn((len(s), self.q, *x0.shape[1:]), generator=generator, device=dev)
        u = normalize(u.flatten(0, 1), "l2").view_as(u)
        b = beta.view(-1, 1, *[1] * (x0.dim() - 1))
        cand = normalize((th[:, None] + b * u).flatten(0, 1), oracle.norm)
        rows = s.repeat_interleave(self.q)
        adv, ans = adversarial(oracle, ray_point(x0[rows], cand, gs.repeat_interleave(self.q), (oracle.low, oracle.high)), rows)
        sign = torch.where(adv, -1.0, 1.0) * ans.float()
        return u, sign.view(len(s), self.q)

    def _aggregate(self, u: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
        """Sign-OPT's estimate (eq. 2.18 with the proofs' 1/Q): (1/Q) sum_q sign_q u_q."""
        return (sign.view(*sign.shape, *[1] * (u.dim() - 2)) * u).mean(1)

    def _estimate(self, oracle, generator, x0, s, th, gs, beta, objective):
        """The sign oracle (eq. 2.17) aggregated by :meth:`_aggregate` (eq. 2.18 here; SVM-OPT and
        ZO-SignSGD override only the aggregation)."""
        u, sign = self._sign_queries(oracle, generator, x0, s, th, gs, beta)
        tol = beta / 500 if self.search_tol is None else self.search_tol
        return self._aggregate(u, sign), tol, None

    def _accept(self, th, gs, new_t, new_g, extra, objective):
        return new_t, torch.minimum(new_g, gs)
