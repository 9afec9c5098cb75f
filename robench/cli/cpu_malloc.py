"""Keep freed CPU memory for reuse: glibc malloc settings for large CPU batches.

On Linux, glibc serves every allocation above its mmap threshold (128 KiB at first, at most 32 MiB)
with a fresh ``mmap`` and gives it back with ``munmap`` when it is freed. PyTorch's CPU allocator
frees a batch's activations and gradients after every forward / backward pass and asks for them
again at the next one, so with batches of hundreds of images every attack step pays the kernel to
map and zero the same pages again. Measured on this project's 2-core CPU machine (PGD-40 at eps 0,
1,000 MNIST test images, ``small_cnn_bn``, one thread, ``attack.batch_size=1000``): 96 s of attack
time, 60 s of the process's time spent in the kernel; with the settings below 32.5 s (batches of
100 without them: 38.9 s). See README "Benchmark".

:func:`tune` sets ``M_MMAP_MAX = 0`` (large blocks come from the heap, where freed blocks are reused)
and ``M_TRIM_THRESHOLD = 1 GiB`` (the heap returns free memory to the system only above that), the
same effect as ``GLIBC_TUNABLES=glibc.malloc.mmap_max=0``. What a run freed stays in the process
for its next batch, so the peak can be higher (1.9 GB against 1.5 GB in the run above). glibc still
falls back to mmap where the heap cannot grow. It also puts those two settings into
``GLIBC_TUNABLES`` (appended to any the caller set), so that processes started from this one (Hydra's
joblib launcher's workers) start with them. The ``robench`` commands call it at start-up; the
Python API leaves a caller's process alone (call ``robench.cli.cpu_malloc.tune()`` yourself).
``ROBENCH_MALLOC=system`` turns it off (``reuse``, the default, keeps it; any other value is refused
in one line); on a C library without ``mallopt`` (not glibc) it does nothing.
"""
from __future__ import annotations

import ctypes
import os
import sys

from robench.errors import RobenchError

M_TRIM_THRESHOLD = -1   # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_MAX = -4
TRIM_THRESHOLD = 1 << 30
TUNABLES = f"glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold={TRIM_THRESHOLD}"


def tune() -> bool:
    """Apply the settings above to this process; True when glibc accepted them."""
    mode = os.environ.get("ROBENCH_MALLOC", "").strip().lower()
    if mode not in ("", "reuse", "system"):
        raise RobenchError(f"ROBENCH_MALLOC must be 'reuse' (the default) or 'system', got {mode!r}")
    if mode == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if not (mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1):
        return False
    have = os.environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.mmap_max" not in have:   # the caller's own choice wins
        os.environ["GLIBC_TUNABLES"] = ":".join(filter(None, [have, TUNABLES]))
    return True
