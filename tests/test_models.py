import pytest
import torch

from robench.models.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint, train_command
from robench.data.base import DatasetSplits
from robench.errors import RobenchError
from robench.models import build_model


def fake_splits(shape, k):
    return DatasetSplits("fake", None, None, k, shape, (0.5,) * shape[0], (0.25,) * shape[0])


@pytest.mark.parametrize("name,shape,k,params", [
    ("cw_mnist", (1, 28, 28), 10, {}), ("small_cnn", (1, 28, 28), 10, {"depth": 5, "width": 8}),
    ("small_cnn", (1, 28, 28), 10, {"depth": 1, "width": 4}), ("cw_cifar", (3, 32, 32), 10, {}),
    ("resnet18", (3, 32, 32), 10, {}), ("preact_resnet18", (3, 32, 32), 10, {}), ("wrn_34_10", (3, 32, 32), 10, {}),
    ("vgg16", (3, 32, 32), 10, {}), ("resnet50", (3, 224, 224), 1000, {"pretrained": False}),
    ("inception_v3", (3, 299, 299), 1000, {"pretrained": False})])
def test_models_forward(name, shape, k, params):
    m = build_model(name, fake_splits(shape, k), params).eval()
    with torch.no_grad():
        out = m(torch.rand(2, *shape))
    assert out.shape == (2, k) and torch.isfinite(out).all()


def test_normalization_lives_inside_the_model():
    m = build_model("cw_mnist", fake_splits((1, 28, 28), 10)).eval()
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(m(x), m.net((x - 0.5) / 0.25), atol=1e-6)


def test_small_cnn_capacity_grows_with_depth_and_width():
    n = lambda **p: sum(q.numel() for q in build_model("small_cnn", fake_splits((1, 28, 28), 10), p).parameters())
    assert n(depth=2, width=16) < n(depth=4, width=16) < n(depth=4, width=32)


def test_bad_model_params_one_line():
    with pytest.raises(RobenchError, match="does not accept"):
        build_model("cw_mnist", fake_splits((1, 28, 28), 10), {"wings": 2})


def test_checkpoint_roundtrip_and_errors(tmp_path):
    sp = fake_splits((1, 28, 28), 10)
    dcfg, mcfg = {"name": "mnist", "source": "embedded"}, {"name": "small_cnn", "params": {"depth": 3, "width": 8}}
    path = checkpoint_path(str(tmp_path), dcfg, mcfg, "none")
    assert path == tmp_path / "mnist" / "small_cnn-depth3-width8" / "none.pt"
    cmd = train_command(dcfg, mcfg, "none", str(tmp_path))
    assert cmd.startswith("robench train-defense dataset=mnist model=small_cnn defense=none")
    assert "model.params.depth=3" in cmd and f"checkpoint_dir={tmp_path}" in cmd

    a = build_model("small_cnn", sp, mcfg["params"])
    with pytest.raises(RobenchError, match="no checkpoint at .*create it with `robench train-defense"):
        load_checkpoint(path, a, remake=cmd)
    save_checkpoint(path, a, {"model": "small_cnn", "clean_accuracy": 0.5})
    b = build_model("small_cnn", sp, mcfg["params"])
    meta = load_checkpoint(path, b, remake=cmd)
    assert meta["clean_accuracy"] == 0.5
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    # wrong architecture
    with pytest.raises(RobenchError, match="does not fit model"):
        load_checkpoint(path, build_model("cw_mnist", sp), remake=cmd)
    # corrupt file
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(RobenchError, match="unreadable"):
        load_checkpoint(path, b, remake=cmd)
    assert not list(path.parent.glob("*.tmp*"))
