"""Checkpoints: weights plus metadata, at a conventional path per (dataset, model, defense).

``<checkpoint_dir>/<dataset tag>/<model tag>/<defense>.pt`` where a tag is the plugin name plus any
non-default options (``small_cnn-depth4-width64``, ``mnist-torchvision``), so ``robench attack`` with
the same triple finds what ``robench train-defense`` wrote. Files hold only tensors and plain types
and load with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any, Mapping, Optional, Tuple

import torch
from torch import nn

from robench.errors import RobenchError


def _kv_tag(name: str, opts: Mapping[str, Any]) -> str:
    parts = [name] + [f"{k}{v}" for k, v in sorted(opts.items()) if v is not None]
    return "-".join(str(p).replace("/", "_").replace(" ", "") for p in parts)


def dataset_tag(dcfg: Mapping[str, Any]) -> str:
    """Dataset name, plus the source when it is not the default one (the data decides the weights)."""
    src = dcfg.get("source")
    return dcfg["name"] if src in (None, "embedded", "default") else f"{dcfg['name']}-{src}"


def model_tag(mcfg: Mapping[str, Any]) -> str:
    return _kv_tag(mcfg["name"], dict(mcfg.get("params") or {}))


def checkpoint_path(checkpoint_dir: str, dcfg, mcfg, defense_name: str) -> Path:
    return Path(checkpoint_dir) / dataset_tag(dcfg) / model_tag(mcfg) / f"{defense_name}.pt"


#: dataset options that choose the evaluation slice only: the training command never needs them
_SLICE_KEYS = ("name", "n_samples", "offset", "shard")


def _override_value(v: Any) -> str:
    """A config value as Hydra's command line spells it."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)) or type(v).__name__ == "ListConfig":
        return "[" + ",".join(_override_value(x) for x in v) + "]"
    return str(v)


def dataset_options(dcfg: Mapping[str, Any]) -> dict:
    """The dataset options that differ from the dataset's shipped config (``configs/dataset/<name>.yaml``),
    slice options aside: what a command must repeat to get the same data (``dataset.path=...`` for
    ``dataset=tensors``, ``dataset.root=...`` for ``folder``, ``dataset.source=torchvision``, ...)."""
    from omegaconf import OmegaConf

    from robench.config import configs_dir

    f = Path(configs_dir()) / "dataset" / f"{dcfg['name']}.yaml"
    shipped = OmegaConf.to_container(OmegaConf.load(f), resolve=True) if f.exists() else {}
    plain = OmegaConf.to_container(dcfg, resolve=True) if OmegaConf.is_config(dcfg) else dict(dcfg)
    return {k: v for k, v in plain.items() if k not in _SLICE_KEYS and (k not in shipped or shipped[k] != v)}


def train_command(dcfg, mcfg, defense_name: str, checkpoint_dir: str) -> str:
    """The ``robench train-defense`` command that writes the checkpoint ``robench attack`` looks for with
    this dataset, model and defense: the dataset's non-default options included, so it runs as printed."""
    args = ["robench", "train-defense", f"dataset={dcfg['name']}", f"model={mcfg['name']}", f"defense={defense_name}"]
    for k, v in sorted(dataset_options(dcfg).items()):
        args.append(f"dataset.{k}={_override_value(v)}")
    for k, v in sorted(dict(mcfg.get("params") or {}).items()):
        args.append(f"model.params.{k}={v}")
    if str(checkpoint_dir) != "checkpoints":
        args.append(f"checkpoint_dir={checkpoint_dir}")
    return " ".join(shlex.quote(a) for a in args)


def save_checkpoint(path: Path, model: nn.Module, meta: dict) -> None:
    """Atomic save (temp file + rename): an interrupted save never leaves a half-written checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if getattr(model, "robench_surgery", None):  # conditional BN (robench/models/conditional_bn.py): re-applied on load
        meta = {**meta, "model_surgery": dict(model.robench_surgery)}
    torch.save({"state_dict": state, "meta": meta}, tmp)
    os.replace(tmp, path)


def read_checkpoint(path: Path, remake: Optional[str] = None) -> Tuple[dict, dict]:
    """(state dict, metadata) of a robench checkpoint (``weights_only``); a missing or corrupt file fails in
    one line. Building the model, and the surgery a checkpoint records, are robench.victim.model_from_checkpoint's."""
    hint = f": create it with `{remake}`" if remake else ""
    path = Path(path)
    if not path.exists():
        raise RobenchError(f"no checkpoint at {path}{hint}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        state, meta = blob["state_dict"], blob.get("meta", {})
    except Exception as e:
        raise RobenchError(f"checkpoint {path} is unreadable ({e.__class__.__name__}); delete it and re-create it"
                           + (f" with `{remake}`" if remake else "")) from None
    if not isinstance(state, dict) or not isinstance(meta, dict):
        raise RobenchError(f"checkpoint {path} holds no state dict; delete it and re-create it"
                           + (f" with `{remake}`" if remake else ""))
    return state, meta


def apply_state(model: nn.Module, state: dict, path: Path, meta: dict, remake: Optional[str] = None) -> None:
    """``model.load_state_dict(state)``; a mismatch fails in one line naming the checkpoint."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise RobenchError(f"checkpoint {path} does not fit model {meta.get('model', '?')} ({first}); "
                           f"re-create it{(' with `' + remake + '`') if remake else ''}") from None


def load_checkpoint(path: Path, model: nn.Module, remake: Optional[str] = None) -> dict:
    """The weights of a plain checkpoint into ``model`` (no model surgery); returns the metadata."""
    state, meta = read_checkpoint(path, remake)
    apply_state(model, state, path, meta, remake)
    return meta
