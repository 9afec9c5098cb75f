from __future__ import annotations

import time
from typing import Any, Dict, List, Optional, Tuple

import torch

from robench.attacks.base import Attack
from robench.errors import RobenchError
from robench.referee.types import ACCESS_RANK
from robench.referee.view import AttackView
from robench.registry import ATTACKS


def MemberView(oracle: AttackView, access: str) -> AttackView:
    """What one ensemble member sees: the shared oracle's view restricted to the member's access level
    (public API: :meth:`OracleView.restrict`). Every query goes to the same oracle (same counts, same
    budget, same success judging, same best point); answers above the member's level are refused."""
    return oracle.restrict(access)


def _member_spec(spec: Any) -> tuple[str, Dict[str, Any]]:
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, dict) and isinstance(spec.get("name"), str) and set(spec) <= {"name", "params"}:
        return spec["name"], dict(spec.get("params") or {})
    raise RobenchError(f"ensemble: each entry of attack.params.attacks must be a name or {{name: ..., params: {{...}}}}, "
                       f"got {spec!r}")


@ATTACKS.register("ensemble")
class Ensemble(Attack):
    """An AutoAttack-style ensemble ([croce2020 §5]): run attacks in turn, each only on the points still robust.

    ``attacks`` is a list of members, each a registered attack name or ``{name, params}``. They
    run in order on every batch; member ``m`` sees only the samples that no earlier member broke
    (the oracle stops answering a sample once it has seen it succeed, and ``oracle.active`` says so).
    The result is the per-point worst case: a sample counts as broken if any member broke it, and
    its record holds the oracle's best point over all members.

    Budget (robench's choice): all members drive the SAME oracle, so ``budget.max_queries`` caps the
    total over all members for each sample (a member's queries are the sample's queries: they sit
    in the same table as any single attack's), and a member that has spent a sample's budget leaves
    nothing to the next one. Give each member its own iteration counts in ``params``. Each member
    is restricted to its own access level (a ``scores`` member such as Square gets no gradients);
    the ensemble's access is the highest of its members'. An eps-bounded attack only: it needs a
    finite ``budget.eps`` (minimal-distortion members are allowed, they stop at first success).

    Contribution: ``summary_extra()`` returns, per member, the samples it broke first (as seen by
    the oracle, before the final re-check), the queries it spent and its wall time, summed over
    batches; the attack job merges them into ``summary.json`` under ``ensemble``.
    """

    minimizes_distortion = False
    eps_policy = "finite"

    def __init__(self, attacks: List[Any]):
        self._build(attacks)

    def _build(self, attacks: List[Any], where: str = "attack.params.attacks", labels: Optional[List[str]] = None) -> None:
        """Instantiate the members (names or ``{name, params}``; ``where``: their config key, for messages),
        their labels (``labels``, or the names, numbered when repeated) and the contribution table."""
        from robench.registry import instantiate

        if not attacks:
            raise RobenchError(f"ensemble: {where} is empty; list at least one registered attack")
        self.members: List[tuple[str, Attack]] = []
        for i, spec in enumerate(attacks):
            name, params = _member_spec(spec)
            if name not in ATTACKS:
                raise RobenchError(f"ensemble member '{name}' is not a registered attack; valid: "
                                   f"{', '.join(ATTACKS.names())} (install or merge the plugin that provides it, "
                                   f"or remove it from {where})")
            if isinstance(ATTACKS.get(name), type) and issubclass(ATTACKS.get(name), Ensemble):
                raise RobenchError(f"ensemble: an ensemble cannot contain another ensemble ('{name}' in {where})")
            self.members.append((name, instantiate(ATTACKS, name, params, "attack", f"{where}[{i}].params")))
        self.access = max((m.access for _, m in self.members), key=lambda a: ACCESS_RANK[a])
        # the norms and layouts every member handles (robench/evaluation/spec.py checks the run against them)
        self.norms = tuple(n for n in self.members[0][1].norms if all(n in m.norms for _, m in self.members))
        self.layouts = tuple(x for x in self.members[0][1].layouts if all(x in m.layouts for _, m in self.members))
        if labels is None:
            labels, seen = [], {}
            for name, _ in self.members:
                seen[name] = seen.get(name, 0) + 1
                labels.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
        self.labels = list(labels)
        self.stats = [{"attack": l, "success": 0, "queries": 0, "seconds": 0.0} for l in labels]

    @property
    def requires(self) -> Tuple[str, ...]:  # type: ignore[override]
        """The union of the members' needs (e.g. ``transfer``'s surrogate)."""
        return tuple(sorted({r for _, m in self.members for r in getattr(m, "requires", ())}))

    def prepare(self, context) -> None:
        """Forward the engine's context to the members."""
        for _, m in self.members:
            if hasattr(m, "prepare"):
                m.prepare(context)

    def run(self, oracle: AttackView, generator: torch.Generator) -> None:
        if oracle.eps is None:
            raise RobenchError("ensemble needs a finite budget.eps: it reports robust accuracy at that eps")
        for (name, member), st in zip(self.members, self.stats):
            if not bool(oracle.active.any()):
                break
            before, q0, t0 = oracle.success, oracle.queries, time.perf_counter()
            member.run(oracle.restrict(member.access), generator)
            st["success"] += int((oracle.success & ~before).sum())
            st["queries"] += int((oracle.queries - q0).sum())
            st["seconds"] += time.perf_counter() - t0

    def summary_extra(self) -> Dict[str, Any]:
        return {"ensemble": [dict(s) for s in self.stats]}
