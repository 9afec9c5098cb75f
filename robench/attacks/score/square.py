from __future__ import annotations

import math
from typing import Optional

import torch

from robench.attacks.base import AttackView, keep_active
from robench.attacks.score._common import ScoreAttack, ScoreTask, bview, ce_loss, margin_loss
from robench.errors import RobenchError
from robench.geometry import L2_BALL, LINF_BALL
from robench.registry import ATTACKS


def p_selection(p_init: float, it: int, n_iters: Optional[int]) -> float:
    """The fraction of pixels a square covers at iteration ``it`` ([andriushchenko2020 §A];
    the schedule of the authors' code, written for 10,000 iterations and rescaled to ``n_iters``;
    ``n_iters`` None: not rescaled, AutoAttack's ``resc_schedule=False``): halved at iterations 10,
    50, 200, 500, 1000, 2000, 4000, 6000, 8000."""
    if n_iters is not None:
        it = int(it / n_iters * 10000)
    for bound, div in ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64),
                       (6000, 128), (8000, 256)):
        if it <= bound:
            return p_init / div
    return p_init / 512  # beyond 8000 (the authors' Square code goes back to p_init past 10,000, which a
    #                      rescaled schedule never reaches; AutoAttack's stays at p_init / 512)


def _pseudo_gaussian_rect(a: int, b: int) -> torch.Tensor:
    """Concentric rectangles weighted 1/(k+1)^2 around the centre, unit L2 norm (the L2 attack's 'bump')."""
    d = torch.zeros(a, b, dtype=torch.float64)
    xc, yc = a // 2 + 1, b // 2 + 1
    c0, c1 = xc - 1, yc - 1
    for k in range(max(xc, yc)):
        d[max(c0, 0):min(c0 + 2 * k + 1, a), max(c1, 0):min(c1 + 2 * k + 1, b)] += 1.0 / (k + 1) ** 2
        c0 -= 1
        c1 -= 1
    return d / d.norm()


def meta_pseudo_gaussian(s: int) -> torch.Tensor:
    """The s×s L2 update shape: a positive bump on the top half and a negative one on the bottom half,
    unit L2 norm (the authors' ``meta_pseudo_gaussian_pert`` with two sub-squares; the random
    transpose is drawn per sample by the caller)."""
    d = torch.zeros(s, s, dtype=torch.float64)
    d[:s // 2] = _pseudo_gaussian_rect(s // 2, s) if s // 2 > 0 else 0.0
    d[s // 2:] = -_pseudo_gaussian_rect(s - s // 2, s)
    return (d / d.norm()).float()


def meta_pseudo_gaussian_1d(s: int) -> torch.Tensor:
    """The length-s L2 update shape of a 1-D signal: a positive pseudo-Gaussian bump on the first half and a
    negative one on the second, unit L2 norm (robench's 1-D reading of :func:`meta_pseudo_gaussian`)."""
    d = torch.zeros(s, dtype=torch.float64)
    d[:s // 2] = _pseudo_gaussian_rect(1, s // 2)[0] if s // 2 > 0 else 0.0
    d[s // 2:] = -_pseudo_gaussian_rect(1, s - s // 2)[0]
    return (d / d.norm()).float()


def _window_corners(b: int, h: int, w: int, s: int, sh: int, generator, device):
    """Each row's window corner (row, column), uniform in [0, h-sh) x [0, w-s) (the authors'
    ``randint(0, h - s)``; at least position 0): the two draws every window of the attack takes, in this order."""
    ch = torch.randint(0, max(h - sh, 1), (b,), generator=generator, device=device)
    cw = torch.randint(0, max(w - s, 1), (b,), generator=generator, device=device)
    return ch, cw


def _window_mask(b: int, h: int, w: int, s: int, generator, device, sh: Optional[int] = None):
    """(b, 1, h, w) bool masks of one sh×s window per row (sh = s: a square), its corner uniform in
    [0, h-sh) × [0, w-s) (the authors' ``randint(0, h - s)``; at least position 0)."""
    sh = s if sh is None else sh
    ch, cw = _window_corners(b, h, w, s, sh, generator, device)
    r = torch.arange(h, device=device)
    c = torch.arange(w, device=device)
    mh = (r[None] >= ch[:, None]) & (r[None] < ch[:, None] + sh)
    mw = (c[None] >= cw[:, None]) & (c[None] < cw[:, None] + s)
    return (mh[:, :, None] & mw[:, None, :])[:, None], ch, cw


def _redraw_signs(moves: torch.Tensor, generator: torch.Generator, tries: int = 10,
                  one_draw: Optional[bool] = None) -> torch.Tensor:
    """The paper's redraw loop on sign tables: draw a (b, c) table of bits (1: +eps), redraw the rows whose
    drawn signs would move no pixel (``moves[0]``/``moves[1]``: whether +eps/-eps on a row's window moves a
    pixel of channel c), at most ``tries`` draws; a row keeps the bits of the draw that moved it (or the last).

    On a CPU generator the ``tries`` draws are taken in one call, the rows' first moving draw found at once,
    and the generator then rewound and advanced by exactly the draws the loop would have taken (CPU draws
    are sequential, so one (k, b, c) draw is k (b, c) draws): the same bits and the same state after as the
    loop, without its ~8 small operations per round (about 5 rounds per step once windows are one or two
    pixels on a batch of 70). Other devices run the loop (``one_draw``: force either way; the tests compare them).
    """
    b, c = moves.shape[1:]
    if b == 0:
        return torch.zeros((0, c), dtype=torch.long, device=moves.device)
    if one_draw if one_draw is not None else generator.device.type == "cpu":
        state = generator.get_state()
        bits = torch.randint(0, 2, (tries, b, c), generator=generator, device=moves.device)
        moved = torch.where(bits.bool(), moves[0], moves[1]).any(2)           # (tries, b)
        first = torch.where(moved.any(0), moved.int().argmax(0), tries - 1)   # the draw each row keeps
        rounds = int(first.max()) + 1  # the loop's rounds: up to the last row's first moving draw, all if one never moves
        generator.set_state(state)
        torch.randint(0, 2, (rounds, b, c), generator=generator, device=moves.device)
        return bits[first, torch.arange(b, device=moves.device)]
    todo = torch.ones(b, dtype=torch.bool, device=moves.device)
    final = None
    for _ in range(tries):
        bits = torch.randint(0, 2, (b, c), generator=generator, device=moves.device)
        final = bits if final is None else torch.where(todo[:, None], bits, final)
        todo = ~torch.where(final.bool(), moves[0], moves[1]).any(1)
        if not bool(todo.any()):
            break
    return final


@ATTACKS.register("square")
class Square(ScoreAttack):
    """Square Attack (Andriushchenko et al. [andriushchenko2020]): random search with square-shaped updates,
    score-based, Linf (Alg. 1 + Alg. 2) and L2 (Alg. 3).

    * loss: untargeted, the margin loss on log-probabilities ``log p_y - max_{k!=y} log p_k`` (§3,
      the margin of the logits, which the log-probabilities reproduce exactly); targeted, the
      cross-entropy of the target ``-log p_t`` (§4, the authors' choice for targeted runs). A candidate
      replaces the current point only if it lowers the loss;
    * Linf init: vertical stripes of ±ε (one random sign per column and channel); each step draws a
      square of side ``s = round(sqrt(p · h · w))`` (clipped to [1, h-1]) at a random position and sets
      the perturbation on it to ±ε per channel (a new sign pattern is redrawn, up to 10 times, while it
      would not change the current point; the paper redraws until it does);
    * L2 init: a grid of (h//5)-sized bumps of random sign per channel, rescaled to norm ε; each step
      moves mass between two random windows of side ``s`` (odd, >= 3): window 2 is zeroed and window 1
      receives a new bump plus its old content, scaled to use the freed norm, then the whole
      perturbation is rescaled to norm ε (Alg. 3);
    * p schedule: :func:`p_selection` with ``n_iters`` = ``iterations``, or the budget's
      ``max_queries`` when ``iterations`` is null; ``rescale_schedule: false`` uses the schedule's
      iteration numbers as they are (AutoAttack's setting, ``resc_schedule=False``, with
      ``iterations`` 5,000 and ``p_init`` 0.8 [croce2020 §5]); ``p_init`` defaults to 0.05 (Linf)
      and 0.1 (L2), the paper's ImageNet values (§4; for adversarially trained MNIST models the
      paper uses 0.8 for Linf);
    * queries: the initial point costs 1, every step 1 per active sample; ``iterations`` (null:
      until the budget is spent) caps the steps, so a run costs at most ``iterations + 1`` queries
      per sample (AutoAttack's ``n_queries`` = 5,000 is this number of steps).

    1-D signals (N x C x T, e.g. audio): robench's reading, as the paper has only images: the "square"
    is an interval of ``round(p · T)`` time steps; the Linf init is random signs per time step; the L2
    init random signs rescaled to norm ε, and its bump a 1-D positive/negative pseudo-Gaussian pair.

    Batched: one candidate per active sample per step, all in one oracle call. Deviation: the paper's
    L2 code draws one window position per step for the whole batch; here every sample draws its own
    (as the Linf code does), so samples are attacked independently of who else is in the batch.
    AutoAttack's copy of Square [croce2020] also draws one window and one sign pattern per step for
    the whole batch in Linf, and does not redraw a sign pattern that changes nothing (here: the
    paper's redraw, above); both change which random squares a sample sees, not the algorithm.
    """

    name = "square"
    layouts = ("NCHW", "NCT")

    #: numeric ranges the registry checks before construction (robench.registry.validate_params)
    param_ranges = {"p_init": "(0,1]", "iterations": ">=1"}

    def __init__(self, p_init: Optional[float] = None, loss: Optional[str] = None, iterations: Optional[int] = None,
                 rescale_schedule: bool = True):
        if p_init is not None and not 0 < p_init <= 1:
            raise RobenchError(f"square p_init must be in (0, 1], got {p_init}")
        if loss not in (None, "margin", "ce"):
            raise RobenchError(f"square loss must be margin, ce or null (margin untargeted, ce targeted), got '{loss}'")
        if iterations is not None and iterations < 1:
            raise RobenchError(f"square iterations must be >= 1 or null (until the budget is spent), got {iterations}")
        self.p_init, self.loss = p_init, loss
        self.iterations, self.rescale_schedule = iterations, rescale_schedule

    def _loss(self, p, y, t):
        kind = self.loss or ("margin" if t is None else "ce")
        return margin_loss(p, y, t, kappa=float("inf")) if kind == "margin" else ce_loss(p, y, t)

    def _attack(self, oracle: AttackView, generator: torch.Generator, task: ScoreTask) -> None:
        eps, idx, dev, norm, box = task.eps, task.idx, task.device, task.norm, task.box
        signal = len(task.shape) == 2  # N x C x T: worked on as N x C x 1 x T, windows are intervals of time
        c, h, w = (task.shape[0], 1, task.shape[1]) if signal else task.shape
        n_iters = self.iterations or oracle.max_queries
        sched = n_iters if self.rescale_schedule else None
        p_init = self.p_init if self.p_init is not None else (0.05 if norm == "linf" else 0.1)
        x0 = task.x0[idx]
        if signal:
            x0 = x0.unsqueeze(2)
        B = len(idx)

        def loss_of(x, idx):
            p = oracle.scores(x.squeeze(2) if signal else x, idx)
            return torch.nan_to_num(self._loss(p, *task.classes(idx)), nan=float("inf"))

        if norm == "linf":
            stripes = (torch.randint(0, 2, (B, c, 1, w), generator=generator, device=dev) * 2 - 1).to(x0.dtype) * eps
            x = (x0 + stripes).clamp(*box)
        else:
            x = (x0 + self._l2_init(B, c, h, w, eps, generator, dev)).clamp(*box)
        best = loss_of(x, idx)
        it = 0
        while True:
            idx, x, x0, best = keep_active(oracle, idx, x, x0, best)
            if len(idx) == 0 or (self.iterations is not None and it >= self.iterations):
                return
            it += 1
            p = p_selection(p_init, it - 1, sched)
            if norm == "linf":
                cand = self._linf_step(x, x0, p, eps, generator, box)
            else:
                cand = self._l2_step(x, x0, p, eps, generator, box)
            loss = loss_of(cand, idx)
            better = loss < best
            best = torch.where(better, loss, best)
            x = torch.where(bview(better, x.dim()), cand, x)

    # ------------------------------------------------------------------ Linf (Alg. 2)
    @staticmethod
    def _linf_step(x, x0, p, eps, generator, box=(0.0, 1.0)):
        b, c, h, w = x.shape
        if h == 1:  # a signal: an interval covering the fraction p of the time steps
            sh, s = 1, min(max(int(round(p * w)), 1), w - 1)
        else:
            s = min(max(int(round(math.sqrt(p * h * w))), 1), h - 1)
            sh = s
        dev = x.device
        # the window of each row as linear indices into its flattened (c, h*w) image: gathered and scattered
        # along the last dimension (cheaper than advanced indexing with row, column and sample index tensors)
        ch0, cw0 = _window_corners(b, h, w, s, sh, generator, dev)
        lin = ((ch0[:, None] + torch.arange(sh, device=dev)) * w)[:, :, None] + (cw0[:, None] + torch.arange(s, device=dev))[:, None, :]
        win = lin.view(b, 1, sh * s).expand(b, c, sh * s)                 # (b, c, sh*s)
        xw = x.reshape(b, c, h * w).gather(2, win)
        x0w = x0.reshape(b, c, h * w).gather(2, win)
        # Whether +eps or -eps on a row's window, per channel, would move the current point (a pixel of the
        # window changing by more than 1e-7): computed once for both signs on the windows' pixels only, so the
        # redraw below works on (b, c) sign tables instead of whole images. Same numbers as judging each
        # drawn pattern on the full image (the window's pixels get x0 +- eps, the same float32 eps the drawn
        # signs carry; outside the window nothing changes).
        e = torch.ones((), dtype=x.dtype, device=dev) * eps
        moves = torch.stack([((x0w + e).clamp(*box) - xw).abs().amax(2),
                             ((x0w - e).clamp(*box) - xw).abs().amax(2)]) > 1e-7  # (2, b, c): [+eps, -eps]
        final = _redraw_signs(moves, generator)
        signs = (final * 2 - 1).to(x.dtype) * eps
        new = x - x0
        new.view(b, c, h * w).scatter_(2, win, signs[:, :, None].expand(b, c, sh * s))
        return LINF_BALL.clip(x0, new, eps, box)

    # ------------------------------------------------------------------ L2 (Alg. 3)
    @staticmethod
    def _l2_init(b, c, h, w, eps, generator, device):
        if h == 1:  # a signal: random signs per channel and time step, rescaled to norm eps (robench's 1-D init)
            signs = torch.randint(0, 2, (b, c, 1, w), generator=generator, device=device) * 2 - 1
            return L2_BALL.normalize(signs.float()) * eps
        s = max(h // 5, 1)
        sp = (h - s * 5) // 2
        delta = torch.zeros(b, c, h, w, device=device)
        bump = meta_pseudo_gaussian(s).to(device)
        ch = sp
        for _ in range(h // s):
            cw = sp
            for _ in range(w // s):
                if ch + s <= h and cw + s <= w:
                    tr = torch.rand(b, generator=generator, device=device) > 0.5
                    bb = torch.where(bview(tr, 3), bump.t().expand(b, s, s), bump.expand(b, s, s))
                    sign = (torch.randint(0, 2, (b, c, 1, 1), generator=generator, device=device) * 2 - 1).float()
                    delta[:, :, ch:ch + s, cw:cw + s] += bb[:, None] * sign
                cw += s
            ch += s
        return L2_BALL.normalize(delta) * eps

    @staticmethod
    def _l2_step(x, x0, p, eps, generator, box=(0.0, 1.0)):
        b, c, h, w = x.shape
        dev = x.device
        if h == 1:  # a signal: intervals of odd length covering the fraction p of the time steps
            s = max(int(round(p * w)), 3)
            s = min(s + 1 - s % 2, w - 1)
            sh = 1
        else:
            s = max(int(round(math.sqrt(p * h * w))), 3)
            if s % 2 == 0:
                s += 1
            s = min(s, h - 1) if h > 1 else 1
            sh = s
        delta = x - x0
        m1, ch1, cw1 = _window_mask(b, h, w, s, generator, dev, sh)
        m2, _, _ = _window_mask(b, h, w, s, generator, dev, sh)
        m1f, m2f = m1.to(x.dtype), m2.to(x.dtype)
        norm_w1 = ((delta * m1f) ** 2).sum((2, 3), keepdim=True).sqrt()                      # per channel
        norm_img = (delta ** 2).sum((1, 2, 3), keepdim=True).sqrt()
        norm_ws = ((delta * torch.maximum(m1f, m2f)) ** 2).sum((2, 3), keepdim=True).sqrt()  # per channel
        # the new bump on window 1, as a full-size map: place the s×s shape at each row's corner
        if sh == 1:  # signals: the 1-D bump (a positive and a negative half, unit norm)
            bump = meta_pseudo_gaussian_1d(s).to(dev)
            bb = bump.view(1, 1, s).expand(b, 1, s)
        else:
            bump = meta_pseudo_gaussian(s).to(dev)
            tr = torch.rand(b, generator=generator, device=dev) > 0.5
            bb = torch.where(bview(tr, 3), bump.t().expand(b, s, s), bump.expand(b, s, s))
        r = torch.arange(h, device=dev)[None] - ch1[:, None]                                 # (b, h)
        q = torch.arange(w, device=dev)[None] - cw1[:, None]                                 # (b, w)
        rr = r.clamp(0, sh - 1)[:, :, None].expand(b, h, w)
        qq = q.clamp(0, s - 1)[:, None, :].expand(b, h, w)
        full = bb[torch.arange(b, device=dev)[:, None, None], rr, qq]                        # (b, h, w)
        sign = (torch.randint(0, 2, (b, c, 1, 1), generator=generator, device=dev) * 2 - 1).to(x.dtype)
        new = full[:, None] * sign * m1f
        new = new + delta * m1f / (1e-10 + norm_w1)
        new_norm = (new ** 2).sum((2, 3), keepdim=True).sqrt().clamp_min(1e-12)
        target = ((eps ** 2 - norm_img ** 2).clamp_min(0) / c + norm_ws ** 2).sqrt()
        new = new / new_norm * target
        d = delta * (1 - m2f)          # window 2 set to 0
        d = d * (1 - m1f) + new        # window 1 replaced
        d = L2_BALL.normalize(d) * eps
        return (x0 + d).clamp(*box)
