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
def victim(splits):
    """cw_mnist naturally trained with the shipped `robench train-defense` defaults (configs/run_train.yaml)
    on the 4,000 embedded training images: about 30 s on 2 CPU cores."""
    from robench.defenses.natural import Natural
    from robench.models import build_model
    from robench.train import train

    torch.manual_seed(0)
    model = build_model("cw_mnist", splits)
    tcfg = OmegaConf.load(ROOT / "configs" / "run_train.yaml").train
    cache = _victim_cache_path(tcfg)
    if cache is not None and cache.exists():
        blob = torch.load(cache, weights_only=False)
        model.load_state_dict(blob["state"])
        m = blob["metrics"]
    else:
        m = train(model, Natural(), splits, tcfg, torch.device("cpu"), seed=0, progress=False)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp%d" % os.getpid())
            torch.save({"state": model.state_dict(), "metrics": m}, tmp)
            os.replace(tmp, cache)
    model.eval()
    model.metrics = m
    return model


def _victim_cache_path(tcfg):
    """Opt-in developer cache of the session victim (ROBENCH_TEST_CACHE=folder): keyed by the training
    config and the source of everything that shapes the weights, so a code change retrains. CI never
    sets it, so CI always trains from scratch."""
    import hashlib

    folder = os.environ.get("ROBENCH_TEST_CACHE")
    if not folder:
        return None
    h = hashlib.sha256(OmegaConf.to_yaml(tcfg).encode())
    for rel in ("robench/train.py", "robench/models/mnist_models.py", "robench/models/base.py",
                "robench/data/mnist.py", "robench/data/base.py", "robench/defenses/natural.py"):
        h.update((ROOT / rel).read_bytes())
    h.update(torch.__version__.encode())
    return Path(folder) / f"victim-{h.hexdigest()[:16]}.pt"


@pytest.fixture(scope="session")
def test_xy(splits, victim):
    """The first 200 test images the victim classifies correctly."""
    from robench.data import eval_slice
    from robench.train import predict

    _, x, y = eval_slice(splits, 400)
    ok = predict(victim, x).argmax(1) == y
    return x[ok][:200], y[ok][:200]


def run_cli(*args, cwd=None, env=None, timeout=300):
    """Run `python -m robench ...` in a subprocess; returns CompletedProcess with text output."""
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "robench", *args], cwd=cwd or ROOT, env=e, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="session")
def ckpt_dir(tmp_path_factory, victim, splits):
    """A checkpoint folder holding the session victim at its conventional path."""
    from robench.checkpoint import checkpoint_path, save_checkpoint

    d = tmp_path_factory.mktemp("ckpt")
    save_checkpoint(checkpoint_path(str(d), {"name": "mnist", "source": "embedded"}, {"name": "cw_mnist", "params": {}}, "none"),
                    victim, {"model": "cw_mnist", "dataset": "mnist", "defense": "none",
                             "clean_accuracy": victim.metrics["clean_accuracy"]})
    return d
