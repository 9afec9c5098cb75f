"""robench/cpu_malloc.py: after tune(), the forward / backward passes of an attack step reuse the memory
the previous step freed instead of mapping (and faulting in) fresh pages every time;
ROBENCH_MALLOC=system leaves glibc alone."""
import os
import subprocess
import sys

import pytest

# Page faults per step of what a gradient attack does with a batch: 500 MNIST-sized images through two
# convolutions, forward and backward. Each activation is 50 MiB, above any mmap threshold glibc allows.
PROBE = r"""
import resource, sys, torch
from robench.cpu_malloc import tune
applied = tune() if sys.argv[1] == "tune" else False
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU(),
                          torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.ReLU())
x = torch.rand(500, 1, 28, 28)
per_step = []
for _ in range(8):
    before = faults()
    xi = x.clone().requires_grad_(True)
    net(xi).sum().backward()
    per_step.append(faults() - before)
print(applied, sum(per_step[3:]))   # after warm-up: the last five steps
"""


def _probe(mode, **env):
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1", **env}).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_tune_reuses_freed_memory():
    applied, tuned = _probe("tune")
    if not applied:
        pytest.skip("this C library has no mallopt (not glibc)")
    _, plain = _probe("plain")
    page_per_activation = 500 * 32 * 28 * 28 * 4 // 4096       # 12,250 pages of 4 KiB
    assert plain > 10 * page_per_activation, plain             # glibc's default: fresh pages every step
    assert tuned * 10 < plain, (tuned, plain)                  # tuned: the freed blocks are reused (measured: 0 to
                                                               # 2 activations' worth in 5 steps, against 80)


def test_opt_out():
    applied, _ = _probe("tune", ROBENCH_MALLOC="system")
    assert applied is False
