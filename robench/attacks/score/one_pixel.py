from __future__ import annotations

import torch

from robench.attacks.base import AttackView, keep_active
from robench.attacks.score._common import ScoreAttack, ScoreTask, log_probs
from robench.errors import RobenchError
from robench.registry import ATTACKS


def place(x0: torch.Tensor, cand: torch.Tensor, c: int) -> torch.Tensor:
    """Images ``x0`` (R, C, H, W) with the (row, col, value_1..value_C) tuples of ``cand`` (R, d, 2 + C)
    written in: coordinates floored and clipped to the image, values as given (the caller keeps them in
    the box). Later tuples win where two pick the same pixel."""
    r, _, h, w = x0.shape
    rows = cand[..., 0].floor().long().clamp(0, h - 1)
    cols = cand[..., 1].floor().long().clamp(0, w - 1)
    flat = (rows * w + cols)                                    # (R, d)
    out = x0.reshape(r, c, h * w).clone()
    d = flat.shape[1]
    for j in range(d):                                          # in order, so a later tuple wins
        out.scatter_(2, flat[:, j][:, None, None].expand(r, c, 1), cand[:, j, 2:2 + c][:, :, None])
    return out.view(r, c, h, w)


@ATTACKS.register("one_pixel")
class OnePixel(ScoreAttack):
    """The one-pixel attack (Su, Vargas and Sakurai [su2019onepixel §3]): differential evolution over
    ``d`` (row, col, value per channel) tuples, score-based.

    Paper: One pixel attack for fooling deep neural networks (IEEE TEVC 2019),
    https://arxiv.org/abs/1710.08864. Distance: L0 (``budget.norm=l0``; ``d = budget.eps`` pixels, the
    paper's 1, 3 and 5). Arguments (the paper's §3.1 settings as defaults): ``population`` (400),
    ``f`` (the scale factor F, 0.5), ``generations`` (100: the paper's maximum; ``budget.max_queries``
    caps it too), ``strategy`` (``rand1``: the paper's mutation; ``best1``: ``x_best + F (x_r1 - x_r2)``,
    the strategy of the scipy-based implementations, ART's PixelAttack among them). Usage: ``robench attack attack=one_pixel budget=l0_1 budget.max_queries=40400``.

    * a candidate holds ``d`` tuples; the initial population draws coordinates uniformly over the image
      (``U(1, 32)`` for the paper's 32 x 32 images) and values from a Gaussian of mean 128 and std 127 on
      the 0..255 scale (here: the box's centre, std 127/255 of its width), clipped to the box;
    * each generation makes one child per member, ``x_r1 + F (x_r2 - x_r3)`` with r1, r2, r3 distinct
      random members (the paper's eq. (2); ``best1``: the generation's best member in place of x_r1), no
      crossover (as the paper), clipped to the coordinate and value ranges; a child replaces its parent
      when its fitness is better;
    * fitness: untargeted, the probability of the true class (lower is better); targeted, the probability
      of the target (higher is better). The paper's early stop (p_y below 5%, or the target above 50%)
      is replaced by the oracle's: a sample leaves when it is misclassified (untargeted) or classified as
      the target;
    * queries: ``population`` for the initial population, then ``population`` per generation and active
      sample, all in one oracle call (a generation a sample cannot pay in full gets the rows its budget
      admits; unanswered children lose to their parents).

    Coordinates are continuous in the search and floored to pixels when placed (the authors' code casts
    them to integers). Tuples that land on the same pixel count once (a later tuple wins), so the
    changed positions never exceed ``d``.
    """

    name = "one_pixel"
    norms = ("l0",)

    #: numeric ranges the registry checks before construction (robench.registry.validate_params)
    param_ranges = {"population": ">=4", "f": "(0,2]", "generations": ">=1"}

    def __init__(self, population: int = 400, f: float = 0.5, generations: int = 100, strategy: str = "rand1"):
        if int(population) < 4 or not 0 < f <= 2 or int(generations) < 1:
            raise RobenchError(f"one_pixel needs population >= 4, f in (0, 2] and generations >= 1 "
                               f"(got {population}, {f}, {generations})")
        if strategy not in ("rand1", "best1"):
            raise RobenchError(f"one_pixel strategy must be rand1 (the paper's) or best1, got '{strategy}'")
        self.population, self.f, self.generations = int(population), float(f), int(generations)
        self.strategy = strategy

    def _fitness(self, p: torch.Tensor, y: torch.Tensor, t) -> torch.Tensor:
        """To MINIMISE: log p_y (untargeted) or -log p_t (targeted); unanswered rows +inf."""
        logp = log_probs(p)
        v = logp.gather(1, y[:, None]).squeeze(1) if t is None else -logp.gather(1, t[:, None]).squeeze(1)
        return torch.nan_to_num(v, nan=float("inf"))

    def _attack(self, oracle: AttackView, generator: torch.Generator, task: ScoreTask) -> None:
        if len(task.shape) != 3:
            raise RobenchError("one_pixel works on images (N x C x H x W)")
        idx, dev = task.idx, task.device
        c, h, w = task.shape
        lo, hi = task.box
        d = int(task.eps)
        if d < 1:
            return
        P = self.population
        B = len(idx)
        dim = 2 + c
        upper = torch.tensor([h, w] + [hi] * c, device=dev, dtype=task.x0.dtype)
        lower = torch.tensor([0.0, 0.0] + [lo] * c, device=dev, dtype=task.x0.dtype)
        top = upper - torch.tensor([1e-4, 1e-4] + [0.0] * c, device=dev, dtype=task.x0.dtype)  # rows < h

        def clip(pop):
            return torch.maximum(torch.minimum(pop, top), lower)

        pop = torch.empty(B, P, d, dim, device=dev, dtype=task.x0.dtype)
        pop[..., 0] = torch.rand(B, P, d, generator=generator, device=dev) * h
        pop[..., 1] = torch.rand(B, P, d, generator=generator, device=dev) * w
        mid, sd = (lo + hi) / 2, (hi - lo) * 127.0 / 255.0
        pop[..., 2:] = mid + sd * torch.randn(B, P, d, c, generator=generator, device=dev)
        pop = clip(pop)

        def evaluate(cands, rows):  # cands (B, P, d, dim)
            b = cands.shape[0]
            xs = place(task.x0[rows].repeat_interleave(P, 0), cands.reshape(b * P, d, dim), c)
            p = oracle.scores(xs, rows.repeat_interleave(P))
            yy, tt = task.classes(rows.repeat_interleave(P))
            return self._fitness(p, yy, tt).view(b, P)

        fit = evaluate(pop, idx)
        for _ in range(self.generations):
            idx, pop, fit = keep_active(oracle, idx, pop, fit)
            if len(idx) == 0:
                return
            B = len(idx)
            # r1, r2, r3: distinct members per child (three distinct draws from a random permutation)
            r = torch.rand(B, P, P, generator=generator, device=dev).argsort(2)[..., :3]
            ar = torch.arange(B, device=dev)[:, None]
            x1, x2, x3 = pop[ar, r[..., 0]], pop[ar, r[..., 1]], pop[ar, r[..., 2]]
            if self.strategy == "best1":
                x1 = pop[ar, fit.argmin(1, keepdim=True)].expand_as(x1)
            child = clip(x1 + self.f * (x2 - x3))
            cf = evaluate(child, idx)
            better = cf < fit
            fit = torch.where(better, cf, fit)
            pop = torch.where(better[..., None, None], child, pop)
