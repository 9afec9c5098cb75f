"""robench reproduce: paper vs robench tables from (synthetic) finished run folders."""
import json
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from robench.errors import RobenchError
from robench.reproduce import reproduce
from tests.conftest import ROOT


def _attack_run(d, attack, *, targeted, norm, eps, rows, checkpoints=None, source="torchvision"):
    d.mkdir(parents=True)
    recs = []
    for r in rows:
        rec = {"index": r["index"], "label": 0, "target": r.get("target", -1), "clean_pred": 0, "attacked": True,
               "success": r["success"], "queries": r.get("queries", 10), "grad_queries": 0,
               "queries_at_success": r.get("queries", 10) if r["success"] else None,
               "l0": 1, "l2": r.get("l2", 1.0), "linf": r.get("linf", 0.3), "seconds": 0.1, "batch": 0,
               "batch_seconds": 0.1, "recheck_failed": False}
        for q, v in (r.get("cps") or {}).items():
            rec[f"dist_at_{q}"] = v
        recs.append(rec)
    pd.DataFrame(recs).to_csv(d / "records.csv", index=False)
    succ = [r for r in rows if r["success"]]
    s = {"command": "attack", "attack": attack, "dataset": "mnist", "model": "cw_mnist", "norm": norm, "eps": eps,
         "targeted": targeted, "n_attacked": len(rows), "success_rate": len(succ) / len(rows),
         "median_queries": float(pd.Series([r.get("queries", 10) for r in succ]).median()) if succ else None,
         "checkpoints": checkpoints or []}
    (d / "summary.json").write_text(json.dumps(s))
    (d / "config.yaml").write_text(yaml.safe_dump({"dataset": {"source": source}}))


def test_table_2_1_with_ceiling(tmp_path):
    pairs = [{"index": i, "target": (i + 1) % 10} for i in range(4)]
    _attack_run(tmp_path / "0", "cw_linf", targeted=True, norm="linf", eps=0.3,
                rows=[{**p, "success": True} for p in pairs])
    _attack_run(tmp_path / "2", "genattack", targeted=True, norm="linf", eps=0.3,
                rows=[{**p, "success": i < 3, "queries": 100 * (i + 1)} for i, p in enumerate(pairs)])
    out = reproduce([tmp_path])
    line = next(ln for ln in out.splitlines() if ln.startswith("| GenAttack"))
    cells = [c.strip() for c in line.split("|")]
    assert cells[5:8] == ["100.0%", "75.0%", "-25.0 pt"]
    assert cells[8:11] == ["996", "200", "-796"]      # paper median, robench median over successes, difference
    assert cells[11] == "100.0% of 4"                   # the white-box run on the same (image, target) pairs
    assert "| C&W | cw_linf |" in out


def test_table_2_2_ratio_to_floor(tmp_path):
    cps = {4000: 3.0, 8000: 2.0, 14000: 1.2}
    _attack_run(tmp_path / "signopt", "signopt", targeted=False, norm="l2", eps=1.5,
                rows=[{"index": i, "success": True, "l2": 1.2, "cps": cps} for i in range(3)])
    _attack_run(tmp_path / "cw", "cw_l2", targeted=False, norm="l2", eps=1.5,
                rows=[{"index": i, "success": True, "l2": 1.0} for i in range(4)])  # one image more: left out
    _attack_run(tmp_path / "fmn", "fmn", targeted=False, norm="l2", eps=1.5,
                rows=[{"index": i, "success": True, "l2": 0.8 if i == 0 else 1.1} for i in range(3)])
    out = reproduce([tmp_path])
    assert "3 images attacked by every run" in out
    # floor: per-image minimum of cw (1.0) and fmn (0.8, 1.1, 1.1) = 0.8, 1.0, 1.0 -> mean 0.933
    assert "mean L2 0.933" in out
    row = [c.strip() for c in next(ln for ln in out.splitlines() if ln.startswith("| Sign-OPT | 14,000")).split("|")]
    assert row[3:6] == ["1.09", "1.200", "+0.110"]
    assert row[10:12] == ["1.24", "1.29"]   # paper 1.09 / 0.88; robench 1.2 / 0.933
    assert "| Sign-OPT | 4,000 | 1.54 | 3.000 |" in out


def test_nothing_to_reproduce_is_one_line(tmp_path):
    with pytest.raises(RobenchError, match="no finished run"):
        reproduce([tmp_path])
    r = subprocess.run([sys.executable, "-m", "robench", "reproduce", str(tmp_path / "missing")], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "does not exist" in r.stderr


def test_table_2_2_new_rows_and_linf_variant(tmp_path):
    """Guessing Smart carries the paper's row; the Linf runs get their own table on the shared images."""
    _attack_run(tmp_path / "gs", "guessing_smart", targeted=False, norm="l2", eps=1.5,
                rows=[{"index": i, "success": True, "cps": {4000: 1.0 + i}} for i in range(2)])
    _attack_run(tmp_path / "svm", "svm_opt", targeted=False, norm="l2", eps=1.5,
                rows=[{"index": i, "success": True, "cps": {4000: 1.4}} for i in range(2)])
    _attack_run(tmp_path / "opt_linf", "opt", targeted=False, norm="linf", eps=0.3,
                rows=[{"index": i, "success": i < 2, "cps": {4000: [0.25, 0.3, 0.5][i]}} for i in range(3)])
    _attack_run(tmp_path / "so_linf", "signopt", targeted=False, norm="linf", eps=0.3,
                rows=[{"index": i, "success": True, "cps": {4000: 0.2}} for i in range(2)])  # image 2 missing
    out = reproduce([tmp_path])
    assert "| Guessing Smart | 4,000 | 1.74 | 1.500 | -0.240 | 1.500 | 41.0% | 50.0% |" in out
    assert "| SVM-OPT | 4,000 | - | 1.400 |" in out
    linf = out[out.index("Linf variant"):]
    assert "2 images attacked by every run below; success at Linf 0.3." in linf
    assert "| OPT | 4,000 | 0.2750 | 0.2750 | 100.0% |" in linf
    assert "| Sign-OPT | 4,000 | 0.2000 | 0.2000 | 100.0% |" in linf
    assert "Guessing Smart" not in linf
