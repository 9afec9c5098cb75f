"""Model sources: victims robench did not train (README, "Your own model and data").

A model config with a ``source`` key names where the network comes from; its ``name`` is then a label
(or the zoo's model name) and not a registered architecture:

- ``module``: the user's class or factory ``pkg.mod:Factory`` (or ``path/to/file.py:Factory``) called
  with ``model.params``, weights from a ``.pt``/``.pth`` state dict (plain or under ``state_dict`` /
  ``model``, ``module.`` prefixes stripped) or a ``.safetensors`` file;
- ``torchscript``: ``torch.jit.load(model.path)``;
- ``onnx``: ``onnx2torch.convert(model.path)``, an ``nn.Module`` that gradients flow through, after
  onnx's version converter where the file's opset is newer than onnx2torch converts; else onnxruntime,
  without gradients (robench/models/onnx_source.py);
- ``robustbench``: a RobustBench model-zoo entry read from its cache layout ([croce2021robustbench];
  robench/models/robustbench_zoo.py says why robench carries the architectures);
- ``timm``: ``timm.create_model(model.name, pretrained=...)`` [wightman2019timm];
- ``torchvision``: any ``torchvision.models`` builder with a weights enum (``DEFAULT``, ``IMAGENET1K_V1``)
  or a weights file.

Every victim takes [0, 1] inputs: ``model.mean``/``model.std`` put a Normalize layer in front of the
network; ``null`` means the network normalises itself (TorchScript/ONNX exports of robench models,
RobustBench models). Before any work the victim is probed with one input of the dataset's shape, so
a wrong channel count or a class-count mismatch fails in one line. Weights a recipe trains from a
source (``robench train-defense model=module ...``) are saved at the conventional checkpoint path under
a tag naming the source (``module-pkg.mod:Factory``), and ``robench attack defense=<recipe>`` loads them.
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from torch import nn

from robench.errors import RobenchError
from robench.models.base import Normalize, NormalizedModel
from robench.models.weights import (_existing, _extra, _import_target, _need, load_weights,  # noqa: F401
                                    read_state_dict, sha256_file)
from robench.registry import MODELS

SOURCES = ("module", "torchscript", "onnx", "robustbench", "timm", "torchvision")
THREAT_MODELS = ("Linf", "L2", "corruptions")
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


def source_of(mcfg: Mapping[str, Any]) -> Optional[str]:
    """The model config's source (module, torchscript, ...), or None for a registered architecture."""
    s = mcfg.get("source")
    if s in (None, "", "registry"):
        return None
    if s not in SOURCES:
        raise RobenchError(f"model.source must be one of {', '.join(SOURCES)}, got '{s}'")
    return s


def _module(mcfg, splits) -> Tuple[nn.Module, Dict[str, Any]]:
    target = str(_need(mcfg, "target", "pkg.module:Factory"))
    factory = _import_target(target)
    params = dict(mcfg.get("params") or {})
    try:
        sig = inspect.signature(factory)
        for k, v in (("num_classes", splits.num_classes), ("shape", tuple(splits.shape))):
            if k in sig.parameters and k not in params:
                params[k] = v
    except (TypeError, ValueError):
        pass
    try:
        net = factory(**params)
    except Exception as e:
        first = (str(e).strip().splitlines() or [e.__class__.__name__])[0]
        raise RobenchError(f"model.target={target}({', '.join(f'{k}=...' for k in params)}) failed: "
                           f"{e.__class__.__name__}: {first}") from None
    if not isinstance(net, nn.Module):
        raise RobenchError(f"model.target={target} returned {type(net).__name__}, not a torch.nn.Module")
    weights = mcfg.get("weights")
    path = None
    if weights not in (None, ""):
        path = _existing(weights, "model.weights file")
        load_weights(net, read_state_dict(path), path, target)
    return net, {"weights_file": None if path is None else str(path)}


def _torchscript(mcfg, splits) -> Tuple[nn.Module, Dict[str, Any]]:
    path = _existing(_need(mcfg, "path", "FILE.pt"), "TorchScript file")
    try:
        net = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:
        raise RobenchError(f"{path} is not a TorchScript archive ({e.__class__.__name__}); save one with "
                           f"torch.jit.save(torch.jit.script(model) or torch.jit.trace(model, x), FILE)") from None
    return net, {"weights_file": str(path)}


def _onnx(mcfg, splits) -> Tuple[nn.Module, Dict[str, Any]]:
    from robench.models.onnx_source import load_onnx

    return load_onnx(_existing(_need(mcfg, "path", "FILE.onnx"), "ONNX file"))


def source_gradient_free(mcfg: Mapping[str, Any]) -> Optional[str]:
    """Why a source model config's victim will have no input gradients, or None: an ONNX file that
    onnx2torch cannot convert runs through onnxruntime (robench/models/onnx_source.py). Called before a
    run starts, so a gradient attack on it fails before anything is written."""
    if source_of(mcfg) != "onnx" or mcfg.get("path") in (None, ""):
        return None
    from robench.models.onnx_source import gradient_free_reason

    return gradient_free_reason(_existing(mcfg["path"], "ONNX file"))


def robustbench_dir(mcfg) -> Path:
    """RobustBench's ``model_dir`` (its default is ./models): ``model.model_dir``."""
    return Path(str(mcfg.get("model_dir") or "models")).expanduser()


def _robustbench(mcfg, splits) -> Tuple[nn.Module, Dict[str, Any]]:
    from robench.models.robustbench_zoo import DATASET_CLASSES, ZOO, strip_prefixes

    name = str(_need(mcfg, "name", "Standard"))
    tm = str(mcfg.get("threat_model") or "Linf")
    if tm not in THREAT_MODELS:
        raise RobenchError(f"model.threat_model must be one of {', '.join(THREAT_MODELS)}, got '{tm}'")
    ds = str(mcfg.get("dataset") or "cifar10")
    table = ZOO.get((ds, tm), {})
    path = robustbench_dir(mcfg) / ds / tm / f"{name}.pt"
    if name in table:
        net = table[name]()
    else:
        net = _robustbench_package(name, ds, tm)
        if net is None:
            known = ", ".join(f"{d}/{t}/{n}" for (d, t), v in ZOO.items() for n in v)
            raise RobenchError(f"RobustBench model {ds}/{tm}/{name} is not in robench's table ({known}) and the "
                               f"robustbench package is not importable to build it")
    if not path.is_file():
        raise RobenchError(f"RobustBench model {name} ({ds}, {tm}) is not cached and robench does not download: "
                           f"put its checkpoint at {path} (or set model.model_dir=DIR holding {ds}/{tm}/{name}.pt)")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RobenchError(f"RobustBench checkpoint {path} is unreadable ({e.__class__.__name__})") from None
    if name in ("Andriushchenko2020Understanding",) or name.startswith("Kireev2021Effectiveness"):
        blob = blob["last"]
    state = blob["state_dict"] if isinstance(blob, Mapping) and "state_dict" in blob else blob
    if not isinstance(state, Mapping):
        raise RobenchError(f"RobustBench checkpoint {path} holds no state dict")
    load_weights(net, strip_prefixes(dict(state)), path, f"RobustBench {name}")
    if splits is not None and splits.num_classes != DATASET_CLASSES.get(ds, splits.num_classes):
        raise RobenchError(f"RobustBench model {name} classifies {ds} ({DATASET_CLASSES[ds]} classes) but the dataset "
                           f"has {splits.num_classes}")
    return net, {"weights_file": str(path), "threat_model": tm}


def _robustbench_package(name: str, ds: str, tm: str) -> Optional[nn.Module]:
    """The architecture from a working ``robustbench`` install, if there is one and it knows the name."""
    try:
        from robustbench.model_zoo import model_dicts
        from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

        entry = model_dicts[BenchmarkDataset(ds)][ThreatModel(tm)].get(name)
    except Exception:
        return None
    if entry is None or isinstance(entry.get("gdrive_id"), list):
        return None  # ensembles (several files) are not supported
    return entry["model"]()


def _timm(mcfg, splits) -> Tuple[nn.Module, Dict[str, Any]]:
    timm = _extra("timm", "timm")
    name = str(_need(mcfg, "name", "resnet18"))
    if not timm.is_model(name):
        raise RobenchError(f"timm has no model '{name}' (timm.list_models() lists them)")
    pretrained = bool(mcfg.get("pretrained", False))
    weights = mcfg.get("weights")
    kw = dict(mcfg.get("params") or {})
    if not pretrained and "num_classes" not in kw and weights in (None, ""):
        kw["num_classes"] = splits.num_classes
    if splits is not None and "in_chans" not in kw and splits.shape[0] != 3 and not pretrained:
        kw["in_chans"] = splits.shape[0]
    from robench.models import hub

    download = pretrained and weights in (None, "")
    offline = download and hub.offline(hub.HF_HOST, hf=True)  # decided before timm asks the hub (no retries)
    try:
        with hub.hf_offline() if offline else contextlib.nullcontext():
            net = timm.create_model(name, pretrained=download, **kw)
    except Exception as e:
        if download and offline:
            raise RobenchError(f"pretrained timm weights for {name} are not in the Hugging Face cache "
                               f"({_hf_cache()}) and the hub cannot be reached (offline): go online once so the cache "
                               f"holds them, or pass model.weights=FILE") from None
        what = hub.first_words(str(e) or e.__class__.__name__)
        if download:
            raise RobenchError(f"pretrained timm weights for {name} are not available ({e.__class__.__name__}: "
                               f"{what}); go online once so the Hugging Face cache holds them, or pass "
                               f"model.weights=FILE") from None
        raise RobenchError(f"timm.create_model({name}) failed: {e.__class__.__name__}: {what}") from None
    path = None
    if weights not in (None, ""):
        path = _existing(weights, "model.weights file")
        load_weights(net, read_state_dict(path), path, f"timm {name}")
    cfg = getattr(net, "pretrained_cfg", None) or {}
    return net, {"weights_file": None if path is None else str(path),
                 "auto_mean": cfg.get("mean"), "auto_std": cfg.get("std")}


def _hf_cache() -> str:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE

        return str(HF_HUB_CACHE)
    except ImportError:
        return "~/.cache/huggingface/hub"


def _torchvision(mcfg, splits) -> Tuple[nn.Module, Dict[str, Any]]:
    import torchvision

    name = str(_need(mcfg, "name", "resnet50"))
    try:
        builder = torchvision.models.get_model_builder(name)
    except ValueError:
        raise RobenchError(f"torchvision has no model '{name}' (torchvision.models.list_models() lists them)") from None
    weights = mcfg.get("weights")
    kw = dict(mcfg.get("params") or {})
    path, enum = None, None
    if weights not in (None, "") and str(weights).endswith(WEIGHT_SUFFIXES):
        path = _existing(weights, "model.weights file")
    elif weights not in (None, ""):
        try:
            enum = torchvision.models.get_model_weights(name)[str(weights)] if str(weights) != "DEFAULT" else \
                torchvision.models.get_model_weights(name).DEFAULT
        except (KeyError, ValueError):
            opts = [w.name for w in torchvision.models.get_model_weights(name)]
            raise RobenchError(f"torchvision {name} has no weights '{weights}'; valid: DEFAULT, {', '.join(opts)}, "
                               f"or a .pt/.pth file") from None
    if enum is None and "num_classes" not in kw and path is None:
        kw["num_classes"] = splits.num_classes
    if name == "inception_v3" and enum is None:
        kw.setdefault("aux_logits", False)
        kw.setdefault("init_weights", False)
    if enum is not None:  # not cached and no network: one line now, not a "Downloading" line and a failure
        from urllib.parse import urlparse

        from robench.models import hub

        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(enum.url).path).name
        if not cached.is_file() and hub.offline(urlparse(enum.url).hostname or ""):
            raise RobenchError(f"torchvision weights {name}/{enum.name} are not in the torch.hub cache ({cached}) "
                               f"and {urlparse(enum.url).hostname} cannot be reached (offline): go online once so "
                               f"torch.hub caches them, or pass model.weights=FILE") from None
    try:
        net = builder(weights=enum, **kw)
    except Exception as e:
        if enum is not None:
            raise RobenchError(f"torchvision weights {name}/{enum.name} are not available ({e.__class__.__name__}); "
                               f"go online once so torch.hub caches them, or pass model.weights=FILE") from None
        raise RobenchError(f"torchvision {name}({kw}) failed: {e.__class__.__name__}: {e}") from None
    if path is not None:
        load_weights(net, read_state_dict(path), path, f"torchvision {name}")
    if name == "inception_v3":
        net.aux_logits, net.AuxLogits = False, None
    meta: Dict[str, Any] = {"weights_file": None if path is None else str(path)}
    if enum is not None:
        meta["weights_enum"] = f"{type(enum).__name__}.{enum.name}"
        hub = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name
        meta["weights_file"] = str(hub) if hub.is_file() else None
        tf = enum.transforms()
        meta["auto_mean"], meta["auto_std"] = list(getattr(tf, "mean", [])) or None, list(getattr(tf, "std", [])) or None
    return net, meta


BUILDERS = {"module": _module, "torchscript": _torchscript, "onnx": _onnx, "robustbench": _robustbench,
            "timm": _timm, "torchvision": _torchvision}


def _norm_values(mcfg, meta, splits) -> Tuple[Any, Any]:
    mean, std = mcfg.get("mean"), mcfg.get("std")
    if mean == "auto":
        mean = meta.get("auto_mean")
    if std == "auto":
        std = meta.get("auto_std")
    if (mean is None) != (std is None):
        raise RobenchError("model.mean and model.std go together: give both (per-channel lists) or neither")
    if mean is None:
        return None, None
    mean, std = [float(v) for v in mean], [float(v) for v in std]
    c = splits.shape[0] if splits is not None else len(mean)
    if len(mean) not in (1, c) or len(std) != len(mean):
        raise RobenchError(f"model.mean/model.std need 1 or {c} values each (the dataset has {c} channels), "
                           f"got {len(mean)} and {len(std)}")
    if any(s <= 0 for s in std):
        raise RobenchError(f"model.std must be > 0, got {std}")
    return mean, std


def build_source(mcfg: Mapping[str, Any], splits, probe: bool = True) -> Tuple[nn.Module, Dict[str, Any]]:
    """The victim of a source model config: the network (weights from the source) behind Normalize when
    ``model.mean``/``model.std`` are given, checked against one input of the dataset's shape. Returns the
    model in eval mode on the CPU and its metadata (``model_source``, ``model_name``, ``weights_file``,
    ``weights_sha256``)."""
    src = source_of(mcfg)
    net, meta = BUILDERS[src](mcfg, splits)
    mean, std = _norm_values(mcfg, meta, splits)
    model = NormalizedModel(Normalize(mean, std), net) if mean is not None else net
    model.eval()
    if probe and splits is not None:
        check_fits(model, splits, f"model={src} ({mcfg.get('name')})")
    meta = {k: v for k, v in meta.items() if not k.startswith("auto_")}
    meta.update(model_source=src, model_name=str(mcfg.get("name")), mean=mean, std=std,
                weights_sha256=sha256_file(meta.get("weights_file")))
    return model, meta


def check_fits(model: nn.Module, splits, what: str) -> None:
    """One [0, 1] input of the dataset's shape must give ``num_classes`` logits (before any work)."""
    c, h, w = splits.shape
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, c, h, w))
    except Exception as e:
        first = (str(e).strip().splitlines() or [e.__class__.__name__])[0]
        raise RobenchError(f"{what} does not accept the {splits.name} images ({c} channel(s), {h}x{w}): "
                           f"{e.__class__.__name__}: {first[:200]}") from None
    finally:
        model.train(was)
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not torch.is_tensor(out) or out.dim() != 2:
        raise RobenchError(f"{what} must return logits of shape (N, classes), got "
                           f"{tuple(out.shape) if torch.is_tensor(out) else type(out).__name__}")
    if out.shape[1] != splits.num_classes:
        raise RobenchError(f"{what} gives {out.shape[1]} logits but dataset {splits.name} has {splits.num_classes} "
                           f"classes (set dataset.num_classes or use a model for this dataset)")


def source_tag(mcfg: Mapping[str, Any]) -> Dict[str, Any]:
    """A stand-in model config for :func:`robench.models.checkpoint.checkpoint_path`: recipes trained from a
    source are saved under ``<source>-<what it is>`` (the target, file stem or zoo name)."""
    src = source_of(mcfg)
    what = {"module": mcfg.get("target"), "torchscript": Path(str(mcfg.get("path"))).stem,
            "onnx": Path(str(mcfg.get("path"))).stem,
            "robustbench": f"{mcfg.get('name')}-{mcfg.get('threat_model', 'Linf')}"}.get(src, mcfg.get("name"))
    return {"name": f"{src}-{str(what).replace(':', '.')}", "params": dict(mcfg.get("params") or {})}


def victim_summary(cfg, meta: Mapping[str, Any], splits) -> Dict[str, Any]:
    """The summary's provenance fields: model source, name, weights file and its sha256 (and the class
    order of a folder dataset)."""
    out: Dict[str, Any] = {"model_source": meta.get("model_source") or meta.get("source") or "checkpoint",
                           "model_name": meta.get("model_name") or str(cfg.model.name)}
    wf = meta.get("weights_file") or meta.get("path")
    out["weights_file"] = wf
    out["weights_sha256"] = meta.get("weights_sha256") or sha256_file(wf)
    for k in ("onnx_opset", "onnx_converted_opset", "onnx_runtime"):  # how an ONNX file was loaded
        if k in meta:
            out[k] = meta[k]
    order = (getattr(splits, "extra", None) or {}).get("class_order")
    if order is not None:
        out["class_order"] = list(order)
    return out


def train_summary(cfg, checkpoint: Path | str, splits) -> Dict[str, Any]:
    """A train run's provenance: the source and name of the model it trained, the checkpoint it wrote and
    its sha256, and the weights it started from when a source brought them."""
    from omegaconf import OmegaConf

    mcfg = OmegaConf.to_container(cfg.model, resolve=True)
    src = source_of(mcfg)
    out = victim_summary(cfg, {"model_source": src or "registry", "path": str(checkpoint)}, splits)
    init = mcfg.get("weights") if src in ("module", "timm") else mcfg.get("path") if src in ("torchscript", "onnx") else None
    if src == "robustbench":
        init = robustbench_dir(mcfg) / str(mcfg.get("dataset") or "cifar10") / str(mcfg.get("threat_model") or "Linf") / \
            f"{mcfg.get('name')}.pt"
    if src == "torchvision" and str(mcfg.get("weights") or "").endswith(WEIGHT_SUFFIXES):
        init = mcfg.get("weights")
    if init:
        out["init_weights_file"], out["init_weights_sha256"] = str(init), sha256_file(init)
    return out


# ---------------------------------------------------------------- registry entries (`robench list`)

def _entry(src: str, doc: str):
    def factory(num_classes: int = 10, shape=(3, 32, 32), **_: Any) -> nn.Module:
        raise RobenchError(f"model '{src}' is a model source: select it with model={src} (configs/model/{src}.yaml)")

    factory.__doc__ = doc
    factory.__name__ = f"{src}_source"
    MODELS.register(src, factory)


_entry("module", "Your own class or factory (model.target=pkg.mod:Factory, model.params) with a .pt/.pth/.safetensors state dict (model.weights)")
_entry("torchscript", "A TorchScript archive (model.path=FILE), e.g. torch.jit.save(torch.jit.trace(model, x), FILE)")
_entry("onnx", "An ONNX file (model.path=FILE) through onnx2torch, so gradients work (converted to an older opset "
               "where needed), else through onnxruntime without gradients (the onnx extra)")
_entry("robustbench", "A RobustBench model-zoo entry by name and threat model, from its cache layout, offline\n\n[croce2021robustbench]")
_entry("timm", "Any timm model by name (model.pretrained, model.weights=FILE; the timm extra)\n\n[wightman2019timm]")
_entry("torchvision", "Any torchvision.models builder by name with a weights enum (model.weights=DEFAULT) or file")
