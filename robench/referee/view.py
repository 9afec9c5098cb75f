"""What an attack holds: :class:`OracleView`, one oracle's answers at one access level and read-only facts,
and :class:`AttackView`, the interface attacks annotate against (the in-process view and the isolated
child's proxy both provide it).

robench/referee/oracle.py holds the referee (:class:`~robench.referee.oracle.Oracle`); the types both sides
share are in robench/referee/types.py.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Protocol, Tuple, runtime_checkable

import torch

from robench.referee.types import ACCESS_LEVELS, ACCESS_RANK, VIEW_FACTS, VIEW_METHODS, AccessError

class OracleView:
    """What an attack holds: one oracle's answers at one access level, and read-only facts.

    * Queries: ``labels`` at every level; ``scores`` from ``scores`` up; ``logits`` and ``gradient``
      at ``gradient`` only. A method above the view's level raises :class:`AccessError` (the method
      exists, so a plugin gets the referee's message rather than an AttributeError).
    * Facts (:data:`VIEW_FACTS`): the batch (``x0``, ``y``, ``targets``), the threat model (``eps``,
      ``norm``, ``max_queries``), ``num_classes``, and the oracle's running bookkeeping (``active``,
      ``active_indices()``, ``remaining``, ``queries``, ``success``, ``best_dist``, ...). Tensors are
      copies; numbers are immutable: reading them changes nothing.
    * ``restrict(access)``: a view of the same oracle at a lower (or equal) level, for an attack that
      runs other attacks (the ensemble's members). ``access`` is the view's level.

    The referee (budget, access level, counts, success criterion) lives in the :class:`Oracle`, which
    the view keeps only inside a closure: the view has no ``__dict__``, no settable attribute, and no
    attribute that names the oracle, its model or its counters. (Python cannot hide an object from
    code that digs through closure cells with ``__closure__``; robench's contract and hostile-plugin
    tests are what keep plugins honest, the view makes honesty the only easy path.)

    ``observe(x, idx)``, optional: called after each query call with the rows the oracle answered and
    their sample indices; transfer uses it to remember its crafting attack's last proposal.
    """

    __slots__ = ("_OracleView__ask",)

    def __init__(self, oracle: Any, access: str, observe: Optional[Callable] = None):
        if access not in ACCESS_LEVELS:
            raise ValueError(f"access must be one of {ACCESS_LEVELS}, got {access!r}")
        if ACCESS_RANK[access] > ACCESS_RANK[oracle.access]:
            raise AccessError(f"a view at access '{access}' of an oracle answering at '{oracle.access}'")
        allowed = frozenset(VIEW_METHODS[access])
        facts = frozenset(VIEW_FACTS)

        def ask(op: str, *args):
            if op in facts:
                return getattr(oracle, op)
            if op == "active_indices":
                return oracle.active_indices()
            if op == "access":
                return access
            if op == "restrict":
                return OracleView(oracle, args[0], observe)
            if op not in allowed:
                need = "scores" if op == "scores" else "gradient"
                raise AccessError(f"an attack with access '{access}' asked for {need}-level answers")
            out = getattr(oracle, op)(*args)
            if observe is not None:  # the rows the oracle answered, with their samples
                x, idx = args[0], args[-1]
                if idx is None:
                    idx = torch.arange(x.shape[0], device=oracle.device)
                first = out[0] if isinstance(out, tuple) else out
                ok = first >= 0 if first.dim() == 1 else ~torch.isnan(first[:, 0])
                observe(x[ok], idx.to(oracle.device)[ok])
            return out

        object.__setattr__(self, "_OracleView__ask", ask)

    def __setattr__(self, name, value):
        raise AttributeError(f"the oracle view is read-only (tried to set {name!r})")

    def __delattr__(self, name):
        raise AttributeError(f"the oracle view is read-only (tried to delete {name!r})")

    def __repr__(self) -> str:
        return f"OracleView(access={self.access!r}, n={self.n})"

    # ------------------------------------------------------------------ queries
    def labels(self, x: torch.Tensor, idx: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Top-1 labels of rows ``x`` (row r belongs to sample ``idx[r]``); -1 where not answered."""
        return self.__ask("labels", x, idx)

    def scores(self, x: torch.Tensor, idx: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Softmax probabilities (access ``scores`` or ``gradient``); NaN rows where not answered."""
        return self.__ask("scores", x, idx)

    def logits(self, x: torch.Tensor, idx: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits (access ``gradient``); NaN rows where not answered."""
        return self.__ask("logits", x, idx)

    def gradient(self, x: torch.Tensor, loss_fn: Callable, idx: Optional[torch.Tensor] = None):
        """(logits, d loss / d x) (access ``gradient``); see :meth:`Oracle.gradient`."""
        return self.__ask("gradient", x, loss_fn, idx)

    def jacobian(self, x: torch.Tensor, loss_fn: Callable, m: int, idx: Optional[torch.Tensor] = None):
        """(logits, d loss_j / d x for j < m) (access ``gradient``); see :meth:`Oracle.jacobian`."""
        return self.__ask("jacobian", x, loss_fn, m, idx)

    def active_indices(self) -> torch.Tensor:
        return self.__ask("active_indices")

    def restrict(self, access: str) -> "OracleView":
        """A view of the same oracle at ``access`` (at most this view's level)."""
        if access not in ACCESS_LEVELS:
            raise ValueError(f"access must be one of {ACCESS_LEVELS}, got {access!r}")
        if ACCESS_RANK[access] > ACCESS_RANK[self.access]:
            raise AccessError(f"a view at access '{self.access}' cannot grant '{access}'")
        return self.__ask("restrict", access)

    # ------------------------------------------------------------------ facts
    access = property(lambda self: self.__ask("access"), doc="The view's access level.")


def _fact(name: str) -> property:
    return property(lambda self: self._OracleView__ask(name), doc=f"Read-only: the oracle's ``{name}``.")


for _name in VIEW_FACTS:
    setattr(OracleView, _name, _fact(_name))
del _name


@runtime_checkable
class AttackView(Protocol):
    """The interface an attack's ``run`` receives (annotate against this, never against the referee's
    classes): :class:`OracleView` in process, the isolated child's proxy under ``isolate=true``.

    Queries (each answered row is counted by the oracle): ``labels(x, idx)``; ``scores(x, idx)`` at
    access ``scores`` and up; ``logits(x, idx)`` and ``gradient(x, loss_fn, idx)`` at ``gradient``.
    Facts (read-only copies): the batch (``x0``, ``y``, ``targets``, ``n``), the threat model (``eps``,
    ``norm``, ``max_queries``, ``targeted``), the input box (``low``, ``high``), ``num_classes``, and the
    oracle's running bookkeeping (``active``, ``remaining``, ``queries``, ``success``, ``best_dist``, ...)."""

    access: str
    x0: torch.Tensor
    y: torch.Tensor
    targets: Optional[torch.Tensor]
    targeted: bool
    eps: Optional[float]
    norm: str
    max_queries: int
    num_classes: int
    n: int
    active: torch.Tensor
    remaining: torch.Tensor
    queries: torch.Tensor
    success: torch.Tensor

    def labels(self, x: torch.Tensor, idx: Optional[torch.Tensor] = None) -> torch.Tensor: ...

    def scores(self, x: torch.Tensor, idx: Optional[torch.Tensor] = None) -> torch.Tensor: ...

    def logits(self, x: torch.Tensor, idx: Optional[torch.Tensor] = None) -> torch.Tensor: ...

    def gradient(self, x: torch.Tensor, loss_fn: Callable,
                 idx: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]: ...

    def jacobian(self, x: torch.Tensor, loss_fn: Callable, m: int,
                 idx: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]: ...

    def active_indices(self) -> torch.Tensor: ...

    def restrict(self, access: str) -> "AttackView": ...
