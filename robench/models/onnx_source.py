"""``model=onnx``: an ONNX file as users export it today, as a torch module when possible.

torch 2.9 and later export at ONNX opset 20 by default (``torch.onnx.export(..., dynamo=False)``
included), while onnx2torch 1.5 converts several operators only up to opset 18 (``Shape``,
``Constant``, ...: "Converter is not implemented (... version=19)"). So a file is loaded in the first
of these ways that works:

1. ``onnx2torch.convert`` at the file's own opset: a torch module, gradients flow;
2. the same after onnx's version converter (``onnx.version_converter.convert_version``) has taken the
   model down to the newest lower opset onnx2torch converts, tried from the file's opset - 1 down to
   :data:`MIN_OPSET`: still a torch module with gradients, computing what the file computes (the
   converter's adapters rewrite each node to the older operator's equivalent form; the summary records
   both opsets, ``onnx_opset`` and ``onnx_converted_opset``);
3. onnxruntime (the ``onnx`` extra installs it): the file runs as it is, with no input gradients, like
   ``model=gbdt``: score- and label-access attacks work, a gradient attack is refused before anything
   is written, in one line saying why (``gradient_free``, robench/victim.py). E.g. a network with GELU
   exported at opset 20: ``Gelu`` exists only since opset 20, so no lower opset has it and onnx2torch
   has no converter for it.

Which way a file takes is decided once per file version (path, size, modification time) and kept for
the process, so the CLI's check before the run and the run itself do not search twice.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from torch import nn

from robench.errors import RobenchError
from robench.models.weights import _extra

#: the lowest opset tried when converting a file down for onnx2torch
MIN_OPSET = 11


def _first_line(e: BaseException, n: int = 160) -> str:
    first = (str(e).strip().splitlines() or [e.__class__.__name__])[0]
    return f"{e.__class__.__name__}: {first[:n]}"


def _opset(model) -> int:
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _load(path: Path):
    onnx = _extra("onnx", "onnx")
    try:
        return onnx.load(str(path))
    except Exception as e:
        raise RobenchError(f"{path} is not an ONNX model ({_first_line(e)}); export one with "
                           f"torch.onnx.export(model, (x,), FILE, dynamo=False, input_names=['x'], "
                           f"dynamic_axes={{'x': {{0: 'n'}}}})") from None


def _convert(model, onnx2torch) -> nn.Module:
    import warnings

    with warnings.catch_warnings():  # onnx2torch warns about ops it converts approximately for export only
        warnings.simplefilter("ignore")
        return onnx2torch.convert(model)


@functools.lru_cache(maxsize=16)
def _plan(path: str, size: int, mtime_ns: int) -> Tuple[int, Optional[int], str]:
    """(the file's opset, the opset onnx2torch converts it at or None, why not when None)."""
    from onnx import version_converter

    onnx2torch = _extra("onnx2torch", "onnx")
    model = _load(Path(path))
    own = _opset(model)
    try:
        _convert(model, onnx2torch)
        return own, own, ""
    except Exception as e:
        import re

        m = re.search(r"operation_type='([^']+)', version=(\d+)", str(e))
        why = f"its {m.group(1)} (version {m.group(2)})" if m else f"it ({_first_line(e)})"
    for target in range(own - 1, MIN_OPSET - 1, -1):
        try:
            _convert(version_converter.convert_version(model, target), onnx2torch)
            return own, target, ""
        except Exception:
            continue
    return own, None, (f"onnx2torch cannot convert {why} at opset {own}, nor the model at any opset down to "
                       f"{MIN_OPSET} that onnx's version converter reaches")


def plan(path: Path) -> Tuple[int, Optional[int], str]:
    st = Path(path).stat()
    return _plan(str(path), st.st_size, st.st_mtime_ns)


def gradient_free_reason(path: Path) -> Optional[str]:
    """Why the ONNX file at ``path`` will run without input gradients (through onnxruntime), or None
    when it converts to a torch module. Reads and converts the file (once per file version)."""
    _, target, why = plan(path)
    return None if target is not None else (f"model=onnx runs {Path(path).name} through onnxruntime, which gives no "
                                            f"input gradients ({why})")


class OnnxRuntimeModel(nn.Module):
    """An ONNX graph run by onnxruntime on the CPU: [0, 1] images in, the graph's first output (logits)
    out, on the input's device. No input gradients (``gradient_free``), no parameters; deterministic."""

    def __init__(self, path: Path, reason: str):
        super().__init__()
        ort = _extra("onnxruntime", "onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, torch.get_num_threads())
        opts.log_severity_level = 3  # errors only
        try:
            self._session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise RobenchError(f"{path}: neither onnx2torch nor onnxruntime can load it ({_first_line(e)})") from None
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise RobenchError(f"{path} has {len(inputs)} graph inputs; model=onnx needs one (the images)")
        self._input = inputs[0].name
        self.path = str(path)
        self.gradient_free = reason

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._session.run(None, {self._input: x.detach().to("cpu", torch.float32).numpy()})[0]
        return torch.from_numpy(np.ascontiguousarray(out)).to(x.device)

    def __getstate__(self):  # sessions do not pickle: rebuilt from the file
        return {"path": self.path, "reason": self.gradient_free, "training": self.training}

    def __setstate__(self, state):
        self.__init__(Path(state["path"]), state["reason"])
        self.train(state["training"])

    def __deepcopy__(self, memo):
        new = OnnxRuntimeModel(Path(self.path), self.gradient_free)
        new.train(self.training)
        return new


def load_onnx(path: Path) -> Tuple[nn.Module, Dict[str, Any]]:
    """The victim network of an ONNX file and its metadata (``onnx_opset``, ``onnx_converted_opset`` or
    ``onnx_runtime``), in the first way of the module docstring that works."""
    from onnx import version_converter

    own, target, why = plan(path)
    meta: Dict[str, Any] = {"weights_file": str(path), "onnx_opset": own}
    if target is None:
        reason = gradient_free_reason(path)
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise RobenchError(f"{path}: {why}; onnxruntime runs it as it is (without gradients): "
                               f"pip install 'robench[onnx]'") from None
        meta["onnx_runtime"] = True
        return OnnxRuntimeModel(path, reason), meta
    onnx2torch = _extra("onnx2torch", "onnx")
    model = _load(path)
    if target != own:
        model = version_converter.convert_version(model, target)
        meta["onnx_converted_opset"] = target
    try:
        return _convert(model, onnx2torch), meta
    except Exception as e:  # converted during the plan: only a changed file gets here
        raise RobenchError(f"{path}: onnx2torch cannot convert it ({_first_line(e, 200)})") from None
