"""The seeds' attacks of issue 29 (L-BFGS, FD-FGSM, AutoZOOM, the substitute-model attack) on the trained tiny
victim: each succeeds where random noise of the same size fails, within budget; query counts are checked
independently of the oracle (the victim's rows, counted by a wrapper)."""
import pytest
import torch

from robench.attacks.base import AttackContext, ClassImages
from robench.attacks.composite.substitute import Substitute
from robench.attacks.score.autozoom import AutoZOOM
from robench.attacks.score.fd_fgsm import FDFGSM
from robench.attacks.score.noise import RandomNoise
from robench.attacks.whitebox.lbfgs import LBFGS
from robench.errors import RobenchError
from robench.geometry import distortion
from robench.referee.oracle import Oracle
from tests.test_oracle import CountingModel
from tests.test_score_attacks import CallLog, certified, targets_for


def _run(attack, model, x, y, *, access, norm, eps, max_queries, targets=None, seed=0, stop=True):
    o = Oracle(model, x, y, access=access, norm=norm, eps=eps, max_queries=max_queries, targets=targets,
               stop_on_success=stop, num_classes=10)
    attack.run(o.view(), torch.Generator().manual_seed(seed))
    if hasattr(model, "enabled"):
        model.enabled = False
    return o.finalize()


def _rate(r):
    return r.success.float().mean().item()


def _noise_rate(victim, x, y, norm, eps, queries, targets=None):
    return _rate(_run(RandomNoise(), victim, x, y, access="scores", norm=norm, eps=eps, max_queries=queries, targets=targets))


# ---------------------------------------------------------------- L-BFGS
def test_lbfgs_targeted_minimal_distortion_beats_noise_of_the_same_size(victim, test_xy):
    x0, y = test_xy[0][:12], test_xy[1][:12]
    t = targets_for(y)
    m = CountingModel(victim, x0)
    r = _run(LBFGS(search_steps=4, max_iter=30), m, x0, y, access="gradient", norm="l2", eps=None, max_queries=400,
             targets=t, stop=False)
    assert _rate(r) >= 0.8, _rate(r)
    certified(victim, x0, y, r, "l2", float("inf"), targets=t)
    # counts, independently: every evaluation is one gradient row per sample (targeted: no other query)
    assert torch.equal(m.per_sample, r.queries) and torch.equal(r.grad_queries, r.queries) and (r.queries <= 400).all()
    # Gaussian noise of each success's own L2 size, 20 draws each, almost never hits the target
    s = r.success
    d = distortion(r.best_x[s] - x0[s], "l2")
    g = torch.Generator().manual_seed(0)
    hits = 0
    for _ in range(20):
        n = torch.randn(x0[s].shape, generator=g)
        n = n / n.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * d.view(-1, 1, 1, 1)
        with torch.no_grad():
            hits += int((victim((x0[s] + n).clamp(0, 1)).argmax(1) == t[s]).sum())
    assert hits / (20 * int(s.sum())) <= 0.05


def test_lbfgs_search_over_c_and_eps_bounded(victim, test_xy):
    x0, y = test_xy[0][:12], test_xy[1][:12]
    # one stage (c fixed at initial_const) vs the search: the search only lowers the distortion it returns
    one = _run(LBFGS(search_steps=1, max_iter=30), victim, x0, y, access="gradient", norm="l2", eps=None,
               max_queries=400, stop=False)
    four = _run(LBFGS(search_steps=4, max_iter=30), victim, x0, y, access="gradient", norm="l2", eps=None,
                max_queries=400, stop=False)
    both = one.success & four.success
    assert int(both.sum()) >= 8
    d1, d4 = (distortion(r.best_x[both] - x0[both], "l2") for r in (one, four))
    assert float(d4.median()) <= float(d1.median()) + 1e-4
    # untargeted: one logits query per sample besides the gradient rows; Linf budget as L-BFGS-B bounds
    m = CountingModel(victim, x0)
    r = _run(LBFGS(search_steps=3, max_iter=20), m, x0, y, access="gradient", norm="linf", eps=0.3, max_queries=300,
             stop=False)
    certified(victim, x0, y, r, "linf", 0.3)
    assert _rate(r) >= 0.7 and _noise_rate(victim, x0, y, "linf", 0.3, 300) <= 0.2
    assert torch.equal(m.per_sample, r.queries) and torch.equal(r.queries - r.grad_queries, torch.ones(12, dtype=torch.long))


def test_lbfgs_bad_params():
    with pytest.raises(RobenchError, match="initial_const"):
        LBFGS(initial_const=0)
    with pytest.raises(RobenchError, match="search_steps"):
        LBFGS(search_steps=0)


# ---------------------------------------------------------------- FD-FGSM
def test_fd_fgsm_beats_noise_with_2d_plus_1_queries(victim, test_xy):
    x0, y = test_xy[0][:12], test_xy[1][:12]
    m = CallLog(victim, x0)
    r = _run(FDFGSM(), m, x0, y, access="scores", norm="linf", eps=0.3, max_queries=2000)
    certified(victim, x0, y, r, "linf", 0.3)
    d = 28 * 28
    assert (r.queries == 2 * d + 1).all() and torch.equal(m.per_sample, r.queries) and sum(m.calls) == 12 * (2 * d + 1)
    base = _noise_rate(victim, x0, y, "linf", 0.3, 2 * d + 1)
    assert _rate(r) >= 0.35 and _rate(r) - base >= 0.25, (_rate(r), base)


def test_fd_fgsm_small_budget_l2_and_targeted(victim, test_xy):
    x0, y = test_xy[0][:6], test_xy[1][:6]
    m = CallLog(victim, x0)
    r = _run(FDFGSM(coords_per_call=4), m, x0, y, access="scores", norm="linf", eps=0.3, max_queries=21)
    assert (r.queries == 21).all() and torch.equal(m.per_sample, r.queries)  # 10 coordinates, then the step
    assert m.calls == [6 * 8, 6 * 8, 6 * 4, 6]
    t = targets_for(y)
    for norm, eps, loss in (("l2", 2.0, "ce"), ("linf", 0.3, "margin")):
        r = _run(FDFGSM(loss=loss), victim, x0, y, access="scores", norm=norm, eps=eps, max_queries=201, targets=t)
        certified(victim, x0, y, r, norm, eps, targets=t)
        assert (r.queries == 201).all()
    with pytest.raises(RobenchError, match="delta"):
        FDFGSM(delta=0)


# ---------------------------------------------------------------- AutoZOOM
@pytest.fixture(scope="module")
def autozoom(splits):
    """AutoZOOM with the shipped settings: its autoencoder trained on the 4,000 training images (once per process)."""
    a = AutoZOOM()
    a.prepare(AttackContext(class_images=ClassImages(splits.train)))
    return a


def test_autozoom_ae_beats_noise_and_counts(autozoom, victim, test_xy):
    assert autozoom.stats["ae_images"] == 4000 and autozoom.stats["ae_train_mse"] < 0.02
    x0, y = test_xy[0][:12], test_xy[1][:12]
    m = CallLog(victim, x0)
    r = _run(autozoom, m, x0, y, access="scores", norm="linf", eps=0.3, max_queries=600)
    certified(victim, x0, y, r, "linf", 0.3)
    base = _noise_rate(victim, x0, y, "linf", 0.3, 600)
    assert _rate(r) >= 0.4 and _rate(r) - base >= 0.25, (_rate(r), base)
    assert m.calls[0] == 12 * 2 and sum(m.calls) == int(r.queries.sum()) and torch.equal(m.per_sample, r.queries)


def test_autozoom_averaged_estimate_bilinear_and_targeted(autozoom, victim, test_xy):
    x0, y = test_xy[0][:4], test_xy[1][:4]
    q5 = AutoZOOM(q=5)
    q5.set_codec(autozoom.codec)
    m = CallLog(victim, x0)
    r = _run(q5, m, x0, y, access="scores", norm="linf", eps=0.02, max_queries=18)
    assert m.calls == [4 * 6] * 3 and (r.queries == 18).all()          # q + 1 rows per sample per iteration
    t = targets_for(y)
    for a, norm, eps in ((AutoZOOM(codec="bilinear", resize=14), "l2", 3.0), (q5, "linf", 0.3)):
        r = _run(a, victim, x0, y, access="scores", norm=norm, eps=eps, max_queries=300, targets=t)
        certified(victim, x0, y, r, norm, eps, targets=t)
    with pytest.raises(RobenchError, match="codec=bilinear"):
        AutoZOOM().prepare(AttackContext())
    with pytest.raises(RobenchError, match="resize"):
        AutoZOOM(codec="bilinear")


# ---------------------------------------------------------------- the substitute-model attack
class RowCounter(torch.nn.Module):
    """Every row the victim evaluates (training queries are far from the attacked images: no owner by distance)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.rows, self.enabled = model, 0, True

    def forward(self, x):
        if self.enabled:
            self.rows += len(x)
        return self.model(x)


def test_substitute_beats_noise_at_the_same_label_budget(victim, test_xy, splits):
    x0, y = test_xy[0][:40], test_xy[1][:40]
    a = Substitute(seed_size=50, rounds=4, epochs=5, train_batch_size=32)
    a.prepare(AttackContext(class_images=ClassImages(splits.train)))
    m = RowCounter(victim)
    r = _run(a, m, x0, y, access="label", norm="linf", eps=0.3, max_queries=12)
    certified(victim, x0, y, r, "linf", 0.3)
    st = a.summary_extra()["substitute"]
    # 50 seeds doubled 3 times: 400 labels, charged round robin (10 per sample) + 1 transfer query each
    assert st["training_labels"] == 400 and st["training_labels_per_sample"] == 10 and st["transferred"] == 40
    assert m.rows == 440 == int(r.queries.sum()) and (r.queries == 11).all() and (r.grad_queries == 0).all()
    assert st["substitute_agreement"] >= 0.8
    base = _noise_rate(victim, x0, y, "linf", 0.3, 12)
    assert _rate(r) >= 0.1 and _rate(r) - base >= 0.08, (_rate(r), base)


def test_substitute_budget_cap_and_bad_config(victim, test_xy, splits):
    x0, y = test_xy[0][:5], test_xy[1][:5]
    a = Substitute(seed_size=20, rounds=6, epochs=1)
    a.prepare(AttackContext(class_images=ClassImages(splits.train)))
    r = _run(a, victim, x0, y, access="label", norm="linf", eps=0.3, max_queries=9)
    # 5 samples x 8 affordable labels = 40: S_0 (20) and 20 of S_1's 20 new points, then the transfer query
    assert a.summary_extra()["substitute"]["training_labels"] == 40 and (r.queries == 9).all()
    o = Oracle(victim, x0, y, access="label", norm="l2", eps=None, max_queries=10, num_classes=10)
    with pytest.raises(RobenchError, match="budget.eps"):
        a.run(o.view(), torch.Generator())
    with pytest.raises(RobenchError, match="white-box"):
        Substitute(attack={"name": "noise"})
    with pytest.raises(RobenchError, match="unknown substitute key"):
        Substitute(substitute={"modle": "small_cnn"})
    with pytest.raises(RobenchError, match="training split"):
        Substitute().prepare(AttackContext())
