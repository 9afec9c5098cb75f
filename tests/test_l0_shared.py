"""The L0 attacks (jsma, one_pixel, sparse_rs) and the shared-perturbation protocol (uap, patch) on a small MLP
trained at module setup (seconds; the CLI tests use the committed cw_mnist victim): each succeeds clearly more often than random noise of the same
size (the `noise` baseline at the same L0 count, or one uniform draw in the same Linf ball), within its budget,
with the rows the victim evaluated counted independently (robench.testing.Watched) and equal to the oracle's
queries. Margins are wide and taken over 30 to 100 images: no assertion depends on the last bits of weights
trained during the session."""
from __future__ import annotations

import json
import types

import pandas as pd
import pytest
import torch

import robench
from robench.errors import RobenchError
from robench.evaluation.engine import Plan, Referee, run_all
from robench.attacks.universal.base import SharedAttack, SharedPerturbation, paste
from robench.evaluation.shared import ApplyShared, run_build, select_build_set
from robench.registry import ATTACKS, instantiate
from robench.testing import Counted, Watched, check_devices, run_once
from tests.conftest import run_cli


def _run(name, params, victim, x, y, *, norm, eps, max_queries, targets=None, seed=0):
    """The attack through the engine behind a counting victim: (success rate, queries per sample, rows counted)."""
    outs, w = run_once(lambda: instantiate(ATTACKS, name, params, "attack"), victim, x, y,
                       torch.ones(len(y), dtype=torch.bool), norm=norm, eps=eps, seed=seed, max_queries=max_queries)
    succ = torch.cat([o.result.success for o in outs])
    q = torch.cat([o.result.queries for o in outs])
    assert w.rows == int(q.sum()), f"{name}: the victim evaluated {w.rows} rows, the oracle counted {int(q.sum())}"
    assert w.out_of_box == 0 and int(q.max()) <= max_queries
    for o in outs:  # every success inside the L0 ball, judged again here
        d = (o.result.best_x - x[o.rows]).abs().amax(1).flatten(1).gt(1e-6).sum(1)
        assert bool((d[o.result.success] <= eps).all())
    return float(succ.float().mean()), q


@pytest.fixture(scope="module")
def mlp(splits):
    """A small MLP as robench.testing.tiny_victim trains it (seconds; its forward pass is cheap enough for a
    few thousand queries per image) and up to 300 correctly classified test images, lowest clean margin first."""
    from robench.data import eval_slice
    from robench.testing import _fit

    xs, ys = zip(*(splits.train[i][:2] for i in range(2000)))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    _fit(model, torch.stack(xs).float(), torch.as_tensor(ys), 300, 3e-3, 0)
    _, x, y = eval_slice(splits, 400)
    with torch.no_grad():
        lg = model(x)
    ok = lg.argmax(1) == y
    x, y, lg = x[ok][:300], y[ok][:300], lg[ok][:300]
    margin = lg.gather(1, y[:, None]).squeeze(1) - lg.scatter(1, y[:, None], float("-inf")).amax(1)
    order = margin.argsort()
    return model, x[order], y[order]


def test_sparse_rs_beats_noise_of_the_same_l0_size(mlp):
    model, x, y = mlp
    x, y = x[100:140], y[100:140]
    sr, q = _run("sparse_rs", {}, model, x, y, norm="l0", eps=24.0, max_queries=300)
    noise, qn = _run("noise", {"draws_per_step": 50}, model, x, y, norm="l0", eps=24.0, max_queries=300)
    assert sr >= 0.6 and sr >= noise + 0.4, (sr, noise)
    assert int(q.max()) <= 300 and int(qn.max()) <= 300


def test_one_pixel_beats_noise_of_the_same_l0_size(mlp):
    """On the 80 least confident images: DE (the best1 strategy, as ART runs it) against as many noise draws."""
    model, x, y = mlp
    x, y = x[:80], y[:80]
    op, _ = _run("one_pixel", {"population": 50, "strategy": "best1"}, model, x, y, norm="l0", eps=24.0,
                 max_queries=2000)
    noise, _ = _run("noise", {"draws_per_step": 50}, model, x, y, norm="l0", eps=24.0, max_queries=2000)
    assert op >= noise + 0.1, (op, noise)


def test_jsma_beats_noise_and_stays_in_its_budget(mlp):
    model, x, y = mlp
    x, y = x[100:120], y[100:120]
    js, q = _run("jsma", {}, model, x, y, norm="l0", eps=24.0, max_queries=100)
    noise, _ = _run("noise", {"draws_per_step": 50}, model, x, y, norm="l0", eps=24.0, max_queries=100)
    assert js >= 0.6 and js >= noise + 0.4, (js, noise)
    assert int(q.max()) <= 2 * 12 + 1  # at most 12 pairs of pixels (24 positions), 2 gradient rows each, 1 last check


def test_jsma_targeted_reaches_its_targets_within_gamma(mlp):
    """budget.eps=null: the paper's gamma (14.5% of the 784 pixels: 113) is the only cap."""
    model, x, y = mlp
    x, y = x[150:165], y[150:165]
    t = (y + 1) % 10
    w = Watched(model)
    ref = Referee(access="gradient", norm="l0", eps=None, max_queries=300, num_classes=10)
    outs = run_all(Counted(instantiate(ATTACKS, "jsma", {}, "attack"), w), w,
                   Plan.contiguous(x, y, t, torch.ones(len(y), dtype=torch.bool), 10, 0), ref, "cpu")
    succ = torch.cat([o.result.success for o in outs])
    best = torch.cat([o.result.best_x for o in outs])
    assert w.rows == int(sum(int(o.result.queries.sum()) for o in outs))
    with torch.no_grad():
        pred = model(best).argmax(1)
    changed = (best - x).abs().flatten(1).gt(1e-6).sum(1)
    assert bool((pred[succ] == t[succ]).all()) and float(succ.float().mean()) >= 0.7
    assert int(changed.max()) <= 113


# ---------------------------------------------------------------------- the shared protocol
def _build_and_apply(name, params, victim, splits, x, y, *, norm, eps, max_queries=2000, n_build=100, target=None):
    """Build on ``n_build`` training images behind a counting victim, then evaluate the fixed perturbation
    on (x, y) through the engine: (success rate, build outcome, evaluation queries)."""
    attack = instantiate(ATTACKS, name, params, "attack")
    w = Watched(victim)
    ref = Referee(access=attack.access, norm=norm, eps=eps, max_queries=max_queries, num_classes=10)
    build = select_build_set(attack, types.SimpleNamespace(train=splits.train, test=None), victim, "cpu", target,
                             limit=n_build)
    w.on = True
    out = run_build(attack, w, build, ref, "cpu", 0, name, target)
    w.on = False
    assert w.rows == int(out.queries.sum()) > 0, "the build oracle's count is the rows the victim evaluated"
    assert int(out.queries.max()) <= max_queries
    w.rows = 0
    apply = ApplyShared(attack, name)
    apply.perturbation = out.perturbation
    t = None if target is None else torch.full_like(y, target)
    attacked = torch.ones(len(y), dtype=torch.bool) if t is None else y != t
    outs = run_all(Counted(apply, w), w, Plan.contiguous(x, y, t, attacked, 50, 0), ref, "cpu")
    q = torch.cat([o.result.queries for o in outs])
    assert w.rows == int(q.sum()) and int(q.max()) == 1, "one counted query per evaluated sample"
    succ = torch.cat([o.result.success for o in outs])
    return float(succ.float().mean()), out, q


def test_uap_fools_held_out_images_where_noise_in_its_ball_does_not(mlp, splits):
    victim, x, y = mlp
    x, y = x[100:200], y[100:200]
    rate, out, _ = _build_and_apply("uap", {"max_passes": 2}, victim, splits, x, y, norm="linf", eps=0.2)
    v = out.perturbation.values
    assert float(v.abs().max()) <= 0.2 + 1e-6
    g = torch.Generator().manual_seed(0)
    noise = (x + (torch.rand(x[0].shape, generator=g) * 2 - 1) * 0.2).clamp(0, 1)  # one shared draw, same ball
    with torch.no_grad():
        noise_rate = float((victim(noise).argmax(1) != y).float().mean())
    assert rate >= noise_rate + 0.3, (rate, noise_rate)


def test_targeted_uap_sends_held_out_images_to_its_class(mlp, splits):
    victim, x, y = mlp
    x, y = x[100:200], y[100:200]
    rate, out, _ = _build_and_apply("uap", {"max_passes": 2}, victim, splits, x, y, norm="linf", eps=0.2, target=3)
    assert rate >= 0.3, rate
    with torch.no_grad():  # without the perturbation, hardly any of them is a 3
        assert float((victim(x[y != 3]).argmax(1) == 3).float().mean()) < 0.05


def test_patch_beats_a_random_patch_of_the_same_size(mlp, splits):
    victim, x, y = mlp
    x, y = x[100:200], y[100:200]
    rate, out, _ = _build_and_apply("patch", {"steps": 100, "lr": 0.1}, victim, splits, x, y, norm="l0", eps=64.0)
    assert tuple(out.perturbation.values.shape) == (1, 8, 8)
    g = torch.Generator().manual_seed(0)
    rows = torch.randint(0, 21, (len(y),), generator=g)
    cols = torch.randint(0, 21, (len(y),), generator=g)
    with torch.no_grad():
        noise_rate = float((victim(paste(x, torch.rand(1, 8, 8, generator=g), rows, cols)).argmax(1) != y).float().mean())
    assert rate >= noise_rate + 0.2, (rate, noise_rate)


def test_paste_places_the_patch_at_each_corner():
    x = torch.zeros(2, 1, 6, 6)
    p = torch.arange(4.0).view(1, 2, 2) + 1
    out = paste(x, p, torch.tensor([0, 4]), torch.tensor([1, 3]))
    assert torch.equal(out[0, 0, 0:2, 1:3], p[0]) and torch.equal(out[1, 0, 4:6, 3:5], p[0])
    assert int((out != 0).sum()) == 8


# ---------------------------------------------------------------------- the CLI and its refusals
def test_cli_uap_run_writes_the_shared_block(tmp_path, ckpt_dir):
    run = tmp_path / "run"
    p = run_cli("attack", "attack=uap", "budget=linf_0.3", "dataset.n_samples=30", "attack.params.build_samples=6",
                "attack.params.max_passes=1", "progress=false", "quiet=true", f"checkpoint_dir={ckpt_dir}",
                f"hydra.run.dir={run}", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    s = json.loads((run / "summary.json").read_text())
    sh = s["shared"]
    assert sh["kind"] == "additive" and sh["build_split"] == "train" and sh["build_used"] == len(sh["build_indices"])
    assert all(0 <= i < 6 for i in sh["build_indices"]) and sh["build_queries"] > 0
    assert sh["perturbation_linf"] <= 0.3 + 1e-6 and s["access"] == "gradient"
    rec = pd.read_csv(run / "records.csv")
    assert (rec.loc[rec.attacked, "queries"] == 1).all()
    pert = pd.read_csv(run / "perturbation.csv")
    assert len(pert) == 784 and pert.value.abs().max() <= 0.3 + 1e-6
    assert s["attack_extra"]["uap"]["passes"] == 1


@pytest.mark.parametrize("over,match", [
    (["budget.targeted=true"], "one target class"),
    (["adaptive=true"], "adaptive=true"),
    (["attack.params.build_split=test", "attack.params.build_samples=10"], "overlaps the evaluated slice"),
    (["budget=l0_24"], "supports budget.norm"),
])
def test_cli_refuses_what_a_shared_run_cannot_do(tmp_path, ckpt_dir, over, match):
    run = tmp_path / "run"
    p = run_cli("attack", "attack=uap", "dataset.n_samples=20", *over, "progress=false", f"checkpoint_dir={ckpt_dir}",
                f"hydra.run.dir={run}", cwd=tmp_path)
    assert p.returncode == 2 and match in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert not (run / "summary.json").exists() and not (run / "config.yaml").exists()


def test_cli_l0_budget_runs_sparse_rs(tmp_path, ckpt_dir):
    run = tmp_path / "run"
    p = run_cli("attack", "attack=sparse_rs", "budget=l0_24", "budget.max_queries=50", "dataset.n_samples=20",
                "progress=false", "quiet=true", f"checkpoint_dir={ckpt_dir}", f"hydra.run.dir={run}", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    s = json.loads((run / "summary.json").read_text())
    assert s["norm"] == "l0" and s["eps"] == 24.0
    rec = pd.read_csv(run / "records.csv")
    assert (rec.loc[rec.success, "l0"] <= 24).all()


def test_api_shared_attack_needs_train_data(victim, test_xy):
    x, y = test_xy[0][:10], test_xy[1][:10]
    with pytest.raises(RobenchError, match="train_data"):
        robench.evaluate(victim, x, y, attack="uap", budget=robench.Budget("linf", 0.3))


class _BuildsOnTheHost(SharedAttack):
    """A shared attack whose build mixes a tensor made on the host into the batch (a GPU run fails there)."""

    access = "label"
    norms = ("linf",)

    def __init__(self):
        super().__init__(build_samples=8)

    def build(self, oracle, generator):
        v = torch.zeros(oracle.x0.shape[1:]).uniform_(-0.1, 0.1)
        oracle.labels((oracle.x0 + v).clamp(0, 1))
        return SharedPerturbation("additive", v)


def test_device_check_covers_the_build_phase(mlp, splits):
    model, x, y = mlp
    check_devices(lambda: instantiate(ATTACKS, "uap", {"max_passes": 1}, "attack"), model, x[:6], y[:6],
                  train=splits.train, max_queries=10)
    with pytest.raises(AssertionError, match="without device="):
        check_devices(_BuildsOnTheHost, model, x[:6], y[:6], train=splits.train, max_queries=10)


def test_isolate_refuses_a_shared_attack_before_its_sandbox_starts():
    """uap (gradient access) is refused by isolate's gradient rule; a label-access shared attack by its own."""
    from robench.evaluation.spec import AttackTraits, Budget

    for attack, match in ((instantiate(ATTACKS, "uap", {}, "attack"), "gradient access"),
                          (_BuildsOnTheHost(), "builds a shared perturbation")):
        with pytest.raises(RobenchError, match=f"isolate=true cannot run 'x': .*{match}"):
            AttackTraits.of(attack, "x").check(Budget(eps=0.3), "x", True)
