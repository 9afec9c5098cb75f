import pytest
import torch

from robench.data import eval_slice, load_dataset
from robench.data.base import eval_indices
from robench.errors import RobenchError
from tests.conftest import mnist_cfg


def test_embedded_mnist_split(splits):
    xtr, ytr = splits.train.tensors
    xte, yte = splits.test.tensors
    assert xtr.shape == (4000, 1, 28, 28) and xte.shape == (1000, 1, 28, 28)
    assert xtr.dtype == torch.float32 and 0 <= float(xtr.min()) and float(xtr.max()) <= 1
    assert float(xtr.max()) == 1.0  # scaled from 0..255, not left in 0..255 or squashed
    # the shipped subset is sorted by class: the split must be shuffled, every class on both sides
    assert set(yte.tolist()) == set(range(10)) and set(ytr.tolist()) == set(range(10))
    assert (yte[1:] != yte[:-1]).float().mean() > 0.5
    assert torch.bincount(ytr).min() > 300
    # disjoint: no test image appears in the training split
    h = lambda x: {hash(r.numpy().tobytes()) for r in x.flatten(1)}
    assert not (h(xtr) & h(xte))


def test_split_is_deterministic_and_seeded():
    a = load_dataset(mnist_cfg()).test.tensors[1]
    b = load_dataset(mnist_cfg()).test.tensors[1]
    c = load_dataset(mnist_cfg(split_seed=1)).test.tensors[1]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_offset_n_samples_and_shards_partition_the_slice():
    full = eval_indices(1000, 103, 10, None)
    assert full.tolist() == list(range(10, 113))
    parts = [eval_indices(1000, 103, 10, f"{i}/4") for i in range(4)]
    assert torch.cat(parts).tolist() == full.tolist()
    assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1


@pytest.mark.parametrize("shard", ["4/4", "x", "1/0", "-1/2"])
def test_bad_shard(shard):
    with pytest.raises(RobenchError, match="shard"):
        eval_indices(1000, None, 0, shard)


def test_eval_slice_tensors(splits):
    idx, x, y = eval_slice(splits, 5, offset=3)
    assert idx.tolist() == [3, 4, 5, 6, 7] and x.shape == (5, 1, 28, 28)
    assert torch.equal(y, splits.test.tensors[1][3:8])


def test_offline_missing_datasets_fail_with_a_hint(tmp_path):
    from omegaconf import OmegaConf

    with pytest.raises(RobenchError, match="dataset.download=true"):
        load_dataset(OmegaConf.create({"name": "cifar10", "root": str(tmp_path), "download": False}))
    with pytest.raises(RobenchError, match="dataset.root=DIR"):
        load_dataset(OmegaConf.create({"name": "imagenet", "root": str(tmp_path)}))
    with pytest.raises(RobenchError, match="MNIST not found"):
        load_dataset(mnist_cfg(source="torchvision", root=str(tmp_path)))
