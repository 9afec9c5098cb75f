"""Ready for an accelerator without one: a simulated second device (docs/gpu.md).

The commonest GPU bug in attack code is a tensor or a random generator made on the host (a factory call
without ``device=``, a ``.cpu()``, ``torch.Generator()``) and then mixed with the batch, which lives on the
accelerator. On a CPU-only machine both live on the CPU and nothing fails. :class:`VirtualDevice` is a
``TorchFunctionMode`` that keeps a *virtual* device for every tensor made while it is active and applies
CUDA's rules to it:

* **host** tensors: made by a factory (``zeros``, ``ones``, ``empty``, ``full``, ``arange``, ``rand*``,
  ``randn*``, ``randint``, ``randperm``, ``tensor`` / ``as_tensor`` of Python data, ``from_numpy``, ...:
  any torch function given no tensor) without ``device=`` from code outside torch, or with
  ``device="cpu"`` spelled as a string; the result of ``.cpu()`` / ``.to("cpu")``; whatever is computed
  from host tensors only; tensors handed in through :func:`mark_host` (the engine's CPU copy of the slice,
  the training images);
* **device** tensors: everything else: the batch (``x.to(device)``), the victim's weights, factories
  given a ``torch.device`` (``device=x.device``), ``*_like`` of a device tensor, results of device tensors.

It flags, with the file and line of the code that did it (and where the host tensor was made):

* an operation that mixes a host tensor of one or more dimensions with a device tensor (CUDA allows
  0-dim host tensors as scalars, and host index tensors into a device tensor; both pass);
* indexing a host tensor with a device index, and an indexed assignment (advanced indexing) of values
  from the other device;
* a random draw whose generator is on the other device than its output (``torch.randn(..., generator=g)``
  without ``device=`` while ``g`` is the batch's generator; a ``torch.Generator()`` made without a device
  and used for a draw on the device).

Why this check and not the two simpler ones. Flagging every factory call without ``device=`` (a
``TorchFunctionMode`` that only looks at the call) raises false alarms on the deliberate host
bookkeeping of the referee and the engine (records, timings, the slice's indices: the six sites issue 27
lists, none of which breaks a GPU run), and misses ``.cpu()`` results mixed back into the batch. Setting
torch's default device to ``meta`` makes every host creation unusable at once (no values: ``bool()``,
``.item()``, ``nonzero`` fail) and calls a 0-dim scalar a mismatch, so it fails on correct code; it also
never sees ``torch.Generator()``, which ignores the default device. Simulating the second device flags
what a GPU run would reject, at the line that would fail, and nothing a GPU run accepts. It cannot see a
host tensor that never meets the batch (harmless on a GPU, too) or code that was not run (the check
covers what a run executes).

Usage (tests/test_device.py runs every registered attack, input defense and training recipe this way)::

    with virtual_device() as vd:
        ...  # the code under test, with the batch on the CPU playing the device
    assert not vd.problems, "\\n".join(vd.problems)
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Iterator, List, Optional

import torch
from torch.overrides import TorchFunctionMode

#: the attribute a host tensor carries: where it was made ("file:line what")
TAG = "_robench_host"
_TORCH = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
_THIS = os.path.abspath(__file__)
_ROOT = os.path.dirname(os.path.dirname(_THIS)) + os.sep
_MOVES = {"to", "cpu", "cuda"}
_READS = {"copy_", "__set__", "__repr__", "__format__", "__str__", "__len__", "__bool__", "item", "tolist", "numpy",
          "size", "dim", "numel", "__reduce_ex__", "__deepcopy__", "_has_compatible_shallow_copy_type", "is_same_size"}
_NEW = {"new_tensor", "new_zeros", "new_ones", "new_empty", "new_full"}


def _where(depth: int = 2) -> Optional[str]:
    """``file:line`` of the first frame outside torch and this module (the code that made the call)."""
    f = sys._getframe(depth)
    while f is not None:
        fn = os.path.abspath(f.f_code.co_filename)
        if fn != _THIS and not fn.startswith(_TORCH):
            return f"{fn[len(_ROOT):] if fn.startswith(_ROOT) else fn}:{f.f_lineno}"
        f = f.f_back
    return None


def _leaves(obj: Any, out: Optional[list] = None) -> list:
    """The leaves of nested tuples, lists and dicts (torch's pytree, minus its cost)."""
    if out is None:
        out = []
    if isinstance(obj, (tuple, list)):
        for o in obj:
            _leaves(o, out)
    elif isinstance(obj, dict):
        for o in obj.values():
            _leaves(o, out)
    else:
        out.append(obj)
    return out


def _tensors(obj: Any, out: list) -> None:
    """Append the tensors among ``obj``'s items (one level of nested tuples, lists and dicts deeper too)."""
    for o in obj:
        if isinstance(o, torch.Tensor):
            out.append(o)
        elif isinstance(o, (tuple, list)):
            _tensors(o, out)
        elif isinstance(o, dict):
            _tensors(o.values(), out)


def host_of(t: Any) -> Optional[str]:
    """Where a host tensor (or generator) was made; None for a device one."""
    return getattr(t, TAG, None)


def mark_host(t: torch.Tensor, what: str = "marked host") -> torch.Tensor:
    """Declare ``t`` a host tensor (data a real run keeps on the CPU, e.g. the engine's slice); returns ``t``."""
    setattr(t, TAG, what)
    return t


class HostDataset(torch.utils.data.Dataset):
    """A dataset whose items are host tensors (a real run's training images live on the CPU)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        item = self.dataset[i]
        return tuple(mark_host(v, "a training image (host)") if torch.is_tensor(v) else v for v in item)


def _device_spec_tag(spec: Any) -> Optional[Any]:
    """The tag a ``device=`` value gives: a host origin for "cpu" spelled as a string, False (device) for a
    torch.device, an ordinal or "cuda..."; None when ``spec`` is None."""
    if spec is None:
        return None
    if isinstance(spec, str) and spec.split(":")[0] == "cpu":
        return "device='cpu' (host)"
    return False


class VirtualDevice(TorchFunctionMode):
    """The simulated second device (see the module docstring). ``problems``: one line per distinct site."""

    def __init__(self, limit: int = 100):
        super().__init__()
        self.problems: List[str] = []
        self._seen: set = set()
        self._limit = limit

    # ------------------------------------------------------------------ reporting
    def _flag(self, what: str) -> None:
        site = _where(3) or "?"
        key = (site, what)
        if key in self._seen or len(self.problems) >= self._limit:
            return
        self._seen.add(key)
        self.problems.append(f"{site}: {what}")

    # ------------------------------------------------------------------ the rules
    def __torch_function__(self, func, types, args=(), kwargs=None):
        tensors: list = []
        _tensors(args, tensors)
        if kwargs:
            _tensors(kwargs.values(), tensors)
        name = getattr(func, "__name__", "")
        if tensors and name not in _MOVES and not (kwargs and ("device" in kwargs or "generator" in kwargs)) \
                and not any(getattr(t, TAG, None) for t in tensors):
            return func(*args, **(kwargs or {}))  # device tensors only: the result is on the device (untagged)
        return self._judge(func, name, args, kwargs or {}, tensors)

    def _judge(self, func, name, args, kwargs, tensors):
        first = args[0] if args else None
        if name == "__setitem__" and len(args) == 3:
            self._setitem(args)
            return func(*args, **kwargs)
        if name == "__set__" and getattr(getattr(func, "__self__", None), "__name__", "") == "data":
            out = func(*args, **kwargs)  # ``param.data = moved`` (Module.to): the parameter is where its data is
            if len(args) == 2 and torch.is_tensor(args[0]) and torch.is_tensor(args[1]):
                setattr(args[0], TAG, host_of(args[1])) if host_of(args[1]) else _clear(args[0])
            return out
        if name in _READS:
            return func(*args, **kwargs)  # cross-device copies are allowed; reading values is not a mix
        if name == "__getitem__" and len(args) == 2:
            self._getitem(args)
            out = func(*args, **kwargs)
            return self._tag_outputs(out, tensors, host_of(first) if torch.is_tensor(first) else None)
        if name in _MOVES and tensors and tensors[0] is first:
            return self._move(func, name, args, kwargs)
        # the output's virtual device
        if kwargs.get("device") is not None:
            tag = _device_spec_tag(kwargs["device"])
        elif name in _NEW and torch.is_tensor(first):
            tag = host_of(first)
        elif tensors:
            hosts = [t for t in tensors if host_of(t)]
            dev = [t for t in tensors if not host_of(t)]
            big = [t for t in hosts if t.dim() > 0]
            # an in-place op writes into its first argument: a host one cannot take device values, not even 0-dim
            inplace = (name.endswith("_") and not name.endswith("__")) or name.startswith("__i")
            into_host = inplace and torch.is_tensor(first) and bool(host_of(first))
            if dev and (big or into_host):
                h = big[0] if big else first
                self._flag(f"`{name}` mixes a host tensor (made at {host_of(h)}) with a tensor on the batch's device")
            tag = None if dev else host_of(hosts[0])
        else:  # a factory without a device: the host, whoever calls it (nn.Linear's weights, torch.load's tensors)
            tag = f"{_where(2)} torch.{name} without device="
        gen = kwargs.get("generator")
        if gen is not None and bool(host_of(gen)) != bool(tag):
            if tag:
                self._flag(f"`{name}` draws on the host (no device=) with a generator on the batch's device")
            else:
                self._flag(f"`{name}` draws on the batch's device with a host generator (made at {host_of(gen)})")
        out = func(*args, **kwargs)
        return self._tag_outputs(out, tensors, tag)

    def _getitem(self, args) -> None:
        self_t, idx = args[0], args[1]
        if torch.is_tensor(self_t) and host_of(self_t):
            ids = _leaves(idx)
            if any(torch.is_tensor(i) and not host_of(i) for i in ids):
                self._flag(f"indexes a host tensor (made at {host_of(self_t)}) with an index on the batch's device")

    def _setitem(self, args) -> None:
        self_t, idx, value = args[0], args[1], args[2]
        if not torch.is_tensor(self_t):
            return
        ids = _leaves(idx)
        advanced = any(torch.is_tensor(i) or isinstance(i, (list, tuple)) for i in ids) or \
            torch.is_tensor(idx) or isinstance(idx, list)
        if host_of(self_t) and any(torch.is_tensor(i) and not host_of(i) for i in ids):
            self._flag(f"assigns into a host tensor (made at {host_of(self_t)}) at an index on the batch's device")
        if torch.is_tensor(value) and value.dim() > 0 and advanced and bool(host_of(value)) != bool(host_of(self_t)):
            src, dst = ("a host tensor (made at %s)" % host_of(value), "a tensor on the batch's device") if host_of(value) \
                else ("a tensor on the batch's device", "a host tensor (made at %s)" % host_of(self_t))
            self._flag(f"assigns {src} into {dst} by advanced indexing")

    def _move(self, func, name, args, kwargs):
        self_t = args[0]
        if name == "cpu":
            tag: Any = f"{_where(3)} .cpu()"
        elif name == "cuda":
            tag = None
        else:
            tag = host_of(self_t)
            specs = list(args[1:]) + [kwargs.get("device"), kwargs.get("other")]
            for s in specs:
                if isinstance(s, torch.Tensor):
                    tag = host_of(s)
                    break
                if isinstance(s, (str, torch.device, int)) and not isinstance(s, bool):
                    t = _device_spec_tag(s)
                    tag = f"{_where(3)} .to('cpu')" if t else None
                    break
        out = func(*args, **kwargs)
        if out is self_t and bool(tag) != bool(host_of(self_t)):
            out = out.view_as(out)  # on a real device this is a copy: a new tensor with its own device
        if torch.is_tensor(out) and out is not self_t:
            setattr(out, TAG, tag or None) if tag else _clear(out)
        return out

    @staticmethod
    def _tag_outputs(out, inputs, tag):
        ins = {id(t) for t in inputs}
        leaves = _leaves(out)
        for t in leaves:
            if isinstance(t, torch.Tensor) and id(t) not in ins:
                if tag:
                    setattr(t, TAG, tag)
                else:
                    _clear(t)
        return out


def _clear(t: torch.Tensor) -> None:
    if TAG in getattr(t, "__dict__", {}):
        delattr(t, TAG)


_REAL_GENERATOR = torch.Generator


class _GeneratorMeta(type(torch.Generator)):
    def __instancecheck__(cls, inst):  # isinstance(g, torch.Generator) holds for every generator while patched
        return isinstance(inst, _REAL_GENERATOR)

    def __subclasscheck__(cls, sub):
        return issubclass(sub, _REAL_GENERATOR)


class _TrackedGenerator(_REAL_GENERATOR, metaclass=_GeneratorMeta):
    """``torch.Generator`` while the check runs: remembers whether it was made without a device."""

    def __init__(self, device: Any = None):
        tag = _device_spec_tag(device)
        if device is None or tag:
            setattr(self, TAG, f"{_where(2)} torch.Generator({'' if device is None else repr(device)})")


_REAL_LOAD = torch.load
_REAL_PARAMETER_NEW = torch.nn.Parameter.__new__
_REAL_PARAMETER_NEW_SLOT = torch.nn.Parameter.__dict__["__new__"]


def _load(*args, **kwargs):
    """``torch.load`` while the check runs: without ``map_location`` (or with "cpu") its tensors are host tensors."""
    out = _REAL_LOAD(*args, **kwargs)
    where = kwargs.get("map_location", args[1] if len(args) > 1 else None)
    if where is None or _device_spec_tag(where):
        for t in _leaves(out):
            if isinstance(t, torch.Tensor):
                setattr(t, TAG, f"{_where(2)} torch.load (host)")
    return out


def _parameter_new(cls, data=None, requires_grad=True):
    """``nn.Parameter(data)`` while the check runs: the parameter is where its data is (a module built with
    ``torch.empty(...)`` of no device holds host parameters until ``model.to(device)``)."""
    p = _REAL_PARAMETER_NEW(cls, data, requires_grad)
    h = host_of(data) if data is not None else "nn.Parameter() (host)"
    if h:
        setattr(p, TAG, h)
    return p


@contextlib.contextmanager
def virtual_device() -> Iterator[VirtualDevice]:
    """Run the body with the simulated second device (``torch.Generator``, ``torch.load`` and ``nn.Parameter``
    tracked); yields the mode, whose ``problems`` list what a GPU run would reject."""
    mode = VirtualDevice()
    torch.Generator = _TrackedGenerator  # type: ignore[misc]
    torch.load = _load
    torch.nn.Parameter.__new__ = staticmethod(_parameter_new)  # type: ignore[assignment]
    try:
        with mode:
            yield mode
    finally:
        torch.Generator = _REAL_GENERATOR  # type: ignore[misc]
        torch.load = _REAL_LOAD
        torch.nn.Parameter.__new__ = _REAL_PARAMETER_NEW_SLOT  # type: ignore[assignment]
