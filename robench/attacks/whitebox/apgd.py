from __future__ import annotations

from typing import Literal, Optional

import torch

from robench.attacks.base import Attack, AttackView, attack_loss, keep_active
from robench.errors import RobenchError
from robench.geometry import geometry
from robench.registry import ATTACKS


def dlr_loss(logits: torch.Tensor, y: torch.Tensor, target: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Difference of logits ratio ([croce2020 eq. 6] and the targeted [croce2020 eq. 7]), to MAXIMISE.

    untargeted: -(z_y - max_{i!=y} z_i) / (z_pi1 - z_pi3)
    targeted:   -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)      (z_pi sorted decreasingly)
    (+1e-12 in the denominators, as in the authors' code).
    """
    zs, _ = logits.sort(1, descending=True)
    zy = logits.gather(1, y[:, None]).squeeze(1)
    if target is None:
        other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
        return -(zy - other) / (zs[:, 0] - zs[:, 2] + 1e-12)
    zt = logits.gather(1, target[:, None]).squeeze(1)
    return -(zy - zt) / (zs[:, 0] - 0.5 * (zs[:, 2] + zs[:, 3]) + 1e-12)


def checkpoints(n_iter: int) -> list[int]:
    """Iterations w_j after which the step size is reviewed: p_0 = 0, p_1 = 0.22,
    p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), w_j = ceil(p_j n_iter) (paper §3.2), in the
    integer form of the authors' code (first after max(int(0.22 N), 1) iterations, then periods
    shrinking by max(int(0.03 N), 1) down to max(int(0.06 N), 1))."""
    k = max(int(0.22 * n_iter), 1)
    dec, kmin = max(int(0.03 * n_iter), 1), max(int(0.06 * n_iter), 1)
    out, w = [], 0
    while w + k <= n_iter:
        w += k
        out.append(w)
        k = max(k - dec, kmin)
    return out


@ATTACKS.register("apgd_ce")
class APGD(Attack):
    """Auto-PGD with the cross-entropy loss, APGD-CE ([croce2020 Algorithm 1]), Linf and L2.

    A step-size-free PGD with momentum: step size ``eta^0 = 2 eps``;

        z^{k+1} = P( x^k + eta^k * sign(grad f(x^k)) )          (L2: grad / ||grad||_2)
        x^{k+1} = P( x^k + a (z^{k+1} - x^k) + (1 - a)(x^k - x^{k-1}) ),  a = 0.75 (1 at k = 0)

    with ``P`` the projection onto the eps-ball and [0, 1]. At each checkpoint ``w_j``
    (:func:`checkpoints`: 22, 41, 57, 70, 80, 87, 93, 99 for 100 iterations) the step size halves
    when (1) the loss increased in at most ``rho = 0.75`` of the steps since the last checkpoint
    (the authors' code uses ``<=``, the paper writes ``<``; we follow the code; and, as in the code,
    the first period's first comparison is of ``f(x^1)`` with 0, not with ``f(x^0)``: the code's
    ``loss_steps`` row it reads there is still zero. For the CE loss, which is positive, that step always
    counts as an increase; for DLR losses, negative while the point is not adversarial, never) or (2) the step size
    was not reduced at the last checkpoint and the best loss has not improved since; a halved sample
    restarts from its best point (and that point's gradient). Defaults are the paper's and
    AutoAttack's standard version: 100 iterations, 1 restart, random start (the authors' code:
    uniform in the Linf ball rescaled so its largest coordinate is eps; for L2 a Gaussian direction
    of norm eps).

    Targeted budgets descend the cross-entropy of the target. Cost: one gradient query at the
    start and one per iteration per active sample (101 per restart); the oracle judges every
    iterate, so no final label query is needed. Samples the oracle has seen succeed drop out.
    """

    access = "gradient"
    eps_policy = "finite"
    layouts = ("NCHW", "NCT")
    name = "apgd_ce"
    default_loss = "ce"

    def __init__(self, steps: int = 100, restarts: int = 1, rho: float = 0.75,
                 loss: Optional[Literal["ce", "dlr", "cw"]] = None):
        loss = loss or self.default_loss
        self.steps, self.restarts, self.rho, self.loss = steps, restarts, rho, loss

    # ------------------------------------------------------------------ the loss of a run
    def loss_fn(self, oracle: AttackView, target: Optional[torch.Tensor]):
        """Per-row loss to maximise; ``target``: per-sample class for targeted losses (else None)."""
        y = oracle.y
        if self.loss == "dlr":
            if oracle.num_classes < 4:
                raise RobenchError(f"{self.name}: the DLR loss needs at least 4 classes")
            return lambda logits, i: dlr_loss(logits, y[i], None if target is None else target[i])
        return lambda logits, i: attack_loss(self.loss, logits, y[i], None if target is None else target[i])

    def run(self, oracle: AttackView, generator: torch.Generator) -> None:
        loss_fn = self.loss_fn(oracle, oracle.targets)
        for _ in range(self.restarts):
            if not self.single_run(oracle, generator, loss_fn, oracle.active_indices()):
                return

    def single_run(self, oracle: AttackView, generator: torch.Generator, loss_fn, idx: torch.Tensor) -> bool:
        """One APGD run on samples ``idx``; False when no sample is left active."""
        if len(idx) == 0:
            return False
        eps, norm, n_iter, box = oracle.eps, oracle.norm, self.steps, (oracle.low, oracle.high)
        geo = geometry(norm)
        x0all = oracle.x0
        x0 = x0all[idx]
        view = (-1,) + (1,) * (x0.dim() - 1)
        if norm == "linf":
            u = torch.rand(x0.shape, generator=generator, device=x0.device) * 2 - 1
            d = eps * u / u.flatten(1).abs().amax(1).clamp_min(1e-12).view(view)
        else:
            u = torch.randn(x0.shape, generator=generator, device=x0.device)
            d = eps * u / (u.flatten(1).norm(dim=1).view(view) + 1e-12)
        x = (x0 + d).clamp(*box)
        logits, grad = oracle.gradient(x, loss_fn, idx)
        loss = loss_fn(torch.nan_to_num(logits), idx)
        s = {"x": x, "x_old": x.clone(), "grad": grad, "x_best": x.clone(), "grad_best": grad.clone(),
             "loss_best": loss.clone(), "loss_prev": torch.zeros_like(loss), "n_incr": torch.zeros_like(loss),
             "eta": torch.full_like(loss, 2.0 * eps), "reduced_last": torch.ones_like(loss, dtype=torch.bool),
             "best_last": loss.clone()}
        idx, s = keep_active(oracle, idx, s, mask=~torch.isnan(logits[:, 0]))
        cps = set(checkpoints(n_iter))
        last_cp = 0
        for i in range(n_iter):
            if len(idx) == 0:
                return bool(oracle.active.any())
            x0 = x0all[idx]
            x, g = s["x"], s["grad"]
            a = 0.75 if i > 0 else 1.0
            mom = x - s["x_old"]
            s["x_old"] = x
            eta = s["eta"].view(view)
            if norm == "linf":
                z = geo.project_point(x + eta * g.sign(), x0, eps, box)
            else:
                z = geo.project_point(x + eta * g / (g.flatten(1).norm(dim=1).view(view) + 1e-12), x0, eps, box)
            x = geo.project_point(x + a * (z - x) + (1 - a) * mom, x0, eps, box)
            logits, g = oracle.gradient(x, loss_fn, idx)
            loss = loss_fn(torch.nan_to_num(logits), idx)
            s["x"], s["grad"] = x, g
            s["n_incr"] = s["n_incr"] + (loss > s["loss_prev"]).to(loss.dtype)
            s["loss_prev"] = loss
            better = loss > s["loss_best"]
            s["x_best"] = torch.where(better.view(view), x, s["x_best"])
            s["grad_best"] = torch.where(better.view(view), g, s["grad_best"])
            s["loss_best"] = torch.where(better, loss, s["loss_best"])
            if i + 1 in cps:
                period = i + 1 - last_cp
                last_cp = i + 1
                osc = s["n_incr"] <= period * self.rho
                no_impr = ~s["reduced_last"] & (s["best_last"] >= s["loss_best"])
                red = osc | no_impr
                s["reduced_last"] = red
                s["best_last"] = s["loss_best"].clone()
                s["n_incr"] = torch.zeros_like(s["n_incr"])
                s["eta"] = torch.where(red, s["eta"] / 2, s["eta"])
                s["x"] = torch.where(red.view(view), s["x_best"], s["x"])
                s["grad"] = torch.where(red.view(view), s["grad_best"], s["grad"])
            idx, s = keep_active(oracle, idx, s, mask=~torch.isnan(logits[:, 0]))
        return bool(oracle.active.any())

