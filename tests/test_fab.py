"""FAB (Croce and Hein 2020) on the trained tiny victim: its projection, minimal distortions, FAB-T, counts."""
import pytest
import torch

from robench.attacks.whitebox.deepfool import DeepFool
from robench.attacks.whitebox.fab import FAB, project_onto_hyperplane
from robench.errors import RobenchError
from robench.referee.oracle import Oracle
from tests.test_oracle import CountingModel
from tests.test_pgd import check_certified


def _bisect_projection(t, w, b, norm, iters=200):
    """An independent solution of min ||d|| s.t. <w, t + d> = b, t + d in [0, 1]: bisection on the common
    radius (Linf: d_i = -sign(w_i) min(s, room_i)) or on the multiplier (L2: d = clip(-lam w, box))."""
    c = (w * t).sum(1) - b
    sgn = torch.where(c < 0, -1.0, 1.0).to(t)
    w2 = w * sgn[:, None]
    lo_box, hi_box = -t, 1 - t

    def d_of(s):
        if norm == "linf":
            return torch.clamp(-torch.sign(w2) * s[:, None], lo_box, hi_box)
        return torch.clamp(-w2 * s[:, None], lo_box, hi_box)

    lo, hi = torch.zeros(len(t), dtype=t.dtype), torch.full((len(t),), 1e6, dtype=t.dtype)
    target = -(c * sgn)
    for _ in range(iters):
        mid = (lo + hi) / 2
        reached = (w2 * d_of(mid)).sum(1) <= target
        hi, lo = torch.where(reached, mid, hi), torch.where(reached, lo, mid)
    return d_of(hi)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_is_the_minimal_box_constrained_one(norm):
    g = torch.Generator().manual_seed(0)
    t = torch.rand(64, 40, generator=g, dtype=torch.float64)
    t[:, :12] = (t[:, :12] > 0.5).to(t)                      # pixels at the box's faces, as in MNIST
    w = torch.randn(64, 40, generator=g, dtype=torch.float64)
    w[:, 3] = 0
    b = (w * t).sum(1) + 3 * torch.randn(64, generator=g, dtype=torch.float64)
    b[-8:] += 40 * torch.sign(b[-8:] - (w * t).sum(1)[-8:])  # unreachable inside the box
    d = project_onto_hyperplane(t, w, b, norm)
    ref = _bisect_projection(t, w, b, norm)
    p = float("inf") if norm == "linf" else 2
    assert ((t + d) >= -1e-12).all() and ((t + d) <= 1 + 1e-12).all()
    reach = ((w * (t + ref)).sum(1) - b).abs() < 1e-6
    assert 40 <= int(reach.sum()) <= 56                       # both kinds of rows are exercised
    assert ((w * (t + d)).sum(1) - b)[reach].abs().max() < 1e-9
    assert torch.allclose(d.norm(p=p, dim=1)[reach], ref.norm(p=p, dim=1)[reach], atol=1e-6)
    # out of reach: every coordinate as far towards the hyperplane as the box allows
    assert torch.allclose(d[~reach], ref[~reach], atol=1e-6)
    assert (d[:, 3] == 0).all()


class BackwardCounting(CountingModel):
    """Also counts, per sample, the rows of every backward pass through the victim's logits (a tensor hook: one
    call per ``autograd.grad``), and the forward rows computed with gradients."""

    def __init__(self, model, x0):
        super().__init__(model, x0)
        self.grad_forward = torch.zeros(len(x0), dtype=torch.long)
        self.backward = torch.zeros(len(x0), dtype=torch.long)

    def forward(self, x):
        out = super().forward(x)
        if self.enabled and out.requires_grad:
            owner = torch.bincount(torch.cdist(x.detach().flatten(1), self.x0).argmin(1), minlength=len(self.x0))
            self.grad_forward += owner

            def hook(g, owner=owner):
                self.backward += owner
            out.register_hook(hook)
        return out


def _run(attack, model, x0, y, norm="linf", eps=None, targets=None, max_queries=100_000, stop=None, checkpoints=None):
    o = Oracle(model, x0, y, access="gradient", norm=norm, eps=eps, max_queries=max_queries, targets=targets,
               num_classes=10, stop_on_success=not attack.minimizes_distortion if stop is None else stop,
               checkpoints=checkpoints)
    attack.run(o.view(), torch.Generator().manual_seed(0))
    if isinstance(model, CountingModel):
        model.enabled = False
    return o.finalize()


def _dist(r, x0, norm):
    d = (r.best_x - x0).flatten(1).norm(p=float("inf") if norm == "linf" else 2, dim=1)
    return torch.where(r.success, d, torch.full_like(d, float("inf")))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fab_minimal_distortions_beat_noise_and_deepfool_and_are_counted(victim, test_xy, norm):
    x0, y = test_xy[0][:16], test_xy[1][:16]
    counter = BackwardCounting(victim, x0)
    steps = 14
    cps = tuple(range(10, 400, 10))
    r = _run(FAB(steps=steps), counter, x0, y, norm=norm, checkpoints=cps)
    assert r.success.all()
    check_certified(victim, x0, y, r, norm, float("inf"))
    # every row the victim evaluated is counted: a forward row without gradients is one query, each backward
    # pass through a row one gradient query. Untargeted, the authors' order: 9 gradients at the start, then per
    # iteration a forward row testing the new point and 9 gradients where it lands (the last iteration: the test
    # only), the 9 gradients of a point from one forward pass and 9 backward passes
    assert torch.equal(counter.backward, r.grad_queries)
    assert torch.equal(counter.per_sample - counter.grad_forward + counter.backward, r.queries)
    assert (r.grad_queries == 9 * steps).all() and (r.queries == 10 * steps).all()
    assert (counter.grad_forward == steps).all() and (counter.per_sample == 2 * steps).all()
    d = _dist(r, x0, norm)
    # the distortion shrinks after the first adversarial point: median over the samples, first vs last
    first = torch.tensor([row[torch.isfinite(row)][0] for row in r.dist_at])
    assert d.median() < 0.9 * first.median(), (d.median(), first.median())   # measured, 14 steps: 0.81 (Linf), 0.76 (L2)
    # smaller than DeepFool's (FAB's starting point is a DeepFool-like step; measured, 14 steps: FAB's median is
    # 0.926 (Linf) and 0.916 (L2) of DeepFool's; 20 steps: 0.90 and 0.88)
    r_df = _run(DeepFool(), victim, x0, y, norm=norm)
    assert d.median() < 0.97 * _dist(r_df, x0, norm)[r_df.success].median()
    # random noise of the same size: each sample's own FAB distortion, 20 uniform draws in the Linf ball or on
    # the L2 sphere of that radius; the victim keeps its label on nearly all of them
    g = torch.Generator().manual_seed(1)
    u = torch.rand((20,) + x0.shape, generator=g) * 2 - 1 if norm == "linf" else torch.randn((20,) + x0.shape, generator=g)
    if norm == "l2":
        u = u / u.flatten(2).norm(dim=2)[..., None, None, None]
    noisy = (x0[None] + u * d.view(1, -1, 1, 1, 1)).clamp(0, 1)
    with torch.no_grad():
        fooled = victim(noisy.flatten(0, 1)).argmax(1).view(20, -1) != y
    assert fooled.float().mean() < 0.2


def test_fab_t_reaches_the_budget_targets_and_ranks_clean_classes(victim, test_xy):
    x0, y = test_xy[0][:16], test_xy[1][:16]
    t = (y + 3) % 10
    counter = CountingModel(victim, x0)
    r = _run(FAB(steps=30, targeted=True), counter, x0, y, norm="l2", targets=t)
    assert r.success.float().mean() >= 0.8                       # measured: 15 of 16
    check_certified(victim, x0, y, r, "l2", float("inf"), targets=t)
    # one target (the budget's): 1 gradient row, then per iteration a forward test and a gradient row (the last:
    # the test only): 1 + 29 x 2 + 1 per sample
    assert (r.queries == 60).all() and (r.grad_queries == 30).all() and counter.rows == int(r.queries.sum())
    # FAB-T in an untargeted budget: the 2nd .. 4th most likely classes, 1 logits query per sample, then
    # each target's run only on the samples still active; success inside the eps-ball only
    eps = 0.2
    counter = CountingModel(victim, x0)
    r = _run(FAB(steps=30, targeted=True, target_classes=3), counter, x0, y, norm="linf", eps=eps, stop=True)
    check_certified(victim, x0, y, r, "linf", eps)
    assert r.success.float().mean() >= 0.5                       # measured: 13 of 16
    assert (r.queries <= 1 + 3 * 60).all() and counter.rows == int(r.queries.sum())
    # forward rows: the ranking query, then one test per iteration, each after a gradient row (or the start's)
    fwd = r.queries - r.grad_queries
    assert ((fwd >= 1) & (fwd <= 1 + r.grad_queries) & (r.grad_queries >= 1)).all()
    noise = (x0 + eps * torch.sign(torch.randn(x0.shape, generator=torch.Generator().manual_seed(2)))).clamp(0, 1)
    with torch.no_grad():
        assert (victim(noise).argmax(1) != y).float().mean() < r.success.float().mean() - 0.4   # noise: 0 of 16


def test_fab_budget_restarts_and_bad_parameters(victim, test_xy):
    x0, y = test_xy[0][:8], test_xy[1][:8]
    r = _run(FAB(steps=50), victim, x0, y, max_queries=45)  # 9, then 9 or 10 per iteration: the budget ends it
    assert (r.queries <= 45).all() and (r.queries >= 45 - 10).all()
    one = _dist(_run(FAB(steps=6), victim, x0, y, norm="l2"), x0, "l2")
    three = _dist(_run(FAB(steps=6, restarts=3), victim, x0, y, norm="l2"), x0, "l2")
    assert (three <= one + 1e-6).all()                          # restarts keep the best point (the oracle's)
    for bad in ({"steps": 0}, {"eta": 0.5}, {"beta": 1.0}, {"alpha_max": 2.0}, {"target_classes": 0},
                {"restart_eps": 0.0}):
        with pytest.raises(RobenchError, match="fab"):
            FAB(**bad)
