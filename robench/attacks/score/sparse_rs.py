from __future__ import annotations

from typing import Optional

import torch

from robench.attacks.base import AttackView, keep_active
from robench.attacks.score._common import ScoreAttack, ScoreTask, bview, ce_loss, margin_loss
from robench.errors import RobenchError
from robench.registry import ATTACKS


def alpha_schedule(alpha_init: float, it: int, n_iters: int) -> float:
    """The fraction of the ``k`` perturbed positions resampled at iteration ``it`` ([croce2022sparsers §3.1,
    the L0 schedule of the authors' code], written for 10,000 queries and rescaled to ``n_iters``):
    alpha_init at iteration 0, then divided by 2, 4, 5, 6, 8, 10, 12, 15, 20 after iterations 0, 50, 200,
    500, 1000, 2000, 4000, 6000, 8000."""
    it = int(it / n_iters * 10000)
    for bound, div in ((0, 1), (50, 2), (200, 4), (500, 5), (1000, 6), (2000, 8), (4000, 10), (6000, 12),
                       (8000, 15)):
        if it <= bound:
            return alpha_init / div
    return alpha_init / 20


@ATTACKS.register("sparse_rs")
class SparseRS(ScoreAttack):
    """Sparse-RS, the L0 attack (Croce, Andriushchenko, Singh, Flammarion and Hein [croce2022sparsers §3.1]):
    random search over which ``k`` positions change and to which corner of the color cube, score-based.

    Paper: Sparse-RS: a versatile framework for query-efficient sparse black-box adversarial attacks
    (AAAI 2022), https://arxiv.org/abs/2006.12834. Distance: L0 (``budget.norm=l0``, ``k = budget.eps``
    positions: a pixel across its channels, as the paper counts). Arguments: ``alpha_init`` (0.3, the
    paper's value for L0), ``loss`` (null: margin untargeted, ce targeted, as the authors' code).
    Usage: ``robench attack attack=sparse_rs budget=l0_24``.

    * the perturbation is a set M of ``k`` positions whose every channel is set to ``low`` or ``high``
      (a vertex of the color cube; the domain's box, [0, 1] for images); the initial M is uniform and
      its colors uniform over the vertices;
    * iteration i draws a candidate: ``max(1, floor(alpha(i) k))`` positions of M go back to their clean
      values, and as many positions outside M join it with fresh random vertex colors (when one position
      changes, its new color is redrawn, up to 10 times, while it equals the clean one: the code's rule);
      ``alpha(i)``: :func:`alpha_schedule` with ``n_iters`` = ``budget.max_queries`` (the code's
      ``resc_schedule``);
    * the candidate replaces the current point when its loss is lower or it is misclassified (the code's
      acceptance). Loss: untargeted the margin ``log p_y - max_{j!=y} log p_j`` (the logit margin of the
      code, which log-probabilities reproduce exactly); targeted the cross-entropy of the target
      ``-log p_t`` (the code switches to ``ce`` for targeted runs);
    * queries: 1 for the initial point, then 1 per iteration and active sample; samples leave when the
      oracle has seen them succeed.

    Batched: one candidate per active sample per iteration, all in one oracle call; each sample draws
    its own subsets (the code draws one index subset per iteration for the whole batch). 1-D signals
    (N x C x T): positions are time steps, robench's reading (the paper has images). ``k`` is capped at
    the number of positions minus one (the swap needs a position outside M).
    """

    name = "sparse_rs"
    norms = ("l0",)
    layouts = ("NCHW", "NCT")

    #: numeric ranges the registry checks before construction (robench.registry.validate_params)
    param_ranges = {"alpha_init": "(0,1]"}

    def __init__(self, alpha_init: float = 0.3, loss: Optional[str] = None):
        if not 0 < alpha_init <= 1:
            raise RobenchError(f"sparse_rs alpha_init must be in (0, 1], got {alpha_init}")
        if loss not in (None, "margin", "ce"):
            raise RobenchError(f"sparse_rs loss must be margin, ce or null (margin untargeted, ce targeted), got '{loss}'")
        self.alpha_init, self.loss = float(alpha_init), loss

    def _losses(self, p: torch.Tensor, y: torch.Tensor, t: Optional[torch.Tensor]):
        """(loss to minimise, margin: negative exactly when adversarial); NaN rows (unanswered) +inf."""
        margin = margin_loss(p, y, t, kappa=float("inf"))  # unclamped: negative exactly when adversarial
        kind = self.loss or ("margin" if t is None else "ce")
        loss = margin if kind == "margin" else ce_loss(p, y, t)
        inf = float("inf")
        return torch.nan_to_num(loss, nan=inf), torch.nan_to_num(margin, nan=inf)

    def _attack(self, oracle: AttackView, generator: torch.Generator, task: ScoreTask) -> None:
        idx, dev = task.idx, task.device
        lo, hi = task.box
        c = task.shape[0]
        npos = 1
        for s in task.shape[1:]:
            npos *= s
        k = min(int(task.eps), npos - 1)
        if k < 1:
            return  # eps 0: nothing may change
        n_iters = oracle.max_queries
        B = len(idx)
        x0 = task.x0[idx].reshape(B, c, npos)
        order = torch.rand(B, npos, generator=generator, device=dev).argsort(1)
        inside, outside = order[:, :k], order[:, k:]          # M and its complement, per sample

        def vertices(n: int, m: int) -> torch.Tensor:
            bits = torch.randint(0, 2, (n, c, m), generator=generator, device=dev).to(x0.dtype)
            return lo + (hi - lo) * bits

        x = x0.clone()
        x.scatter_(2, inside[:, None].expand(B, c, k), vertices(B, k))

        def evaluate(xf, rows):
            p = oracle.scores(xf.view(len(rows), *task.shape), rows)
            return self._losses(p, *task.classes(rows))

        best, _ = evaluate(x, idx)
        it = 0
        while True:
            idx, x, x0, best, inside, outside = keep_active(oracle, idx, x, x0, best, inside, outside)
            if len(idx) == 0:
                return
            it += 1
            B = len(idx)
            m = max(int(alpha_schedule(self.alpha_init, it, n_iters) * k), 1)
            m = min(m, outside.shape[1])
            ip = torch.rand(B, k, generator=generator, device=dev).argsort(1)[:, :m]          # slots of M to free
            inp = torch.rand(B, npos - k, generator=generator, device=dev).argsort(1)[:, :m]  # slots of the rest to take
            p_set = inside.gather(1, ip)
            np_set = outside.gather(1, inp)
            cand = x.clone()
            cand.scatter_(2, p_set[:, None].expand(B, c, m), x0.gather(2, p_set[:, None].expand(B, c, m)))
            clean_new = x0.gather(2, np_set[:, None].expand(B, c, m))
            colors = vertices(B, m)
            if m == 1:  # a single new position: a color that differs from its clean value
                for _ in range(10):
                    same = (colors == clean_new).all(1).all(1)
                    if not bool(same.any()):
                        break
                    colors = torch.where(bview(same, 3), vertices(B, m), colors)
            cand.scatter_(2, np_set[:, None].expand(B, c, m), colors)
            loss, margin = evaluate(cand, idx)
            take = (loss < best) | (margin < -1e-6)
            best = torch.where(take, loss, best)
            x = torch.where(bview(take, 3), cand, x)
            # swap the exchanged positions between M and its complement where the candidate was taken
            new_in = inside.scatter(1, ip, np_set)
            new_out = outside.scatter(1, inp, p_set)
            inside = torch.where(take[:, None], new_in, inside)
            outside = torch.where(take[:, None], new_out, outside)
