"""Measure how busy the cores are during a `launcher=joblib` sweep: CPU time of the sweep's process tree
(from /proc, sampled every 0.2 s) over wall time. 2.0 = two cores busy the whole time.

    python benchmarks/sweep_cpu.py CHECKPOINT_DIR SWEEP_DIR [n_jobs]

Runs a 3x2 pgd sweep (budget.eps=0.1,0.2,0.3 x attack.params.steps=20,40, 1000 MNIST test images).
On a shared machine other jobs compete for the cores: the number is the sweep's own share.
"""
import os
import subprocess
import sys
import time


def tree_cpu_seconds(root: int) -> float:
    """utime+stime of root and all its descendants still alive (plus their reaped children)."""
    kids = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
                kids.setdefault(int(f[1]), []).append(int(p))
            except OSError:
                pass
    tick, total, todo = os.sysconf("SC_CLK_TCK"), 0.0, [root]
    while todo:
        pid = todo.pop()
        try:
            f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in f[11:15]) / tick  # utime stime cutime cstime
        except OSError:
            pass
        todo += kids.get(pid, [])
    return total


def main():
    ck, sweep = sys.argv[1], sys.argv[2]
    n_jobs = sys.argv[3] if len(sys.argv) > 3 else "2"
    cmd = [sys.executable, "-m", "robench", "attack", "-m", "launcher=joblib", f"hydra.launcher.n_jobs={n_jobs}",
           "budget.eps=0.1,0.2,0.3", "attack.params.steps=20,40", "attack.params.early_stop=false",
           "progress=false", f"checkpoint_dir={ck}", f"hydra.sweep.dir={sweep}"]
    t0 = time.time()
    p = subprocess.Popen(cmd)
    peak, samples = 0.0, []
    last_t, last_c = t0, 0.0
    while p.poll() is None:
        time.sleep(0.2)
        c, t = tree_cpu_seconds(p.pid), time.time()
        if t > last_t:
            samples.append((c - last_c) / (t - last_t))
            peak = max(peak, samples[-1])
        last_t, last_c = t, max(c, last_c)
    wall = time.time() - t0
    print(f"wall {wall:.1f}s, sweep CPU {last_c:.1f}s, mean busy cores {last_c / wall:.2f}, "
          f"peak {peak:.2f} (0.2 s samples), os.cpu_count()={os.cpu_count()}, rc={p.returncode}")


if __name__ == "__main__":
    main()
