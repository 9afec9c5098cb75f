"""Keep freed CPU memory for reuse: glibc malloc settings for large CPU batches.

On Linux, glibc serves every allocation above its mmap threshold (128 KiB at first, at most 32 MiB)
with a fresh ``mmap`` and gives it back with ``munmap`` when it is freed. PyTorch's CPU allocator
frees a batch's activations and gradients after every forward / backward pass and asks for them
again at the next one, so with batches of hundreds of images every attack step pays the kernel to
map and zero the same pages again. Measured on this project's 2-core CPU machine (PGD-40 at eps 0,
1,000 MNIST test images, ``small_cnn_bn``, one thread, ``attack.batch_size=1000``): 96 s of attack
time, 60 s of the process's time spent in the kernel; with the settings below 38 s, the same as
with batches of 100. See README "Benchmark".

:func:`tune` sets ``M_MMAP_MAX = 0`` (large blocks come from the heap, where freed blocks are reused)
and ``M_TRIM_THRESHOLD = 1 GiB`` (the heap returns free memory to the system only above that), the
same effect as ``GLIBC_TUNABLES=glibc.malloc.mmap_max=0``. Peak memory is unchanged; what a run
freed stays in the process for its next batch. glibc still falls back to mmap where the heap cannot
grow. The ``robench`` commands call it at start-up; the Python API leaves a caller's process alone
(call ``robench.cpu_malloc.tune()`` yourself). ``ROBENCH_MALLOC=system`` turns it off; on a C
library without ``mallopt`` (not glibc) it does nothing.
"""
from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1   # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_MAX = -4
TRIM_THRESHOLD = 1 << 30


def tune() -> bool:
    """Apply the settings above to this process; True when glibc accepted them."""
    if os.environ.get("ROBENCH_MALLOC", "").strip().lower() == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
