"""The AutoAttack-style ensemble: members run only on still-robust points, one referee, contributions."""
import json

import pytest
import torch
import yaml

from robench.attacks.composite.ensemble import Ensemble, MemberView
from robench.attacks.whitebox.bim import BIM
from robench.attacks.whitebox.fgsm import FGSM
from robench.errors import RobenchError
from robench.referee.oracle import Oracle
from robench.referee.types import AccessError
from tests.conftest import ROOT, run_cli
from tests.test_oracle import CountingModel
from tests.test_pgd import check_certified


def _run(attack, model, x0, y, eps=0.3, max_queries=10_000):
    o = Oracle(model, x0, y, access=attack.access, norm="linf", eps=eps, max_queries=max_queries, num_classes=10)
    attack.run(o, torch.Generator().manual_seed(0))
    if isinstance(model, CountingModel):
        model.enabled = False
    return o.finalize()


def test_members_run_only_on_robust_points_and_worst_case(victim, test_xy):
    x0, y = test_xy[0][:60], test_xy[1][:60]
    eps = 0.15
    f = _run(FGSM(), victim, x0, y, eps).success
    b = _run(BIM(steps=20, step_size=0.015), victim, x0, y, eps).success
    ens = Ensemble(["fgsm", {"name": "bim", "params": {"steps": 20, "step_size": 0.015}}])
    assert ens.access == "gradient"
    counter = CountingModel(victim, x0)
    r = _run(ens, counter, x0, y, eps)
    # deterministic members: the ensemble breaks exactly the union (per-point worst case)
    assert torch.equal(r.success, f | b) and (f | b).sum() > f.sum()
    check_certified(victim, x0, y, r, "linf", eps)
    # FGSM's breaks cost 2 queries and BIM never touched them; every other sample went on to BIM
    assert (r.queries[f] == 2).all() and (r.queries[~f] > 2).all()
    assert torch.equal(counter.per_sample, r.queries)
    st = {s["attack"]: s for s in ens.summary_extra()["ensemble"]}
    assert st["fgsm"]["success"] == int(f.sum()) and st["bim"]["success"] == int((b & ~f).sum())
    assert st["fgsm"]["queries"] + st["bim"]["queries"] == int(r.queries.sum())


def test_shared_budget_caps_all_members(victim, test_xy):
    x0, y = test_xy[0][:30], test_xy[1][:30]
    ens = Ensemble([{"name": "bim", "params": {"steps": 8}}, {"name": "bim", "params": {"steps": 8}}])
    r = _run(ens, victim, x0, y, eps=0.05, max_queries=12)
    assert (r.queries <= 12).all() and (r.queries == 12).any()
    assert [s["attack"] for s in ens.summary_extra()["ensemble"]] == ["bim", "bim#2"]


def test_member_view_enforces_member_access(victim, test_xy):
    x0, y = test_xy[0][:4], test_xy[1][:4]
    o = Oracle(victim, x0, y, access="gradient", eps=0.3, max_queries=10, num_classes=10)
    v = MemberView(o, "scores")
    assert v.scores(x0).shape == (4, 10) and o.queries.tolist() == [1] * 4  # same referee, same counts
    with pytest.raises(AccessError):
        v.gradient(x0, lambda z, i: z[:, 0])
    with pytest.raises(AccessError):
        MemberView(o, "label").scores(x0)


def test_bad_members():
    with pytest.raises(RobenchError, match="ensemble member 'nope' is not a registered attack"):
        Ensemble(["fgsm", "nope"])
    with pytest.raises(RobenchError, match="empty"):
        Ensemble([])
    with pytest.raises(RobenchError, match="has no parameter"):
        Ensemble([{"name": "fgsm", "params": {"wings": 1}}])


def test_autoattack_lite_preset_lists_apgd_ce_apgd_t_square():
    cfg = yaml.safe_load((ROOT / "configs" / "attack" / "autoattack_lite.yaml").read_text())
    assert cfg["name"] == "ensemble"
    assert [m["name"] for m in cfg["params"]["attacks"]] == ["apgd_ce", "apgd_t", "square"]


def test_cli_ensemble_contributions_in_summary(tmp_path, ckpt_dir):
    run = tmp_path / "run"
    p = run_cli("attack", "attack=ensemble", "attack.params.attacks=[fgsm,bim]", "budget.eps=0.2",
                "dataset.n_samples=30", "progress=false", f"checkpoint_dir={ckpt_dir}", f"hydra.run.dir={run}")
    assert p.returncode == 0, p.stderr
    s = json.loads((run / "summary.json").read_text())
    assert [m["attack"] for m in s["attack_extra"]["ensemble"]] == ["fgsm", "bim"]
    assert sum(m["success"] for m in s["attack_extra"]["ensemble"]) == s["n_success"] + s["recheck_failed"]
    assert sum(m["queries"] for m in s["attack_extra"]["ensemble"]) == s["total_queries"]
    p = run_cli("attack", "attack=ensemble", "attack.params.attacks=[apgd_ce,nope]", "dataset.n_samples=5",
                "progress=false", f"checkpoint_dir={ckpt_dir}", f"hydra.run.dir={tmp_path}/bad")
    lines = [l for l in p.stderr.strip().splitlines() if l.strip()]
    assert p.returncode == 2 and len(lines) == 1 and "ensemble member 'nope' is not a registered attack" in lines[0]
