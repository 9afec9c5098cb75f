"""Defended victims end to end: composition with a checkpoint, the adaptive (BPDA/EOT) comparison, the
randomized re-check, feature-squeezing detection, and the Table 2.4 presets."""
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from robench.defenses.base import TrainingRecipe
from robench.defenses.compose import DefendedModel, defense_spec
from robench.errors import RobenchError
from robench.registry import DEFENSES
from tests.conftest import run_cli


def compose(*overrides):
    from hydra import compose as hcompose, initialize_config_dir
    from robench.config import configs_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(configs_dir())):
        return hcompose("run_attack", overrides=list(overrides), return_hydra_config=True)


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


class DummyAT(TrainingRecipe):
    """A stand-in training recipe (pgd_at arrives with another issue)."""


@pytest.mark.parametrize("overrides,recipe,inputs,label", [
    (["defense=none"], "none", [], "none"),
    (["defense=jpeg"], "none", ["jpeg"], "jpeg"),
    (["defense=[none,jpeg]"], "none", ["jpeg"], "jpeg"),
    (["defense=[none,bit_depth,jpeg]"], "none", ["bit_depth", "jpeg"], "bit_depth+jpeg"),
    (["defense=[tvm,median_smoothing]"], "none", ["tvm", "median_smoothing"], "tvm+median_smoothing"),
])
def test_composition_config(overrides, recipe, inputs, label):
    cfg = compose(*overrides)
    spec = defense_spec(cfg.defense)
    assert spec.recipe == recipe and [n for n, _ in spec.inputs] == inputs and spec.label == label
    assert f"/{label}/pgd-" in cfg.hydra.run.dir  # run folders are named by the composed defense


def test_composition_keeps_the_recipe_checkpoint(monkeypatch, splits, tmp_path):
    """[recipe, jpeg]: the recipe's conventional checkpoint, behind JPEG."""
    from omegaconf import OmegaConf

    from robench.models.checkpoint import checkpoint_path, save_checkpoint
    from robench.models import build_model
    from robench.victim import load_victim

    monkeypatch.setitem(DEFENSES._items, "dummy_at", DummyAT)
    cfg = compose("defense=[none,jpeg]", f"checkpoint_dir={tmp_path}")
    OmegaConf.set_struct(cfg, False)
    cfg.defense.name = "dummy_at"  # what defense=[dummy_at,jpeg] composes to
    torch.manual_seed(1)
    m = build_model("cw_mnist", splits)
    save_checkpoint(checkpoint_path(str(tmp_path), {"name": "mnist", "source": "embedded"}, {"name": "cw_mnist", "params": {}},
                                    "dummy_at"), m, {"defense": "dummy_at"})
    victim, meta = load_victim(cfg, splits, torch.device("cpu"))
    assert meta["path"].endswith("mnist/cw_mnist/dummy_at.pt") and defense_spec(cfg.defense).label == "dummy_at+jpeg"
    assert isinstance(victim, DefendedModel) and [type(t).__name__ for t in victim.transforms] == ["JPEG"]
    assert all(torch.equal(a, b) for a, b in zip(victim.model.state_dict().values(), m.state_dict().values()))


def test_bad_defense_specs(monkeypatch):
    with pytest.raises(RobenchError, match="is a detector; select it with defense=\\[none,feature_squeeze_detect\\]"):
        defense_spec({"name": "feature_squeeze_detect"})
    with pytest.raises(RobenchError, match="'none' is not an input transformation"):
        defense_spec({"input": {"none": {}}})
    with pytest.raises(RobenchError, match="unknown defense 'nope'"):
        defense_spec({"input": {"nope": {}}})
    with pytest.raises(RobenchError, match=r"quality must be an integer in \[1, 100\], got '0'"):  # the declared schema
        from robench.defenses.compose import instantiate_input
        instantiate_input("jpeg", {"quality": 0})
    # an input transformation named the old way is the natural checkpoint behind it
    spec = defense_spec({"name": "jpeg", "params": {"quality": 50}})
    assert spec.recipe == "none" and spec.inputs == [("jpeg", {"quality": 50})]


def test_train_defense_refuses_input_transformations(tmp_path):
    p = run_cli("train-defense", "defense=[none,jpeg]", f"checkpoint_dir={tmp_path}", f"hydra.run.dir={tmp_path}/r",
                cwd=tmp_path)
    assert p.returncode == 2
    assert "robench: error: defense=jpeg: jpeg act(s) at attack time, not in training; train the model behind it with defense=none" in p.stderr


def test_jpeg_gradient_masking_is_exposed(ckpt_dir, tmp_path):
    """PGD without BPDA sees no gradient through JPEG (the illusion of robustness); with BPDA it wins."""
    p = run_cli("attack", "defense=[none,jpeg]", "adaptive=true", "dataset.n_samples=60", "progress=false",
                f"checkpoint_dir={ckpt_dir}", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    s = summary_of(tmp_path / "run")
    assert s["defense"] == "jpeg" and s["defense_setup"]["inputs"] == [{"name": "jpeg", "quality": 75}]
    assert s["non_adaptive"]["success_rate"] <= 0.1 and s["adaptive"]["success_rate"] >= 0.9, (s["non_adaptive"], s["adaptive"])
    assert s["success_rate"] == s["adaptive"]["success_rate"] and s["adaptive"]["bpda"] is True
    assert abs(s["clean_accuracy"] - s["undefended_clean_accuracy"]) <= 0.05
    md = (tmp_path / "run" / "summary.md").read_text()
    assert "success, non-adaptive (no BPDA, no EOT)" in md and "success, adaptive (BPDA)" in md
    assert "success, non-adaptive" in p.stdout


def test_randomized_defense_rechecks_three_times(ckpt_dir, tmp_path):
    p = run_cli("attack", "defense=random_resize_pad", "dataset.n_samples=40", "progress=false", "attack.params.steps=5",
                f"checkpoint_dir={ckpt_dir}", f"hydra.run.dir={tmp_path}/a", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    s = summary_of(tmp_path / "a")
    assert s["recheck_repeats"] == 3 and s["defense_setup"]["randomized"] is True and s["confirm_repeats"] == 0
    assert s["first_sight_success_rate"] == pytest.approx((s["n_success"] + s["recheck_failed"]) / s["n_attacked"])


def test_recheck_and_confirm_settings(victim):
    from robench.evaluation.protocols import Evaluation as DefenseRun
    from robench.evaluation.spec import RunSpec
    from robench.registry import ATTACKS

    pgd = ATTACKS.get("pgd")()
    for over, randomized, adaptive, recheck, confirm in [
            ([], False, False, 1, 0), (["defense=tvm"], True, False, 3, 0), (["defense=tvm", "recheck_repeats=1"], True, False, 1, 0),
            (["defense=tvm", "adaptive=true"], True, True, 3, 2), (["defense=jpeg", "confirm_on_sight=true"], False, False, 1, 0)]:
        cfg = compose(*over)
        spec = RunSpec.from_config(cfg)
        dr = DefenseRun(spec.defense, seed=spec.seed, adaptive=spec.adaptive, recheck_repeats=spec.recheck_repeats,
                        confirm_on_sight=spec.confirm_on_sight)
        model = victim
        if dr.spec.inputs:
            from robench.defenses.compose import build_inputs
            model = DefendedModel(victim, build_inputs(dr.spec))
        dr.prepare(model, pgd.access, False, 1, None)
        assert (dr.randomized, dr.recheck_repeats, dr.confirm_repeats) == (randomized, recheck, confirm), over
    with pytest.raises(RobenchError, match="recheck_repeats must be an integer >= 1"):
        RunSpec.from_config(compose("recheck_repeats=0"))


def test_feature_squeeze_detection(ckpt_dir, tmp_path):
    """Detection rate on PGD's adversarial examples and false-positive rate on clean test images."""
    p = run_cli("attack", "defense=[none,feature_squeeze_detect]", "dataset.n_samples=100", "progress=false",
                "attack.params.steps=20", f"checkpoint_dir={ckpt_dir}", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    s = summary_of(tmp_path / "run")
    d = s["detection"]
    assert s["defense"] == "none+feature_squeeze_detect" or s["defense"] == "feature_squeeze_detect"
    assert d["n_adversarial"] == s["n_success"] > 50
    assert d["false_positive_rate"] <= 0.15 and d["detection_rate"] >= 0.8, d
    df = pd.read_csv(tmp_path / "run" / "detection.csv")
    assert len(df) == 100
    assert df.clean_detected.mean() == pytest.approx(d["false_positive_rate"])
    succ = df[df.success]
    assert (succ.adv_detected == (succ.adv_score > d["threshold"])).all()
    assert succ.adv_detected.mean() == pytest.approx(d["detection_rate"])
    # the detector's scores live in records.csv: a resumed run (every batch complete, summary lost)
    # rebuilds the same detection figures without attacking again
    assert "detector_score" in pd.read_csv(tmp_path / "run" / "records.csv").columns
    (tmp_path / "run" / "summary.json").unlink()
    p = run_cli("attack", "defense=[none,feature_squeeze_detect]", "dataset.n_samples=100", "progress=false",
                "attack.params.steps=20", f"checkpoint_dir={ckpt_dir}", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    s2 = summary_of(tmp_path / "run")
    assert s2["resumed_batches"] == 1 and s2["detection"] == d


def test_detector_threshold_targets_fpr(victim, splits):
    from robench.defenses.feature_squeeze import FeatureSqueezeDetector

    det = FeatureSqueezeDetector(fpr=0.1)
    xc = torch.stack([splits.train[i][0] for i in range(400)])
    det.calibrate(victim, xc)
    assert det.detect(det.scores(victim, xc)).float().mean() <= 0.1  # at most fpr of the calibration set
    assert det.detect(det.scores(victim, xc)).float().mean() >= 0.09


@pytest.mark.parametrize("d,eps", [("bit_depth", 0.05), ("jpeg", 0.15), ("tvm", 0.15)])
def test_table_2_4_presets(d, eps):
    cfg = compose(f"experiment=genattack_table2_4_{d}")
    assert cfg.attack.name == "genattack" and cfg.budget.eps == eps and cfg.budget.targeted
    assert defense_spec(cfg.defense).label == d and cfg.model.name == "cw_cifar"
    if d == "tvm":
        assert cfg.attack.eot_samples == 32 and cfg.recheck_repeats == 3
