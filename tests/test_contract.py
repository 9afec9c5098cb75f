"""The attack contract (robench/testing.py), over every registered attack (plugins included: the list is
the registry's), on 3 correctly classified images of the session victim with a tiny budget, and on 3
signals of a tiny 1-D victim over [-1, 1] for every attack that declares the ``NCT`` layout: budget never
exceeded, every evaluated row counted, no answer above the access level, every queried row in the box,
same seed same records, subsets work, every success certified, and the declarations (``norms``,
``eps_policy``, ``layouts``) true. Deliberately broken attacks at the bottom show the checks catch what
they claim to.
"""
from __future__ import annotations

import pytest
import torch

from robench.attacks.base import Attack
from robench.referee.types import AccessError
from robench.registry import ATTACKS, instantiate
from robench.testing import check_attack, check_once, contract_params, run_once, tiny_signal_victim


@pytest.fixture(scope="module")
def three(test_xy):
    x, y = test_xy
    return x[:3], y[:3]


@pytest.fixture(scope="module")
def signal():
    return tiny_signal_victim()


@pytest.mark.parametrize("name", ATTACKS.names())
def test_contract(name, victim, splits, three, signal):
    check_attack(lambda: instantiate(ATTACKS, name, contract_params(name), "attack"), victim, *three,
                 train=splits.train, signal=signal)


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
        check_once(lambda: instantiate(ATTACKS, "broken", {}, "attack"), victim, *three, norm="linf", eps=0.3)


def test_a_claim_is_not_a_success(victim, splits, three):
    outs, _ = run_once(ClaimsWithoutQuerying, victim, *three, torch.ones(3, dtype=torch.bool))
    assert not bool(outs[0].result.success.any())


class PGDWithoutEps(Attack):
    """Declares it runs without an eps-ball (``any``) but needs one: the contract's eps=None run fails."""

    access = "gradient"

    def run(self, oracle, generator):
        idx = oracle.active_indices()
        oracle.labels((oracle.x0[idx] + oracle.eps).clamp(0, 1), idx)


def test_contract_catches_a_false_declaration(victim, splits, three):
    with pytest.raises(TypeError):
        check_attack(PGDWithoutEps, victim, *three, train=splits.train)
