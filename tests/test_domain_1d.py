"""Inputs beyond [0, 1] images (issue 26 item 5): a tiny 1-D victim over N x 1 x T signals in [-1, 1] is
attacked by a white-box (PGD), a score-based (Square) and a hard-label (Sign-OPT) attack through
``robench.evaluate``. Each succeeds far more often than random noise of the same size, every row the
victim evaluates lies in [-1, 1], and the oracle's counts equal the rows an independent wrapper saw."""
from __future__ import annotations

import pytest
import torch

import robench
from robench.domain import AUDIO
from robench.geometry import distortion
from robench.testing import signal_data, tiny_signal_victim


class Counting(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.rows, self.outside = model, 0, 0

    def forward(self, x):
        self.rows += x.shape[0]
        self.outside += int(((x < -1 - 1e-6) | (x > 1 + 1e-6)).flatten(1).any(1).sum())
        return self.model(x)


@pytest.fixture(scope="module")
def sig():
    model, _, _, _ = tiny_signal_victim()
    x, y = signal_data(n_per_class=40, seed=1)  # held-out draws of the same classes
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    return model, x[ok][:24], y[ok][:24]


def noise_rate(model, x, y, norm, eps, trials=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    hit = torch.zeros(len(y), dtype=torch.bool)
    with torch.no_grad():
        for _ in range(trials):
            if norm == "linf":
                d = (torch.randint(0, 2, x.shape, generator=g) * 2 - 1).float() * eps
            else:
                d = torch.randn(x.shape, generator=g)
                d = d / d.flatten(1).norm(dim=1).view(-1, 1, 1) * eps
            hit |= model((x + d).clamp(-1, 1)).argmax(1) != y
    return hit.float().mean().item()


@pytest.mark.parametrize("attack,budget,params", [
    ("pgd", robench.Budget("linf", 0.25, max_queries=100), {"steps": 20}),  # measured: 1.00 / 0.88 / 0.62 success
    ("square", robench.Budget("linf", 0.25, max_queries=300), {"p_init": 0.3}),  # intervals of 30% of the signal
    ("signopt", robench.Budget("l2", 5.0, max_queries=1500), {"q": 20, "n_init": 20}),
])
@pytest.mark.slow
def test_attacks_on_a_1d_victim_over_minus_one_one(sig, attack, budget, params):
    model, x, y = sig
    if attack == "signopt":  # the slowest per query: 12 signals keep it to seconds
        x, y = x[:12], y[:12]
    counted = Counting(model)
    res = robench.evaluate(counted, x, y, attack=attack, budget=budget, seed=0, domain=AUDIO, **params)
    s, r = res.summary, res.records
    assert counted.outside == 0  # every row the victim saw lies in [-1, 1]
    # the oracle's counts vs an independent wrapper: clean predictions (1 pass), preflight (3 passes of 8),
    # then every query, plus the end-of-batch re-check of each success the oracle saw and the referee's
    # independent check of each adversarial point it reports
    finalize = int((r.success.astype(bool) | r.recheck_failed.astype(bool)).sum())
    extra = len(y) + 3 * min(8, len(y)) + finalize + int(r.l2.notna().sum())
    assert counted.rows == s["total_queries"] + extra, (counted.rows, s["total_queries"], extra)
    assert (r.queries <= budget.max_queries).all()
    base = noise_rate(model, x, y, budget.norm.value, budget.eps)
    assert s["success_rate"] >= 0.5 and s["success_rate"] >= base + 0.3, (s["success_rate"], base)
    ok = torch.tensor(r.success.to_numpy(copy=True), dtype=torch.bool)
    adv = res.adversarial[ok]
    assert adv.min() >= -1 and adv.max() <= 1
    d = distortion(adv - x[ok], budget.norm.value)
    assert (d <= budget.eps + 1e-5).all()


def test_an_image_only_attack_is_refused_on_signals(sig):
    model, x, y = sig
    with pytest.raises(robench.RobenchError, match="guessing_smart works on images"):
        robench.evaluate(model, x, y, attack="guessing_smart", budget=robench.Budget("l2", None), domain=AUDIO)
