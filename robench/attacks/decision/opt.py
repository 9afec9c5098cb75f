from __future__ import annotations

import torch

from robench.attacks.decision.common import LOCAL, DirectionSearchAttack, boundary_distance, normalize, search_scale, view_b
from robench.errors import RobenchError
from robench.geometry import LINF_BALL
from robench.attacks.base import AttackView
from robench.registry import ATTACKS


@ATTACKS.register("opt")
class OPTAttack(DirectionSearchAttack):
    """OPT-attack (Cheng et al. [cheng2019opt]; [cheng2021 §2.4.2]), hard-label.

    Minimises the boundary distance g(theta) (eqs. 2.13-2.15) with the random gradient-free (RGF)
    estimate of Algorithm 3 / eq. 2.16, averaged over q random unit directions u:
    grad ~ (1/q) sum (g(theta + beta u) - g(theta)) / beta * u, each g(theta + beta u) from the local
    search of Algorithm 2 around g(theta) (ratio alpha = 0.01, tolerance beta/500 as in the reference
    code attackbox), all q directions of all samples searched together. The step comes from the
    backtracking line search of the reference code (:func:`~robench.attacks.decision.common.line_search`);
    as there, the iterate becomes the best of the line-search result and the best probed direction.

    Defaults (§2.4.2 / §2.5): q = 20, beta = 0.005, theta_0 the best of 100 random Gaussian directions
    (targeted: of 100 target-class training images, needs :meth:`prepare`); g from scratch by an outward
    search then bisection (step not stated by the thesis: see ``search_scale``), initial bisection
    tolerance 1e-3. Not stated, from the reference code: the initial step alpha = 0.2 and the stall
    rule (alpha < 1e-4: alpha <- 1, beta <- beta/10; a sample stops when beta < 0.0005).

    Linf: directions are Linf-normalised and, when ``budget.eps`` is set, the objective is the
    thesis's smooth surrogate sum_i max(lambda |theta_i| / ||theta||_inf - eps, 0)^2 with lambda the
    Linf boundary distance (0 once lambda <= eps: the sample is then done); with eps null the Linf
    boundary distance itself is minimised.
    """

    def __init__(self, q: int = 20, beta: float = 0.005, alpha: float = 0.2, n_init: int = 100,
                 init_tol: float = 1e-3, search_tol: float | None = None, min_beta: float = 0.0005,
                 max_iterations: int = 100_000):
        if q < 1 or n_init < 1 or beta <= 0 or alpha <= 0 or init_tol <= 0:
            raise RobenchError(f"opt needs q >= 1, n_init >= 1 and beta, alpha, init_tol > 0 "
                               f"(got q={q}, n_init={n_init}, beta={beta}, alpha={alpha}, init_tol={init_tol})")
        self.q, self.beta, self.alpha, self.n_init = q, beta, alpha, n_init
        self.init_tol, self.search_tol, self.min_beta, self.max_iterations = init_tol, search_tol, min_beta, max_iterations


    def _objective(self, oracle: AttackView):
        eps = oracle.eps
        if oracle.norm == "linf" and eps is not None:
            def objective(rows, th, lam):  # the thesis's smooth Linf surrogate [cheng2021 §2.4.2]
                a = LINF_BALL.normalize(th.flatten(1)).abs()  # |theta_i| / ||theta||_inf
                val = ((lam[:, None] * a - eps).clamp_min(0) ** 2).sum(1)
                return torch.where(torch.isfinite(lam), val, torch.full_like(val, float("inf")))
        else:
            def objective(rows, th, lam):
                return lam
        return objective

    def _estimate(self, oracle, generator, x0, s, th, gs, beta, objective):
        """RGF (Algorithm 3 / eq. 2.16): q unit directions per sample, g of each by Algorithm 2 around
        g(theta), all at once."""
        dev, norm = x0.device, oracle.norm
        _, lam_max = search_scale(x0, norm)
        obj = objective(s, th, gs)
        tol = beta / 500 if self.search_tol is None else torch.full_like(gs, self.search_tol)
        u = torch.randn((len(s), self.q, *x0.shape[1:]), generator=generator, device=dev)
        u = normalize(u.flatten(0, 1), "l2")
        rows = s.repeat_interleave(self.q)
        pos = torch.arange(len(s), device=dev).repeat_interleave(self.q)
        b = beta[pos]
        ttt = normalize(th[pos] + view_b(b, u) * u, norm)
        lam1 = boundary_distance(oracle, x0[rows], ttt, rows, gs[pos], LOCAL, tol[pos], lam_max=lam_max)
        o1 = objective(rows, ttt, lam1)
        diff = torch.where(torch.isfinite(o1), (o1 - obj[pos]) / b, torch.zeros_like(o1))
        grad = (view_b(diff, u) * u).view(len(s), self.q, *x0.shape[1:]).mean(1)
        return grad, tol, (ttt, lam1, o1.view(len(s), self.q))

    def _accept(self, th, gs, new_t, new_g, extra, objective):
        """The reference code: keep the best probed direction if it beats the line search's result."""
        ttt, lam1, o1v = extra
        best_q = o1v.argmin(1)
        min_o1 = o1v.gather(1, best_q[:, None]).squeeze(1)
        pick = torch.arange(len(th), device=th.device) * self.q + best_q
        use_probe = min_o1 < objective(None, new_t, new_g)
        new_t[use_probe], new_g[use_probe] = ttt[pick[use_probe]], lam1[pick[use_probe]]
        return new_t, new_g
