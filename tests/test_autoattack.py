"""attack=autoattack: the authors' standard and rand versions composed from robench's members, run end to end."""
import json

import pytest
import torch
from omegaconf import OmegaConf

import robench
from robench.attacks.composite.autoattack import RAND, STANDARD, AutoAttack
from robench.errors import RobenchError
from robench.registry import ATTACKS, instantiate
from tests.conftest import run_cli
from tests.test_methods import _compose

#: the settings of the authors' code (fra31/auto-attack, autoattack.py: AutoAttack.__init__ and set_version), per
#: member, as robench's constructor arguments: (attack name, {attribute: value}) in the order they run
ORIGINAL_STANDARD = [
    ("apgd_ce", {"steps": 100, "restarts": 1, "rho": 0.75, "loss": "ce"}),
    ("apgd_t", {"steps": 100, "restarts": 1, "rho": 0.75, "loss": "dlr", "target_classes": 9}),
    ("fab", {"steps": 100, "restarts": 1, "targeted": True, "target_classes": 9, "alpha_max": 0.1, "eta": 1.05,
             "beta": 0.9}),
    ("square", {"p_init": 0.8, "iterations": 5000, "rescale_schedule": False, "loss": "margin"}),
]
ORIGINAL_RAND = [("apgd_ce", {"steps": 100, "restarts": 1, "rho": 0.75, "loss": "ce"}),
                 ("apgd_dlr", {"steps": 100, "restarts": 1, "rho": 0.75, "loss": "dlr"})]


def _members(aa):
    return [(name, {k: getattr(m, k) for k in attrs}) for (name, m), (_, attrs) in
            zip(aa.members, ORIGINAL_STANDARD if aa.version == "standard" else ORIGINAL_RAND)]


def test_composed_config_is_the_originals_standard_and_rand():
    cfg = _compose("attack=autoattack")
    a = OmegaConf.to_container(cfg.attack, resolve=True)
    assert a["name"] == "autoattack" and a["params"]["version"] == "standard" and a["batch_size"] == 250
    assert a["params"]["standard"] == STANDARD and a["params"]["rand"] == RAND
    aa = instantiate(ATTACKS, "autoattack", a["params"], "attack")
    assert aa.version == "standard" and aa.labels == ["apgd_ce", "apgd_t", "fab_t", "square"]
    assert _members(aa) == ORIGINAL_STANDARD
    assert aa.access == "gradient" and [m.access for _, m in aa.members] == ["gradient"] * 3 + ["scores"]
    rand = instantiate(ATTACKS, "autoattack", {**a["params"], "version": "rand"}, "attack")
    assert rand.labels == ["apgd_ce", "apgd_dlr"] and _members(rand) == ORIGINAL_RAND
    assert rand.for_victim(False, 1) == 20 and rand.for_victim(False, 5) == 5   # EOT x20 unless asked for more
    assert _members(AutoAttack()) == ORIGINAL_STANDARD                          # the Python API's defaults too
    # robustbench_eval: AutoAttack, standard or (randomized victim) rand; autoattack_lite stays, without FAB-T
    rb = _compose("experiment=robustbench_eval")
    assert rb.attack.name == "autoattack" and rb.attack.params.version == "auto"
    lite = _compose("attack=autoattack_lite").attack
    assert [m["name"] for m in lite.params.attacks] == ["apgd_ce", "apgd_t", "square"]


def test_auto_version_follows_the_victim_and_bad_settings():
    aa = AutoAttack(version="auto")
    assert aa.for_victim(False, 1) == 1 and aa.version == "standard" and len(aa.members) == 4
    aa = AutoAttack(version="auto")
    assert aa.for_victim(True, 1) == 20 and aa.version == "rand" and aa.labels == ["apgd_ce", "apgd_dlr"]
    with pytest.raises(RobenchError, match="version"):
        AutoAttack(version="plus")
    with pytest.raises(RobenchError, match="'fab' has no parameter"):
        AutoAttack(standard=[{"name": "apgd_ce"}, {"name": "fab", "params": {"wings": 1}}])
    with pytest.raises(RobenchError, match="cannot contain another ensemble"):
        AutoAttack(rand=["autoattack"])


def test_standard_runs_members_in_order_on_the_robust_points(victim, test_xy):
    """Tiny eps: nothing breaks, so every member runs on every sample and spends exactly its share."""
    x0, y = test_xy[0][:6], test_xy[1][:6]
    std = [{"name": s["name"], "params": dict(s["params"])} for s in STANDARD]
    for s in std[:3]:
        s["params"]["steps"] = 4
    std[1]["params"]["target_classes"] = std[2]["params"]["target_classes"] = 2
    std[3]["params"]["iterations"] = 15
    aa = AutoAttack(standard=std)
    res = robench.evaluate(victim, x0, y, attack=aa, budget=robench.Budget(eps=0.005), batch_size=6)
    st = {m["attack"]: m for m in res.summary["attack_extra"]["ensemble"]}
    assert list(st) == ["apgd_ce", "apgd_t", "fab_t", "square"] and res.summary["n_success"] == 0
    n = len(y)
    assert st["apgd_ce"]["queries"] == n * 5                       # 1 + 4 steps
    assert st["apgd_t"]["queries"] == n * (1 + 2 * 5)              # ranking query + 2 targets x (1 + 4)
    assert n * (1 + 2 * 5) <= st["fab_t"]["queries"] <= n * (1 + 2 * 8)   # + at most 3 backward steps per target
    assert st["square"]["queries"] == n * 16                       # 1 + 15 steps, then it stops
    assert sum(m["queries"] for m in st.values()) == res.summary["total_queries"] == int(res.records.queries.sum())
    assert res.summary["attack_extra"]["autoattack"] == {"version": "standard", "requested": "standard",
                                         "members": ["apgd_ce", "apgd_t", "fab_t", "square"]}


class Noisy(torch.nn.Module):
    """A randomized victim: Gaussian noise on the input before the network."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model((x + 0.01 * torch.randn_like(x)).clamp(0, 1))


def test_auto_picks_rand_with_eot_for_a_randomized_victim(victim, test_xy):
    x0, y = test_xy[0][:5], test_xy[1][:5]
    rand = [{"name": "apgd_ce", "params": {"steps": 2}}, {"name": "apgd_dlr", "params": {"steps": 2}}]
    res = robench.evaluate(Noisy(victim), x0, y, attack="autoattack", version="auto", rand=rand, rand_eot_samples=3,
                           budget=robench.Budget(eps=0.005), batch_size=5)
    s = res.summary
    assert res.preflight["randomized"] and s["attack_extra"]["autoattack"]["version"] == "rand"
    assert [m["attack"] for m in s["attack_extra"]["ensemble"]] == ["apgd_ce", "apgd_dlr"] and s["n_success"] <= 1
    # every gradient row drawn 3 times: 2 members x 3 draws x (1 + 2 steps) where no draw broke the sample
    q, hit = res.records.queries, res.records.success | res.records.recheck_failed
    assert s["defense_setup"]["eot_samples"] == 3 and (q[~hit] == 18).all() and (q <= 18).all() and (~hit).sum() >= 4
    res = robench.evaluate(victim, x0, y, attack="autoattack", version="auto", budget=robench.Budget(eps=0.3),
                           batch_size=5)
    assert res.summary["attack_extra"]["autoattack"]["version"] == "standard" and res.summary["success_rate"] == 1.0


def test_cli_standard_end_to_end(tmp_path, ckpt_dir):
    run = tmp_path / "run"
    over = [f"attack.params.standard.{i}.params.steps=5" for i in range(3)] + \
        ["attack.params.standard.1.params.target_classes=3", "attack.params.standard.2.params.target_classes=3",
         "attack.params.standard.3.params.iterations=100"]
    p = run_cli("attack", "attack=autoattack", "budget.eps=0.12", "dataset.n_samples=12", *over, "progress=false",
                f"checkpoint_dir={ckpt_dir}", f"hydra.run.dir={run}")
    assert p.returncode == 0, p.stderr
    s = json.loads((run / "summary.json").read_text())
    assert s["attack"] == "autoattack" and s["attack_extra"]["autoattack"]["version"] == "standard"
    assert [m["attack"] for m in s["attack_extra"]["ensemble"]] == ["apgd_ce", "apgd_t", "fab_t", "square"]
    assert sum(m["success"] for m in s["attack_extra"]["ensemble"]) == s["n_success"] + s["recheck_failed"]
    assert sum(m["queries"] for m in s["attack_extra"]["ensemble"]) == s["total_queries"]
    assert s["attack_extra"]["ensemble"][0]["success"] > 0 and 0 < s["success_rate"] <= 1
    assert s["median_linf"] <= 0.12 + 1e-5
