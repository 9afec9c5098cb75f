"""Loading what a model source points at: files (checked, hashed), state dicts in any of the layouts
people save them in (plain, under ``state_dict``/``model``, ``module.`` prefixes, ``.safetensors``), a
user's ``pkg.mod:Factory`` target, and optional extras, each failure one line (README, "Your own model
and data"; robench/models/sources.py builds the victims from these)."""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import torch
from torch import nn

from robench.errors import RobenchError


def sha256_file(path: Path | str | None) -> Optional[str]:
    if path is None or not Path(path).is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _need(mcfg, key: str, example: str) -> Any:
    v = mcfg.get(key)
    if v in (None, ""):
        raise RobenchError(f"model={mcfg.get('source')} needs model.{key}={example}")
    return v


def _existing(path: Any, what: str) -> Path:
    p = Path(str(path)).expanduser().absolute()  # summaries record where the weights came from
    if not p.is_file():
        raise RobenchError(f"{what} {p} not found (no such file)")
    return p


def _extra(module: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise RobenchError(f"this model source needs the '{module}' package: pip install 'robench[{extra}]'") from None


# ---------------------------------------------------------------- weights files

def read_state_dict(path: Path) -> Dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch file (plain, or under ``state_dict`` / ``model``),
    ``module.`` prefixes (DataParallel) stripped. An unreadable file fails in one line."""
    try:
        if path.suffix == ".safetensors":
            st = _extra("safetensors.torch", "safetensors")
            state = st.load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except RobenchError:
        raise
    except Exception as e:
        raise RobenchError(f"weights file {path} is unreadable ({e.__class__.__name__}): expected a state dict "
                           f"saved with torch.save or a .safetensors file") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise RobenchError(f"weights file {path} holds no state dict (a mapping of names to tensors, plain or under "
                           f"'state_dict' / 'model')")
    state = dict(state)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_weights(net: nn.Module, state: Mapping[str, torch.Tensor], path: Any, what: str) -> None:
    """Strict load; a key or shape mismatch fails with one line naming the first offending keys."""
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} ({len(missing)})")
        if unexpected:
            parts.append(f"unexpected keys {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''} "
                         f"({len(unexpected)})")
        if shapes:
            parts.append(f"shape mismatch {'; '.join(shapes[:2])}")
        raise RobenchError(f"weights {path} do not fit {what}: {'; '.join(parts)}")
    net.load_state_dict(state, strict=True)


# ---------------------------------------------------------------- the sources

def _import_target(target: str) -> Any:
    return import_code(target, "model.target", kind="model")


def import_code(target: str, key: str, kind: str = "model") -> Any:
    """The object ``pkg.module:Name`` or ``path/to/file.py:Name`` names, imported (the module's code runs),
    then checked before anything calls it: for ``kind="model"`` a torch.nn.Module subclass or a Python
    function (:func:`check_factory`); for ``kind="attack"`` a subclass of robench's ``Attack``."""
    if not isinstance(target, str) or ":" not in target:
        raise RobenchError(f"{key} must look like pkg.module:Name or path/to/file.py:Name, got '{target}'")
    mod_name, attr = target.rsplit(":", 1)
    try:
        if mod_name.endswith(".py"):
            path = _existing(mod_name, f"{key} file")
            spec = importlib.util.spec_from_file_location(f"robench_user_{path.stem}", path)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)  # type: ignore[union-attr]
        else:
            if "" not in sys.path and str(Path.cwd()) not in sys.path:  # `robench` (console script): cwd importable
                sys.path.insert(0, str(Path.cwd()))
            mod = importlib.import_module(mod_name)
    except RobenchError:
        raise
    except Exception as e:
        first = (str(e).strip().splitlines() or [e.__class__.__name__])[0]
        raise RobenchError(f"{key}={target}: cannot import {mod_name} ({e.__class__.__name__}: {first})") from None
    obj = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise RobenchError(f"{key}={target}: {mod_name} has no attribute '{attr}'")
        obj = getattr(obj, part)
    if kind == "attack":
        from robench.attacks.base import Attack

        if not (isinstance(obj, type) and issubclass(obj, Attack)):
            raise RobenchError(f"{key}={target} is not a subclass of robench.attacks.base.Attack")
        return obj
    check_factory(obj, f"{key}={target}")
    return obj


def check_factory(obj: Any, what: str) -> None:
    """``obj`` may build a victim: an ``nn.Module`` subclass, or a Python function (``def``) from outside
    the standard library. Checked before anything is called: a config names code robench imports and
    calls (as Hydra's ``_target_`` does), and this keeps it to code that builds a network, so
    ``os:system`` or ``subprocess:call`` are refused instead of run."""
    import inspect

    mod = (getattr(obj, "__module__", None) or "").split(".")[0]
    if mod in ("builtins", "__builtin__") or mod in getattr(sys, "stdlib_module_names", ()):
        raise RobenchError(f"{what} names {mod}.{getattr(obj, '__qualname__', obj)!s} from Python's standard library; "
                           f"give a torch.nn.Module subclass or a function that returns one")
    if inspect.isclass(obj):
        if not issubclass(obj, nn.Module):
            raise RobenchError(f"{what} is the class {obj.__qualname__}, not a torch.nn.Module subclass")
        return
    if not inspect.isfunction(obj):
        raise RobenchError(f"{what} is a {type(obj).__name__}, not a torch.nn.Module subclass or a Python function "
                           f"(def) that returns one")
