"""Shared fixtures: the embedded MNIST split and a tiny victim trained in seconds."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]

# Under pytest-xdist (`make test` runs `-n auto`), the workers share the cores: each gets its share of torch
# threads, and so do the robench subprocesses they start, instead of every process taking all of them.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
if _WORKERS > 1:
    _THREADS = max(1, (os.cpu_count() or 1) // _WORKERS)
    torch.set_num_threads(_THREADS)
    os.environ["OMP_NUM_THREADS"] = str(_THREADS)


def mnist_cfg(**over):
    cfg = OmegaConf.load(ROOT / "configs" / "dataset" / "mnist.yaml")
    for k, v in over.items():
        cfg[k] = v
    return cfg


@pytest.fixture(scope="session")
def splits():
    from robench.data import load_dataset

    return load_dataset(mnist_cfg())


@pytest.fixture(scope="session")
def victim(splits, tmp_path_factory):
    """cw_mnist naturally trained with the shipped `robench train-defense` defaults (configs/run_train.yaml)
    on the 4,000 embedded training images: about 30 s on 2 CPU cores. Trained once per test session: the
    first xdist worker trains it, under a file lock, and the others load its weights."""
    from filelock import FileLock

    from robench.defenses.natural import Natural
    from robench.models import build_model
    from robench.training.loop import train

    torch.manual_seed(0)
    model = build_model("cw_mnist", splits)
    tcfg = OmegaConf.load(ROOT / "configs" / "run_train.yaml").train
    cache = _victim_cache_path(tcfg, tmp_path_factory)
    cache.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache) + ".lock"):
        if cache.exists():
            blob = torch.load(cache, weights_only=False)
            model.load_state_dict(blob["state"])
            m = blob["metrics"]
            if os.environ.get("ROBENCH_TEST_CACHE"):  # maybe trained in an earlier session, on whatever load it had then
                m = dict(m, from_test_cache=True)
        else:
            m = train(model, Natural(), splits, tcfg, torch.device("cpu"), seed=0, progress=False)
            tmp = cache.with_suffix(".tmp%d" % os.getpid())
            torch.save({"state": model.state_dict(), "metrics": m}, tmp)
            os.replace(tmp, cache)
    model.eval()
    model.metrics = m
    return model


def _victim_cache_path(tcfg, tmp_path_factory):
    """Where the session victim is kept. By default a folder that this session's xdist workers share
    (pytest's base temp folder's parent), so CI trains it from scratch once per session. Opt-in developer
    cache across sessions: ROBENCH_TEST_CACHE=folder. Keyed by the training config and the source of
    everything that shapes the weights, so a code change retrains."""
    import hashlib

    folder = os.environ.get("ROBENCH_TEST_CACHE")
    if not folder:
        base = tmp_path_factory.getbasetemp()
        folder = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    h = hashlib.sha256(OmegaConf.to_yaml(tcfg).encode())
    for rel in ("robench/training/loop.py", "robench/models/mnist_models.py", "robench/models/base.py",
                "robench/data/mnist.py", "robench/data/base.py", "robench/defenses/natural.py"):
        h.update((ROOT / rel).read_bytes())
    h.update(torch.__version__.encode())
    return Path(folder) / f"victim-{h.hexdigest()[:16]}.pt"


@pytest.fixture(scope="session")
def test_xy(splits, victim):
    """The first 200 test images the victim classifies correctly."""
    from robench.data import eval_slice
    from robench.training.loop import predict

    _, x, y = eval_slice(splits, 400)
    ok = predict(victim, x).argmax(1) == y
    return x[ok][:200], y[ok][:200]


def run_cli(*args, cwd=None, env=None, timeout=300, subprocess_=False):
    """Run `robench ARGS` as a user would; returns a CompletedProcess (returncode, stdout, stderr as text).

    By default the command runs in this process through `robench.cli.main` (cwd, argv, stdout and stderr
    swapped in for the call), which is what `python -m robench` runs after start-up; that saves the ~3 s
    of interpreter and torch start-up per call. Tests whose point is the real process (signals, a
    launcher's child processes, environment variables read at start-up, installed entry points) pass
    `subprocess_=True` or an `env`, and get `python -m robench` in a subprocess."""
    if subprocess_ or env:
        e = dict(os.environ)
        e.update(env or {})
        return subprocess.run([sys.executable, "-m", "robench", *args], cwd=cwd or ROOT, env=e, capture_output=True,
                              text=True, timeout=timeout)
    return _run_cli_in_process(list(map(str, args)), cwd or ROOT)


def _run_cli_in_process(args, cwd):
    import contextlib
    import io
    import logging

    from hydra.core.global_hydra import GlobalHydra

    from robench import cli

    out, err = io.StringIO(), io.StringIO()
    old_cwd, old_argv = os.getcwd(), list(sys.argv)
    root = logging.getLogger()
    old_handlers, old_level = list(root.handlers), root.level
    code = 0
    GlobalHydra.instance().clear()
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli.main(args)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                if not isinstance(e.code, (int, type(None))):
                    print(e.code, file=sys.stderr)
            except BaseException:  # what the interpreter would print on the way out, and exit 1
                import traceback

                traceback.print_exc()
                code = 1
    finally:
        os.chdir(old_cwd)
        sys.argv = old_argv
        GlobalHydra.instance().clear()
        for h in list(root.handlers):  # Hydra's per-job log handlers point at this call's streams and run folder
            if h not in old_handlers:
                root.removeHandler(h)
                h.close()
        root.handlers[:] = old_handlers
        root.setLevel(old_level)
    return subprocess.CompletedProcess(["robench", *args], code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def ckpt_dir(tmp_path_factory, victim, splits):
    """A checkpoint folder holding the session victim at its conventional path."""
    from robench.models.checkpoint import checkpoint_path, save_checkpoint

    d = tmp_path_factory.mktemp("ckpt")
    save_checkpoint(checkpoint_path(str(d), {"name": "mnist", "source": "embedded"}, {"name": "cw_mnist", "params": {}}, "none"),
                    victim, {"model": "cw_mnist", "dataset": "mnist", "defense": "none",
                             "clean_accuracy": victim.metrics["clean_accuracy"]})
    return d
