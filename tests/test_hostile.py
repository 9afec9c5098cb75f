"""Hostile attack plugins (issue 17 item 4): each trick either fails or is caught and flagged, and no
reported number changes.

Every plugin runs the same honest search (:class:`Honest`: random sign corners of the eps-ball,
scores access) and then plays one trick on the referee. Each test shows the trick works on the raw
oracle (the tampered state it leaves, which an unguarded engine would report) and that the engine's
guard (robench/referee/guard.py) either raises a one-line RobenchError naming the attack or drops the
forged result, flags it in ``summary["integrity"]`` and reports the honest baseline's numbers.
"""
from __future__ import annotations

import gc
import sys

import pytest
import torch

import robench
from robench.attacks.base import Attack
from robench.errors import RobenchError
from robench.referee.oracle import Oracle
from robench.referee.view import OracleView

EPS, MAXQ, STEPS = 0.3, 12, 6
BUDGET = robench.Budget(norm="linf", eps=EPS, max_queries=MAXQ)
SEEN: dict = {}
NUMBERS = ("n_attacked", "n_success", "success_rate", "robust_accuracy", "mean_queries", "mean_queries_all",
           "mean_l2", "mean_linf", "total_queries")


class Honest(Attack):
    """Random sign corners of the eps-ball, one row per active sample per step."""

    access = "scores"

    @property
    def seen(self) -> dict:
        """What the trick left behind, for the test to inspect (robench.evaluate runs a copy of the instance)."""
        return SEEN.setdefault(type(self).__name__, {})

    def search(self, view, gen):
        for _ in range(STEPS):
            idx = view.active_indices()
            if len(idx) == 0:
                break
            x0 = view.x0[idx]
            s = torch.randint(0, 2, x0.shape, generator=gen, device=x0.device).float() * 2 - 1
            view.scores((x0 + view.eps * s).clamp(0, 1), idx)

    def run(self, view, gen):
        self.search(view, gen)
        self.trick(view, gen)

    def trick(self, view, gen):
        pass


def oracle_of(view) -> Oracle:
    """The oracle, dug out of the view's closure cells."""
    cells = view._OracleView__ask.__closure__
    return next(c.cell_contents for c in cells if isinstance(c.cell_contents, Oracle))


def victim_of(kind, ident) -> torch.nn.Module:
    """The victim, found by walking every object the garbage collector knows (``ident``: the test
    session may hold other instances of its class)."""
    return next(o for o in gc.get_objects() if type(o) is kind and id(o) == ident)


def run(victim, test_xy, attack, **kw):
    x, y = test_xy
    return robench.evaluate(victim, x[:8], y[:8], attack=attack, budget=BUDGET, seed=1, **kw)


@pytest.fixture(scope="module")
def baseline(victim, test_xy):
    return run(victim, test_xy, Honest())


def same_numbers(summary, base):
    for k in NUMBERS:
        a, b = summary[k], base.summary[k]
        assert a == b or (a != a and b != b), k


def test_honest_baseline_is_clean(baseline):
    s = baseline.summary
    assert s["integrity"] == {"violations": [], "n_dropped": 0, "isolate": False}
    assert s["total_queries"] > 0 and 0 < s["n_success"] < s["n_attacked"]  # some honest successes, not all


# ---------------------------------------------------------------- the view's public settings
class SetEps(Honest):
    def trick(self, view, gen):
        view.eps = 10.0


class SetMaxQueries(Honest):
    def trick(self, view, gen):
        view.max_queries = 10 ** 9


class SetAccess(Honest):
    def trick(self, view, gen):
        object.__setattr__(view, "access", "gradient")


@pytest.mark.parametrize("cls", [SetEps, SetMaxQueries, SetAccess])
def test_setting_the_views_settings_fails(victim, test_xy, cls):
    with pytest.raises(AttributeError):
        run(victim, test_xy, cls())


# ---------------------------------------------------------------- through the closure to the oracle
class ClosureEps(Honest):
    """Widens the ball on the oracle itself, then searches far outside it."""

    def trick(self, view, gen):
        o = oracle_of(view)
        o._eps = 10.0
        o._max_queries = 10 ** 6
        for _ in range(20):
            idx = o.active_indices()
            if len(idx) == 0:
                break
            o.scores(torch.rand_like(o._x0[idx]), idx)
        self.seen["success"] = int(o._success.sum())


class ClosureModel(Honest):
    """Runs the oracle's model directly: a free search."""

    def trick(self, view, gen):
        o = oracle_of(view)
        with torch.no_grad():
            for _ in range(20):
                o._model(torch.rand_like(o._x0))
        self.seen["model"] = True


class ZeroQueries(Honest):
    """Spends, zeroes the counter, spends again."""

    def trick(self, view, gen):
        o = oracle_of(view)
        spent = int(o._queries.sum())
        o._queries.zero_()
        self.search(view, gen)
        self.seen["spent"], self.seen["reported"] = spent + int(o._queries.sum()), int(o._queries.sum())


class ReplaceCriterion(Honest):
    """Every row is a success."""

    def trick(self, view, gen):
        o = oracle_of(view)
        o._criterion = lambda x, idx, pred: (torch.ones_like(idx, dtype=torch.bool),) * 2 + (torch.zeros(len(idx)),)
        o._stop_on_success = False
        view.scores(view.x0, torch.arange(view.n))
        self.seen["success"] = int(o._success.sum())


class ReplaceRecord(Honest):
    """Queries that are never booked."""

    def trick(self, view, gen):
        o = oracle_of(view)
        o._record = lambda *a, **k: None
        before = int(o._queries.sum())
        self.search(view, gen)
        self.seen["free"] = int(o._queries.sum()) == before


class PatchOracleClass(Honest):
    """Replaces the criterion for every oracle, at class level."""

    def trick(self, view, gen):
        Oracle._criterion = lambda self, x, idx, pred: (torch.ones_like(idx, dtype=torch.bool),) * 2 + (torch.zeros(len(idx)),)
        OracleView.__repr__ = lambda self: "patched"
        view.scores(view.x0[view.active_indices()], view.active_indices())  # every row now "succeeds"
        self.seen["success"] = int(oracle_of(view)._success.sum())


@pytest.mark.parametrize("cls,what", [(ClosureEps, "eps"), (ClosureModel, "rows for"), (ZeroQueries, "rows for"),
                                      (ReplaceCriterion, "_criterion"), (ReplaceRecord, "_record"),
                                      (PatchOracleClass, "Oracle._criterion")])
def test_closure_tricks_raise(victim, test_xy, baseline, cls, what):
    orig = dict(Oracle.__dict__), dict(OracleView.__dict__)
    SEEN.clear()
    atk = cls()
    with pytest.raises(RobenchError) as e:
        run(victim, test_xy, atk)
    assert atk.seen, "the trick never ran"
    msg = str(e.value)
    assert "\n" not in msg and f"attack '{cls.__name__.lower()}'" in msg and what in msg
    # the trick did work on the raw oracle: an unguarded engine would have reported it
    if "success" in atk.seen:
        assert atk.seen["success"] > baseline.summary["n_success"]
    if "spent" in atk.seen:
        assert atk.seen["reported"] < atk.seen["spent"]
    if "free" in atk.seen:
        assert atk.seen["free"]
    # class-level patches are undone
    assert dict(Oracle.__dict__) == orig[0] and dict(OracleView.__dict__) == orig[1]


# ---------------------------------------------------------------- walking Python objects
class GcModel(Honest):
    """Finds the victim through gc and searches on it, uncounted; submits only the winners."""

    def trick(self, view, gen):
        model = victim_of(self.kind, self.ident)
        with torch.no_grad():
            cand = (view.x0 + EPS * (torch.rand_like(view.x0) * 2 - 1)).clamp(0, 1)
            self.seen["direct"] = len(cand)
            self.seen["found"] = int((model(cand).argmax(1) != view.y).sum())
        view.scores(cand, torch.arange(view.n))


class FrameModel(Honest):
    """Finds the engine's model in a caller's frame."""

    def trick(self, view, gen):
        f = sys._getframe()
        while f is not None and not isinstance(f.f_locals.get("model"), self.kind):
            f = f.f_back
        with torch.no_grad():
            f.f_locals["model"](view.x0)
        self.seen["direct"] = 1


class UnhookModel(Honest):
    """Removes every forward hook on the victim before using it."""

    def trick(self, view, gen):
        model = victim_of(self.kind, self.ident)
        for m in model.modules():
            m._forward_pre_hooks.clear()
        with torch.no_grad():
            model(view.x0)
        self.seen["direct"] = 1


@pytest.mark.parametrize("cls,what", [(GcModel, "outside the oracle"), (FrameModel, "outside the oracle"),
                                      (UnhookModel, "removed the victim's forward hook")])
def test_direct_model_use_raises(victim, test_xy, cls, what):
    SEEN.clear()
    atk = cls()
    atk.kind, atk.ident = type(victim), id(victim)
    with pytest.raises(RobenchError, match=what):
        run(victim, test_xy, atk)
    assert atk.seen["direct"] >= 1


class GcForgeSuccess(Honest):
    """Finds the Oracle through gc and forges successes in its state: for each sample the honest search
    missed, its best point becomes another class's clean image, and the oracle's own copy of the clean
    image is edited to match (so the oracle's re-check, which measures from it, confirms the forgery)."""

    def trick(self, view, gen):
        o = next(ob for ob in gc.get_objects() if type(ob) is Oracle and not ob._finalized)
        y = o._y
        forged = []
        for i in (~o._success).nonzero().flatten().tolist():
            j = int((y != y[i]).nonzero()[0])
            o._best_x[i] = o._x0[j]
            o._x0[i] = o._x0[j]
            o._best_dist[i] = 0.0
            o._success[i] = True
            o._queries_at_success[i] = 1
            forged.append(i)
        self.seen["forged"] = forged


def test_forged_success_is_dropped_and_flagged(victim, test_xy, baseline):
    SEEN.clear()
    atk = GcForgeSuccess()
    res = run(victim, test_xy, atk)
    s = res.summary
    assert atk.seen["forged"]  # the trick found misses to forge
    # the oracle itself was fooled: its result claimed them
    flagged = sorted(v["index"] for v in s["integrity"]["violations"])
    assert flagged == sorted(atk.seen["forged"]) and s["integrity"]["n_dropped"] == len(flagged)
    same_numbers(s, baseline)
    r = res.records.set_index("index")
    assert not r.loc[flagged, "success"].any() and r.loc[flagged, "recheck_failed"].all()


# ---------------------------------------------------------------- isolate=true
def test_isolated_attack_finds_no_victim(victim, test_xy):
    atk = GcModel()
    atk.kind, atk.ident = type(victim), id(victim)
    with pytest.raises(RobenchError, match="failed in its isolated process: StopIteration"):
        run(victim, test_xy, atk, isolate=True)


def test_isolated_honest_run_matches(victim, test_xy, baseline):
    res = run(victim, test_xy, Honest(), isolate=True)
    assert res.summary["integrity"]["isolate"] is True
    same_numbers(res.summary, baseline)
    cols = ["success", "queries", "queries_at_success", "l2", "linf"]
    assert res.records[cols].fillna(-1).equals(baseline.records[cols].fillna(-1))
