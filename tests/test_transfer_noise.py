"""Transfer attack (one victim query per sample) and the Gaussian-noise row."""
import copy
import json

import pytest
import torch

from robench.attacks.baseline.gaussian_noise import GaussianNoise
from robench.attacks.composite.transfer import Transfer
from robench.errors import RobenchError
from robench.models import build_model
from robench.referee.oracle import Oracle
from tests.conftest import run_cli
from tests.test_oracle import CountingModel
from tests.test_pgd import check_certified


def _transfer(attack, victim, x0, y, targets=None, eps=0.3, norm="linf"):
    counter = CountingModel(victim, x0)
    o = Oracle(counter, x0, y, access=attack.access, norm=norm, eps=eps, max_queries=10_000, targets=targets,
               num_classes=10)
    attack.run(o, torch.Generator().manual_seed(0))
    counter.enabled = False
    return o.finalize(), counter


def test_transfer_one_victim_query_per_sample(victim, test_xy, splits):
    x0, y = test_xy[0][:60], test_xy[1][:60]
    # a perfect surrogate (a copy of the victim's weights) transfers almost everything ...
    same = Transfer(attack={"name": "pgd", "params": {"steps": 20}})
    same.set_surrogate(copy.deepcopy(victim), "copy")
    r, counter = _transfer(same, victim, x0, y)
    assert r.success.float().mean() >= 0.9
    assert r.queries.tolist() == [1] * 60 and counter.per_sample.tolist() == [1] * 60 and counter.rows == 60
    assert (r.grad_queries == 0).all()  # the victim never gave a gradient
    check_certified(victim, x0, y, r, "linf", 0.3)
    st = same.summary_extra()["transfer"]
    assert st["transferred"] == 60 and st["surrogate_queries"] >= 60 * 20 and st["surrogate_success_rate"] > 0.9
    # ... an untrained surrogate with another architecture transfers little
    torch.manual_seed(0)
    rand = Transfer(attack={"name": "pgd", "params": {"steps": 20}})
    rand.set_surrogate(build_model("small_cnn", splits).eval(), "random")
    r2, counter2 = _transfer(rand, victim, x0, y)
    assert counter2.rows == 60 and r2.success.float().mean() <= r.success.float().mean() - 0.3


def test_transfer_targeted_and_minimal_distortion_inner(victim, test_xy):
    x0, y = test_xy[0][:20], test_xy[1][:20]
    t = (y + 1) % 10
    a = Transfer(attack={"name": "pgd", "params": {"steps": 20}})
    a.set_surrogate(copy.deepcopy(victim))
    r, _ = _transfer(a, victim, x0, y, targets=t)
    check_certified(victim, x0, y, r, "linf", 0.3, targets=t)
    assert r.success.float().mean() >= 0.6 and r.queries.tolist() == [1] * 20
    # a minimal-perturbation crafting attack transfers its best surrogate point (here: onto the victim itself)
    d = Transfer(attack={"name": "deepfool", "params": {"overshoot": 0.5}})
    d.set_surrogate(copy.deepcopy(victim))
    r, _ = _transfer(d, victim, x0, y, eps=None, norm="l2")
    assert r.success.float().mean() >= 0.9 and r.queries.tolist() == [1] * 20


def test_transfer_bad_config():
    with pytest.raises(RobenchError, match="white-box"):
        Transfer(attack={"name": "gaussian_noise"})
    with pytest.raises(RobenchError, match="unknown surrogate key"):
        Transfer(surrogate={"modle": "small_cnn"})
    with pytest.raises(RobenchError, match="unknown attack"):
        Transfer(attack={"name": "nope"})


def test_cli_transfer_binds_surrogate_checkpoint(tmp_path, ckpt_dir):
    run = tmp_path / "run"
    # the session victim's checkpoint as the surrogate (cw_mnist): near-white-box transfer, one query each
    p = run_cli("attack", "attack=transfer", "attack.params.surrogate.model=cw_mnist", "+attack.params.attack.params.steps=10",
                "dataset.n_samples=30", "progress=false", f"checkpoint_dir={ckpt_dir}", f"hydra.run.dir={run}")
    assert p.returncode == 0, p.stderr
    s = json.loads((run / "summary.json").read_text())
    assert s["total_queries"] == s["n_attacked"] and s["success_rate"] >= 0.8
    assert s["attack_extra"]["transfer"]["surrogate"] == "cw_mnist/none" and s["attack_extra"]["transfer"]["crafting_attack"] == "pgd"
    p = run_cli("attack", "attack=transfer", "dataset.n_samples=5", "progress=false", f"checkpoint_dir={ckpt_dir}",
                f"hydra.run.dir={tmp_path}/bad")
    lines = [l for l in p.stderr.strip().splitlines() if l.strip()]
    assert p.returncode == 2 and len(lines) == 1
    assert "create it with `robench train-defense dataset=mnist model=small_cnn defense=none" in lines[0]


def test_gaussian_noise_row(victim, test_xy):
    x0, y = test_xy[0][:100], test_xy[1][:100]
    rates = []
    for sigma in (0.05, 1.0):
        counter = CountingModel(victim, x0)
        o = Oracle(counter, x0, y, access="label", norm="l2", eps=None, max_queries=100, num_classes=10)
        GaussianNoise(sigma=sigma).run(o, torch.Generator().manual_seed(0))
        counter.enabled = False
        r = o.finalize()
        assert r.queries.tolist() == [1] * 100 and counter.rows == 100
        rates.append(r.success.float().mean().item())
    assert rates[0] <= 0.02 and rates[1] >= 0.3, rates
    # more draws: the worst case over them, never less
    o = Oracle(victim, x0, y, access="label", norm="l2", eps=None, max_queries=100, num_classes=10)
    GaussianNoise(sigma=1.0, draws=5).run(o, torch.Generator().manual_seed(0))
    r = o.finalize()
    assert r.success.float().mean() >= rates[1] and (r.queries <= 5).all()
    import robench

    with pytest.raises(RobenchError, match="budget.eps=null"):  # declared (eps_policy "null"), refused before any work
        robench.evaluate(victim, x0, y, attack="gaussian_noise", budget=robench.Budget("linf", 0.3))
