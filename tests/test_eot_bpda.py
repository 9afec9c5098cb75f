"""BPDA and EOT reach every gradient attack through the oracle (toy input defenses in front of the victim)."""
import pytest
import torch

from robench.defenses.base import InputDefense, set_bpda
from robench.referee.oracle import Oracle
from robench.registry import ATTACKS
from tests.test_oracle import CountingModel


class Quantize(InputDefense):
    """Non-differentiable toy defense: round every pixel to 4 levels (autograd sees no path)."""

    def transform(self, x):
        return torch.round(x * 3) / 3


class RandomShift(InputDefense):
    """Randomized, differentiable toy defense: each row is shifted by a random (dy, dx) in {-1, 0, 1}^2."""

    randomized = True
    differentiable = True

    def transform(self, x):
        out = torch.empty_like(x)
        s = torch.randint(-1, 2, (len(x), 2))
        for k in range(len(x)):
            out[k] = torch.roll(x[k], shifts=(int(s[k, 0]), int(s[k, 1])), dims=(-2, -1))
        return out


#: every gradient attack, small settings (name, params, norm, eps)
GRADIENT_ATTACKS = [
    ("fgsm", {}, "linf", 0.3), ("bim", {"steps": 10, "step_size": 0.05}, "linf", 0.3),
    ("ilcm", {"steps": 10, "step_size": 0.05}, "linf", 0.3), ("mifgsm", {}, "linf", 0.3),
    ("pgd", {"steps": 10}, "linf", 0.3), ("cw_linf", {"steps": 10}, "linf", 0.3),
    ("apgd_ce", {"steps": 10}, "linf", 0.3), ("apgd_dlr", {"steps": 10}, "linf", 0.3),
    ("apgd_t", {"steps": 10, "target_classes": 2}, "linf", 0.3),
    ("deepfool", {"max_iter": 5}, "l2", None),
    ("cw_l2", {"binary_search_steps": 3, "max_iterations": 30, "learning_rate": 0.1, "initial_const": 10.0}, "l2", None),
]


def _attack(name, params):
    return ATTACKS.get(name)(**params)


def _run(attack, model, x0, y, norm, eps, max_queries=10_000, eot=1):
    o = Oracle(model, x0, y, access="gradient", norm=norm, eps=eps, max_queries=max_queries, num_classes=10,
               stop_on_success=not attack.minimizes_distortion, eot_samples=eot)
    attack.run(o, torch.Generator().manual_seed(0))
    if isinstance(model, CountingModel):
        model.enabled = False
    return o.finalize()


@pytest.fixture(scope="module")
def quantized(victim, test_xy):
    """The victim behind the quantizer, and 20 test images it still classifies correctly."""
    model = torch.nn.Sequential(Quantize(), victim).eval()
    x, y = test_xy
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    return model, x[ok][:20], y[ok][:20]


@pytest.mark.slow
@pytest.mark.parametrize("name,params,norm,eps", GRADIENT_ATTACKS, ids=[a[0] for a in GRADIENT_ATTACKS])
def test_bpda_makes_every_gradient_attack_work_through_a_quantizer(quantized, name, params, norm, eps):
    model, x0, y = quantized
    set_bpda(model, False)
    off = _run(_attack(name, params), model, x0, y, norm, eps)
    set_bpda(model, True)
    try:
        on = _run(_attack(name, params), model, x0, y, norm, eps)
    finally:
        set_bpda(model, False)
    # without BPDA the oracle's gradient is zero (gradient masking): the attack is (nearly) powerless
    assert on.success.float().mean() >= off.success.float().mean() + 0.4, (off.success.sum(), on.success.sum())


@pytest.mark.parametrize("name,params,norm,eps", GRADIENT_ATTACKS, ids=[a[0] for a in GRADIENT_ATTACKS])
def test_eot_counts_every_draw_in_every_gradient_attack(victim, test_xy, name, params, norm, eps):
    x0, y = test_xy[0][:6], test_xy[1][:6]
    model = torch.nn.Sequential(RandomShift(), victim).eval()
    counter = CountingModel(model, x0)
    torch.manual_seed(0)
    r = _run(_attack(name, params), counter, x0, y, norm, eps, eot=3)
    assert counter.rows == int(r.queries.sum())  # counted independently of the oracle
    # every gradient the attack took went through oracle.gradient, which drew the defense 3 times
    assert (r.grad_queries % 3 == 0).all() and (r.grad_queries >= 3).all()


def test_eot_attack_beats_noise_on_randomized_defense(victim, test_xy):
    from robench.attacks.whitebox.pgd import PGD
    from tests.test_pgd import noise_success

    x0, y = test_xy[0][:40], test_xy[1][:40]
    model = torch.nn.Sequential(RandomShift(), victim).eval()
    torch.manual_seed(0)
    o = Oracle(model, x0, y, access="gradient", norm="linf", eps=0.3, max_queries=1000, num_classes=10, eot_samples=4)
    PGD(steps=20).run(o, torch.Generator().manual_seed(0))
    r = o.finalize()
    assert (r.grad_queries % 4 == 0).all()
    # successes as the oracle saw them, against the same randomized victim under random corner noise
    assert r.claimed.float().mean() - noise_success(model, x0, y, "linf", 0.3) >= 0.4
