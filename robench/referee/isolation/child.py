"""The sandboxed side of ``isolate=true``: ``python -m robench.referee.isolation.child FD`` inside bubblewrap.

It builds the attack (its module is imported here, never in the referee's process), reports the
attack's declared traits, then runs ``attack.run`` on each batch against a :class:`ProxyView`, whose
queries and running facts are requests over the connection ``FD`` (robench/referee/isolation/wire.py),
answered by the real oracle view in the referee's process. It holds no model, no data but the batch's
public facts, and cannot read the checkpoint, the dataset or the run folder (the sandbox does not
mount them).
"""
from __future__ import annotations

import sys
from typing import Any, Dict, Optional

import torch

from robench.referee.isolation.wire import TO_CHILD, WireError, encode, receive, send
from robench.referee.types import ACCESS_LEVELS, ACCESS_RANK, AccessError

#: facts asked for each time they are read (the oracle's running bookkeeping)
DYNAMIC = ("active", "remaining", "queries", "grad_queries", "success", "queries_at_success", "best_dist", "best_x",
           "dist_at")
_ERRORS = {"AccessError": AccessError, "ValueError": ValueError, "RuntimeError": RuntimeError}


class ProxyView:
    """The child's oracle view: the :class:`~robench.referee.view.AttackView` interface over the connection."""

    __slots__ = ("_fd", "_facts", "access")

    def __init__(self, fd: int, facts: Dict[str, Any], access: str):
        self._fd, self._facts, self.access = fd, facts, access

    def _ask(self, op: str, *tensors):
        send(self._fd, encode("call", {"access": self.access, "op": op}, tensors))
        kind, args, out = receive(self._fd, TO_CHILD)
        if kind == "raise":
            raise _ERRORS.get(args["kind"], RuntimeError)(args["msg"])
        if kind != "ok":
            raise WireError(f"a '{kind}' answer to a query")
        return out[0] if out else args["value"]

    def labels(self, x, idx=None):
        return self._ask("labels", x, idx)

    def scores(self, x, idx=None):
        return self._ask("scores", x, idx)

    def logits(self, x, idx=None):
        raise AccessError(f"an attack with access '{self.access}' asked for gradient-level answers")

    def gradient(self, x, loss_fn, idx=None):
        raise AccessError(f"an attack with access '{self.access}' asked for gradient-level answers")

    def jacobian(self, x, loss_fn, m, idx=None):
        raise AccessError(f"an attack with access '{self.access}' asked for gradient-level answers")

    def active_indices(self):
        return self._ask("active_indices")

    def restrict(self, access: str) -> "ProxyView":
        if access not in ACCESS_LEVELS:
            raise ValueError(f"access must be one of {ACCESS_LEVELS}, got {access!r}")
        if ACCESS_RANK[access] > ACCESS_RANK[self.access]:
            raise AccessError(f"a view at access '{self.access}' cannot grant '{access}'")
        return ProxyView(self._fd, self._facts, access)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def __repr__(self) -> str:
        return f"ProxyView(access={self.access!r}, n={self._facts['n']})"


def _static(name: str) -> property:
    def get(self):
        v = self._facts[name]
        return v.clone() if isinstance(v, torch.Tensor) else v
    return property(get, doc=f"Read-only: the batch's ``{name}``.")


for _name in ("x0", "y", "targets", "targeted", "eps", "norm", "max_queries", "num_classes", "n", "eot_samples",
              "checkpoints", "low", "high"):
    setattr(ProxyView, _name, _static(_name))
for _name in DYNAMIC:
    setattr(ProxyView, _name, property(lambda self, _n=_name: self._ask(_n), doc=f"Read-only: the oracle's ``{_name}``."))
del _name


def _one_line(e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [""])[0][:300]
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _build(args: Dict[str, Any]):
    from robench.registry import ATTACKS, instantiate, validate_params

    if args["code"] is not None:
        from robench.models.weights import import_code
        from robench.registry import Registry

        cls = import_code(args["code"], "attack.code", kind="attack")
        reg = Registry("attack")
        reg.register(args["name"], cls)
        return cls(**validate_params(reg, args["name"], args["params"], "attack", "attack.params"))
    return instantiate(ATTACKS, args["name"], args["params"], "attack")


def main(fd: int) -> None:
    from robench.evaluation.spec import AttackTraits

    op, args, _ = receive(fd, TO_CHILD)
    if op != "start":
        return
    torch.set_num_threads(max(1, int(args["threads"])))
    try:
        attack = _build(args)
        t = AttackTraits.of(attack, args["name"])
    except BaseException as e:  # noqa: BLE001  (the plugin's error, reported by the referee in one line)
        send(fd, encode("error", {"msg": _one_line(e)}))
        return
    send(fd, encode("ready", {"access": t.access.value, "minimizes_distortion": t.minimizes_distortion,
                              "eps_policy": t.eps_policy, "norms": list(t.norms), "requires": list(t.requires),
                              "layouts": list(t.layouts)}))
    while True:
        op, args, tensors = receive(fd, TO_CHILD)
        if op == "close":
            return
        if op == "extra":
            try:
                value: Optional[Any] = attack.summary_extra() if hasattr(attack, "summary_extra") else {}
                frame = encode("extra", {"value": value if value is not None else {}})
            except (WireError, TypeError, ValueError) as e:
                frame = encode("error", {"msg": f"summary_extra() returned values that are not plain JSON ({e})"})
            send(fd, frame)
            continue
        if op != "run":
            raise WireError(f"an unexpected '{op}' message")
        x0, y, targets, state = tensors
        facts = {**{k: v for k, v in args.items() if k not in ("seed",)}, "x0": x0, "y": y, "targets": targets,
                 "checkpoints": tuple(args["checkpoints"])}
        gen = torch.Generator()
        if state is not None:
            gen.set_state(state)
        else:
            gen.manual_seed(int(args["seed"]))
        try:
            attack.run(ProxyView(fd, facts, args["access"]), gen)
            send(fd, encode("done"))
        except WireError:
            raise
        except BaseException as e:  # noqa: BLE001
            send(fd, encode("error", {"msg": _one_line(e)}))


if __name__ == "__main__":
    try:
        main(int(sys.argv[1]))
    except WireError:
        sys.exit(3)
