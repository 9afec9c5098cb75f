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
# ROBENCH_TEST_THREADS=N sets every worker's thread count instead (CI runs the suite once with 2, so that no
# test depends on the summation order one thread count gives).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
_FORCED = os.environ.get("ROBENCH_TEST_THREADS")
if _WORKERS > 1 or _FORCED:
    _THREADS = int(_FORCED) if _FORCED else max(1, (os.cpu_count() or 1) // _WORKERS)
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


#: the suite's victim: committed weights (tests/fixtures/make_victim.py says how they were made)
VICTIM_FIXTURE = ROOT / "tests" / "fixtures" / "cw_mnist_natural.pt"
#: ROBENCH_TEST_PERTURB=1e-5: every test victim's weights get a relative Gaussian noise of that size (seeded),
#: to prove that no test depends on the last bits of the weights (another CPU rounds differently)
PERTURB = float(os.environ.get("ROBENCH_TEST_PERTURB", "0") or 0)


def perturb(model: torch.nn.Module, rel: float = PERTURB, seed: int = 1234) -> torch.nn.Module:
    """Multiply every trained parameter by (1 + rel * N(0, 1)), elementwise (in place). Buffers stay: the
    input normalisation is the dataset's, not a learnt weight."""
    if rel:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for t in model.parameters():
                t.mul_(1 + rel * torch.randn(t.shape, generator=g))
    return model


def fixture_victim(splits, rel: float = PERTURB) -> torch.nn.Module:
    """cw_mnist with the committed weights (int8 per tensor, see tests/fixtures/make_victim.py), perturbed
    when ROBENCH_TEST_PERTURB is set; ``.metrics`` holds what the training that made it measured."""
    from robench.models import build_model

    blob = torch.load(VICTIM_FIXTURE, weights_only=True)
    model = build_model("cw_mnist", splits)
    model.load_state_dict({k: v["q"].float() * v["scale"] for k, v in blob["weights"].items()})
    perturb(model, rel)
    model.eval()
    model.metrics = dict(blob["metrics"])
    return model


@pytest.fixture(scope="session")
def victim(splits):
    """cw_mnist naturally trained with the shipped `robench train-defense` defaults (configs/run_train.yaml)
    on the 4,000 embedded training images; its weights are committed (tests/fixtures), so every machine
    attacks the same network. tests/test_train.py trains the defaults itself."""
    return fixture_victim(splits)


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
