"""The attack contract, over every registered attack (plugins included: the list is the registry's).

Each attack runs through the engine (robench/evaluation/engine.py) on 3 correctly classified images of the session
victim with a tiny budget, behind a model wrapper that sees every row the victim evaluates. The contract:

* the budget is never exceeded, and every row the victim evaluated during the attack is a counted query;
* no answer above the declared access level (the oracle view raises AccessError);
* every queried row lies in [0, 1];
* the same seed gives the same records;
* a subset of the samples (some rows not attacked) works;
* every reported success is certified: the best point is misclassified, in [0, 1] and inside the ball.

The setup an attack needs comes from its declared attributes (``requires``, ``eps_policy``), not from
its name; constructor parameters from its shipped config (configs/attack/<name>.yaml), as the CLI composes them.
Deliberately broken attacks at the bottom show the checks catch what they claim to.
"""
from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import OmegaConf

from robench.attacks.base import Attack, AttackContext, ClassImages
from robench.evaluation.engine import Plan, Referee, prepare_attack, run_all
from robench.geometry import distortion
from robench.referee.types import AccessError
from robench.registry import ATTACKS, instantiate

MAX_QUERIES, EPS, TOL = 20, 0.3, 1e-5


class Watched(torch.nn.Module):
    """The victim behind a counter: rows evaluated while ``on``, and any row outside [0, 1]."""

    def __init__(self, model):
        super().__init__()
        self.model, self.on, self.rows, self.out_of_box = model, False, 0, 0

    def forward(self, x):
        if self.on:
            self.rows += x.shape[0]
            self.out_of_box += int(((x < -TOL) | (x > 1 + TOL)).flatten(1).any(1).sum())
        return self.model(x)


class Counted(Attack):
    """Runs an attack with the watcher switched on (the oracle's final re-check is not a query)."""

    def __init__(self, inner, watcher):
        self.inner, self.watcher = inner, watcher
        self.access, self.minimizes_distortion = inner.access, inner.minimizes_distortion

    def run(self, oracle, generator):
        self.watcher.on = True
        try:
            self.inner.run(oracle, generator)
        finally:
            self.watcher.on = False


def shipped_params(name: str) -> dict:
    from robench.config import config_dirs

    for d in config_dirs():
        f = d / "attack" / f"{name}.yaml"
        if f.exists():
            return OmegaConf.to_container(OmegaConf.load(f), resolve=True).get("params") or {}
    return {}


def setup_for(attack, victim, splits) -> tuple[dict, float | None]:
    """The context and eps an attack's declared attributes call for (the capability table)."""
    needs = {"class_images": lambda: {"class_images": ClassImages(splits.train)},
             "surrogate": lambda: {"load_surrogate": lambda spec: (copy.deepcopy(victim), "victim copy", "-")}}
    ctx = {}
    for r in getattr(attack, "requires", ()):
        ctx.update(needs[r]())
    eps = {"any": EPS, "finite": EPS, "null": None}[getattr(attack, "eps_policy", "any")]
    return ctx, eps


def run_once(make, victim, splits, x, y, attacked, seed=0):
    attack = make()
    ctx, eps = setup_for(attack, victim, splits)
    prepare_attack(attack, AttackContext(device=torch.device("cpu"), **ctx))
    watcher = Watched(victim)
    referee = Referee(access=attack.access, norm="linf", eps=eps, max_queries=MAX_QUERIES, num_classes=10,
                      stop_on_success=not attack.minimizes_distortion)
    outs = run_all(Counted(attack, watcher), watcher, Plan.contiguous(x, y, None, attacked, 8, seed), referee, "cpu")
    return outs, watcher, eps


def check_contract(make, victim, splits, x, y):
    n = len(y)
    outs, watcher, eps = run_once(make, victim, splits, x, y, torch.ones(n, dtype=torch.bool))
    res = outs[0].result
    assert watcher.out_of_box == 0, f"{watcher.out_of_box} queried rows outside [0, 1]"
    assert int(res.queries.max()) <= MAX_QUERIES, f"budget exceeded: {res.queries.tolist()}"
    assert watcher.rows == int(res.queries.sum()), f"victim evaluated {watcher.rows} rows, oracle counted {int(res.queries.sum())}"
    with torch.no_grad():
        pred = victim(res.best_x).argmax(1)
    for j in res.success.nonzero().flatten().tolist():  # every success certified by a fresh look
        assert pred[j] != y[j], f"sample {j}: success reported but the best point is classified as its label"
        assert 0 <= float(res.best_x[j].min()) and float(res.best_x[j].max()) <= 1
        if eps is not None:
            assert float(distortion((res.best_x[j] - x[j])[None], "linf")) <= eps + TOL
    again, _, _ = run_once(make, victim, splits, x, y, torch.ones(n, dtype=torch.bool))
    r2 = again[0].result
    for k in ("success", "queries", "grad_queries", "queries_at_success", "best_x"):
        assert torch.equal(getattr(res, k), getattr(r2, k)), f"same seed, different {k}"
    subset = torch.tensor([True, False, True])
    sub, w3, _ = run_once(make, victim, splits, x, y, subset)
    assert sub[0].rows.tolist() == [0, 2] and w3.out_of_box == 0
    assert int(sub[0].result.queries.max()) <= MAX_QUERIES and w3.rows == int(sub[0].result.queries.sum())


@pytest.fixture(scope="module")
def three(test_xy):
    x, y = test_xy
    return x[:3], y[:3]


@pytest.mark.parametrize("name", ATTACKS.names())
def test_contract(name, victim, splits, three):
    check_contract(lambda: instantiate(ATTACKS, name, shipped_params(name), "attack"), victim, splits, *three)


# ---------------------------------------------------------------------- broken attacks the contract catches
class OutOfBox(Attack):
    access = "label"

    def run(self, oracle, generator):
        oracle.labels(oracle.x0 + 0.5)  # not clipped to [0, 1]


class Unseeded(Attack):
    access = "label"

    def run(self, oracle, generator):
        x0, k = oracle.x0, torch.randint(1, 30, (oracle.n,))  # the global RNG, not the generator
        idx = torch.repeat_interleave(torch.arange(oracle.n), k)
        oracle.labels(x0[idx], idx)  # a random number of (clean, never adversarial) queries per sample


class AboveItsLevel(Attack):
    access = "label"

    def run(self, oracle, generator):
        oracle.scores(oracle.x0)


class RaisesItsBudget(Attack):
    access = "label"

    def run(self, oracle, generator):
        oracle.max_queries = 10 ** 9


class ClaimsWithoutQuerying(Attack):
    """Tries to report a success itself: the oracle's records do not move."""
    access = "label"

    def run(self, oracle, generator):
        oracle.success[:] = True


@pytest.mark.parametrize("broken,error,match", [
    (OutOfBox, AssertionError, "outside"), (Unseeded, AssertionError, "same seed"),
    (AboveItsLevel, AccessError, "scores-level"), (RaisesItsBudget, AttributeError, "read-only")])
def test_contract_catches_a_broken_attack(monkeypatch, broken, error, match, victim, splits, three):
    monkeypatch.setitem(ATTACKS._items, "broken", broken)
    assert "broken" in ATTACKS.names()
    with pytest.raises(error, match=match):
        check_contract(lambda: instantiate(ATTACKS, "broken", {}, "attack"), victim, splits, *three)


def test_a_claim_is_not_a_success(victim, splits, three):
    outs, _, _ = run_once(ClaimsWithoutQuerying, victim, splits, *three, torch.ones(3, dtype=torch.bool))
    assert not bool(outs[0].result.success.any())
