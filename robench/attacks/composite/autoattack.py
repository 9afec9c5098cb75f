from __future__ import annotations

import copy
from typing import Any, Dict, List, Literal, Optional

import torch

from robench.attacks.composite.ensemble import Ensemble
from robench.errors import RobenchError
from robench.referee.types import ACCESS_RANK
from robench.attacks.base import AttackView
from robench.registry import ATTACKS

#: AutoAttack's standard version for Linf and L2 [croce2020 §5] with the settings of the authors' code
#: (fra31/auto-attack, ``AutoAttack.set_version('standard')``): in this order, each on the points still robust
STANDARD: List[Dict[str, Any]] = [
    {"name": "apgd_ce", "params": {"steps": 100, "restarts": 1, "rho": 0.75}},
    {"name": "apgd_t", "params": {"steps": 100, "restarts": 1, "rho": 0.75, "target_classes": 9}},
    {"name": "fab", "params": {"targeted": True, "steps": 100, "restarts": 1, "target_classes": 9,
                               "alpha_max": 0.1, "eta": 1.05, "beta": 0.9}},
    {"name": "square", "params": {"p_init": 0.8, "iterations": 5000, "rescale_schedule": False, "loss": "margin"}},
]
#: its version for randomized defenses (``set_version('rand')``): APGD-CE and APGD-DLR, EOT over 20 draws
RAND: List[Dict[str, Any]] = [
    {"name": "apgd_ce", "params": {"steps": 100, "restarts": 1, "rho": 0.75}},
    {"name": "apgd_dlr", "params": {"steps": 100, "restarts": 1, "rho": 0.75}},
]
RAND_EOT = 20


def _label(spec: Any) -> str:
    name = spec if isinstance(spec, str) else spec.get("name")
    params = {} if isinstance(spec, str) else (spec.get("params") or {})
    return "fab_t" if name == "fab" and params.get("targeted") else str(name)


@ATTACKS.register("autoattack")
class AutoAttack(Ensemble):
    """AutoAttack (Croce and Hein [croce2020 §5]) as the authors' code runs it: ``version: standard``
    (APGD-CE, APGD-T, FAB-T, Square) or ``rand`` (APGD-CE, APGD-DLR with EOT), Linf and L2.

    Distance measure: the budget's norm, Linf or L2 (AutoAttack's L1 settings, 5 restarts, 5
    target classes and APGD's L1 schedule, are not offered: robench has no L1 budget). Arguments:
    ``version`` = standard (``rand``; ``auto``: rand when pre-flight finds the victim randomized,
    else standard), ``standard`` and ``rand`` = the member lists (:data:`STANDARD`, :data:`RAND`),
    ``rand_eot_samples`` = 20. Usage: ``robench attack attack=autoattack budget=linf_0.3``.

    The members run as :class:`~robench.attacks.composite.ensemble.Ensemble` members: in order, each
    only on the samples no earlier member broke, all on one oracle per batch, each restricted to its
    own access level (Square gets scores only). Their settings are those of the authors' code
    (``AutoAttack.set_version``), checked member by member against it in tests/test_autoattack.py:

    * standard: APGD-CE (100 iterations, 1 restart, rho 0.75), APGD-T (targeted DLR towards the 9
      most likely other classes, 100 iterations, 1 restart each), FAB-T (9 target classes, 100
      iterations, 1 restart, alpha_max 0.1, eta 1.05, beta 0.9), Square (margin loss, p_init 0.8,
      5,000 steps, p schedule not rescaled);
    * rand: APGD-CE and APGD-DLR, 100 iterations, 1 restart, every gradient averaged over 20 draws
      of the victim's randomness (the oracle's EOT: each draw a counted, judged query).

    ``version: rand`` (or ``auto`` on a randomized victim) sets the run's EOT draws to
    ``rand_eot_samples`` unless ``attack.eot_samples`` already asks for more than 1
    (:meth:`for_victim`, called by the evaluation's pre-flight). The summary's ``autoattack`` block
    says which version ran; ``ensemble`` has each member's first breaks, queries and seconds.

    Budget: the members share each sample's ``budget.max_queries``. At most, standard costs
    101 (APGD-CE) + 910 (1 ranking query + 9 x 101, APGD-T) + 1,801 (1 + 9 x 200, FAB-T: per target a
    gradient row, then per iteration a forward test and a gradient row, the last iteration the test only)
    + 5,001 (Square) = 7,813 queries per sample,
    rand 2 x 101 x 20 = 4,040: the default 10,000 covers both, and a smaller budget starves the last
    members first.

    Where it differs from the authors' run: each member stops a sample at its first success inside
    the ball (theirs run every iteration on the whole batch and keep the adversarial points they
    saw, so the robust set is the same); success is the oracle's (every evaluated row judged, the
    final point re-checked; against a randomized victim an EOT draw that misclassifies counts when the
    re-check confirms it, where theirs judges the last draw); random numbers come from the batch's
    generator, not ``torch.manual_seed``; the members' own deviations are in their docstrings
    (apgd, fab, square).
    """

    #: numeric ranges the registry checks before construction (robench.registry.validate_params)
    param_ranges = {"rand_eot_samples": ">=1"}

    def __init__(self, version: Literal["standard", "rand", "auto"] = "standard",
                 standard: Optional[List[Any]] = None, rand: Optional[List[Any]] = None,
                 rand_eot_samples: int = RAND_EOT):
        if version not in ("standard", "rand", "auto"):
            raise RobenchError(f"autoattack version must be standard, rand or auto, got '{version}'")
        if rand_eot_samples < 1:
            raise RobenchError(f"autoattack rand_eot_samples must be >= 1, got {rand_eot_samples}")
        self.specs = {"standard": copy.deepcopy(STANDARD if standard is None else list(standard)),
                      "rand": copy.deepcopy(RAND if rand is None else list(rand))}
        self.requested, self.rand_eot_samples = version, rand_eot_samples
        self.version: Optional[str] = None
        self._context: Any = None
        # both lists are built (and so validated) before any work; the version in use is chosen below.
        # The declarations (robench/evaluation/spec.py checks the run against them before it starts) are
        # those of every version this run may use: both under auto, whose choice waits for pre-flight.
        candidates = ("rand", "standard") if version == "auto" else (version,)
        traits = []
        for v in ("rand", "standard"):
            self._use(v)
            if v in candidates:
                traits.append((self.access, self.norms, self.layouts))
        self.version = None if version == "auto" else version
        if self.version is not None:
            self._use(self.version)
        self.access = max((a for a, _, _ in traits), key=lambda a: ACCESS_RANK[a])
        self.norms = tuple(n for n in traits[0][1] if all(n in t[1] for t in traits))
        self.layouts = tuple(x for x in traits[0][2] if all(x in t[2] for t in traits))

    def _use(self, version: str) -> None:
        """Build ``version``'s members (in construction: every version, to validate them all)."""
        specs = self.specs[version]
        self._build(specs, where=f"attack.params.{version}", labels=_disambiguate([_label(s) for s in specs]))
        self.version = version

    def _choose(self, version: str) -> None:
        """Switch to ``version`` once the run is assembled: its members, prepared with the run's context;
        the declarations the run was checked against stay as they were (they cover every candidate)."""
        declared = self.access, self.norms, self.layouts
        self._use(version)
        self.access, self.norms, self.layouts = declared
        if self._context is not None:
            super().prepare(self._context)

    def prepare(self, context) -> None:
        """Forward the context to the members (and to those a later version choice builds)."""
        self._context = context
        super().prepare(context)

    def for_victim(self, randomized: bool, eot_samples: int) -> int:
        """``auto`` picks rand for a randomized victim, standard otherwise; rand runs with
        ``rand_eot_samples`` EOT draws unless the run already asks for more than one."""
        if self.requested == "auto":
            self._choose("rand" if randomized else "standard")
        if self.version == "rand" and eot_samples == 1:
            return self.rand_eot_samples
        return eot_samples

    def run(self, oracle: AttackView, generator: torch.Generator) -> None:
        if self.version is None:  # not told about the victim (a protocol's extra run): decide by the run's EOT
            self._choose("rand" if oracle.eot_samples > 1 else "standard")
        super().run(oracle, generator)

    def summary_extra(self) -> Dict[str, Any]:
        return {**super().summary_extra(), "autoattack": {"version": self.version, "requested": self.requested,
                                                         "members": list(self.labels)}}


def _disambiguate(labels: List[str]) -> List[str]:
    seen: Dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label}#{seen[label]}")
    return out
