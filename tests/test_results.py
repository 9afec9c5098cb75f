import json
import math

from robench.evaluation.results import RECORD_COLUMNS, atomic_write_text, summarize, success_budgets


def rec(i, label, pred, attacked, success, q=-1, l2=float("nan"), linf=float("nan"), queries=0):
    return {"index": i, "label": label, "target": -1, "clean_pred": pred, "attacked": attacked, "success": success,
            "queries": queries, "grad_queries": 0, "queries_at_success": q, "l0": float("nan"), "l2": l2,
            "linf": linf, "seconds": 0.0}


def test_summary_metrics_by_definition():
    records = [rec(0, 1, 1, True, True, q=10, l2=1.0, linf=0.1, queries=10),
               rec(1, 2, 2, True, True, q=30, l2=3.0, linf=0.3, queries=30),
               rec(2, 3, 3, True, True, q=1000, l2=2.0, linf=0.2, queries=1000),
               rec(3, 4, 4, True, False, queries=5000, l2=9.0),  # adversarial outside eps: not a success
               rec(4, 5, 6, False, False)]                       # misclassified clean: not attacked
    s = summarize(records, {"attack": "x", "max_queries": 5000, "seconds": 2.0})
    assert s["n_samples"] == 5 and s["n_correct"] == 4 and s["n_attacked"] == 4 and s["n_success"] == 3
    assert s["clean_accuracy"] == 0.8 and s["success_rate"] == 0.75 and s["robust_accuracy"] == 0.2
    assert s["mean_queries"] == (10 + 30 + 1000) / 3 and s["median_queries"] == 30  # over successes only
    assert s["median_l2"] == 2.0 and math.isclose(s["mean_linf"], 0.2)  # the failure's 9.0 is excluded
    assert s["success_at_queries"] == {"1": 0.0, "10": 0.25, "100": 0.5, "1000": 0.75, "5000": 0.75}
    assert s["total_queries"] == 6040 and s["queries_per_second"] == 3020
    json.dumps(s)  # serialisable


def test_success_budgets():
    assert success_budgets(1) == [1]
    assert success_budgets(40) == [1, 10, 40]
    assert success_budgets(1000) == [1, 10, 100, 1000]


def test_atomic_write_leaves_no_temp(tmp_path):
    atomic_write_text(tmp_path / "a" / "f.txt", "x")
    atomic_write_text(tmp_path / "a" / "f.txt", "y")
    assert (tmp_path / "a" / "f.txt").read_text() == "y"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["f.txt"]
    assert RECORD_COLUMNS[:4] == ["index", "label", "target", "clean_pred"]
