"""``launcher=ray`` on a real Ray cluster (robench's own plugin, hydra_plugins/robench_ray_launcher): `ray start
--head` on 127.0.0.1 in a temporary folder, a 4-job sweep sent to its address, records equal to the local
launcher's; the cluster (and only it: its own process group) is stopped at the end.

Slow for a test: about 40-60 s on 2 CPU cores (cluster start 10-15 s, the sweep through Ray 15-20 s, the
same sweep locally 5-10 s, the cluster's stop up to 6 s). Needs the ray extra (`pip install 'robench[ray]'`),
which .ci/run installs; elsewhere it skips without it."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import run_cli

TIME_COLUMNS = ["seconds", "batch_seconds"]
SWEEP = ["budget.eps=0.1,0.3", "attack=fgsm,square", "dataset.n_samples=20", "attack.batch_size=20",
         "budget.max_queries=50", "progress=false"]

#: a one-machine cluster: every Ray process binds and advertises 127.0.0.1 (Ray otherwise resolves
#: 127.0.0.1 to the machine's outward address), no usage statistics
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def _ray_or_skip():
    try:
        import ray  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("ray is not installed: .ci/run installs the ray extra (pip install -e '.[ray]')")
        pytest.skip("needs the ray extra: pip install 'robench[ray]'")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster():
    """`ray start --head --block` in its own process group and a short temporary folder (Ray's socket
    paths must stay under 108 characters); yields its address; stops the group (SIGTERM, then SIGKILL)."""
    _ray_or_skip()
    ray_cli = Path(sys.executable).with_name("ray")
    folder = Path(tempfile.mkdtemp(prefix="rbray-", dir="/tmp"))
    port = _free_port()
    log = open(folder / "start.log", "w")
    env = dict(os.environ, **RAY_ENV)
    proc = subprocess.Popen([str(ray_cli), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                             f"--temp-dir={folder}", "--num-cpus=2", "--object-store-memory=100000000",
                             "--include-dashboard=false", "--disable-usage-stats", "--block"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        t0 = time.time()
        while "Ray runtime started" not in (folder / "start.log").read_text():
            assert proc.poll() is None, f"ray start failed:\n{(folder / 'start.log').read_text()[-2000:]}"
            assert time.time() - t0 < 120, "ray start did not finish within 120 s"
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            t0 = time.time()
            while time.time() - t0 < wait and _group_alive(proc.pid):
                proc.poll()
                time.sleep(0.2)
            if not _group_alive(proc.pid):
                break
        proc.wait(timeout=10)
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _records(folder):
    return pd.read_csv(folder / "records.csv").drop(columns=TIME_COLUMNS).sort_values("index").reset_index(drop=True)


@pytest.mark.slow
def test_ray_cluster_sweep_equals_the_local_launcher(ray_cluster, ckpt_dir, tmp_path):
    t0 = time.time()
    ray_sweep, local_sweep = tmp_path / "ray", tmp_path / "local"
    p = run_cli("attack", "-m", "launcher=ray", f"hydra.launcher.ray.init.address={ray_cluster}", *SWEEP,
                f"checkpoint_dir={ckpt_dir}", f"hydra.sweep.dir={ray_sweep}", cwd=tmp_path, env=RAY_ENV, timeout=400)
    assert p.returncode == 0, p.stderr[-3000:]
    out = p.stdout + p.stderr
    assert f"Connecting to existing Ray cluster at address: {ray_cluster}" in out
    assert out.count("(run_job_in_task pid=") >= 4  # each job's table came back from a Ray worker
    ray_seconds = time.time() - t0
    p = run_cli("attack", "-m", *SWEEP, f"checkpoint_dir={ckpt_dir}", f"hydra.sweep.dir={local_sweep}", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    jobs = sorted(d.name for d in local_sweep.iterdir() if (d / "summary.json").exists())
    assert jobs == ["0", "1", "2", "3"]
    assert sorted(d.name for d in ray_sweep.iterdir() if (d / "summary.json").exists()) == jobs
    workers = set()
    for j in jobs:
        pd.testing.assert_frame_equal(_records(ray_sweep / j), _records(local_sweep / j))
        a, b = (json.loads((s / j / "summary.json").read_text()) for s in (ray_sweep, local_sweep))
        assert (a["attack"], a["eps"]) == (b["attack"], b["eps"])
        for k in ("n_attacked", "n_success", "success_rate", "robust_accuracy", "total_queries", "median_l2"):
            assert a[k] == b[k] or (pd.isna(a[k]) and pd.isna(b[k])), (j, k)
        workers.add(a["pid"])
    assert os.getpid() not in workers
    print(f"Ray sweep: {ray_seconds:.1f} s")


def test_launcher_ray_without_ray_is_one_line(monkeypatch, tmp_path):
    """Without the ray package, launcher=ray says which extra to install, before anything runs."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    p = run_cli("attack", "-m", "launcher=ray", "budget.eps=0.1,0.2", f"hydra.sweep.dir={tmp_path}/s", cwd=tmp_path)
    assert p.returncode == 2 and p.stderr.strip() == \
        "robench: error: launcher=ray needs the ray package: pip install 'robench[ray]'", p.stderr
    assert not (tmp_path / "s").exists()
