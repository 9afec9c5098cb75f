"""The seeds' attacks of issue 29 (L-BFGS, FD-FGSM, AutoZOOM, the substitute-model attack) on a tiny trained
victim (an MLP on the embedded MNIST subset, trained in about a second: a CNN's forward passes would cost
these query-hungry attacks several seconds each): each succeeds where random noise of the same size fails,
within budget; query counts are checked independently of the oracle (the victim's rows, counted by a
wrapper). The plugin contract (robench.testing.check_attack) runs on each in tests/test_contract.py."""
import pytest
import torch

from robench.attacks.base import AttackContext, ClassImages
from robench.attacks.composite.substitute import Substitute
from robench.attacks.score.autozoom import AutoZOOM, train_codec
from robench.attacks.score.fd_fgsm import FDFGSM
from robench.attacks.score.noise import RandomNoise
from robench.attacks.whitebox.lbfgs import LBFGS
from robench.errors import RobenchError
from robench.geometry import distortion
from robench.referee.oracle import Oracle
from tests.test_oracle import CountingModel
from tests.test_score_attacks import CallLog, certified, targets_for

N = 24  # images per case: rates below are over 24 samples, margins several samples wide


@pytest.fixture(scope="module")
def mlp(splits):
    """(model, x, y): 784-64-10 MLP, 300 Adam steps on 2,000 training images; the first N correct test images."""
    from robench.data import eval_slice

    x = torch.stack([splits.train[i][0] for i in range(2000)])
    y = torch.tensor([int(splits.train[i][1]) for i in range(2000)])
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        i = torch.randint(0, len(x), (64,), generator=g)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[i]), y[i]).backward()
        opt.step()
    model.eval()
    _, xe, ye = eval_slice(splits, 80)
    with torch.no_grad():
        ok = model(xe).argmax(1) == ye
    assert int(ok.sum()) >= N
    return model, xe[ok][:N], ye[ok][:N]


def _run(attack, model, x, y, *, access, norm, eps, max_queries, targets=None, seed=0, stop=True):
    o = Oracle(model, x, y, access=access, norm=norm, eps=eps, max_queries=max_queries, targets=targets,
               stop_on_success=stop, num_classes=10)
    attack.run(o.view(), torch.Generator().manual_seed(seed))
    if hasattr(model, "enabled"):
        model.enabled = False
    return o.finalize()


def _rate(r):
    return r.success.float().mean().item()


def _noise_rate(model, x, y, norm, eps, queries, targets=None):
    return _rate(_run(RandomNoise(), model, x, y, access="scores", norm=norm, eps=eps, max_queries=queries, targets=targets))


# ---------------------------------------------------------------- L-BFGS
def test_lbfgs_targeted_minimal_distortion_beats_noise_of_the_same_size(mlp):
    model, x0, y = mlp
    t = targets_for(y)
    m = CountingModel(model, x0)
    r = _run(LBFGS(search_steps=3, max_iter=15), m, x0, y, access="gradient", norm="l2", eps=None, max_queries=100,
             targets=t, stop=False)
    assert _rate(r) >= 0.8, _rate(r)
    certified(model, x0, y, r, "l2", float("inf"), targets=t)
    # counts, independently: every evaluation is one gradient row per sample (targeted: no other query)
    assert torch.equal(m.per_sample, r.queries) and torch.equal(r.grad_queries, r.queries) and (r.queries <= 100).all()
    # Gaussian noise of each success's own L2 size, 20 draws each, almost never hits the target
    s = r.success
    d = distortion(r.best_x[s] - x0[s], "l2")
    g = torch.Generator().manual_seed(0)
    hits = 0
    for _ in range(20):
        n = torch.randn(x0[s].shape, generator=g)
        n = n / n.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * d.view(-1, 1, 1, 1)
        with torch.no_grad():
            hits += int((model((x0[s] + n).clamp(0, 1)).argmax(1) == t[s]).sum())
    assert hits / (20 * int(s.sum())) <= 0.05
    # untargeted, Linf budget as L-BFGS-B bounds: one logits query per sample besides the gradient rows
    m = CountingModel(model, x0)
    r = _run(LBFGS(search_steps=2, max_iter=10), m, x0, y, access="gradient", norm="linf", eps=0.1, max_queries=60,
             stop=False)
    certified(model, x0, y, r, "linf", 0.1)
    assert _rate(r) >= 0.6 and _noise_rate(model, x0, y, "linf", 0.1, 60) <= 0.1
    assert torch.equal(m.per_sample, r.queries) and torch.equal(r.queries - r.grad_queries, torch.ones(N, dtype=torch.long))
    with pytest.raises(RobenchError, match="initial_const"):
        LBFGS(initial_const=0)


# ---------------------------------------------------------------- FD-FGSM
def test_fd_fgsm_beats_noise_with_2d_plus_1_queries(mlp):
    model, x0, y = mlp
    m = CallLog(model, x0)
    r = _run(FDFGSM(), m, x0, y, access="scores", norm="linf", eps=0.1, max_queries=2000)
    certified(model, x0, y, r, "linf", 0.1)
    d = 28 * 28
    assert (r.queries == 2 * d + 1).all() and torch.equal(m.per_sample, r.queries) and sum(m.calls) == N * (2 * d + 1)
    base = _noise_rate(model, x0, y, "linf", 0.1, 2 * d + 1)
    assert _rate(r) >= 0.6 and base <= 0.1, (_rate(r), base)
    # a smaller budget: (21 - 1) // 2 = 10 random coordinates, then the step
    x6, y6 = x0[:6], y[:6]
    m = CallLog(model, x6)
    r = _run(FDFGSM(coords_per_call=4), m, x6, y6, access="scores", norm="linf", eps=0.1, max_queries=21)
    assert (r.queries == 21).all() and torch.equal(m.per_sample, r.queries)
    assert m.calls == [6 * 8, 6 * 8, 6 * 4, 6]
    t = targets_for(y6)
    r = _run(FDFGSM(loss="ce"), model, x6, y6, access="scores", norm="l2", eps=2.0, max_queries=201, targets=t)
    certified(model, x6, y6, r, "l2", 2.0, targets=t)
    with pytest.raises(RobenchError, match="delta"):
        FDFGSM(delta=0)


# ---------------------------------------------------------------- AutoZOOM
def test_autozoom_ae_beats_noise_and_counts(mlp, splits):
    """AutoZOOM-AE with a codec trained briefly (1,000 images, 2 epochs at lr 1e-2; the shipped training is
    the attack's prepare(), run by the contract test), then AutoZOOM-BiLIN."""
    model, x0, y = mlp
    codec = train_codec(ClassImages(splits.train).sample(1000, torch.Generator().manual_seed(0)), 1, "relu", 2, 0, lr=1e-2)
    a = AutoZOOM()
    a.set_codec(codec)
    m = CallLog(model, x0)
    r = _run(a, m, x0, y, access="scores", norm="linf", eps=0.2, max_queries=300)
    certified(model, x0, y, r, "linf", 0.2)
    base = _noise_rate(model, x0, y, "linf", 0.2, 300)
    assert _rate(r) >= 0.4 and _rate(r) - base >= 0.25, (_rate(r), base)
    # q + 1 rows per sample per iteration, one call each
    assert m.calls[0] == N * 2 and sum(m.calls) == int(r.queries.sum()) and torch.equal(m.per_sample, r.queries)
    q5 = AutoZOOM(q=5)
    q5.set_codec(codec)
    m = CallLog(model, x0[:4])
    r = _run(q5, m, x0[:4], y[:4], access="scores", norm="linf", eps=0.01, max_queries=18)
    assert m.calls == [4 * 6] * 3 and (r.queries == 18).all()
    t = targets_for(y)
    r = _run(AutoZOOM(codec="bilinear", resize=7), model, x0, y, access="scores", norm="l2", eps=3.0, max_queries=300,
             targets=t)
    certified(model, x0, y, r, "l2", 3.0, targets=t)
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


def test_substitute_beats_noise_at_the_same_label_budget(mlp, splits):
    model, x0, y = mlp
    a = Substitute(seed_size=30, rounds=4, epochs=4, train_batch_size=32)
    a.prepare(AttackContext(class_images=ClassImages(splits.train)))
    m = RowCounter(model)
    r = _run(a, m, x0, y, access="label", norm="linf", eps=0.3, max_queries=20)
    certified(model, x0, y, r, "linf", 0.3)
    st = a.summary_extra()["substitute"]
    # 30 seeds doubled 3 times: 240 labels, charged round robin (10 per sample) + 1 transfer query each
    assert st["training_labels"] == 240 and st["training_labels_per_sample"] == 10 and st["transferred"] == N
    assert m.rows == 240 + N == int(r.queries.sum()) and (r.queries == 11).all() and (r.grad_queries == 0).all()
    assert st["substitute_agreement"] >= 0.8
    base = _noise_rate(model, x0, y, "linf", 0.3, 20)
    assert _rate(r) >= 0.25 and _rate(r) - base >= 0.15, (_rate(r), base)


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
