"""ONNX files as users export them today (robench/models/onnx_source.py): a LeNet with BatchNorm exported by
the installed torch at its default opset (20 on torch 2.14: onnx2torch 1.5 converts its ``Shape`` only
up to opset 18) gives the records of the same network as ``model=module``, for PGD and Square; a network
onnx2torch cannot convert at any opset (GELU exists only since opset 20) runs through onnxruntime for
score- and label-access attacks, and a gradient attack on it is refused in one line before anything is
written."""
from __future__ import annotations

import textwrap

import pandas as pd
import pytest
import torch

from tests.conftest import run_cli

PGD = ["attack=pgd", "attack.params.steps=10"]
SQUARE = ["attack=square", "budget.max_queries=150"]
TIME_COLUMNS = ["seconds", "batch_seconds"]


def attack(run_dir, *overrides):
    """``robench attack`` as a user runs it (in this process); returns (records without time columns, summary)."""
    import json

    p = run_cli("attack", "--quiet", "progress=false", *overrides, f"hydra.run.dir={run_dir}", cwd=run_dir.parent)
    assert p.returncode == 0, p.stderr
    rec = pd.read_csv(run_dir / "records.csv").drop(columns=TIME_COLUMNS)
    return rec, json.loads((run_dir / "summary.json").read_text())

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnx2torch")

LENET = textwrap.dedent("""
    import torch.nn as nn
    import torch.nn.functional as F

    class LeNetBN(nn.Module):
        '''LeNet-5 with BatchNorm after each convolution, flattened with view (as many user nets are).'''
        def __init__(self, num_classes=10, act="relu"):
            super().__init__()
            self.act = nn.GELU() if act == "gelu" else nn.ReLU()
            self.c1, self.b1 = nn.Conv2d(1, 6, 5), nn.BatchNorm2d(6)
            self.c2, self.b2 = nn.Conv2d(6, 16, 5), nn.BatchNorm2d(16)
            self.f1, self.f2, self.f3 = nn.Linear(256, 120), nn.Linear(120, 84), nn.Linear(84, num_classes)

        def forward(self, x):
            x = F.max_pool2d(self.act(self.b1(self.c1(x))), 2)
            x = F.max_pool2d(self.act(self.b2(self.c2(x))), 2)
            x = x.view(x.size(0), -1)
            return self.f3(self.act(self.f2(self.act(self.f1(x)))))
    """)


def _train(net, splits, n=2000, epochs=2, seed=0):
    """A few seconds of Adam on the embedded training images: accurate enough to be attacked."""
    torch.manual_seed(seed)
    x, y = splits.train.tensors
    x, y = x[:n], y[:n]
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    net.train()
    for _ in range(epochs):
        for i in torch.randperm(n).split(100):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x[i]), y[i]).backward()
            opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def lenets(tmp_path_factory, splits):
    """LeNet-BN (ReLU) and its GELU twin: a user module file, state dicts, and ONNX files exported with
    the README's command at the installed torch's default opset."""
    import importlib.util

    d = tmp_path_factory.mktemp("lenet")
    (d / "lenet.py").write_text(LENET)
    spec = importlib.util.spec_from_file_location("lenet_user", d / "lenet.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    files = {"dir": d}
    for act in ("relu", "gelu"):
        net = _train(mod.LeNetBN(act=act), splits)
        torch.save(net.state_dict(), d / f"{act}.pt")
        x = torch.rand(2, 1, 28, 28)
        torch.onnx.export(net, (x,), str(d / f"{act}.onnx"), dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "n"}})
        files[act] = (d / f"{act}.pt", d / f"{act}.onnx", net)
    return files


def _module(files, act):
    return ["model=module", f"model.target={files['dir'] / 'lenet.py'}:LeNetBN", f"+model.params={{act: {act}}}",
            f"model.weights={files[act][0]}"]


def test_default_opset_export_converts(lenets):
    """The file is at torch's default opset, which onnx2torch cannot take as it is; the version
    converter brings it to one it can, and the module computes the network's logits."""
    from torch.onnx._constants import ONNX_DEFAULT_OPSET

    from robench.models.onnx_source import load_onnx, plan

    path = lenets["relu"][1]
    own, target, why = plan(path)
    assert own == ONNX_DEFAULT_OPSET == onnx.load(str(path)).opset_import[0].version
    assert target is not None and target <= own and why == ""
    net, meta = load_onnx(path)
    assert meta["onnx_opset"] == own and meta.get("onnx_converted_opset", own) == target
    x = torch.rand(64, 1, 28, 28)
    with torch.no_grad():
        assert (net(x) - lenets["relu"][2](x)).abs().max().item() < 1e-4


@pytest.mark.parametrize("att", [PGD, SQUARE], ids=["pgd", "square"])
def test_default_opset_export_gives_the_module_records(att, lenets, tmp_path):
    common = ["dataset.n_samples=30", *att]
    base, s0 = attack(tmp_path / "module", *_module(lenets, "relu"), *common)
    rec, s1 = attack(tmp_path / "onnx", "model=onnx", f"model.path={lenets['relu'][1]}", *common)
    assert int(base.attacked.sum()) >= 20 and int(base.success.sum()) >= 1
    pd.testing.assert_frame_equal(rec, base)
    assert s1["onnx_opset"] >= 19 and s1["model_source"] == "onnx"


def test_unconvertible_file_runs_through_onnxruntime_without_gradients(lenets, tmp_path):
    """GELU at opset 20: no lower opset has Gelu and onnx2torch has no converter for it. Square (scores)
    runs through onnxruntime: the same clean predictions as the module, successes certified by the
    oracle; PGD is refused in one line, before any folder is made."""
    pytest.importorskip("onnxruntime")
    from robench.models.onnx_source import load_onnx, plan

    pt, path, net = lenets["gelu"]
    own, target, why = plan(path)
    assert target is None and "cannot convert its Gelu (version 20) at opset 20" in why
    m, meta = load_onnx(path)
    assert meta["onnx_runtime"] is True and "gives no input gradients" in m.gradient_free
    x = torch.rand(64, 1, 28, 28)
    with torch.no_grad():
        assert (m(x) - net(x)).abs().max().item() < 1e-4

    common = ["dataset.n_samples=30", *SQUARE]
    base, _ = attack(tmp_path / "module", *_module(lenets, "gelu"), *common)
    rec, s = attack(tmp_path / "ort", "model=onnx", f"model.path={path}", *common)
    assert s["onnx_runtime"] is True and s["access"] == "scores"
    assert (rec.clean_pred == base.clean_pred).all() and (rec.attacked == base.attacked).all()
    assert int(rec.attacked.sum()) >= 15 and int(rec.success.sum()) >= 1
    assert (rec[rec.success].linf <= 0.3 + 1e-5).all()

    run = tmp_path / "pgd"
    p = run_cli("attack", "model=onnx", f"model.path={path}", "attack=pgd", "dataset.n_samples=10",
                f"hydra.run.dir={run}", cwd=tmp_path)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "runs gelu.onnx through onnxruntime" in p.stderr and "attack=pgd needs input gradients" in p.stderr
    assert not run.exists()
    p = run_cli("train-defense", "model=onnx", f"model.path={path}", "defense=none", f"checkpoint_dir={tmp_path}/ck",
                f"hydra.run.dir={tmp_path}/train", cwd=tmp_path)
    assert p.returncode == 2 and "train-defense trains through the model's gradients" in p.stderr, p.stderr
    assert not (tmp_path / "train").exists()
