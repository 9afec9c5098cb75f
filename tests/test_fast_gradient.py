"""FGSM (and fast gradient L2), BIM, ILCM and MI-FGSM on the trained tiny victim."""
import pytest
import torch

from robench.attacks.whitebox.bim import BIM, kurakin_steps
from robench.attacks.whitebox.fgsm import FGSM
from robench.attacks.whitebox.ilcm import ILCM
from robench.attacks.whitebox.mifgsm import MIFGSM
from robench.errors import RobenchError
from robench.referee.oracle import Oracle
from tests.test_oracle import CountingModel
from tests.test_pgd import check_certified, noise_success


def _run(attack, model, x0, y, norm="linf", eps=0.3, targets=None, max_queries=1000):
    o = Oracle(model, x0, y, access="gradient", norm=norm, eps=eps, max_queries=max_queries, targets=targets,
               num_classes=10)
    attack.run(o, torch.Generator().manual_seed(0))
    if isinstance(model, CountingModel):
        model.enabled = False  # the final re-check is not a query
    return o.finalize()


def test_fgsm_beats_noise_with_two_queries(victim, test_xy):
    x0, y = test_xy[0][:100], test_xy[1][:100]
    counter = CountingModel(victim, x0)
    r = _run(FGSM(), counter, x0, y)
    rate = r.success.float().mean().item()
    assert rate >= 0.6 and rate - noise_success(victim, x0, y, "linf", 0.3) >= 0.4, rate
    check_certified(victim, x0, y, r, "linf", 0.3)
    # exactly one gradient row and one label row per sample, counted independently of the oracle
    assert counter.per_sample.tolist() == [2] * 100 and r.queries.tolist() == [2] * 100
    assert r.grad_queries.tolist() == [1] * 100
    # an FGSM point sits on a corner of the ball wherever the box allows it
    d = (r.best_x - x0)[r.success]
    assert torch.isclose(d.abs().amax(dim=(1, 2, 3)), torch.tensor(0.3)).all()


def test_fgsm_targeted_and_l2(victim, test_xy):
    x0, y = test_xy[0][:100], test_xy[1][:100]
    t = (y + 1) % 10
    r = _run(FGSM(), victim, x0, y, targets=t)
    assert r.success.float().mean() >= 0.1
    check_certified(victim, x0, y, r, "linf", 0.3, targets=t)
    # descending the target's loss reaches the target far more often than ascending the label's loss does
    r_u = _run(FGSM(), victim, x0, y)
    with torch.no_grad():
        hit_u = (victim(r_u.best_x).argmax(1) == t).float().mean()
    assert r.success.float().mean() > hit_u
    # the fast gradient L2 variant: one step of the whole L2 budget along grad / ||grad||_2
    r2 = _run(FGSM(), victim, x0, y, norm="l2", eps=2.0)
    assert r2.success.float().mean() - noise_success(victim, x0, y, "l2", 2.0) >= 0.2
    check_certified(victim, x0, y, r2, "l2", 2.0)


def test_bim_is_stronger_than_fgsm_and_bounded(victim, test_xy):
    x0, y = test_xy[0][:100], test_xy[1][:100]
    assert kurakin_steps(0.3) == 80 and kurakin_steps(4 / 255) == 5
    r_f = _run(FGSM(), victim, x0, y)
    counter = CountingModel(victim, x0)
    r_b = _run(BIM(), counter, x0, y)
    assert r_b.success.float().mean() >= r_f.success.float().mean() + 0.05
    check_certified(victim, x0, y, r_b, "linf", 0.3)
    assert (r_b.queries <= 81).all() and torch.equal(counter.per_sample, r_b.queries)
    # the gradient is taken at the iterate: 80 steps of 1/255 end well inside the ball for most successes
    linf = (r_b.best_x - x0).flatten(1).abs().amax(1)[r_b.success]
    assert linf.median() < 0.3


def test_ilcm_untargeted_and_least_likely_target(victim, test_xy):
    x0, y = test_xy[0][:60], test_xy[1][:60]
    r = _run(ILCM(), victim, x0, y)
    assert r.success.float().mean() - noise_success(victim, x0, y, "linf", 0.3) >= 0.4
    assert (r.queries <= 1 + 80 + 1).all()
    with torch.no_grad():
        ll = victim(x0).argmin(1)
    rt = _run(ILCM(), victim, x0, y, targets=ll)
    check_certified(victim, x0, y, rt, "linf", 0.3, targets=ll)
    assert rt.success.float().mean() >= 0.3


def test_mifgsm_beats_fgsm_in_ten_steps(victim, test_xy):
    x0, y = test_xy[0][:100], test_xy[1][:100]
    r_f = _run(FGSM(), victim, x0, y)
    r_m = _run(MIFGSM(), victim, x0, y)
    assert r_m.success.float().mean() >= r_f.success.float().mean() + 0.05
    assert (r_m.queries <= 11).all()
    check_certified(victim, x0, y, r_m, "linf", 0.3)
    r2 = _run(MIFGSM(), victim, x0, y, norm="l2", eps=2.0)
    check_certified(victim, x0, y, r2, "l2", 2.0)
    assert r2.success.float().mean() > noise_success(victim, x0, y, "l2", 2.0)


@pytest.mark.parametrize("name,params", [("fgsm", {"loss": "x"}), ("bim", {"steps": 0}), ("mifgsm", {"decay": -1}),
                                         ("ilcm", {"step_size": 0})])
def test_bad_parameters(name, params):
    """Refused by the registry's schema (or the constructor) before the attack exists."""
    from robench.registry import ATTACKS, instantiate

    with pytest.raises(RobenchError):
        instantiate(ATTACKS, name, params, "attack")
