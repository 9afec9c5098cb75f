"""The command line end to end, as a user runs it (in-process through `robench.cli.main`; the cases marked
`subprocess_=True` start a real `python -m robench`)."""
import json
import subprocess
import sys

import pandas as pd
import pytest

from tests.conftest import ROOT, run_cli

SMALL = ["dataset.n_samples=40", "progress=false"]


@pytest.mark.parametrize("override,msg", [
    ("budget.eps=-0.1", "budget.eps must be a number >= 0"),
    ("budget.max_queries=0", "budget.max_queries must be an integer >= 1"),
    ("budget.norm=l3", "budget.norm must be one of linf, l2"),
    ("budget.target=12", "budget.target=12 is out of range"),
    ("attack=nope", "unknown attack 'nope'; valid: "),  # the list grows with every attack
    ("model.name=nope", "unknown model 'nope'; valid: cw_cifar, cw_mnist"),
    ("+attack.params.wings=3", "attack 'pgd' has no parameter(s) wings; valid: steps"),
    ("attack.params.wings=3", "bad override: Could not override 'attack.params.wings'"),
    ("budget.eps=[0.1", "bad override"),
    ("dataset=cifar10", "CIFAR-10 not found under"),
    ("dataset.shard=5/2", "dataset.shard=5/2"),
])
def test_bad_input_is_one_line_exit_2(override, msg, tmp_path):
    p = run_cli("attack", override, *SMALL, f"checkpoint_dir={tmp_path}", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path,
                subprocess_=override == "budget.eps=-0.1")  # one case as a real process: exit code and stderr
    assert p.returncode == 2, p.stderr
    lines = [l for l in p.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("robench: error: ") and msg in lines[0], p.stderr
    assert "Traceback" not in p.stderr + p.stdout


def test_conflicting_hydra_modes_are_one_line(tmp_path):
    p = run_cli("attack", "-m", "--info", "attack=pgd,fgsm", cwd=tmp_path)  # Hydra itself raises a bare ValueError
    assert p.returncode == 2, p.stderr
    lines = [l for l in p.stderr.strip().splitlines() if l.strip()]
    assert lines == ["robench: error: --info and --multirun cannot be combined: give one of them"], p.stderr


def test_missing_checkpoint_names_the_command(tmp_path):
    p = run_cli("attack", *SMALL, "model=small_cnn", "model.params.depth=3", f"checkpoint_dir={tmp_path}/ck",
                f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert p.returncode == 2
    assert (f"create it with `robench train-defense dataset=mnist model=small_cnn defense=none "
            f"model.params.depth=3 model.params.width=32 checkpoint_dir={tmp_path}/ck`") in p.stderr


def test_unknown_command_and_list():
    p = run_cli("fly", subprocess_=True)
    assert p.returncode == 2 and "unknown command 'fly'" in p.stderr
    p = run_cli("list")
    assert p.returncode == 0
    for word in ("pgd", "cw_mnist", "wrn_34_10", "mnist", "cifar10", "imagenet", "none", "linf_0.3",
                 "Projected gradient descent", "Carlini-Wagner MNIST CNN"):
        assert word in p.stdout, word


def test_cfg_job_shows_the_composed_threat_model():
    p = run_cli("attack", "--cfg", "job", "budget=l2_2.0", "budget.targeted=true", "budget.target=least_likely")
    assert p.returncode == 0, p.stderr
    import yaml
    cfg = yaml.safe_load(p.stdout)
    assert cfg["budget"] == {"norm": "l2", "eps": 2.0, "max_queries": 10000, "targeted": True, "target": "least_likely",
                             "checkpoints": None}
    assert cfg["seed"] == 0 and cfg["device"] == "auto" and cfg["attack"]["name"] == "pgd"


@pytest.mark.slow
def test_train_then_attack_end_to_end(tmp_path):
    ck = tmp_path / "ck"
    p = run_cli("train-defense", "train.epochs=1", "progress=false", f"checkpoint_dir={ck}",
                f"hydra.run.dir={tmp_path}/train", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert (ck / "mnist" / "cw_mnist" / "none.pt").exists()
    tsum = json.loads((tmp_path / "train" / "summary.json").read_text())
    assert tsum["command"] == "train-defense" and tsum["clean_accuracy"] > 0.8
    assert len(pd.read_csv(tmp_path / "train" / "train_log.csv")) == 1

    run = tmp_path / "attack"
    p = run_cli("attack", "dataset.n_samples=60", "dataset.offset=5", "budget.targeted=true", "progress=false",
                f"checkpoint_dir={ck}", f"hydra.run.dir={run}", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "attack success rate" in p.stdout  # the rich table
    for f in ("config.yaml", "records.csv", "summary.json", "summary.md", "overrides.yaml"):
        assert (run / f).exists(), f
    assert not (run / ".hydra").exists()  # robench writes its own overrides.yaml, once the run is accepted
    s = json.loads((run / "summary.json").read_text())
    for k in ("schema_version", "clean_accuracy", "success_rate", "robust_accuracy", "n_samples", "n_attacked",
              "mean_queries", "median_queries", "mean_l2", "median_l2", "mean_linf", "median_linf", "seconds",
              "attack", "model", "dataset", "defense", "budget"):
        assert k in s, k
    r = pd.read_csv(run / "records.csv")
    assert len(r) == 60 and r["index"].tolist() == list(range(5, 65))
    assert (r.target != r.label).all() and (r.target >= 0).all()
    # the summary is recomputable from the records
    att = r[r.attacked]
    assert s["n_attacked"] == len(att) and s["success_rate"] == pytest.approx(att.success.mean())
    assert s["robust_accuracy"] == pytest.approx(((r.clean_pred == r.label) & ~r.success).mean())
    assert (r[r.success].linf <= 0.3 + 1e-5).all()


def test_multirun_2x2_and_report(tmp_path, ckpt_dir):
    sweep = tmp_path / "sweep"
    p = run_cli("attack", "-m", "budget.eps=0.05,0.2", "attack.params.steps=5,20", "dataset.n_samples=40",
                "progress=false", f"checkpoint_dir={ckpt_dir}", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    summaries = sorted(sweep.glob("*/summary.json"))
    assert len(summaries) == 4
    p = run_cli("report", str(sweep), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    df = pd.read_csv(sweep / "report.csv")
    assert len(df) == 4 and set(df.budget) == {"linf_0.05", "linf_0.2"}
    assert {"clean acc", "success rate", "robust acc", "median queries", "median L2", "queries/s"} <= set(df.columns)
    assert df["overrides"].str.contains("attack.params.steps=20").sum() == 2
    assert (sweep / "report.md").read_text().startswith("| dataset | model |")
    # bigger eps, more success
    g = df.groupby("budget")["success rate"].mean()
    assert g["linf_0.2"] > g["linf_0.05"]


def test_report_errors(tmp_path):
    p = run_cli("report", str(tmp_path / "nothing"))
    assert p.returncode == 2 and "does not exist" in p.stderr
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "summary.json").write_text("{broken")
    p = run_cli("report", str(tmp_path / "r"))
    assert p.returncode == 2 and "not valid JSON" in p.stderr and "Traceback" not in p.stderr


def test_non_editable_install_runs_from_any_directory(tmp_path):
    """`pip install .` (not editable) ships the configs inside the package."""
    target = tmp_path / "site"
    p = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--target", str(target), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert (target / "robench" / "configs" / "attack" / "pgd.yaml").exists()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    p = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import robench, robench.cli; "
                        "assert robench.__file__.startswith(sys.argv[1]), robench.__file__; "
                        "sys.argv = ['robench'] + sys.argv[2:]; robench.cli.main()",
                        str(target), "attack", "--cfg", "job", "attack=pgd", "budget=l2_0.5"],
                       cwd=elsewhere, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "name: pgd" in p.stdout and "norm: l2" in p.stdout


@pytest.mark.slow
def test_entry_point_plugin_package(tmp_path, ckpt_dir):
    """The README's plugin example, installed for real: its attack and its config are found."""
    target = tmp_path / "site"
    p = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--target", str(target), str(ROOT / "examples" / "robench_plugin_example")],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    env = {"PYTHONPATH": str(target)}
    p = run_cli("list", "attacks", env=env, cwd=tmp_path)
    assert p.returncode == 0 and "example_fgsm" in p.stdout and "attack=example_fgsm" in p.stdout
    run = tmp_path / "run"
    p = run_cli("attack", "attack=example_fgsm", "dataset.n_samples=50", "progress=false", f"checkpoint_dir={ckpt_dir}",
                f"hydra.run.dir={run}", env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    s = json.loads((run / "summary.json").read_text())
    assert s["attack"] == "example_fgsm" and s["success_rate"] > 0.3
    assert pd.read_csv(run / "records.csv").query("attacked").queries.max() <= 2  # one gradient + one label query
    # overrides of a plugin's config are checked up front too, in one line
    p = run_cli("attack", "attack=example_fgsm", "attack.params.nope=1", f"checkpoint_dir={ckpt_dir}",
                f"hydra.run.dir={tmp_path}/bad", env=env, cwd=tmp_path)
    assert p.returncode == 2 and p.stderr.startswith("robench: error: bad override: Could not override"), p.stderr
