"""Full MNIST from the four official .gz files (tiny fake files in the same IDX format here)."""
import gzip
import struct

import pytest
import torch
from torch.utils.data import TensorDataset

from robench.data import load_dataset
from robench.data.mnist import MNIST_FILES
from robench.errors import RobenchError
from tests.conftest import mnist_cfg


def _write_idx(path, data: torch.Tensor, truncate: int = 0):
    head = bytes([0, 0, 8, data.dim()]) + struct.pack(f">{data.dim()}I", *data.shape)
    body = data.to(torch.uint8).numpy().tobytes()
    with gzip.open(path, "wb") as f:
        f.write(head + (body[:-truncate] if truncate else body))


def _fake_mnist(folder, n_train=12, n_test=5):
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    data = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = torch.randint(0, 256, (n, 28, 28), generator=g)
        y = torch.randint(0, 10, (n,), generator=g)
        _write_idx(folder / f"{split}-images-idx3-ubyte.gz", x)
        _write_idx(folder / f"{split}-labels-idx1-ubyte.gz", y)
        data[split] = (x, y)
    return data


def test_fake_files_load_as_in_memory_tensors(tmp_path):
    data = _fake_mnist(tmp_path / "MNIST" / "raw")
    for root in (tmp_path, tmp_path / "MNIST" / "raw"):  # torchvision's layout, or the folder of files itself
        s = load_dataset(mnist_cfg(source="torchvision", root=str(root), verify_md5=False))
        assert isinstance(s.train, TensorDataset) and isinstance(s.test, TensorDataset)
        x, y = s.train.tensors
        assert x.shape == (12, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.long
        assert torch.equal((x * 255).round().long().squeeze(1), data["train"][0])
        assert torch.equal(y, data["train"][1])
        assert torch.equal(s.test.tensors[1], data["t10k"][1]) and len(s.test) == 5


def test_md5_mismatch_fails_with_one_line(tmp_path):
    _fake_mnist(tmp_path)
    with pytest.raises(RobenchError, match="has md5 .* expected " + MNIST_FILES["train-images-idx3-ubyte.gz"]) as e:
        load_dataset(mnist_cfg(source="torchvision", root=str(tmp_path)))
    assert "\n" not in str(e.value)


def test_truncated_or_broken_files_fail_with_one_line(tmp_path):
    data = _fake_mnist(tmp_path)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", data["t10k"][0], truncate=100)
    with pytest.raises(RobenchError, match="truncated") as e:
        load_dataset(mnist_cfg(source="torchvision", root=str(tmp_path), verify_md5=False))
    assert "\n" not in str(e.value)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(RobenchError, match="not a readable gzip file") as e:
        load_dataset(mnist_cfg(source="torchvision", root=str(tmp_path), verify_md5=False))
    assert "\n" not in str(e.value)
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + struct.pack(">I", 3) + b"abc")  # labels' header where images belong
    with pytest.raises(RobenchError, match="not an IDX file of 3"):
        load_dataset(mnist_cfg(source="torchvision", root=str(tmp_path), verify_md5=False))


def test_missing_file_names_it(tmp_path):
    _fake_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(RobenchError, match="missing train-labels-idx1-ubyte.gz"):
        load_dataset(mnist_cfg(source="torchvision", root=str(tmp_path), verify_md5=False))


def test_natural_recipe_shift_translates_each_image():
    from robench.defenses.natural import Natural, random_shift

    torch.manual_seed(0)
    x = torch.rand(6, 1, 28, 28)
    assert torch.equal(random_shift(x, 0), x)
    out = random_shift(x, 2)
    for i in range(6):  # each output is its image moved by some (dy, dx) in [-2, 2]^2, zero-filled at the border
        hits = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                if torch.equal(out[i, :, 2:26, 2:26], torch.roll(x[i], (dy, dx), (1, 2))[:, 2:26, 2:26])]
        assert len(hits) == 1
    with pytest.raises(RobenchError, match="shift"):
        Natural(shift=-1)
