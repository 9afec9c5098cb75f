from __future__ import annotations

import torch

from robench.attacks.base import Attack, attack_loss, keep_active
from robench.errors import RobenchError
from robench.oracle import Oracle
from robench.registry import ATTACKS


def cw_margin(logits: torch.Tensor, cls: torch.Tensor, targeted: bool, kappa: float) -> torch.Tensor:
    """C&W's f6 ([carlini2017 §V.A], to minimise): untargeted max(Z_y - max_{i!=y} Z_i, -kappa), targeted
    max(max_{i!=t} Z_i - Z_t, -kappa). ([cheng2021 §2.2, eq. 2.7] prints the targeted sign flipped.)"""
    return (-attack_loss("cw", logits, cls, cls if targeted else None)).clamp_min(-kappa)


@ATTACKS.register("cw_l2")
class CWL2(Attack):
    """Carlini and Wagner's L2 attack [carlini2017 §VI], a minimal-perturbation attack.

    Minimise ``||x - x0||_2^2 + c * f(x)`` ([cheng2021 §2.2, eqs. 2.5-2.7]) over ``w`` with the
    change of variables ``x = (tanh(w) + 1) / 2`` ([carlini2017 §V.B], method 3: x always in [0, 1]) and
    ``f`` the margin on logits with confidence ``kappa`` (:func:`cw_margin`), by Adam (lr 0.01,
    betas 0.9/0.999, eps 1e-8), starting from ``x0`` at every binary-search step.

    Binary search over ``c`` per sample, as in the authors' reference code: start at
    ``initial_const`` = 1e-3; after a step that found a point with margin ``f < 0`` (success with
    confidence kappa), upper = min(upper, c) and c = (lower + upper) / 2; otherwise lower =
    max(lower, c) and c = (lower + upper) / 2 if an upper bound exists, else c * 10. With 10 or
    more steps the last step uses the upper bound (the code's ``repeat``). ``abort_early``: every
    ``max_iterations // 10`` iterations, the current binary step stops when the objective has not
    dropped below 0.9999 of its value at the previous check: summed over the samples still running
    (default; the reference code's and foolbox's rule, [rauber2017foolbox]), or with
    ``abort_per_sample=true`` per sample (each stalled sample stops alone: fewer queries, but
    larger distortions). The per-sample rule was robench's default until foolbox's
    ``L2CarliniWagnerAttack`` found smaller distortions on the same weights; measured on the
    tiny test victim (20 images, 5 x 200, lr 0.05, c0 0.1): mean / median L2 1.812 / 1.600 per
    sample, 1.790 / 1.597 with the batch rule, foolbox 1.777 / 1.597.

    Defaults: 10 binary-search steps x 1,000 iterations, the setting [cheng2021 §5.3.4.2] uses
    ("default attack setting with 10 binary search steps and 1000 iterations per step"; the paper's
    code ships 9 x 10,000); ``kappa = 0``.

    Every Adam iteration is one gradient query per sample (10,000 at most with the defaults, which
    is the default budget's ``max_queries``). The result is the oracle's: the adversarial point of
    smallest distortion in the budget's norm among all iterates it evaluated (use an L2 budget,
    e.g. ``budget=l2_2.0 budget.eps=null`` for the minimal-distortion protocol).
    """

    access = "gradient"
    minimizes_distortion = True

    #: numeric ranges the registry checks before construction (robench.registry.validate_params)
    param_ranges = {"binary_search_steps": ">=1", "initial_const": ">0"}

    def __init__(self, binary_search_steps: int = 10, max_iterations: int = 1000, learning_rate: float = 0.01,
                 initial_const: float = 1e-3, confidence: float = 0.0, abort_early: bool = True,
                 abort_per_sample: bool = False):
        if binary_search_steps < 1 or max_iterations < 1:
            raise RobenchError(f"cw_l2 needs binary_search_steps >= 1 and max_iterations >= 1 "
                               f"(got {binary_search_steps}, {max_iterations})")
        if learning_rate <= 0 or initial_const <= 0 or confidence < 0:
            raise RobenchError("cw_l2 needs learning_rate > 0, initial_const > 0 and confidence >= 0")
        self.bss, self.iters, self.lr = binary_search_steps, max_iterations, learning_rate
        self.c0, self.kappa, self.abort_early = initial_const, confidence, abort_early
        self.abort_per_sample = abort_per_sample

    def run(self, oracle: Oracle, generator: torch.Generator) -> None:
        x0, y, t = oracle.x0, oracle.y, oracle.targets
        targeted = t is not None
        cls = t if targeted else y
        n, dev = oracle.n, x0.device
        view = (-1,) + (1,) * (x0.dim() - 1)
        w0 = torch.atanh((x0 * 2 - 1) * 0.999999)
        const = torch.full((n,), self.c0, device=dev)
        lower = torch.zeros(n, device=dev)
        upper = torch.full((n,), 1e10, device=dev)
        b1, b2, ae = 0.9, 0.999, 1e-8
        check_every = max(1, self.iters // 10)

        def loss_fn(logits, i):
            return cw_margin(logits, cls[i], targeted, self.kappa)

        for outer in range(self.bss):
            if self.bss >= 10 and outer == self.bss - 1:
                const = torch.where(upper < 1e10, upper, const)
            idx = oracle.active_indices()
            if len(idx) == 0:
                return
            w = w0[idx].clone()
            m = torch.zeros_like(w)
            v = torch.zeros_like(w)
            found = torch.zeros(n, dtype=torch.bool, device=dev)
            prev = torch.full((n,), float("inf"), device=dev)
            for it in range(self.iters):
                x = (torch.tanh(w) + 1) / 2
                logits, g = oracle.gradient(x, loss_fn, idx)
                answered = ~torch.isnan(logits[:, 0])
                d = x - x0[idx]
                margin = torch.where(answered, loss_fn(torch.nan_to_num(logits), idx), torch.zeros_like(answered, dtype=x.dtype))
                ok = answered & (margin < 0) if self.kappa == 0 else answered & (margin <= -self.kappa)
                found[idx[ok]] = True
                c = const[idx].view(view)
                grad_x = 2 * d + c * g
                grad_w = grad_x * (1 - torch.tanh(w) ** 2) / 2
                step_t = it + 1
                m = b1 * m + (1 - b1) * grad_w
                v = b2 * v + (1 - b2) * grad_w ** 2
                mhat = m / (1 - b1 ** step_t)
                vhat = v / (1 - b2 ** step_t)
                w = w - self.lr * mhat / (vhat.sqrt() + ae)
                keep = answered
                if self.abort_early and it % check_every == 0:
                    obj = d.flatten(1).pow(2).sum(1) + const[idx] * margin
                    if self.abort_per_sample:
                        stalled = obj > prev[idx] * 0.9999
                    else:  # the reference rule: the batch's total objective (over the samples still running)
                        stalled = (obj.sum() > prev[idx].sum() * 0.9999).expand_as(obj)
                    prev[idx] = obj
                    keep = keep & ~stalled
                idx, w, m, v = keep_active(oracle, idx, w, m, v, mask=keep)
                if len(idx) == 0:
                    break
            # binary search on c ([carlini2017] reference code)
            upper = torch.where(found, torch.minimum(upper, const), upper)
            lower = torch.where(found, lower, torch.maximum(lower, const))
            has_upper = upper < 1e9
            const = torch.where(has_upper, (lower + upper) / 2, torch.where(found, const, const * 10))
