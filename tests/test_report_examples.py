"""Issue 30 items 1-2 through the CLI: `robench attack save_adversarial=true` for a white-box, a score-based
and a hard-label run (and a targeted one), then `robench report DIR --plots` draws an example grid for each
and the targeted run's source-by-target matrix."""
from __future__ import annotations

import pytest

import robench
from tests.conftest import run_cli

RUNS = {"pgd": ["attack=pgd", "attack.params.steps=5"],
        "square": ["attack=square", "budget.max_queries=60"],
        "signopt": ["attack=signopt", "budget=l2_2.0", "budget.eps=null", "budget.max_queries=200"],
        "targeted": ["attack=pgd", "attack.params.steps=5", "budget.targeted=true"]}


@pytest.fixture(scope="module")
def runs(ckpt_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("examples")
    for name, args in RUNS.items():
        p = run_cli("attack", *args, "dataset.n_samples=6", "save_adversarial=true", "progress=false", "quiet=true",
                    f"checkpoint_dir={ckpt_dir}", f"hydra.run.dir={d / name}", cwd=d)
        assert p.returncode == 0, p.stderr
    return d


def test_saved_examples_agree_with_the_records(runs):
    import pandas as pd

    for name in RUNS:
        a = robench.load_adversarial(runs / name)
        rec = pd.read_csv(runs / name / "records.csv").sort_values("index")
        assert a.index.tolist() == rec["index"].tolist()
        assert a.success.tolist() == rec.success.astype(bool).tolist()
        assert (a.pred[a.success] != a.label[a.success]).all() if name != "targeted" else \
            (a.pred[a.success] == a.target[a.success]).all()


def test_report_plots_show_the_examples_and_the_target_matrix(runs):
    pytest.importorskip("matplotlib")
    p = run_cli("report", str(runs), "--plots", "--quiet", cwd=runs)
    assert p.returncode == 0, p.stderr
    grids = sorted(f.name for f in runs.glob("examples-*.png"))
    assert len(grids) == 4 and {g.split("-")[1] for g in grids} == {"pgd", "square", "signopt"}
    assert len(list(runs.glob("targets-*.png"))) == 1
    html = (runs / "report.html").read_text()
    assert all(g in html for g in grids)


def test_a_refused_save_option_is_one_line(ckpt_dir, tmp_path):
    p = run_cli("attack", "adversarial_formats=[gif]", "dataset.n_samples=2", f"checkpoint_dir={ckpt_dir}",
                f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path)
    assert p.returncode == 2 and "adversarial_formats must be a list of npz, png, wav" in p.stderr
    assert not (tmp_path / "r").exists()
