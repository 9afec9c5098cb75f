import pytest
"""robench train-defense end to end: the end-of-training robust evaluation is the number `robench
attack` reports; recipe configs bring their own training settings; a missing teacher says how to make
it; the capacity preset sweeps and `robench report` tabulates train runs."""
import json

import pandas as pd
import yaml

from tests.conftest import run_cli

QUICK = ["progress=false", "train.epochs=1"]


@pytest.mark.slow
def test_train_eval_is_the_attack_number_and_report_shows_it(tmp_path):
    ck, tr, at = tmp_path / "ck", tmp_path / "runs" / "train", tmp_path / "runs" / "attack"
    p = run_cli("train-defense", *QUICK, "eval.n_samples=120", "eval.params.steps=10", f"checkpoint_dir={ck}",
                f"hydra.run.dir={tr}", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    s = json.loads((tr / "summary.json").read_text())
    for k in ("clean_accuracy", "robust_accuracy", "train_accuracy", "train_seconds", "model_params", "defense"):
        assert k in s, k
    assert s["robust_eval"]["n_samples"] == 120 and s["robust_eval"]["eps"] == 0.3
    assert 0 <= s["robust_accuracy"] < s["eval_clean_accuracy"]
    assert not (ck / "mnist" / "cw_mnist" / "none.pt.resume").exists()  # finished: no resume state left
    p = run_cli("attack", "dataset.n_samples=120", "attack.params.steps=10", "progress=false", f"checkpoint_dir={ck}",
                f"hydra.run.dir={at}", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    a = json.loads((at / "summary.json").read_text())
    assert a["robust_accuracy"] == s["robust_accuracy"] and a["clean_accuracy"] == s["eval_clean_accuracy"]
    import torch
    meta = torch.load(ck / "mnist" / "cw_mnist" / "none.pt", weights_only=True)["meta"]
    assert meta["robust_accuracy"] == s["robust_accuracy"] and meta["clean_accuracy"] == s["clean_accuracy"]
    p = run_cli("report", str(tmp_path / "runs"), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    t = pd.read_csv(tmp_path / "runs" / "train_report.csv")
    assert len(t) == 1 and t["robust acc"][0] == s["robust_accuracy"] and t["defense"][0] == "none"
    assert len(pd.read_csv(tmp_path / "runs" / "report.csv")) == 1


def test_defense_config_brings_train_settings_command_line_wins():
    def job(*args):
        p = run_cli("train-defense", *args, "--cfg", "job", "--resolve")
        assert p.returncode == 0, p.stderr
        return yaml.safe_load(p.stdout)

    assert job()["train"]["init_from"] is None and job()["train"]["epochs"] == 8
    c = job("defense=sprout")
    assert c["train"]["init_from"] == "none"
    assert job("defense=sprout", "train.init_from=null")["train"]["init_from"] is None
    assert job("defense=pgd_at", "+defense.train.epochs=5")["train"]["epochs"] == 5
    assert job("defense=pgd_at", "+defense.train.epochs=5", "train.epochs=3")["train"]["epochs"] == 3
    c = job("defense=pgd_at", "budget=linf_0.1")
    assert c["defense"]["params"]["eps"] == 0.1 and c["defense"]["params"]["norm"] == "linf"


def test_distillation_without_teacher_names_the_command(tmp_path):
    p = run_cli("train-defense", "defense=distillation", *QUICK, f"checkpoint_dir={tmp_path}/ck",
                f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert p.returncode == 2
    lines = [l for l in p.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and "needs 'distillation_teacher'" in lines[0], p.stderr
    assert (f"`robench train-defense dataset=mnist model=cw_mnist defense=distillation_teacher "
            f"checkpoint_dir={tmp_path}/ck`") in lines[0]


@pytest.mark.slow
def test_plasticity_preset_sweeps_depth_natural_then_pgd_at(tmp_path):
    sweep = tmp_path / "sweep"
    p = run_cli("train-defense", "-m", "experiment=plasticity", "model.params.width=4", "model.params.depth=1,2",
                "train.epochs=1", "dataset.n_train=1000", "eval.n_samples=20", "progress=false",
                f"checkpoint_dir={tmp_path}/ck",
                f"hydra.sweep.dir={sweep}", cwd=tmp_path, timeout=600)
    assert p.returncode == 0, p.stderr
    rows = [json.loads((sweep / str(i) / "summary.json").read_text()) for i in range(4)]
    assert [(r["model_params"]["depth"], r["defense"], r["init_from"]) for r in rows] == \
        [(1, "none", None), (1, "pgd_at", "none"), (2, "none", None), (2, "pgd_at", "none")]
    assert all(r["robust_eval"]["eps"] == 0.1 and r["model"] == "small_cnn" for r in rows)
    p = run_cli("report", str(sweep), cwd=tmp_path)
    assert p.returncode == 0 and "train-defense runs" in p.stdout, p.stderr
    t = pd.read_csv(sweep / "train_report.csv")
    assert list(t["defense"]) == ["none", "pgd_at", "none", "pgd_at"]
    assert {"train acc", "clean acc", "robust acc", "model params"} <= set(t.columns)


def test_end_of_training_evaluation_takes_any_attack(victim, splits):
    """robust_eval.robust_accuracy: an eval config without ``params`` (``~eval.params``) runs the attack's
    defaults, and a shared-perturbation attack gets the dataset for its build set (both used to fail)."""
    import torch
    from omegaconf import OmegaConf

    from robench.evaluation.robust_eval import robust_accuracy

    budget = OmegaConf.create({"norm": "linf", "eps": 0.3, "max_queries": 100, "targeted": False, "target": "random",
                               "checkpoints": None})
    for ecfg in ({"attack": "fgsm", "n_samples": 10, "batch_size": 10},
                 {"attack": "uap", "params": {"build_samples": 10, "max_passes": 1}, "n_samples": 10, "batch_size": 10}):
        r = robust_accuracy(victim, splits, OmegaConf.create(ecfg), budget, 0, torch.device("cpu"))
        assert r["attack"] == ecfg["attack"] and r["n_samples"] == 10
        assert 0 <= r["robust_accuracy"] <= r["clean_accuracy"] <= 1
