"""The summary's numbers, by their invariants over many random record sets (README, "Metrics, exactly").

Each random record set is written to records.csv and read back; an independent function (the csv
module and plain Python, no pandas, no robench code) recomputes every headline number from the file,
and the invariants the README states are checked: 0 <= robust <= clean <= 1, robust = clean x (1 -
success) whenever every correct sample is attacked, misclassified samples attacked under
``correct_only=false`` in no headline number.
"""
from __future__ import annotations

import csv
import math
import random
import statistics

import pytest
import torch

from robench.evaluation import results as R

N_SETS = 300


def random_records(rng: random.Random):
    n = rng.randint(1, 60)
    k = rng.choice([2, 3, 10])
    p_correct, p_attack_wrong = rng.random(), rng.choice([0.0, 0.0, 1.0, rng.random()])
    targeted = rng.random() < 0.3
    mq = rng.choice([1, 10, 100, 5000])
    recs = []
    for i in range(n):
        label = rng.randrange(k)
        correct = rng.random() < p_correct
        pred = label if correct else (label + rng.randrange(1, k)) % k
        target = (label + rng.randrange(0 if rng.random() < 0.2 else 1, k)) % k if targeted else -1
        attacked = (correct or rng.random() < p_attack_wrong) and not (targeted and target == label)
        success = attacked and rng.random() < 0.6
        q = rng.randint(1, mq) if attacked else 0
        r = R.new_record(i, label, target, pred, attacked, i // 7)
        r.update(success=success, queries=q, queries_at_success=rng.randint(1, q) if success else -1,
                 recheck_failed=attacked and not success and rng.random() < 0.1)
        if success:
            r.update(l0=float(rng.randint(1, 784)), l2=rng.uniform(0, 5), linf=rng.uniform(0, 1))
        recs.append(r)
    return recs, mq, targeted


def independent(path):
    """Every headline number from records.csv, with the csv module only (the README's definitions)."""
    rows = list(csv.DictReader(open(path)))
    b = lambda v: v.strip().lower() in ("true", "1")
    n = len(rows)
    correct = [int(r["clean_pred"]) == int(r["label"]) for r in rows]
    head = [r for r, c in zip(rows, correct) if c and b(r["attacked"])]
    succ = [r for r in head if b(r["success"])]
    robust = sum(1 for r, c in zip(rows, correct) if c and not (b(r["attacked"]) and b(r["success"])))
    qs = [int(r["queries_at_success"]) for r in succ]
    out = {"n_samples": n, "n_correct": sum(correct), "n_attacked": len(head), "n_success": len(succ),
           "n_robust": robust, "clean_accuracy": sum(correct) / n, "robust_accuracy": robust / n,
           "success_rate": len(succ) / len(head) if head else math.nan,
           "mean_queries": statistics.fmean(qs) if qs else math.nan,
           "median_queries": statistics.median(qs) if qs else math.nan,
           "mean_queries_all": statistics.fmean(int(r["queries"]) for r in head) if head else math.nan,
           "total_queries": sum(int(r["queries"]) for r in rows),
           "n_attacked_misclassified": sum(1 for r, c in zip(rows, correct) if b(r["attacked"]) and not c)}
    for k in ("l2", "linf", "l0"):
        v = [float(r[k]) for r in succ]
        out[f"mean_{k}"] = statistics.fmean(v) if v else math.nan
        out[f"median_{k}"] = statistics.median(v) if v else math.nan
    return out


def same(a, b):
    if isinstance(b, float) and math.isnan(b):
        return isinstance(a, float) and math.isnan(a)
    return a == pytest.approx(b, rel=1e-9, abs=1e-12)


def test_summary_numbers_equal_an_independent_recomputation_over_random_records(tmp_path):
    rng = random.Random(20261207)
    for s in range(N_SETS):
        recs, mq, targeted = random_records(rng)
        path = tmp_path / f"records{s}.csv"
        R.write_records(path, recs)
        back = R.read_records(path)
        summ = R.summarize(back, {"max_queries": mq, "eps": 0.3, "targeted": targeted})
        want = independent(path)
        for k, v in want.items():
            assert same(summ[k], v), (s, k, summ[k], v)
        clean, robust, sr = summ["clean_accuracy"], summ["robust_accuracy"], summ["success_rate"]
        assert 0 <= robust <= clean <= 1, (s, robust, clean)
        if summ["n_attacked"] == summ["n_correct"] and summ["n_correct"]:  # every correct sample attacked
            assert robust == pytest.approx(clean * (1 - sr), abs=1e-12), s
        for b, frac in summ["success_at_queries"].items():
            head = [r for r in back if r["attacked"] and r["clean_pred"] == r["label"]]
            hit = sum(1 for r in head if r["success"] and r["queries_at_success"] <= int(b))
            assert same(frac, hit / len(head) if head else math.nan), (s, b)


def test_correct_only_false_counts_misclassified_samples_in_no_headline_number(victim, splits):
    """A real run with correct_only=False on a slice holding misclassified images: robust accuracy lies
    between 0 and the clean accuracy and equals the records' correct-and-unbroken count."""
    import robench
    from robench.data import eval_slice
    from robench.training.loop import predict

    _, x, y = eval_slice(splits, 1000)
    wrong = (predict(victim, x).argmax(1) != y).nonzero().flatten()[:5]
    assert len(wrong) >= 2, "the tiny victim misclassifies fewer than 2 of 1,000 test images"
    sel = torch.cat([wrong, torch.arange(30)])
    res = robench.evaluate(victim, x[sel], y[sel], attack="fgsm", budget=robench.Budget("linf", 0.3, max_queries=5),
                           correct_only=False)
    s, r = res.summary, res.records
    correct = r.clean_pred == r.label
    assert s["n_attacked_misclassified"] == int((~correct).sum()) >= 2
    assert 0 <= s["robust_accuracy"] <= s["clean_accuracy"]
    assert s["robust_accuracy"] == int((correct & ~r.success.astype(bool)).sum()) / len(r)
    assert s["n_attacked"] == int(correct.sum())
