"""Sweeps end to end, in subprocesses as a user runs them: the joblib and submitit launchers for real,
sharding (merged shards == the unsharded run) and resuming a killed sweep."""
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from tests.conftest import ROOT, run_cli

RANDOM_COLUMNS = ["seconds", "batch_seconds"]  # wall times; everything else must match exactly


def _records(folder):
    return pd.read_csv(folder / "records.csv").drop(columns=RANDOM_COLUMNS).sort_values("index").reset_index(drop=True)


@pytest.mark.slow
def test_joblib_sweep_runs_jobs_in_parallel_then_report_with_plots(tmp_path, ckpt_dir):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "sweep"
    p = run_cli("attack", "-m", "launcher=joblib", "hydra.launcher.n_jobs=2", "budget.eps=0.1,0.3",
                "attack.params.steps=5,10", "dataset.n_samples=20", f"checkpoint_dir={ckpt_dir}",
                f"hydra.sweep.dir={sweep}", cwd=tmp_path, subprocess_=True)  # the launcher's workers: a real process
    assert p.returncode == 0, p.stderr
    sums = [json.loads(f.read_text()) for f in sorted(sweep.glob("*/summary.json"))]
    assert len(sums) == 4
    # two loky worker processes ran the jobs (the basic launcher runs them all in one process)
    assert len({s["pid"] for s in sums}) == 2
    assert "sweep: 4/4 jobs complete" in p.stderr
    for d in sweep.glob("[0-9]*"):  # robench's own messages reach each job's log file
        assert "batch 0 done" in (d / "attack.log").read_text()
    p = run_cli("report", str(sweep), "--rows", "attack.params.steps", "--cols", "eps", "--plots", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    piv = pd.read_csv(sweep / "pivot-robust_accuracy.csv", index_col=0)
    assert piv.shape == (2, 2) and (piv["0.1"] > piv["0.3"]).all()  # more eps, less robust accuracy
    assert (sweep / "robust_acc_vs_eps.png").stat().st_size > 5000 and (sweep / "robust_acc_vs_eps.svg").exists()
    assert "data:image/png;base64," in (sweep / "report.html").read_text()
    assert "robust_accuracy" in p.stdout and "attack.params.steps" in p.stdout


@pytest.mark.slow
def test_submitit_launcher_local_mode(tmp_path, ckpt_dir):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    p = run_cli("attack", "-m", "launcher=submitit_local", "budget.eps=0.1,0.3", "dataset.n_samples=20", "--quiet",
                f"checkpoint_dir={ckpt_dir}", f"hydra.sweep.dir={sweep}", cwd=tmp_path, subprocess_=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "" and p.stderr.strip() == ""  # --quiet
    sums = {json.loads(f.read_text())["eps"]: json.loads(f.read_text()) for f in sweep.glob("*/summary.json")}
    assert set(sums) == {0.1, 0.3} and sums[0.3]["success_rate"] > sums[0.1]["success_rate"]
    assert any((sweep / ".submitit").rglob("*_result.pkl"))  # submitit ran them as its own jobs


def test_sharded_run_equals_unsharded(tmp_path, ckpt_dir):
    """Random start and random targets: the merged shards reproduce the unsharded run exactly."""
    common = ["dataset.n_samples=60", "dataset.offset=7", "attack.batch_size=10", "attack.params.steps=10",
              "budget.eps=0.15", "budget.targeted=true", "progress=false", f"checkpoint_dir={ckpt_dir}"]
    one, shards = tmp_path / "one", tmp_path / "shards"
    p = run_cli("attack", *common, f"hydra.run.dir={one}", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    p = run_cli("attack", "-m", "dataset.shard=0/4,1/4,2/4,3/4", *common, f"hydra.sweep.dir={shards}", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    parts = [pd.read_csv(shards / str(i) / "records.csv") for i in range(4)]
    assert [len(x) for x in parts] == [20, 20, 10, 10]  # whole batches of 10: 2, 2, 1, 1
    merged = pd.concat(parts).drop(columns=RANDOM_COLUMNS).sort_values("index").reset_index(drop=True)
    pd.testing.assert_frame_equal(merged, _records(one))
    p = run_cli("report", str(one), str(shards), "--out", str(tmp_path / "rep"), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    df = pd.read_csv(tmp_path / "rep" / "report.csv")
    assert len(df) == 2 and df.shards.fillna(0).tolist() == [0, 4] or sorted(df.shards.fillna(0)) == [0, 4]
    a, b = df.iloc[0], df.iloc[1]
    for c in ("samples", "clean acc", "success rate", "robust acc", "mean queries", "median queries", "mean L2",
              "median L2", "median Linf"):
        assert a[c] == pytest.approx(b[c]), c
    assert 0 < a["success rate"] < 1  # a run where the random draws matter


def _wait_for(cond, proc, timeout=240):
    t0 = time.time()
    while not cond():
        assert proc.poll() is None, "the sweep ended before it could be interrupted"
        assert time.time() - t0 < timeout
        time.sleep(0.02)


@pytest.mark.slow
def test_killed_sweep_resumes_with_nothing_lost_or_doubled(tmp_path, ckpt_dir):
    # 2 jobs x 4 batches of 10 samples; early_stop=false keeps every sample for all its steps
    args = ["attack", "-m", "budget.eps=0.1,0.2", "dataset.n_samples=40", "attack.batch_size=10",
            "attack.params.steps=40", "attack.params.early_stop=false", "progress=false", f"checkpoint_dir={ckpt_dir}"]
    sweep, ref = tmp_path / "sweep", tmp_path / "ref"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "robench", *args, f"hydra.sweep.dir={sweep}"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def job1_has_two_batches():
        try:
            return json.loads((sweep / "1" / "progress.json").read_text())["batches_done"] >= 2
        except (OSError, ValueError):
            return False
    try:
        _wait_for(job1_has_two_batches, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (sweep / "0" / "summary.json").exists() and not (sweep / "1" / "summary.json").exists()
    left = pd.read_csv(sweep / "1" / "records.csv")
    done_before = len(left[~left["pending"]]) if "pending" in left else len(left)  # pending rows: mid-batch, dropped on resume
    assert done_before % 10 == 0 and 20 <= done_before < 40  # whole batches only
    job0 = (sweep / "0" / "summary.json").read_text()

    p = run_cli(*args, f"hydra.sweep.dir={sweep}", cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr
    assert (sweep / "0" / "summary.json").read_text() == job0  # complete job skipped, untouched
    s1 = json.loads((sweep / "1" / "summary.json").read_text())
    assert s1["resumed_batches"] >= done_before // 10
    # the reference: job 1 run without interruption
    p = run_cli("attack", *args[3:], "budget.eps=0.2", f"hydra.run.dir={ref}", cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr
    r = _records(sweep / "1")
    assert len(r) == 40 and r["index"].is_unique
    pd.testing.assert_frame_equal(r, _records(ref))
    sref = json.loads((ref / "summary.json").read_text())
    for k in ("n_attacked", "n_success", "success_rate", "total_queries", "median_queries", "median_l2"):
        assert s1[k] == sref[k], k
    # a different config in the same folder is refused, in one line
    p = run_cli(*[a.replace("steps=40", "steps=20") for a in args], f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert p.returncode == 2 and "holds a run with a different config (differs in attack.params.steps)" in p.stderr
