"""Shared machinery of the hard-label (decision-based) attacks: the label-only adversarial test, the
boundary distance g(theta) of [cheng2021 §2.4.2] (batched over rows), direction initialisation, and
:class:`DirectionSearchAttack`, the skeleton shared by OPT and Sign-OPT ([cheng2019opt],
[cheng2020signopt]). Norms and normalisation are :mod:`robench.geometry`'s.

Every function here goes through the oracle: each label it looks at is a counted query. Rows carry
the sample index ``idx`` of the batch; rows of samples that are out of budget come back unanswered
(label -1) and are treated as "unknown", never as adversarial.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import numpy as np
import torch

from robench.attacks.base import Attack, AttackView
from robench.geometry import bview, geometry

#: rows per oracle call; large calls are split (small calls are faster per row on a CPU)
CHUNK = 200


def flat_norm(v: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-row norm (:meth:`robench.geometry.Geometry.distance`)."""
    return geometry(norm).distance(v)


def view_b(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-row scalars shaped to broadcast against image rows."""
    return bview(v, like.dim())


def normalize(v: torch.Tensor, norm: str) -> torch.Tensor:
    """Rows scaled to unit norm (:meth:`robench.geometry.Geometry.normalize`)."""
    return geometry(norm).normalize(v)


def _labels(oracle: AttackView, x: torch.Tensor, idx: torch.Tensor, chunk: int = CHUNK) -> torch.Tensor:
    """The oracle's labels of rows ``x`` (-1: not answered), in calls of at most ``chunk`` rows."""
    if len(idx) <= chunk:  # one call (no copy)
        return oracle.labels(x, idx) if len(idx) else torch.empty(0, dtype=torch.long, device=x.device)
    return torch.cat([oracle.labels(x[s:s + chunk], idx[s:s + chunk]) for s in range(0, len(idx), chunk)])


def adversarial(oracle: AttackView, x: torch.Tensor, idx: torch.Tensor, chunk: int = CHUNK) -> Tuple[torch.Tensor, torch.Tensor]:
    """(adversarial, answered) per row: one counted label query per row (split into calls of ``chunk``).

    Adversarial means "the victim's top-1 label is not y" (untargeted) or "is the target" (targeted);
    the oracle judges success independently of this.
    """
    t = oracle.targets
    want = t[idx] if t is not None else oracle.y[idx]
    return _judge(_labels(oracle, x, idx, chunk), want, t is not None)


def _judge(labels, want, targeted: bool):
    """(adversarial, answered) of labels (-1: not answered) against each row's ``want`` (its target when
    ``targeted``, else its true label); torch tensors or numpy arrays alike."""
    answered = labels >= 0
    adv = (labels == want) if targeted else (labels != want)
    return adv & answered, answered


def ray_point(x0: torch.Tensor, theta: torch.Tensor, lam: torch.Tensor, box=(0.0, 1.0)) -> torch.Tensor:
    """x0 + lam * theta clipped to the input box (the domain bound of [cheng2021 §2.4.2]; images: [0, 1])."""
    return (x0 + view_b(lam, x0) * theta).clamp_(box[0], box[1])


# states of the boundary search
_V, _UP, _DOWN, _BIN, _OUT, _CHK, _DONE = range(7)
LOCAL, BOUND, SCRATCH = 0, 1, 2


# The search's transition per (state, probe adversarial): which candidate becomes lo and hi, and the next state.
# Candidates (columns of _transition's table): 0 probe, 1 lo, 2 hi, 3 mid = (lo + hi) / 2, 4 probe (1 - ratio),
# 5 probe (1 + ratio), 6 hi (1 + ratio), 7 lo (1 - ratio), 8 max(hi - out_step, 0), 9 hi + out_step, 10 zero.
# Row k = 2 state + adversarial, for the live states _V.._CHK:
#   _V:    adv -> _DOWN, lo = probe (1 - ratio), hi = probe     else _UP, lo = probe, hi = probe (1 + ratio)
#   _UP:   adv -> _BIN (bracket kept)                           else lo = hi, hi = hi (1 + ratio) (_DONE past lam_max)
#   _DOWN: adv -> lo = lo (1 - ratio), hi = lo                  else _BIN (bracket kept)
#   _BIN:  adv -> hi = mid                                      else lo = mid
#   _OUT:  adv -> _BIN, lo = max(hi - out_step, 0)              else lo = hi, hi = hi + out_step (_DONE past lam_max)
#   _CHK:  adv -> _BIN, lo = 0, hi = probe                      else _DONE
_NL = np.array((0, 4, 2, 1, 1, 7, 3, 1, 2, 8, 1, 10))
_NH = np.array((5, 0, 6, 2, 2, 1, 2, 3, 9, 2, 2, 0))
_NS = np.array((1, 2, 1, 3, 3, 2, 3, 3, 4, 3, 6, 3))  # _UP, _DOWN, _UP, _BIN, _BIN, _DOWN, _BIN, _BIN, _OUT, _BIN, _DONE, _BIN
#: numpy's dtype of each float image dtype numpy has (a probe is rounded to the image's dtype)
_NP_FLOAT = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16}


def _round_to(a: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """float64 values rounded to the image dtype ``dtype`` (round to nearest even, as torch's ``.to``); values of that
    dtype, as numpy holds them (bfloat16, which numpy lacks: through torch, back as float64)."""
    npd = _NP_FLOAT.get(dtype)
    if npd is not None:
        return a.astype(npd)
    return torch.from_numpy(a).to(dtype).double().numpy()


def _transition(s, l, h, probe, adv, ans, hi_adv, tol, ratio: float, out_step: float, lam_max: float, dtype):
    """(next state, lo, hi, hi seen adversarial) of live rows: the state machine of :func:`boundary_distance` as
    table look-ups on (state, adversarial), on the host in numpy (float64 lo, hi, probe; ``dtype``: the image's torch
    dtype). Every new bound is one of the candidates, each an IEEE operation on float64 (the same bits as the same
    operation in torch); one masked assignment per case was the first version (tests/test_decision.py)."""
    if (s == _BIN).all():  # every row bisecting (most steps): the two rows of the table for _BIN
        mid = (l + h) / 2
        nl, nh, ns, nadv = np.where(adv, l, mid), np.where(adv, mid, h), s, hi_adv | adv
    else:
        k = s * 2 + adv
        cand = np.stack([probe, l, h, (l + h) / 2, probe * (1 - ratio), probe * (1 + ratio), h * (1 + ratio),
                         l * (1 - ratio), np.maximum(h - out_step, 0.0), h + out_step, np.zeros_like(h)], 1)
        rows = np.arange(len(s))
        nl = cand[rows, _NL[k]]
        nh = cand[rows, _NH[k]]
        ns = np.where(((s == _UP) | (s == _OUT)) & ~adv & (nh > lam_max), _DONE, _NS[k])
        nadv = hi_adv | (adv & (s != _DOWN))
    # bracket narrow enough (or lo collapsed to 0 while shrinking): done; unanswered: done
    # ... or no probe in the image's dtype lies strictly between lo and hi any more
    mid32, nl32, nh32 = _round_to((nl + nh) / 2, dtype), _round_to(nl, dtype), _round_to(nh, dtype)
    done = ((ns == _BIN) & ((nh - nl <= tol) | (mid32 <= nl32) | (mid32 >= nh32))) | ((ns == _DOWN) & (nl < 1e-6)) | ~ans
    return np.where(done, _DONE, ns), nl, nh, nadv


def boundary_distance(oracle: AttackView, x0: torch.Tensor, theta: torch.Tensor, idx: torch.Tensor,
                      v: torch.Tensor, mode: torch.Tensor | int, tol: float, ratio: float = 0.01,
                      out_step: float = 0.1, lam_max: float = 30.0) -> torch.Tensor:
    """g(theta) for each row: the distance along the (normalised) direction ``theta`` from ``x0`` (the
    row's clean image) to the decision boundary, as the smallest adversarial lambda found, batched
    over rows (one oracle call per search step for all rows still searching). +inf where none found.

    ``mode`` per row:

    * ``LOCAL`` ([cheng2021 Algorithm 2], around a previous value ``v``): probe v; if not adversarial
      grow by (1 + ratio) until adversarial, else shrink by (1 - ratio) while adversarial; then bisect
      until the bracket is narrower than ``tol``;
    * ``BOUND`` (``v`` is an upper bound candidate, e.g. the current best g or the distance to a
      target-class image): probe v; if adversarial bisect [0, v], else +inf (the direction cannot beat v);
    * ``SCRATCH`` (g from scratch): probe out_step, 2 out_step, ... until adversarial (+inf past
      ``lam_max``), then bisect the last step.

    The returned lambda was itself queried and seen adversarial (the oracle holds that point).

    The search's state (a state, lo, hi and a flag per row) lives on the host in numpy: a step is a few dozen
    operations on at most a few hundred numbers, which cost about a microsecond each in numpy and several in torch
    (a kernel launch each on a GPU). Only the probes go to the device, and only the labels come back.
    """
    n = len(idx)
    dev = x0.device
    # The bracket is kept in float64 and each probe is rounded to the image's dtype: a tolerance below
    # float32's spacing at lambda (e.g. 1e-7 at lambda ~ 3) would otherwise never be met, as (lo + hi) / 2
    # rounds back to lo or hi, and the loop would spend the whole budget re-querying one point.
    tol = np.broadcast_to(tol.detach().double().cpu().numpy() if torch.is_tensor(tol) else np.float64(tol), (n,))
    v = v.detach().double().cpu().numpy().copy()
    mode = np.full(n, mode) if isinstance(mode, int) else mode.cpu().numpy()
    idx_np = idx.cpu().numpy()
    lo = np.zeros(n)
    hi = v.copy()
    hi_adv = np.zeros(n, dtype=bool)
    st = np.where(mode == LOCAL, _V, np.where(mode == BOUND, _CHK, _OUT))
    hi = np.where(mode == SCRATCH, out_step, hi)
    st = np.where(~np.isfinite(v) & (mode != SCRATCH), _DONE, st)
    box = (oracle.low, oracle.high)
    t = oracle.targets  # adversarial (_judge): the label is the target (targeted) or not y, per row's sample
    want = (t if t is not None else oracle.y).cpu().numpy()[idx_np]
    # A row whose sample the oracle no longer answers (budget spent; success in an eps-bounded run) comes back
    # unanswered and its search ends there, with the bound it had: what skipping it would give, without asking
    # the oracle which samples are active before every step.
    while True:
        live = np.flatnonzero(st != _DONE)
        if len(live) == 0:
            break
        s, l, h = st[live], lo[live], hi[live]
        probe = np.where(s == _UP, h, np.where(s == _DOWN, l, np.where(s == _BIN, (l + h) / 2, h)))
        probe = np.where((s == _V) | (s == _CHK), v[live], probe)
        probe = _round_to(probe, x0.dtype)
        if len(live) == n:  # every row (live is then 0..n-1): no gathers
            xl, tl, il = x0, theta, idx
        else:
            r = torch.from_numpy(live).to(dev)
            xl, tl, il = x0[r], theta[r], idx[r]
        lab = _labels(oracle, ray_point(xl, tl, torch.from_numpy(probe).to(dev, x0.dtype), box), il).cpu().numpy()
        adv, ans = _judge(lab, want[live], t is not None)
        ns, nl, nh, nadv = _transition(s, l, h, probe.astype(np.float64), adv, ans, hi_adv[live], tol[live], ratio,
                                       out_step, lam_max, x0.dtype)
        st[live], lo[live], hi[live], hi_adv[live] = ns, nl, nh, nadv
    hi = torch.from_numpy(_round_to(hi, x0.dtype)).to(dev, x0.dtype)  # the lambda that was queried (probes are rounded the same way)
    return torch.where(torch.from_numpy(hi_adv).to(dev), hi, torch.full_like(hi, float("inf")))


def search_scale(x0: torch.Tensor, norm: str) -> Tuple[float, float]:
    """(outward step, largest lambda) of the from-scratch search. [cheng2021 §2.4.2] does not state the coarse
    step: robench steps 1/100 of the image box's diameter in the norm (L2:
    sqrt(d) / 100; Linf: 0.02 on the Linf-normalised direction) and gives up past 2x the diameter
    (L2) or lambda 4 (Linf, where every coordinate with |theta_i| >= 1/4 is saturated)."""
    d = x0[0].numel()
    if norm == "linf":
        return 0.02, 4.0
    return d ** 0.5 / 100, 2 * d ** 0.5


def init_directions(oracle: AttackView, gen: torch.Generator, norm: str, n_dirs: int, tol: float,
                    pool: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """theta_0 and g(theta_0) per sample: the best of ``n_dirs`` directions ([cheng2021 §2.5], "the best
    of 100 random directions"), batched over samples, one direction at a time per sample so the
    running best prunes: a direction is only bisected if the point at the current best g along it is
    adversarial (the reference code's ``fine_grained_binary_search``); the first direction of a
    sample is searched from scratch.

    ``pool`` (n, n_dirs, C, H, W), optional: target-class training images (targeted attacks,
    [cheng2021 §2.5]: "100 samples in target class from training dataset"): direction x_t - x0 with the
    upper bound ||x_t - x0||. Rows of the pool equal to x0 are skipped.
    """
    x0 = oracle.x0
    n, dev = x0.shape[0], x0.device
    out_step, lam_max = search_scale(x0, norm)
    best_g = torch.full((n,), float("inf"), device=dev)
    best_t = torch.zeros_like(x0)
    for k in range(n_dirs):
        s = oracle.active_indices()
        if len(s) == 0:
            break
        if pool is not None:
            d = pool[s, k] - x0[s]
            ub = flat_norm(d, norm)
        else:
            d = torch.randn(x0[s].shape, generator=gen, device=dev)
            ub = torch.full((len(s),), float("inf"), device=dev)
        th = normalize(d, norm)
        v = torch.minimum(best_g[s], ub)
        mode = torch.where(torch.isfinite(v), BOUND, SCRATCH)
        g = boundary_distance(oracle, x0[s], th, s, v, mode, tol, out_step=out_step, lam_max=lam_max)
        better = g < best_g[s]
        best_g[s[better]] = g[better]
        best_t[s[better]] = th[better]
    return best_t, best_g


def targeted_pool(images, oracle: AttackView, n_dirs: int, gen: torch.Generator) -> Optional[torch.Tensor]:
    """(n, n_dirs, C, H, W) training images of each sample's target class (drawn with ``gen``), or None
    when the run is untargeted or no :class:`~robench.attacks.base.ClassImages` was supplied (then
    random directions)."""
    t = oracle.targets
    if t is None or images is None:
        return None
    pool = images.draw(t.cpu(), n_dirs, gen)
    return None if pool is None else pool.to(oracle.x0.device)


def line_search(oracle: AttackView, x0: torch.Tensor, s: torch.Tensor, theta: torch.Tensor, g: torch.Tensor,
                grad: torch.Tensor, alpha: torch.Tensor, norm: str, tol: float, evaluate=None,
                max_steps: int = 15) -> Tuple[torch.Tensor, torch.Tensor]:
    """The step-size search of the OPT / Sign-OPT reference code (attackbox, [cheng2019opt]), batched over samples.

    From theta - alpha * grad: while the objective improves, double alpha (at most ``max_steps``
    times) and keep the best; if the first try did not improve, quarter alpha until it does (at most
    ``max_steps`` times). ``alpha`` (per sample) is updated in place and carried to the next
    iteration, as in the reference. g of a candidate is Algorithm 2 around the best value so far.
    ``evaluate(rows, theta, lam) -> objective`` maps boundary distances to the objective (identity
    for L2; the L-inf surrogate of [cheng2021 §2.4.2]). Returns (best theta, best boundary distance lambda).

    Here ``g`` is the boundary distance of theta; the objective of theta is ``evaluate(s, theta, g)``.
    """
    ev = evaluate or (lambda rows, th, lam: lam)
    out_step, lam_max = search_scale(x0, norm)
    obj0 = ev(s, theta, g)
    min_t, min_g, min_o = theta.clone(), g.clone(), obj0.clone()
    pos = torch.arange(len(s), device=x0.device)

    def try_rows(r):
        cand = normalize(theta[r] - view_b(alpha[r], theta) * grad[r], norm)
        tl = tol[r] if torch.is_tensor(tol) else tol
        lam = boundary_distance(oracle, x0[r], cand, s[r], min_g[r], LOCAL, tl, lam_max=lam_max)
        return cand, lam, ev(s[r], cand, lam)

    grow = oracle.active[s].clone()
    for _ in range(max_steps):
        r = pos[grow & oracle.active[s]]
        if len(r) == 0:
            break
        cand, lam, o = try_rows(r)
        alpha[r] *= 2
        better = o < min_o[r]
        rb = r[better]
        min_t[rb], min_g[rb], min_o[rb] = cand[better], lam[better], o[better]
        grow[r[~better]] = False
    shrink = (min_o >= obj0) & oracle.active[s]
    for _ in range(max_steps):
        r = pos[shrink & oracle.active[s]]
        if len(r) == 0:
            break
        alpha[r] *= 0.25
        cand, lam, o = try_rows(r)
        better = o < obj0[r]
        rb = r[better]
        min_t[rb], min_g[rb], min_o[rb] = cand[better], lam[better], o[better]
        shrink[rb] = False
    return min_t, min_g


def noise_init(oracle: AttackView, gen: torch.Generator, max_draws: int = 1000, tol: float = 1e-3,
               pool: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """A starting adversarial point per sample (HopSkipJump's and Foolbox's Boundary-attack
    initialisation): uniform noise in the input box, one draw per sample per call, until adversarial
    (at most ``max_draws``); targeted runs with ``pool`` (target-class training images) try those
    first. Then bisect the blend (1 - a) x0 + a x_noise to the boundary (to ``tol`` in a).
    Returns (points, found) — the points of samples not found are x0."""
    x0 = oracle.x0
    n, dev = x0.shape[0], x0.device
    start = x0.clone()
    found = torch.zeros(n, dtype=torch.bool, device=dev)
    for k in range(max_draws):
        s = (~found & oracle.active).nonzero().flatten()
        if len(s) == 0:
            break
        if pool is not None and k < pool.shape[1]:
            cand = pool[s, k]
        else:
            cand = oracle.low + (oracle.high - oracle.low) * torch.rand(x0[s].shape, generator=gen, device=dev)
        adv, _ = adversarial(oracle, cand, s)
        start[s[adv]] = cand[adv]
        found[s[adv]] = True
    s = found.nonzero().flatten()
    lo = torch.zeros(len(s), device=dev)
    hi = torch.ones(len(s), device=dev)
    live = torch.ones(len(s), dtype=torch.bool, device=dev)
    while True:
        r = (live & oracle.active[s] & (hi - lo > tol)).nonzero().flatten()
        if len(r) == 0:
            break
        mid = (lo[r] + hi[r]) / 2
        xb = x0[s[r]] + view_b(mid, x0) * (start[s[r]] - x0[s[r]])
        adv, ans = adversarial(oracle, xb, s[r])
        hi[r[adv]] = mid[adv]
        lo[r[~adv & ans]] = mid[~adv & ans]
        live[r[~ans]] = False
    out = x0.clone()
    out[s] = x0[s] + view_b(hi, x0) * (start[s] - x0[s])
    return out, found


#: the objective of a direction given its boundary distance, ``(rows, theta, lam) -> value`` to minimise
Objective = Callable[[Optional[torch.Tensor], torch.Tensor, torch.Tensor], torch.Tensor]


class DirectionSearchAttack(Attack):
    """The skeleton OPT and Sign-OPT share ([cheng2019opt] [cheng2020signopt] [cheng2021 §2.4.2-2.4.3]):
    minimise over directions theta the boundary distance g(theta) (or an objective of it).

    :meth:`run` is the template: theta_0 and g(theta_0) by :func:`init_directions` (the best of
    ``n_init`` random directions, or of target-class training images for targeted runs); then, per
    iteration, for every sample still live and active: a gradient estimate of the objective
    (:meth:`_estimate`, the one part that differs), the reference code's :func:`line_search` with
    the per-sample step ``alpha`` it updates, the subclass's acceptance rule (:meth:`_accept`), and
    the stall rule of the reference code (``alpha < 1e-4``: alpha <- 1, beta <- beta / 10; the
    sample stops once beta < ``min_beta``).

    A subclass sets ``alpha, beta, n_init, init_tol, min_beta, max_iterations`` (the class images come
    through :meth:`prepare`), writes :meth:`_estimate`, and may override :meth:`_objective` and :meth:`_accept`.
    """

    access = "label"
    minimizes_distortion = True
    requires = ("class_images",)
    layouts = ("NCHW", "NCT")
    class_images = None  # ClassImages of the training split (targeted theta0), from prepare()

    def prepare(self, context) -> None:
        """Keep the training images by class (targeted θ0 / starting points; AttackContext.class_images)."""
        self.class_images = context.class_images

    def _objective(self, oracle: AttackView) -> Optional[Objective]:
        """The objective of a direction (None: g itself, the boundary distance)."""
        return None

    def _estimate(self, oracle: AttackView, generator: torch.Generator, x0: torch.Tensor, s: torch.Tensor,
                  theta: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, objective: Optional[Objective]):
        """Gradient estimate for samples ``s`` at directions ``theta`` (boundary distances ``g``, smoothing
        ``beta``). Returns (gradient, bisection tolerance of the line search, data for :meth:`_accept`)."""
        raise NotImplementedError

    def _accept(self, theta: torch.Tensor, g: torch.Tensor, new_t: torch.Tensor, new_g: torch.Tensor, extra,
                objective: Optional[Objective]) -> Tuple[torch.Tensor, torch.Tensor]:
        """The new (theta, g) of the iterated samples from the line search's result (default: take it)."""
        return new_t, new_g

    def run(self, oracle: AttackView, generator: torch.Generator) -> None:
        norm, x0 = oracle.norm, oracle.x0
        n, dev = x0.shape[0], x0.device
        objective = self._objective(oracle)
        pool = targeted_pool(self.class_images, oracle, self.n_init, generator)
        theta, g = init_directions(oracle, generator, norm, self.n_init, self.init_tol, pool)
        alpha = torch.full((n,), float(self.alpha), device=dev)
        beta = torch.full((n,), float(self.beta), device=dev)
        live = torch.isfinite(g)
        for _ in range(self.max_iterations):
            if objective is not None:  # done once the objective reaches 0 (the Linf surrogate inside eps)
                live &= objective(None, theta, g) > 0
            s = (live & oracle.active).nonzero().flatten()
            if len(s) == 0:
                return
            th, gs = theta[s], g[s]
            grad, tol, extra = self._estimate(oracle, generator, x0, s, th, gs, beta[s], objective)
            a = alpha[s].clone()
            new_t, new_g = line_search(oracle, x0[s], s, th, gs, grad, a, norm, tol, evaluate=objective)
            alpha[s] = a
            theta[s], g[s] = self._accept(th, gs, new_t, new_g, extra, objective)
            stall = a < 1e-4
            alpha[s[stall]] = 1.0
            beta[s[stall]] *= 0.1
            live[s[stall & (beta[s] < self.min_beta)]] = False
