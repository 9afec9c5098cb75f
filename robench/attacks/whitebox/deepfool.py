from __future__ import annotations

import torch

from robench.attacks.base import Attack, AttackView, keep_active
from robench.errors import RobenchError
from robench.registry import ATTACKS


@ATTACKS.register("deepfool")
class DeepFool(Attack):
    """DeepFool (Moosavi-Dezfooli, Fawzi and Frossard [moosavi2016]), multi-class, L2 and Linf.

    [zhao2020slides] gives the binary algorithm only; this is [moosavi2016]'s Algorithm 2
    (multi-class) with its §3.2 Lp variant. At iterate ``x_i`` with ``f`` the logits, for each
    candidate class ``k`` other than the label, ``w_k = grad(f_k - f_y)`` and ``f'_k = f_k - f_y``;
    the closest linearised boundary is ``l = argmin_k |f'_k| / ||w_k||_q`` (q = 2 for L2, q = 1 for
    Linf) and the step is

        L2:   r_i = (|f'_l| + 1e-4) / ||w_l||_2^2 * w_l
        Linf: r_i = (|f'_l| + 1e-4) / ||w_l||_1   * sign(w_l)

    accumulated into ``r = sum r_i``; the next iterate is ``clip_[0,1](x0 + (1 + overshoot) r)``
    (the overshoot of §3.1 and the authors' code, default 0.02; the 1e-4 is the code's too). It
    stops per sample as soon as the label changes, or after ``max_iter`` (default 50, the authors'
    code). ``candidates`` (default 10, the code's ``num_classes``): only the top-``candidates``
    classes of the clean logits are tried. Targeted budgets (an extension, the paper is untargeted):
    the only candidate is the target and the loop stops when it is reached.

    Cost: a Jacobian of ``k`` class differences is ``k`` gradient rows, so one iteration costs each
    active sample ``k`` gradient queries (``k = min(candidates, classes) - 1``, 9 on MNIST; times
    ``eot_samples``), plus one label query of the new iterate (the stopping test); with
    ``candidates`` below the number of classes, one forward query on the clean image picks them.
    A sample with fewer queries left than one Jacobian stops.
    The reported point is the oracle's smallest adversarial one (minimal-perturbation attack: use
    ``budget.eps=null`` for the usual protocol; with an ``eps`` the success is judged inside it).
    """

    access = "gradient"
    layouts = ("NCHW", "NCT")
    minimizes_distortion = True

    #: numeric ranges the registry checks before construction (robench.registry.validate_params)
    param_ranges = {"overshoot": ">=0", "candidates": ">=2"}

    def __init__(self, overshoot: float = 0.02, max_iter: int = 50, candidates: int = 10):
        if overshoot < 0 or max_iter < 1 or candidates < 2:
            raise RobenchError(f"deepfool needs overshoot >= 0, max_iter >= 1 and candidates >= 2 "
                               f"(got {overshoot}, {max_iter}, {candidates})")
        self.overshoot, self.max_iter, self.candidates = overshoot, max_iter, candidates

    def run(self, oracle: AttackView, generator: torch.Generator) -> None:
        x0, y, t = oracle.x0, oracle.y, oracle.targets
        norm, dev, k = oracle.norm, x0.device, oracle.num_classes
        view = (-1,) + (1,) * (x0.dim() - 1)
        idx = oracle.active_indices()
        if len(idx) == 0:
            return
        if t is not None:
            cand = t[:, None]
        elif self.candidates >= k:
            cand = torch.stack([(y + j) % k for j in range(1, k)], 1)
        else:  # the top classes of the clean logits other than the label: one counted forward query
            lg = torch.zeros(oracle.n, k, device=dev)
            lg[idx] = oracle.logits(x0[idx], idx)
            lg = lg.scatter(1, y[:, None], float("-inf"))
            cand = lg.argsort(1, descending=True)[:, :self.candidates - 1]
        kk = cand.shape[1]
        per_jacobian = kk * oracle.eot_samples
        r_tot = torch.zeros_like(x0)
        x = x0.clone()
        for it in range(self.max_iter):
            idx, = keep_active(oracle, idx, mask=oracle.remaining[idx] >= per_jacobian)  # a whole Jacobian left
            if len(idx) == 0:
                return
            m = len(idx)
            rows_idx = idx.repeat_interleave(kk)
            rows_cls = cand[idx].reshape(-1)
            yr = y[rows_idx]

            def loss_fn(logits, i, rc=rows_cls, yy=yr):
                if len(i) != len(rc):  # EOT repeats all rows k times; a partial Jacobian cannot happen
                    if len(i) % len(rc):
                        raise RuntimeError("deepfool: the oracle answered a partial Jacobian")
                    rc, yy = rc.repeat(len(i) // len(rc)), yy.repeat(len(i) // len(rc))
                return logits.gather(1, rc[:, None]).squeeze(1) - logits.gather(1, yy[:, None]).squeeze(1)

            logits, g = oracle.gradient(x[idx].repeat_interleave(kk, 0), loss_fn, rows_idx)
            lg = logits.view(m, kk, -1)[:, 0]  # the logits of x_i (first row of each sample)
            fk = lg.gather(1, cand[idx]) - lg.gather(1, y[idx][:, None])  # (m, kk): f'_k
            wk = g.view(m, kk, -1)  # w_k, flattened
            q = wk.norm(p=2, dim=2) if norm == "l2" else wk.abs().sum(2)
            ratio = torch.nan_to_num(fk.abs() / q.clamp_min(1e-12), nan=float("inf"))
            best = ratio.argmin(1)
            ar = torch.arange(m, device=dev)
            w_l, f_l = wk[ar, best], fk[ar, best].abs()
            if norm == "l2":
                r = (f_l + 1e-4)[:, None] / w_l.pow(2).sum(1, keepdim=True).clamp_min(1e-12) * w_l
            else:
                r = (f_l + 1e-4)[:, None] / w_l.abs().sum(1, keepdim=True).clamp_min(1e-12) * w_l.sign()
            go = torch.isfinite(ratio[ar, best])
            idx, r = idx[go], r[go]
            r_tot[idx] = r_tot[idx] + r.view(-1, *x0.shape[1:])
            x[idx] = (x0[idx] + (1 + self.overshoot) * r_tot[idx]).clamp(oracle.low, oracle.high)
            if len(idx) == 0:
                return
            pred = oracle.labels(x[idx], idx)
            done = (pred == t[idx]) if t is not None else (pred != y[idx]) & (pred >= 0)
            idx = idx[~done & (pred >= 0)]
