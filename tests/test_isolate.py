"""isolate=true (robench/referee/isolation.py): a score-based (square) and a hard-label (signopt) attack give the
records of the in-process run, while their ``run`` executes in a child process without the victim."""
from __future__ import annotations

import pytest

import robench
from robench.errors import RobenchError

COLS = ["success", "queries", "grad_queries", "queries_at_success", "l0", "l2", "linf", "recheck_failed"]


@pytest.mark.parametrize("attack,budget,params", [
    ("square", robench.Budget(norm="linf", eps=0.2, max_queries=60), {}),
    ("signopt", robench.Budget(norm="l2", eps=None, max_queries=300), {"q": 20, "n_init": 20}),
])
def test_isolated_records_equal_in_process(victim, test_xy, attack, budget, params):
    x, y = test_xy
    runs = [robench.evaluate(victim, x[:4], y[:4], attack=attack, budget=budget, seed=3, isolate=iso, **params)
            for iso in (False, True)]
    a, b = (r.records[COLS + [c for c in r.records.columns if c.startswith("dist_at_")]] for r in runs)
    assert a.fillna(-1).equals(b.fillna(-1))
    assert runs[1].summary["integrity"] == {"violations": [], "n_dropped": 0, "isolate": True}
    assert runs[0].summary["total_queries"] > 0


def test_isolate_refuses_gradient_attacks(victim, test_xy):
    x, y = test_xy
    with pytest.raises(RobenchError, match="isolate=true cannot run 'pgd': gradient access"):
        robench.evaluate(victim, x[:2], y[:2], attack="pgd", isolate=True)


def test_isolate_config_must_be_bool(tmp_path):
    from tests.conftest import run_cli

    r = run_cli("attack", "isolate=maybe", "dataset.n_samples=2", f"hydra.run.dir={tmp_path}")
    assert r.returncode != 0 and "isolate" in r.stderr


def test_cli_isolate_writes_integrity(tmp_path, ckpt_dir):
    import json

    from tests.conftest import run_cli

    r = run_cli("attack", "attack=square", "isolate=true", "dataset.n_samples=4", "budget.max_queries=30",
                "progress=false", f"checkpoint_dir={ckpt_dir}", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["integrity"] == {"violations": [], "n_dropped": 0, "isolate": True} and s["total_queries"] > 0
