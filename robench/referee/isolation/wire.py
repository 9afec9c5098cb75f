"""The wire format between the referee and a sandboxed attack: a fixed message schema, no pickle.

A frame is an 8-byte big-endian length, then a 4-byte big-endian header length, the header (UTF-8
JSON: ``{"op": ..., "args": {...}, "tensors": [{"dtype", "shape"}, ...]}``) and the tensors' raw bytes,
one after the other. Decoding never runs anything the other side chose: JSON has no code, and a
tensor is rebuilt from its declared dtype (from a short list) and shape, whose byte count must match
exactly. Every op has a fixed set of argument names and types per direction (:data:`TO_CHILD`,
:data:`TO_PARENT`); anything else, a frame over :data:`MAX_FRAME` bytes or a header over
:data:`MAX_HEADER` bytes, is a :class:`WireError`.
"""
from __future__ import annotations

import json
import math
import os
import struct
from typing import Any, Dict, List, Optional, Tuple

import torch

#: the largest frame either side accepts (bytes): 1 GiB, a query of about 1,700 rows of 3 x 224 x 224 float32 inputs
MAX_FRAME = 2 ** 30
#: the largest JSON header (bytes)
MAX_HEADER = 1 * 2 ** 20

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "int64": torch.int64, "int32": torch.int32, "uint8": torch.uint8, "bool": torch.bool}
_NAMES = {v: k for k, v in DTYPES.items()}


class WireError(Exception):
    """A frame that does not fit the schema (or a broken connection)."""


# op -> {argument: accepted Python types}; a None type tuple means "any JSON value" (attack_extra's figures)
_NUM = (int, float)
_OPT_NUM = (int, float, type(None))
TO_CHILD: Dict[str, Dict[str, tuple]] = {
    "start": {"name": (str,), "code": (str, type(None)), "params": (dict,), "threads": (int,)},
    "run": {"access": (str,), "eps": _OPT_NUM, "norm": (str,), "max_queries": (int,), "num_classes": (int,),
            "n": (int,), "targeted": (bool,), "eot_samples": (int,), "checkpoints": (list,), "low": _NUM,
            "high": _NUM, "seed": (int, type(None))},
    "ok": {"kind": (str,), "value": _OPT_NUM + (bool, list)},
    "raise": {"kind": (str,), "msg": (str,)},
    "extra": {},
    "close": {},
}
TO_PARENT: Dict[str, Dict[str, tuple]] = {
    "ready": {"access": (str,), "minimizes_distortion": (bool,), "eps_policy": (str,), "norms": (list,),
              "requires": (list,), "layouts": (list,)},
    "call": {"access": (str,), "op": (str,)},
    "done": {},
    "error": {"msg": (str,)},
    "extra": {"value": None},
}
#: how many tensors each op carries at most (the run's facts: x0, y, targets, generator state)
MAX_TENSORS = {"run": 4, "ok": 1, "call": 2}


def _check_json(v: Any, depth: int = 0) -> None:
    if depth > 16:
        raise WireError("nested too deep")
    if v is None or isinstance(v, (bool, str)):
        return
    if isinstance(v, (int, float)):
        if isinstance(v, float) and not math.isfinite(v):
            raise WireError("a non-finite number")
        return
    if isinstance(v, list):
        for x in v:
            _check_json(x, depth + 1)
        return
    if isinstance(v, dict):
        for k, x in v.items():
            if not isinstance(k, str):
                raise WireError("a mapping key that is not a string")
            _check_json(x, depth + 1)
        return
    raise WireError(f"a {type(v).__name__} value")


def encode(op: str, args: Optional[Dict[str, Any]] = None, tensors: Tuple[Optional[torch.Tensor], ...] = ()) -> bytes:
    """One frame. ``tensors`` may hold None entries (sent as a null slot)."""
    metas: List[Optional[Dict[str, Any]]] = []
    blobs: List[bytes] = []
    for t in tensors:
        if t is None:
            metas.append(None)
            continue
        t = t.detach().to("cpu").contiguous()
        if t.dtype not in _NAMES:
            raise WireError(f"a tensor of dtype {t.dtype}")
        metas.append({"dtype": _NAMES[t.dtype], "shape": list(t.shape)})
        blobs.append(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    header = json.dumps({"op": op, "args": args or {}, "tensors": metas}, allow_nan=False).encode()
    body = struct.pack(">I", len(header)) + header + b"".join(blobs)
    return struct.pack(">Q", len(body)) + body


def decode(body: bytes, schema: Dict[str, Dict[str, tuple]]) -> Tuple[str, Dict[str, Any], List[Optional[torch.Tensor]]]:
    """(op, args, tensors) of one frame's body, checked against ``schema``; anything else is a WireError."""
    if len(body) < 4:
        raise WireError("a frame shorter than its header length")
    (hlen,) = struct.unpack(">I", body[:4])
    if hlen > MAX_HEADER or 4 + hlen > len(body):
        raise WireError(f"a header of {hlen} bytes")
    try:
        h = json.loads(body[4:4 + hlen].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise WireError("a header that is not JSON") from None
    if not isinstance(h, dict) or set(h) != {"op", "args", "tensors"}:
        raise WireError("a header without exactly op, args and tensors")
    op, args, metas = h["op"], h["args"], h["tensors"]
    if not isinstance(op, str) or op not in schema:
        raise WireError(f"an unknown message {str(op)[:40]!r}")
    if not isinstance(args, dict) or not isinstance(metas, list):
        raise WireError(f"a malformed '{op}' message")
    want = schema[op]
    if set(args) - set(want):
        raise WireError(f"'{op}' with unexpected fields {sorted(set(args) - set(want))[:4]}")
    for k, types in want.items():
        if k not in args:
            raise WireError(f"'{op}' without its field '{k}'")
        v = args[k]
        if types is not None and (not isinstance(v, types) or (isinstance(v, bool) and bool not in types)):
            raise WireError(f"'{op}' with a bad field '{k}'")
        _check_json(v)
    if len(metas) > MAX_TENSORS.get(op, 0):
        raise WireError(f"'{op}' carrying {len(metas)} tensors")
    out: List[Optional[torch.Tensor]] = []
    pos = 4 + hlen
    for m in metas:
        if m is None:
            out.append(None)
            continue
        if not isinstance(m, dict) or set(m) != {"dtype", "shape"} or m["dtype"] not in DTYPES \
                or not isinstance(m["shape"], list) or len(m["shape"]) > 8 \
                or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2 ** 40 for s in m["shape"]):
            raise WireError(f"'{op}' with a malformed tensor description")
        dt = DTYPES[m["dtype"]]
        n = math.prod(m["shape"]) * torch.empty((), dtype=dt).element_size()
        if pos + n > len(body):
            raise WireError(f"'{op}' whose tensor bytes do not match its shape")
        raw = body[pos:pos + n]
        pos += n
        t = torch.frombuffer(bytearray(raw), dtype=dt) if n else torch.empty(0, dtype=dt)
        out.append(t.reshape(m["shape"]).clone())
    if pos != len(body):
        raise WireError(f"'{op}' with {len(body) - pos} trailing bytes")
    return op, args, out


def send(fd: int, frame: bytes) -> None:
    view = memoryview(frame)
    while view:
        try:
            n = os.write(fd, view)
        except OSError as e:
            raise WireError(f"the connection broke ({e.strerror or e})") from None
        view = view[n:]


def _read_exact(fd: int, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        try:
            b = os.read(fd, min(n - got, 1 << 22))
        except OSError as e:
            raise WireError(f"the connection broke ({e.strerror or e})") from None
        if not b:
            raise WireError("the connection closed")
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def receive(fd: int, schema: Dict[str, Dict[str, tuple]], max_frame: int = MAX_FRAME):
    """The next frame from ``fd``, decoded and checked (blocking)."""
    (n,) = struct.unpack(">Q", _read_exact(fd, 8))
    if n > max_frame:
        raise WireError(f"a frame of {n:,} bytes (at most {max_frame:,})")
    return decode(_read_exact(fd, n), schema)
