"""APGD-CE, APGD-DLR and APGD-T (Croce and Hein 2020) on the trained tiny victim."""
import pytest
import torch

from robench.attacks.whitebox.apgd import APGD, checkpoints, dlr_loss
from robench.attacks.whitebox.apgd_dlr import APGDDLR
from robench.attacks.whitebox.apgd_t import APGDT
from robench.attacks.whitebox.fgsm import FGSM
from robench.attacks.whitebox.pgd import PGD
from robench.errors import RobenchError
from robench.referee.oracle import Oracle
from tests.test_oracle import CountingModel
from tests.test_pgd import check_certified


def _run(attack, model, x0, y, norm="linf", eps=0.3, targets=None, max_queries=10_000):
    o = Oracle(model, x0, y, access="gradient", norm=norm, eps=eps, max_queries=max_queries, targets=targets,
               num_classes=10)
    attack.run(o, torch.Generator().manual_seed(0))
    if isinstance(model, CountingModel):
        model.enabled = False
    return o.finalize()


def test_checkpoints_follow_the_paper():
    # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06): 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(10) == [2, 3, 4, 5, 6, 7, 8, 9, 10]


def test_dlr_loss_values_and_invariance():
    z = torch.tensor([[4.0, 3.0, 1.0, 0.0, -1.0]])
    y = torch.tensor([0])
    assert torch.isclose(dlr_loss(z, y), torch.tensor([-(4 - 3) / (4 - 1.0)]), atol=1e-6).all()
    assert torch.isclose(dlr_loss(z, torch.tensor([1])), torch.tensor([-(3 - 4) / (4 - 1.0)]), atol=1e-6).all()
    t = torch.tensor([3])
    assert torch.isclose(dlr_loss(z, y, t), torch.tensor([-(4 - 0) / (4 - 0.5 * (1 + 0))]), atol=1e-6).all()
    zr = torch.randn(6, 10)
    yr = torch.randint(0, 10, (6,))
    for f in (lambda a: dlr_loss(a, yr), lambda a: dlr_loss(a, yr, (yr + 1) % 10)):
        assert torch.allclose(f(zr), f(3.0 * zr + 7.0), atol=1e-5)  # shift and scale invariant


def test_apgd_ce_strong_and_counted(victim, test_xy):
    x0, y = test_xy[0][:100], test_xy[1][:100]
    counter = CountingModel(victim, x0)
    r = _run(APGD(), counter, x0, y)
    assert r.success.float().mean() >= 0.98
    check_certified(victim, x0, y, r, "linf", 0.3)
    assert (r.queries <= 101).all() and torch.equal(counter.per_sample, r.queries)
    assert torch.equal(r.grad_queries, r.queries)


def test_apgd_at_least_as_strong_as_pgd_at_small_eps(victim, test_xy):
    """At eps 0.15 (where neither is near 100%) APGD-CE is at least as strong as PGD with as many steps,
    and clearly above FGSM; APGD-DLR and APGD-T are above FGSM too."""
    x0, y = test_xy[0][:60], test_xy[1][:60]
    eps = 0.15
    f = _run(FGSM(), victim, x0, y, eps=eps).success
    p = _run(PGD(steps=50), victim, x0, y, eps=eps).success
    a = _run(APGD(steps=50), victim, x0, y, eps=eps).success
    d = _run(APGDDLR(steps=50), victim, x0, y, eps=eps).success
    t = _run(APGDT(target_classes=2, steps=25), victim, x0, y, eps=eps).success
    print("FGSM/PGD/APGD-CE/APGD-DLR/APGD-T successes:", int(f.sum()), int(p.sum()), int(a.sum()), int(d.sum()), int(t.sum()))
    assert a.sum() >= p.sum() and a.sum() >= f.sum() + 3
    assert d.sum() >= f.sum() + 3 and t.sum() >= f.sum() + 3


def test_apgd_l2_and_targeted(victim, test_xy):
    x0, y = test_xy[0][:50], test_xy[1][:50]
    r = _run(APGD(steps=50), victim, x0, y, norm="l2", eps=2.0)
    rp = _run(PGD(steps=50, step_size=0.25), victim, x0, y, norm="l2", eps=2.0)
    check_certified(victim, x0, y, r, "l2", 2.0)
    assert r.success.sum() >= rp.success.sum() - 1 and r.success.float().mean() >= 0.5
    t = (y + 1) % 10
    for attack in (APGD(steps=50), APGDT(steps=50)):
        rt = _run(attack, victim, x0, y, targets=t)
        check_certified(victim, x0, y, rt, "linf", 0.3, targets=t)
        assert rt.success.float().mean() >= 0.8


def test_apgd_t_untargeted_budget_costs(victim, test_xy):
    x0, y = test_xy[0][:20], test_xy[1][:20]
    counter = CountingModel(victim, x0)
    r = _run(APGDT(steps=10, target_classes=2), counter, x0, y, eps=0.05)
    # one clean forward for the target ranking, then at most 2 runs of 1 + 10 gradient rows
    assert (r.queries <= 1 + 2 * 11).all() and torch.equal(counter.per_sample, r.queries)
    assert torch.equal(r.queries - r.grad_queries, torch.ones_like(r.queries))


def test_bad_parameters():
    """Refused by the registry's schema (declared ranges and Literal types) before construction."""
    from robench.registry import ATTACKS, instantiate

    for name, params in (("apgd_ce", {"steps": 0}), ("apgd_ce", {"rho": 0}), ("apgd_ce", {"loss": "x"}),
                         ("apgd_t", {"target_classes": 0})):
        with pytest.raises(RobenchError, match=f"attack.params.{next(iter(params))}"):
            instantiate(ATTACKS, name, params, "attack")
