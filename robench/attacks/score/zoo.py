from __future__ import annotations

from typing import Optional

import torch

from robench.attacks.base import AttackView, keep_active
from robench.attacks.score._common import ScoreAttack, ScoreTask, margin_loss, reduced_shape, upsample
from robench.errors import RobenchError
from robench.geometry import L2_BALL, LINF_BALL
from robench.registry import ATTACKS


@ATTACKS.register("zoo")
class ZOO(ScoreAttack):
    """ZOO-Adam (Chen et al. [chen2017zoo]),
    score-based, targeted and untargeted, Linf or L2 budget.

    Objective (eq. (2) with the black-box losses (4)/(5) on log-probabilities, "use_log"):
    minimise ``||δ||_2^2 + c · f(x0 + S(δ))`` with
    targeted ``f = max(max_{j!=t} log F_j - log F_t, -κ)``, untargeted ``f = max(log F_y - max_{j!=y} log F_j, -κ)``.

    * gradient: coordinate-wise symmetric differences (eq. (6)),
      ``ĝ_i = c (f(x + h e_i) - f(x - h e_i)) / (2h)`` for a batch of ``coords_per_step`` (128)
      coordinates drawn uniformly without replacement per sample and iteration (§3.4, Alg. 2); the
      distortion term's gradient ``2 Sᵀ S δ`` is known to the attacker and computed exactly (no queries);
    * ZOO-Adam (Alg. 2): per-coordinate Adam moments and step counts, ``δ_i -= η · corr · M_i / (sqrt(v_i) + 1e-8)``;
    * reduced attack space (§3.5, optional ``resize``): δ lives in ``C × r × r`` and ``S`` is a bilinear
      resize to the image size; without it S is the identity;
    * constraint: robench budgets are ε-balls, so after every update δ is projected: Linf,
      per coordinate onto ``[-ε, ε] ∩ [-x0, 1 - x0]`` (the non-tanh ``proj`` mode of the authors' code,
      with ε added); L2, onto the ε-ball (then the box). Deviation: the paper's tanh change of
      variables is not used (it cannot express an ε-ball); all queried rows, probes included, are
      clipped to [0, 1];
    * queries: each iteration evaluates the current point and its 2·128 probes in one call:
      ``2 · coords_per_step + 1`` queries per sample (the authors' code evaluates the same 2B + 1 rows);
    * the constant c: ``binary_search_steps`` stages of ``max_iterations`` iterations; a sample still
      unsuccessful at the end of a stage restarts from δ = 0 with fresh Adam state and c ×10 (the
      paper's search when no success has been found yet; a sample that succeeds leaves the batch, so
      in an ε-bounded run the search only ever moves up).

    Defaults: η = 0.01, h = 1e-4, β1 = 0.9, β2 = 0.999, κ = 0, 128 coordinates per iteration (§4);
    ``const = 10`` with one search stage and no iteration cap, the authors' ImageNet untargeted
    setting ("-b 1 -c 10.0"), because with a query budget the MNIST/CIFAR table setting (9 search
    steps of 3,000 / 1,000 iterations from a small c) spends millions of queries searching for c;
    that setting is ``binary_search_steps=9, const=0.01, max_iterations=3000``. Importance sampling
    and the hierarchical attack (ImageNet tricks) are not implemented.
    """

    name = "zoo"

    #: numeric ranges the registry checks before construction (robench.registry.validate_params)
    param_ranges = {"coords_per_step": ">=1", "h": ">0", "beta1": "[0,1)", "beta2": "[0,1)", "const": ">0",
                    "binary_search_steps": ">=1"}

    def __init__(self, coords_per_step: int = 128, lr: float = 0.01, h: float = 1e-4, beta1: float = 0.9,
                 beta2: float = 0.999, const: float = 10.0, confidence: float = 0.0, binary_search_steps: int = 1,
                 max_iterations: Optional[int] = None, resize: Optional[int] = None):
        if int(coords_per_step) < 1:
            raise RobenchError(f"zoo coords_per_step must be >= 1, got {coords_per_step}")
        for k, v in (("lr", lr), ("h", h), ("const", const)):
            if not v > 0:
                raise RobenchError(f"zoo {k} must be > 0, got {v}")
        if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
            raise RobenchError("zoo beta1 and beta2 must be in [0, 1)")
        if int(binary_search_steps) < 1:
            raise RobenchError(f"zoo binary_search_steps must be >= 1, got {binary_search_steps}")
        if int(binary_search_steps) > 1 and max_iterations is None:
            raise RobenchError("zoo binary_search_steps > 1 needs max_iterations (the iterations of each stage)")
        if max_iterations is not None and int(max_iterations) < 1:
            raise RobenchError(f"zoo max_iterations must be >= 1 or null, got {max_iterations}")
        reduced_shape((1, 1, 1), resize)
        self.k, self.lr, self.h, self.b1, self.b2 = int(coords_per_step), float(lr), float(h), float(beta1), float(beta2)
        self.const, self.kappa = float(const), float(confidence)
        self.stages, self.max_it = int(binary_search_steps), None if max_iterations is None else int(max_iterations)
        self.resize = resize

    def _attack(self, oracle: AttackView, generator: torch.Generator, task: ScoreTask) -> None:
        eps, idx, dev, norm = task.eps, task.idx, task.device, task.norm
        x0_all, shape = task.x0, task.shape
        esh = reduced_shape(shape, self.resize)
        resize = esh != shape
        D = int(torch.tensor(esh).prod())
        K = min(self.k, D)
        B = len(idx)
        x0 = x0_all[idx]
        delta = torch.zeros(B, D, device=dev)
        M, V = torch.zeros_like(delta), torch.zeros_like(delta)
        T = torch.zeros_like(delta)
        c = torch.full((B,), self.const, device=dev)
        it = torch.zeros(B, dtype=torch.long, device=dev)
        stage = torch.zeros(B, dtype=torch.long, device=dev)
        lo = hi = None
        if norm == "linf" and not resize:  # per-coordinate bounds: the ball ∩ the box
            lo = torch.maximum(torch.full_like(x0, -eps), task.box[0] - x0).flatten(1)
            hi = torch.minimum(torch.full_like(x0, eps), task.box[1] - x0).flatten(1)
        kk = torch.arange(K, device=dev)[None]

        def to_image(d: torch.Tensor) -> torch.Tensor:
            """(R, D) search-space perturbations -> (R, *shape) image perturbations."""
            d = d.view(-1, *esh)
            return upsample(d, shape[1:]) if resize else d

        while True:
            idx, x0, delta, M, V, T, c, it, stage, lo, hi = keep_active(oracle, idx, x0, delta, M, V, T, c, it, stage, lo, hi)
            if len(idx) == 0:
                return
            B = len(idx)
            ar = torch.arange(B, device=dev)[:, None]
            coords = torch.rand(B, D, generator=generator, device=dev).topk(K, dim=1).indices   # (B, K)
            rows = delta[:, None].repeat(1, 2 * K + 1, 1)                                         # (B, 2K+1, D)
            rows[ar, 1 + kk, coords] += self.h
            rows[ar, 1 + K + kk, coords] -= self.h
            x = (x0[:, None] + to_image(rows.view(-1, D)).view(B, 2 * K + 1, *shape)).clamp(*task.box)
            ridx = idx.repeat_interleave(2 * K + 1)
            p = oracle.scores(x.view(-1, *shape), ridx)
            f = margin_loss(p, *task.classes(ridx), self.kappa).view(B, 2 * K + 1)
            f = torch.nan_to_num(f, nan=0.0)
            g = c[:, None] * (f[:, 1:K + 1] - f[:, K + 1:]) / (2 * self.h)                        # (B, K)
            # exact gradient of ||S δ||^2 at the chosen coordinates
            if resize:
                d = delta.detach().requires_grad_(True)
                with torch.enable_grad():
                    pen, = torch.autograd.grad((to_image(d) ** 2).sum(), d)
                g = g + pen.gather(1, coords)
            else:
                g = g + 2 * delta.gather(1, coords)
            # ZOO-Adam on the chosen coordinates
            m = self.b1 * M.gather(1, coords) + (1 - self.b1) * g
            v = self.b2 * V.gather(1, coords) + (1 - self.b2) * g * g
            t = T.gather(1, coords) + 1
            M.scatter_(1, coords, m)
            V.scatter_(1, coords, v)
            T.scatter_(1, coords, t)
            corr = (1 - self.b2 ** t).sqrt() / (1 - self.b1 ** t)
            new = delta.gather(1, coords) - self.lr * corr * m / (v.sqrt() + 1e-8)
            if lo is not None:
                new = torch.minimum(torch.maximum(new, lo.gather(1, coords)), hi.gather(1, coords))
            elif norm == "linf":
                new = LINF_BALL.project(new, eps)
            delta = delta.scatter(1, coords, new)
            if norm == "l2":
                if resize:  # S is linear: scaling δ scales S δ
                    n = L2_BALL.distance(to_image(delta))
                    delta = delta * L2_BALL.shrink(n, eps)[:, None]
                else:
                    delta = (L2_BALL.clip(x0, delta.view(B, *shape), eps, task.box) - x0).flatten(1)
            # binary-search stages on c (upward only in eps-bounded runs, see the docstring)
            it += 1
            if self.max_it is not None:
                end = it >= self.max_it
                if bool(end.any()):
                    more = end & (stage + 1 < self.stages)
                    keep2 = ~(end & ~more)  # samples at the end of their last stage stop
                    e = more[:, None]
                    delta = torch.where(e, torch.zeros_like(delta), delta)
                    M = torch.where(e, torch.zeros_like(M), M)
                    V = torch.where(e, torch.zeros_like(V), V)
                    T = torch.where(e, torch.zeros_like(T), T)
                    c = torch.where(more, c * 10, c)
                    stage = stage + more.long()
                    it = torch.where(more, torch.zeros_like(it), it)
                    idx, x0, delta, M, V, T, c, it, stage, lo, hi = keep_active(
                        oracle, idx, x0, delta, M, V, T, c, it, stage, lo, hi, mask=keep2)
                    if len(idx) == 0:
                        return
