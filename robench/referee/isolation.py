"""``isolate=true``: the attack's ``run`` in a child process that never holds the victim (README, "Untrusted attacks").

The engine (:func:`robench.evaluation.engine.execute`) starts one child per run with the ``spawn`` method (a fresh
interpreter: no copy of the parent's memory, so no model, oracle or plan to find by walking objects)
and sends it the attack object once (pickled). Per batch it sends the batch's public facts (``x0``,
``y``, ``targets``, ``eps``, ``norm``, ``max_queries``, ``num_classes``, ...) and the batch generator's
state; the child runs ``attack.run`` on a :class:`ProxyView`, whose query methods and running facts
(``active``, ``remaining``, ...) are requests over a pipe (tensors travel through shared memory,
torch.multiprocessing's reductions) answered by the real :class:`~robench.referee.view.OracleView` in
the parent. The records are those of the in-process run (same generator stream, same answers).

Limits: ``gradient`` access is refused (a white-box loss function is the attack's code and would run
in the parent); the attack's constructor and ``prepare`` run in the parent (the registry builds the
object there), only ``run`` is isolated; ``summary_extra`` figures computed in ``run`` stay in the child.
"""
from __future__ import annotations

from typing import Any, Dict

import torch
import torch.multiprocessing as mp

from robench.errors import RobenchError
from robench.referee.types import ACCESS_LEVELS, ACCESS_RANK, AccessError

#: facts fixed for a batch (sent once); the others are asked for each time they are read
STATIC = ("x0", "y", "targets", "targeted", "eps", "norm", "max_queries", "num_classes", "n", "eot_samples",
          "checkpoints")
DYNAMIC = ("active", "remaining", "queries", "grad_queries", "success", "queries_at_success", "best_dist",
           "best_x", "dist_at")
_ERRORS = {"AccessError": AccessError, "ValueError": ValueError, "RuntimeError": RuntimeError}


def _cpu(v):
    return v.cpu() if isinstance(v, torch.Tensor) else v


class IsolatedRunner:
    """The parent's side: starts the child, serves one batch's requests per :meth:`run`."""

    def __init__(self, attack, name: str):
        if attack.access == "gradient":
            raise RobenchError(f"isolate=true cannot run '{name}': gradient access runs the attack's loss function "
                               f"in the referee's process; isolate label- and score-based attacks")
        self.name = name
        ctx = mp.get_context("spawn")
        self._conn, child_conn = ctx.Pipe()
        self._proc = ctx.Process(target=_child_main, args=(child_conn,), daemon=True)
        self._proc.start()
        child_conn.close()
        try:
            self._conn.send(attack)
        except Exception as e:  # noqa: BLE001  (pickling a plugin's object: any error)
            self.close()
            raise RobenchError(f"isolate=true cannot send attack '{name}' to its process: {type(e).__name__}: {e}") from None

    def run(self, view, generator: torch.Generator) -> None:
        facts = {k: _cpu(getattr(view, k)) for k in STATIC}
        facts["access"] = view.access
        self._conn.send(("run", facts, generator.get_state(), str(generator.device)))
        views = {view.access: view}
        while True:
            try:
                msg = self._conn.recv()
            except EOFError:
                raise RobenchError(f"attack '{self.name}': its isolated process ended without finishing the batch") from None
            kind = msg[0]
            if kind == "done":
                return
            if kind == "error":
                raise RobenchError(f"attack '{self.name}' failed in its isolated process: {msg[1]}")
            _, access, op, args = msg
            try:
                if access not in views:
                    views[access] = view.restrict(access)
                v = views[access]
                if op in DYNAMIC:
                    out = getattr(v, op)
                else:
                    dev = view.device
                    out = getattr(v, op)(*[a.to(dev) if isinstance(a, torch.Tensor) else a for a in args])
                reply = ("ok", _cpu(out))
            except (AccessError, ValueError, RuntimeError) as e:
                reply = ("raise", type(e).__name__ if type(e).__name__ in _ERRORS else "RuntimeError", str(e))
            self._conn.send(reply)

    def close(self) -> None:
        try:
            self._conn.send(("close",))
        except (OSError, BrokenPipeError):
            pass
        self._proc.join(timeout=10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
        self._conn.close()


class ProxyView:
    """The child's oracle view: the :class:`~robench.referee.view.OracleView` interface over a pipe."""

    __slots__ = ("_conn", "_facts", "access", "device")

    def __init__(self, conn, facts: Dict[str, Any], access: str, device):
        self._conn, self._facts, self.access, self.device = conn, facts, access, torch.device(device)

    def _ask(self, op: str, *args):
        self._conn.send(("call", self.access, op, tuple(_cpu(a) for a in args)))
        msg = self._conn.recv()
        if msg[0] == "raise":
            raise _ERRORS[msg[1]](msg[2])
        out = msg[1]
        return out.to(self.device) if isinstance(out, torch.Tensor) else out

    def labels(self, x, idx=None):
        return self._ask("labels", x, idx)

    def scores(self, x, idx=None):
        return self._ask("scores", x, idx)

    def logits(self, x, idx=None):
        raise AccessError(f"an attack with access '{self.access}' asked for gradient-level answers")

    def gradient(self, x, loss_fn, idx=None):
        raise AccessError(f"an attack with access '{self.access}' asked for gradient-level answers")

    def active_indices(self):
        return self.active.nonzero().flatten()

    def restrict(self, access: str) -> "ProxyView":
        if access not in ACCESS_LEVELS:
            raise ValueError(f"access must be one of {ACCESS_LEVELS}, got {access!r}")
        if ACCESS_RANK[access] > ACCESS_RANK[self.access]:
            raise AccessError(f"a view at access '{self.access}' cannot grant '{access}'")
        return ProxyView(self._conn, self._facts, access, self.device)

    def __repr__(self) -> str:
        return f"ProxyView(access={self.access!r}, n={self._facts['n']})"


def _static(name: str) -> property:
    def get(self):
        v = self._facts[name]
        return v.to(self.device) if isinstance(v, torch.Tensor) else v
    return property(get, doc=f"Read-only: the batch's ``{name}``.")


for _name in STATIC:
    setattr(ProxyView, _name, _static(_name))
for _name in DYNAMIC:
    setattr(ProxyView, _name, property(lambda self, _n=_name: self._ask(_n), doc=f"Read-only: the oracle's ``{_name}``."))
del _name


def _child_main(conn) -> None:
    """The child: receives the attack once, then runs it on each batch's proxy view until told to close."""
    attack = conn.recv()
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg[0] == "close":
            return
        _, facts, state, device = msg
        gen = torch.Generator(device=device)
        gen.set_state(state)
        try:
            attack.run(ProxyView(conn, facts, facts["access"], device), gen)
            conn.send(("done",))
        except Exception as e:  # noqa: BLE001  (the plugin's error, reported by the parent in one line)
            conn.send(("error", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"))
