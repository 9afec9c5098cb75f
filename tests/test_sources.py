"""Model and data sources (robench/models/sources.py, robench/data/sources.py): the default victim exported
three ways attacks like the built-in run, a RobustBench architecture loads from its cache layout offline,
PNG folders and tensor files give the records of dataset=mnist, and every bad input is one line."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

from robench.errors import RobenchError
from tests.conftest import run_cli

MNIST_NORM = ["model.mean=[0.1307]", "model.std=[0.3081]"]
PGD = ["attack=pgd", "attack.params.steps=10"]
SQUARE = ["attack=square", "budget.max_queries=100"]
TIME_COLUMNS = ["seconds", "batch_seconds"]

USER_NET = textwrap.dedent("""
    import torch.nn as nn

    class Net(nn.Sequential):
        '''A user's own copy of the Carlini-Wagner MNIST network (no robench import).'''
        def __init__(self, num_classes=10, width=32):
            features = nn.Sequential(
                nn.Conv2d(1, width, 3), nn.ReLU(), nn.Conv2d(width, width, 3), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(width, 64, 3), nn.ReLU(), nn.Conv2d(64, 64, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
            super().__init__(features, nn.Linear(1024, 200), nn.ReLU(), nn.Dropout(0.0),
                             nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, num_classes))
    """)


def compose(*overrides, name="run_attack"):
    from hydra import compose as hcompose, initialize_config_dir

    from robench.config import configs_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(configs_dir())):
        return hcompose(name, overrides=list(overrides))


def attack(run_dir: Path, *overrides):
    """``robench attack`` in this process; returns (records without time columns, summary)."""
    from robench.cli.attack_job import run_attack
    from robench.evaluation.folder import RunFolder

    cfg = compose("quiet=true", "progress=false", *overrides)
    summary = run_attack(cfg, RunFolder.for_config(cfg, run_dir))
    rec = pd.read_csv(run_dir / "records.csv").drop(columns=TIME_COLUMNS)
    return rec, summary


@pytest.fixture(scope="module")
def exported(tmp_path_factory, victim, test_xy):
    """The session victim (cw_mnist) as a user module + state dict, TorchScript and ONNX files."""
    d = tmp_path_factory.mktemp("exported")
    (d / "usernet.py").write_text(USER_NET)
    net = victim[1]  # NormalizedModel(norm, net)
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, d / "net.pt")
    x = test_xy[0][:4]
    torch.jit.save(torch.jit.trace(victim, x), str(d / "victim.ts"))
    files = {"dir": d, "module": d / "net.pt", "torchscript": d / "victim.ts", "onnx": None}
    try:
        import onnx  # noqa: F401

        torch.onnx.export(victim, (x,), str(d / "victim.onnx"), dynamo=False, input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}})
        files["onnx"] = d / "victim.onnx"
    except ImportError:
        pass
    return files


def source_overrides(kind, files):
    if kind == "module":
        return ["model=module", f"model.target={files['dir'] / 'usernet.py'}:Net", f"model.weights={files['module']}",
                *MNIST_NORM]
    return [f"model={kind}", f"model.path={files[kind]}"]


_BUILTIN: dict = {}


def builtin_run(att: tuple, ckpt_dir, tmp_path):
    """The built-in victim's run of ``att``, once per attack for the three exported kinds."""
    if att not in _BUILTIN:
        _BUILTIN[att] = attack(tmp_path / "builtin", f"checkpoint_dir={ckpt_dir}", "dataset.n_samples=30", *att)
    return _BUILTIN[att]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["module", "torchscript", "onnx"])
@pytest.mark.parametrize("att", [PGD, SQUARE], ids=["pgd", "square"])
def test_exported_victim_gives_the_builtin_records(kind, att, exported, ckpt_dir, tmp_path, victim, test_xy):
    if kind == "onnx":
        pytest.importorskip("onnx2torch")
        if exported["onnx"] is None:
            pytest.skip("onnx not installed")
    common = ["dataset.n_samples=30", *att]
    base, s0 = builtin_run(tuple(att), ckpt_dir, tmp_path)
    rec, s1 = attack(tmp_path / kind, *source_overrides(kind, exported), *common)
    assert int(base.attacked.sum()) >= 20 and int(base.success.sum()) >= 1
    if kind == "onnx":  # onnx2torch re-implements the ops: measure how far the logits are from the original
        from robench.models.sources import build_source

        m, _ = build_source({"source": "onnx", "name": "onnx", "path": str(exported["onnx"])}, None, probe=False)
        with torch.no_grad():
            diff = (m(test_xy[0]) - victim(test_xy[0])).abs().max().item()
        assert diff < 1e-4, diff
    pd.testing.assert_frame_equal(rec, base)
    assert s1["model_source"] == kind and s0["model_source"] == "checkpoint"
    assert s1["weights_sha256"] == __import__("hashlib").sha256(Path(s1["weights_file"]).read_bytes()).hexdigest()
    assert len(s0["weights_sha256"]) == 64


def test_module_weights_formats(exported, victim, tmp_path, splits, monkeypatch):
    """Plain state dict, under 'model', .safetensors, an importable pkg.mod:Factory target: the same
    network; gradients flow through ONNX."""
    from robench.models.sources import build_source

    monkeypatch.syspath_prepend(str(exported["dir"]))
    m, _ = build_source({"source": "module", "name": "n", "target": "usernet:Net", "weights": str(exported["module"]),
                         "mean": [0.1307], "std": [0.3081]}, splits)
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(m(x), victim(x))

    net = victim[1].state_dict()
    torch.save(net, tmp_path / "plain.pth")
    torch.save({"model": net, "epoch": 3}, tmp_path / "under_model.pt")
    files = [tmp_path / "plain.pth", tmp_path / "under_model.pt"]
    try:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in net.items()}, str(tmp_path / "w.safetensors"))
        files.append(tmp_path / "w.safetensors")
    except ImportError:
        pass
    x = torch.rand(3, 1, 28, 28)
    for f in files:
        m, meta = build_source({"source": "module", "name": "n", "target": f"{exported['dir'] / 'usernet.py'}:Net",
                                "weights": str(f), "mean": [0.1307], "std": [0.3081]}, splits)
        assert torch.equal(m(x), victim(x)), f
        assert meta["weights_sha256"] and meta["model_source"] == "module"
    if exported["onnx"] is not None and pytest.importorskip("onnx2torch"):
        m, _ = build_source({"source": "onnx", "name": "o", "path": str(exported["onnx"])}, splits)
        xg = x.clone().requires_grad_()
        m(xg).sum().backward()
        assert xg.grad is not None and xg.grad.abs().sum() > 0


def test_mismatched_keys_name_the_first_keys(exported, tmp_path, splits):
    from robench.models.sources import build_source

    torch.save({"conv.weight": torch.zeros(3), "0.0.weight": torch.zeros(32, 1, 3, 3)}, tmp_path / "bad.pt")
    with pytest.raises(RobenchError, match=r"missing keys 0\.0\.bias, 0\.2\.weight, 0\.2\.bias \.\.\. .*unexpected keys conv\.weight"):
        build_source({"source": "module", "name": "n", "target": f"{exported['dir'] / 'usernet.py'}:Net",
                      "weights": str(tmp_path / "bad.pt")}, splits)
    good = torch.load(exported["module"], weights_only=True)["state_dict"]
    with pytest.raises(RobenchError, match=r"shape mismatch 0\.0\.weight \(32, 1, 3, 3\) vs \(16, 1, 3, 3\)"):
        build_source({"source": "module", "name": "n", "target": f"{exported['dir'] / 'usernet.py'}:Net",
                      "params": {"width": 16}, "weights": str(exported["module"])}, splits)
    assert good  # the prefixed file itself loads (above, in the records test)


@pytest.fixture(scope="module")
def mnist_dirs(tmp_path_factory, splits):
    """The embedded MNIST test split as PNGs (DIR/<label>/<index>.png) and as a uint8 NHWC .npz and a float .pt."""
    from PIL import Image
    import numpy as np

    d = tmp_path_factory.mktemp("mnist_files")
    xs, ys = zip(*(splits.test[i] for i in range(len(splits.test))))
    x, y = torch.stack(xs), torch.as_tensor(ys)
    u8 = (x * 255).round().to(torch.uint8)
    assert torch.equal(u8.float() / 255, x)  # the embedded images are k/255 exactly: PNG round-trips them
    for i in range(len(x)):
        (d / "png" / str(int(y[i]))).mkdir(parents=True, exist_ok=True)
        Image.fromarray(u8[i, 0].numpy(), mode="L").save(d / "png" / str(int(y[i])) / f"{i:04d}.png")
    np.savez(d / "mnist.npz", x=u8.permute(0, 2, 3, 1).numpy(), y=y.numpy())
    torch.save({"x": x, "y": y}, d / "mnist.pt")
    return d


def test_folder_and_tensors_give_the_mnist_records(mnist_dirs, exported, ckpt_dir, tmp_path):
    common = ["dataset.n_samples=40", "dataset.offset=100", *PGD]
    base, _ = attack(tmp_path / "mnist", f"checkpoint_dir={ckpt_dir}", *common)
    model = source_overrides("module", exported)
    folder, s = attack(tmp_path / "folder", "dataset=folder", f"dataset.root={mnist_dirs / 'png'}", "dataset.order=filename",
                       *model, *common)
    pd.testing.assert_frame_equal(folder, base)
    assert s["class_order"] == [f"{i}:{i}" for i in range(10)] and s["dataset"] == "folder"
    for f in ("mnist.npz", "mnist.pt"):
        rec, s = attack(tmp_path / f, "dataset=tensors", f"dataset.path={mnist_dirs / f}", *model, *common)
        pd.testing.assert_frame_equal(rec, base)


def test_folder_options(tmp_path):
    """Resize and centre crop, RGB JPEGs of different sizes, numeric labels, train/test subfolders."""
    from PIL import Image

    from robench.data import load_dataset
    from omegaconf import OmegaConf

    for split, n in (("train", 3), ("test", 2)):
        for c in ("3", "7"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (40 + 4 * i, 36), (200, 10 * i, 30)).save(tmp_path / split / c / f"{i}.jpg")
    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "configs" / "dataset" / "folder.yaml")
    cfg.root = str(tmp_path)
    with pytest.raises(RobenchError, match="images differ in size"):
        load_dataset(cfg)
    cfg.image_size, cfg.resize, cfg.labels = 16, 20, "numeric"
    s = load_dataset(cfg)
    assert s.shape == (3, 16, 16) and s.num_classes == 8 and len(s.test) == 4 and len(s.train) == 6
    assert s.extra["class_order"] == ["3:3", "7:7"] and s.test[3][1] == 7
    assert abs(s.mean[0] - 200 / 255) < 0.02


ROBUSTBENCH_CACHE_KEYS = {}


@pytest.fixture(scope="module")
def robustbench_cache(tmp_path_factory):
    """A WideResNet-28-10 with seeded random weights, saved where RobustBench caches `Standard` (Linf),
    with DataParallel prefixes as the zoo's files have them; and 3 CIFAR-shaped images labelled with its
    own predictions (so they are attacked)."""
    from robench.models.robustbench_zoo import WideResNet

    d = tmp_path_factory.mktemp("rb")
    torch.manual_seed(0)
    net = WideResNet(depth=28, widen_factor=10).eval()
    (d / "models" / "cifar10" / "Linf").mkdir(parents=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}},
               d / "models" / "cifar10" / "Linf" / "Standard.pt")
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        y = net(x).argmax(1)
    torch.save({"x": x, "y": y, "x_train": x, "y_train": y}, d / "cifar_like.pt")
    return d


def test_robustbench_standard_end_to_end_offline(robustbench_cache, tmp_path):
    d = robustbench_cache
    rec, s = attack(tmp_path / "rb", "model=robustbench", "model.name=Standard", f"model.model_dir={d / 'models'}",
                    "dataset=tensors", f"dataset.path={d / 'cifar_like.pt'}", "dataset.num_classes=10", "budget=linf_8_255",
                    "attack=pgd", "attack.params.steps=2")
    assert len(rec) == 3 and bool(rec.attacked.all())  # labels are its predictions: all correct, all attacked
    assert s["clean_accuracy"] == 1.0 and s["model_source"] == "robustbench" and s["model_name"] == "Standard"
    assert s["weights_file"].endswith("models/cifar10/Linf/Standard.pt") and len(s["weights_sha256"]) == 64
    assert (rec.queries > 0).all()


def test_robustbench_eval_preset(exported, mnist_dirs, tmp_path):
    """experiment=robustbench_eval: AutoAttack (standard: a deterministic victim) at the threat model's eps,
    the RobustBench-style line."""
    p = run_cli("attack", "experiment=robustbench_eval", *source_overrides("module", exported), "dataset.n_samples=12",
                "model.name=usernet", "+model.threat_model=L2", "attack.params.standard.0.params.steps=3",
                "attack.params.standard.1.params.steps=3", "attack.params.standard.1.params.target_classes=2",
                "attack.params.standard.2.params.steps=3", "attack.params.standard.2.params.target_classes=2",
                "budget.max_queries=40", "progress=false", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["attack"] == "autoattack" and s["norm"] == "l2" and s["eps"] == 0.5 and s["n_samples"] == 12
    assert s["attack_extra"]["autoattack"]["version"] == "standard" and s["attack_extra"]["autoattack"]["requested"] == "auto"
    assert [m["attack"] for m in s["attack_extra"]["ensemble"]] == ["apgd_ce", "apgd_t", "fab_t", "square"]
    line = [l for l in p.stdout.splitlines() if l.startswith("RobustBench-style evaluation")]
    assert line and f"clean accuracy {100 * s['clean_accuracy']:.2f}%" in line[0] and "l2 eps=0.5, n=12" in line[0]
    assert "(AutoAttack standard, l2 eps=0.5" in line[0] and "upper bound" not in p.stdout
    assert f"robust accuracy {100 * s['robust_accuracy']:.2f}%" in line[0]


def test_train_defense_from_user_weights(exported, mnist_dirs, tmp_path):
    """PGD-AT fine-tuning a `module` model from the user's weights; attack defense=pgd_at loads the result."""
    from robench.models.sources import source_tag
    from robench.cli.train_job import run_train
    from robench.models.checkpoint import checkpoint_path

    small = tmp_path / "small.pt"
    blob = torch.load(mnist_dirs / "mnist.pt", weights_only=True)
    torch.save({"x": blob["x"][:20], "y": blob["y"][:20], "x_train": blob["x"][100:228], "y_train": blob["y"][100:228]},
               small)
    model = source_overrides("module", exported)
    data = ["dataset=tensors", f"dataset.path={small}", "dataset.mean=[0.1307]", "dataset.std=[0.3081]"]
    cfg = compose(*model, *data, "defense=pgd_at", "train.epochs=1", "eval.n_samples=0", "quiet=true", "progress=false",
                  f"checkpoint_dir={tmp_path / 'ck'}", name="run_train")
    from robench.evaluation.folder import RunFolder
    s = run_train(cfg, RunFolder.for_config(cfg, tmp_path / "train"))
    from omegaconf import OmegaConf
    path = checkpoint_path(str(tmp_path / "ck"), {"name": "tensors"}, source_tag(OmegaConf.to_container(cfg.model)), "pgd_at")
    assert Path(s["checkpoint"]) == path and path.exists() and "module-" in str(path)
    assert s["model_source"] == "module" and s["init_weights_file"] == str(exported["module"])
    assert s["weights_sha256"] == __import__("hashlib").sha256(path.read_bytes()).hexdigest()
    trained = torch.load(path, weights_only=True)["state_dict"]
    start = torch.load(exported["module"], weights_only=True)["state_dict"]
    w, w0 = trained["net.1.weight"], start["module.1.weight"]
    assert 0 < (w - w0).norm() < 0.2 * w0.norm()  # fine-tuned from the user's weights, not from scratch
    rec, s2 = attack(tmp_path / "att", *model, *data, "defense=pgd_at", f"checkpoint_dir={tmp_path / 'ck'}", *PGD)
    assert s2["weights_file"] == str(path) and len(rec) == 20


# ---------------------------------------------------------------- one-line errors, exit code 2

@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, exported):
    d = tmp_path_factory.mktemp("bad")
    torch.save({"fc.weight": torch.zeros(10, 5)}, d / "wrong_keys.pt")
    torch.save({"x": torch.rand(4, 3, 32, 32), "y": torch.tensor([0, 1, 2, 3])}, d / "rgb.pt")
    torch.save({"x": torch.rand(4, 1, 28, 28), "y": torch.tensor([0, 1, 12, 3])}, d / "labels.pt")
    (d / "empty").mkdir()
    return d


@pytest.mark.parametrize("case", ["bad_target", "missing_module", "missing_file", "mismatched_keys", "wrong_channels",
                                  "labels_out_of_range", "robustbench_not_cached", "missing_tensors", "bad_folder"])
def test_bad_source_is_one_line_exit_2(case, exported, bad_files, tmp_path):
    user = f"model.target={exported['dir'] / 'usernet.py'}:Net"
    args, msg = {
        "bad_target": (["model=module", "model.target=nosuchpkg.nets:Net"], "cannot import nosuchpkg.nets"),
        "missing_module": (["model=module", f"model.target={exported['dir'] / 'usernet.py'}:Nope"], "has no attribute 'Nope'"),
        "missing_file": (["model=torchscript", f"model.path={tmp_path / 'nope.ts'}"], "nope.ts not found"),
        "mismatched_keys": (["model=module", user, f"model.weights={bad_files / 'wrong_keys.pt'}"],
                            "missing keys 0.0.weight, 0.0.bias, 0.2.weight ..."),
        "wrong_channels": (["model=module", user, f"model.weights={exported['module']}", "dataset=tensors",
                            f"dataset.path={bad_files / 'rgb.pt'}", "dataset.num_classes=10"], "does not accept the tensors images (3 channel(s), 32x32)"),
        "labels_out_of_range": (["dataset=tensors", f"dataset.path={bad_files / 'labels.pt'}", "dataset.num_classes=10"],
                                "label 12 is out of range for 10 classes"),
        "robustbench_not_cached": (["model=robustbench", "model.name=Standard", f"model.model_dir={tmp_path / 'm'}",
                                   "dataset=tensors", f"dataset.path={bad_files / 'rgb.pt'}"],
                                   f"put its checkpoint at {tmp_path / 'm' / 'cifar10' / 'Linf' / 'Standard.pt'}"),
        "missing_tensors": (["dataset=tensors", f"dataset.path={tmp_path / 'x.npz'}"], "x.npz not found"),
        "bad_folder": (["dataset=folder", f"dataset.root={bad_files / 'empty'}"], "holds no class folders"),
    }[case]
    p = run_cli("attack", *args, "dataset.n_samples=4", "progress=false", f"checkpoint_dir={tmp_path}",
                f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    lines = [l for l in p.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("robench: error: ") and msg in lines[0], p.stderr
    assert "Traceback" not in p.stderr + p.stdout
    assert not (tmp_path / "run" / "records.csv").exists()  # failed before any work


def test_list_shows_the_sources():
    p = run_cli("list", "models", "datasets")
    assert p.returncode == 0, p.stderr
    for word in ("model=module", "model=torchscript", "model=onnx", "model=robustbench", "model=timm", "model=torchvision",
                 "dataset=folder", "dataset=tensors", "dataset=cifar100", "dataset=svhn", "dataset=fashion_mnist"):
        assert word in p.stdout, word


def test_torchvision_and_timm_sources_with_weights_files(tmp_path):
    """Any torchvision builder / timm model by name, weights from a file, the dataset's class count,
    ImageNet statistics in front when asked (mean=auto with an enum; here a list)."""
    import torchvision

    from robench.data.base import DatasetSplits
    from robench.models.sources import build_source

    splits = DatasetSplits("tensors", None, None, 7, (3, 32, 32), (0.5,) * 3, (0.25,) * 3)
    torch.manual_seed(0)
    ref = torchvision.models.resnet18(num_classes=7).eval()
    torch.save(ref.state_dict(), tmp_path / "r18.pth")
    x = torch.rand(2, 3, 32, 32)
    m, meta = build_source({"source": "torchvision", "name": "resnet18", "weights": str(tmp_path / "r18.pth"),
                            "params": {"num_classes": 7}, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}, splits)
    with torch.no_grad():
        assert torch.equal(m(x), ref((x - 0.5) / 0.25))
    assert meta["model_source"] == "torchvision" and meta["weights_sha256"]
    with pytest.raises(RobenchError, match="torchvision has no model 'resnet19'"):
        build_source({"source": "torchvision", "name": "resnet19", "weights": None}, splits)
    with pytest.raises(RobenchError, match="has no weights 'IMAGENET9K'; valid: DEFAULT, IMAGENET1K_V1"):
        build_source({"source": "torchvision", "name": "resnet18", "weights": "IMAGENET9K"}, splits)
    timm = pytest.importorskip("timm")
    t = timm.create_model("resnet18", num_classes=7).eval()
    torch.save(t.state_dict(), tmp_path / "t18.pth")
    m, meta = build_source({"source": "timm", "name": "resnet18", "weights": str(tmp_path / "t18.pth"),
                            "params": {"num_classes": 7}, "mean": "auto", "std": "auto"}, splits)
    cfg = t.pretrained_cfg
    with torch.no_grad():
        want = t((x - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1))
        assert torch.allclose(m(x), want, atol=1e-6)
    with pytest.raises(RobenchError, match="timm has no model 'resnet_nope'"):
        build_source({"source": "timm", "name": "resnet_nope"}, splits)


def test_tensors_checks_and_logit_count(tmp_path, exported, splits):
    """Float images outside [0, 1], NHWC floats, label/image count mismatch, a model with the wrong number
    of logits: one RobenchError each, before any work."""
    from omegaconf import OmegaConf

    from robench.data import load_dataset
    from robench.models.sources import build_source

    cases = {"range": ({"x": torch.rand(2, 1, 4, 4) * 255, "y": torch.tensor([0, 1])}, "must lie in \\[0, 1\\]"),
             "nhwc": ({"x": torch.rand(2, 5, 5, 3), "y": torch.tensor([0, 1])}, "must be NCHW with 1, 3 or 4 channels"),
             "count": ({"x": torch.rand(3, 1, 4, 4), "y": torch.tensor([0, 1])}, "has 2 labels for 3 images"),
             "no_y": ({"x": torch.rand(3, 1, 4, 4)}, "has no 'y'")}
    for name, (blob, msg) in cases.items():
        torch.save(blob, tmp_path / f"{name}.pt")
        with pytest.raises(RobenchError, match=msg):
            load_dataset(OmegaConf.create({"name": "tensors", "path": str(tmp_path / f"{name}.pt")}))
    with pytest.raises(RobenchError, match="gives 10 logits but dataset mnist has 12 classes"):
        import dataclasses
        build_source({"source": "module", "name": "n", "target": f"{exported['dir'] / 'usernet.py'}:Net",
                      "params": {"num_classes": 10}}, dataclasses.replace(splits, num_classes=12))
