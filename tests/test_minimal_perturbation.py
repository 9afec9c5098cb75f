"""C&W L2, C&W-Linf and DeepFool on the trained tiny victim."""
import pytest
import torch

from robench.attacks.whitebox.cw import CWL2, cw_margin
from robench.attacks.whitebox.cw_linf import CWLinf
from robench.attacks.whitebox.deepfool import DeepFool
from robench.errors import RobenchError
from robench.referee.oracle import Oracle
from tests.test_oracle import CountingModel
from tests.test_pgd import check_certified, noise_success


def _run(attack, model, x0, y, norm="l2", eps=None, targets=None, max_queries=10_000):
    o = Oracle(model, x0, y, access="gradient", norm=norm, eps=eps, max_queries=max_queries, targets=targets,
               num_classes=10, stop_on_success=not attack.minimizes_distortion)
    attack.run(o, torch.Generator().manual_seed(0))
    if isinstance(model, CountingModel):
        model.enabled = False
    return o.finalize()


def _l2(r, x0):
    return (r.best_x - x0).flatten(1).norm(dim=1)[r.success]


FAST_CW = dict(binary_search_steps=5, max_iterations=100, learning_rate=0.1, initial_const=1.0)


def test_cw_margin_signs():
    z = torch.tensor([[3.0, 1.0, 0.0]])
    assert cw_margin(z, torch.tensor([0]), False, 0.0).item() == 2.0  # Z_y - max other
    assert cw_margin(z, torch.tensor([1]), False, 0.0).item() == -0.0  # already misclassified: clamped at -kappa
    assert cw_margin(z, torch.tensor([1]), True, 0.0).item() == 2.0  # max other - Z_t
    assert cw_margin(z, torch.tensor([0]), True, 0.5).item() == -0.5


@pytest.mark.slow
def test_cw_l2_finds_small_perturbations(victim, test_xy):
    x0, y = test_xy[0][:20], test_xy[1][:20]
    counter = CountingModel(victim, x0)
    r = _run(CWL2(**FAST_CW), counter, x0, y)
    assert r.success.float().mean() >= 0.95
    check_certified(victim, x0, y, r, "l2", float("inf"))
    # (totals: C&W points can lie nearer another clean image than their own, which confuses per-sample attribution)
    assert (r.queries <= 5 * 100).all() and counter.rows == int(r.queries.sum())
    assert torch.equal(r.grad_queries, r.queries)  # every query is an Adam step's gradient
    # an optimisation attack: smaller L2 than DeepFool's linearisation on the same samples
    r_df = _run(DeepFool(), victim, x0, y)
    assert r_df.success.all()
    assert _l2(r, x0).median() < _l2(r_df, x0).median()
    # and far smaller than the L2 size of a Linf-0.3 PGD point (about 4-6)
    assert _l2(r, x0).median() < 2.5


def test_cw_l2_targeted_and_binary_search(victim, test_xy):
    x0, y = test_xy[0][:10], test_xy[1][:10]
    t = (y + 3) % 10
    r = _run(CWL2(**FAST_CW), victim, x0, y, targets=t)
    assert r.success.float().mean() >= 0.9
    check_certified(victim, x0, y, r, "l2", float("inf"), targets=t)
    # one binary-search step at a tiny constant finds almost nothing; the search over c fixes that
    r1 = _run(CWL2(binary_search_steps=1, max_iterations=60, learning_rate=0.1, initial_const=1e-3), victim, x0, y)
    r5 = _run(CWL2(binary_search_steps=5, max_iterations=60, learning_rate=0.1, initial_const=1e-3), victim, x0, y)
    assert r1.success.float().mean() <= 0.2 and r5.success.float().mean() >= r1.success.float().mean() + 0.5


def test_cw_linf_is_pgd_with_margin_loss(victim, test_xy):
    x0, y = test_xy[0][:100], test_xy[1][:100]
    a = CWLinf()
    assert a.loss == "cw" and a.steps == 40
    r = _run(a, victim, x0, y, norm="linf", eps=0.3, max_queries=1000)
    assert r.success.float().mean() - noise_success(victim, x0, y, "linf", 0.3) >= 0.5
    check_certified(victim, x0, y, r, "linf", 0.3)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_deepfool_minimal_and_counted(victim, test_xy, norm):
    x0, y = test_xy[0][:20], test_xy[1][:20]
    counter = CountingModel(victim, x0)
    r = _run(DeepFool(), counter, x0, y, norm=norm)
    assert r.success.all()
    assert counter.rows == int(r.queries.sum())
    # each iteration: 9 gradient rows (a Jacobian of 9 class differences) and one label row
    assert ((r.queries % 10) == 0).all() and torch.equal(r.grad_queries, r.queries // 10 * 9)
    # DeepFool finds close points: smaller than the budget sizes at which PGD needs its full strength
    d = (r.best_x - x0).flatten(1)
    dist = (d.norm(dim=1) if norm == "l2" else d.abs().amax(1))
    assert dist.median() < (2.5 if norm == "l2" else 0.25)
    # no overshoot: DeepFool stops just across the boundary, more iterations for some samples
    r0 = _run(DeepFool(overshoot=0.0), victim, x0, y, norm=norm)
    assert r0.queries.sum() >= r.queries.sum()


def test_deepfool_targeted_and_fewer_candidates(victim, test_xy):
    x0, y = test_xy[0][:20], test_xy[1][:20]
    with torch.no_grad():
        t = victim(x0).topk(2, 1).indices[:, 1]  # runner-up class: reachable
    r = _run(DeepFool(max_iter=100), victim, x0, y, targets=t)
    assert r.success.float().mean() >= 0.9
    check_certified(victim, x0, y, r, "l2", float("inf"), targets=t)
    counter = CountingModel(victim, x0)
    r3 = _run(DeepFool(candidates=3), counter, x0, y)
    # one clean forward to pick the top classes, then 2 gradient rows + 1 label row per iteration
    assert counter.rows == int(r3.queries.sum()) and (((r3.queries - 1) % 3) == 0).all()
    assert r3.success.float().mean() >= 0.9


def test_bad_parameters():
    for make in (lambda: CWL2(binary_search_steps=0), lambda: CWL2(learning_rate=0), lambda: DeepFool(candidates=1)):
        with pytest.raises(RobenchError):
            make()


class _ConstSpy(Oracle):
    """Reads the constant c each gradient query carries: cw_l2's loss is c * max(0, Z_y - max_other + kappa),
    so logits with Z_y - max_other = 1 (kappa 0) return c itself."""

    def gradient(self, x, loss_fn, idx=None):
        probe = torch.zeros(len(idx), 10)
        probe[torch.arange(len(idx)), self.y[idx]] = 1.0
        self.calls.append((idx.clone(), loss_fn(probe, idx).detach().clone()))
        return super().gradient(x, loss_fn, idx)


def test_cw_l2_binary_search_halves_after_success(victim, test_xy):
    # regression: success was judged on the clamped margin, never below -kappa = 0, so c only grew x10
    x0, y = test_xy[0][:4], test_xy[1][:4]
    o = _ConstSpy(victim, x0, y, access="gradient", norm="l2", eps=None, max_queries=90, num_classes=10,
                  stop_on_success=False)
    o.calls = []
    CWL2(binary_search_steps=3, max_iterations=30, learning_rate=0.1, initial_const=10.0).run(o, torch.Generator())
    r = o.finalize()
    assert r.success.all()  # c = 10 is ample on this victim: every sample succeeds in the first step
    seq = [[] for _ in range(4)]
    for idx, c in o.calls:
        for i, ci in zip(idx.tolist(), c.tolist()):
            if not seq[i] or seq[i][-1] != ci:
                seq[i].append(ci)
    for s in seq:  # 10 -> (0 + 10) / 2 -> 2.5 or 7.5 (bisection), never 100
        assert s[:2] == [10.0, 5.0] and s[2] in (2.5, 7.5), s
    assert r.queries.tolist() == [sum(int((idx == i).sum()) for idx, _ in o.calls) for i in range(4)]


def test_cw_l2_matches_foolbox_iterate_for_iterate(victim, test_xy):
    """The port is faithful to foolbox's L2CarliniWagnerAttack [rauber2017foolbox] to the bit: same
    iterates, hence the same distortions (robench's oracle also keeps the iterate at which a step aborts)."""
    fb = pytest.importorskip("foolbox")
    x0, y = test_xy[0][:6], test_xy[1][:6]
    r = _run(CWL2(binary_search_steps=3, max_iterations=20, learning_rate=0.1, initial_const=1.0), victim, x0, y)
    adv = fb.attacks.L2CarliniWagnerAttack(binary_search_steps=3, steps=20, stepsize=0.1, initial_const=1.0).run(
        fb.PyTorchModel(victim, bounds=(0, 1)), x0, y)
    # foolbox returns the all-zero image where it found nothing: no adversarial point, whatever its class
    fb_ok = (victim(adv).argmax(1) != y) & (adv.flatten(1).abs().sum(1) > 0)
    assert torch.equal(r.success, fb_ok) and r.success.sum() >= 4
    d_fb = (adv - x0).flatten(1).norm(dim=1)[fb_ok]
    assert torch.allclose(_l2(r, x0), d_fb, rtol=0, atol=1e-6)
