from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import nn

from robench.attacks.base import Attack
from robench.errors import RobenchError
from robench.geometry import geometry
from robench.referee.own_model import own_model_oracle
from robench.referee.view import AttackView
from robench.registry import ATTACKS


class LastProposal:
    """Remembers the last row evaluated for each sample (the crafting attack's final proposal), fed by
    the surrogate oracle view's public ``observe`` hook."""

    def __init__(self, x0: torch.Tensor):
        self.x = x0.clone()

    def __call__(self, x: torch.Tensor, idx: torch.Tensor) -> None:
        idx = idx.to(x.device)
        pos = torch.arange(len(idx), device=idx.device)
        last = torch.full((self.x.shape[0],), -1, dtype=torch.long, device=idx.device).scatter_reduce(0, idx, pos, "amax")
        has = last >= 0
        self.x[has] = x[last[has]].detach()


_SURROGATE_KEYS = {"model", "params", "defense", "checkpoint"}


@ATTACKS.register("transfer")
class Transfer(Attack):
    """Transfer attack: craft on a surrogate model with any white-box attack, then ONE label query per sample on the victim.

    The zero-query / substitute-model black-box attack ([papernot2017]; [saha2020 §2.1.2, eqs. 2.7-2.8];
    [zhao2020slides] "Transferability based attack"). The surrogate is another checkpoint: ``surrogate.model``
    (a registered architecture, default ``small_cnn``), ``surrogate.params`` (null: that model's
    config defaults), ``surrogate.defense`` (the training recipe, default ``none``), found at its
    conventional path under ``checkpoint_dir`` (``robench train-defense model=small_cnn`` makes the
    default one) or at ``surrogate.checkpoint``.

    Crafting: ``attack`` (``{name, params}``, default PGD with its defaults) runs against a local
    oracle around the surrogate with the victim's threat model (norm, eps, targets) and
    ``surrogate_max_queries`` per sample; those queries are the attacker's own computation and are
    NOT counted as victim queries (they are reported as ``transfer.surrogate_queries``). The local
    oracle does not stop at the surrogate's first success, so an eps-bounded attack runs all its
    iterations and its final iterate is transferred (robench's choice: a point just across the
    surrogate's boundary transfers poorly); for minimal-perturbation attacks (C&W, DeepFool) the
    surrogate oracle's best adversarial point is transferred (C&W's ``confidence`` then sets how far
    past the boundary it goes). The point is projected onto the ball and [0, 1] once more.

    Victim cost: exactly one label query per attacked sample (access ``label``): the victim's oracle
    judges it like any other query.
    """

    access = "label"
    requires = ("surrogate",)

    #: numeric ranges the registry checks before construction (robench.registry.validate_params)
    param_ranges = {"surrogate_max_queries": ">=1"}

    def __init__(self, surrogate: Optional[Dict[str, Any]] = None, attack: Optional[Dict[str, Any]] = None,
                 surrogate_max_queries: int = 100_000):
        from robench.registry import instantiate

        s = dict(surrogate or {})
        bad = set(s) - _SURROGATE_KEYS
        if bad:
            raise RobenchError(f"transfer: unknown surrogate key(s) {', '.join(sorted(bad))}; valid: "
                               f"{', '.join(sorted(_SURROGATE_KEYS))}")
        self.surrogate_cfg = {"model": s.get("model") or "small_cnn", "params": s.get("params"),
                              "defense": s.get("defense") or "none", "checkpoint": s.get("checkpoint")}
        a = dict(attack or {"name": "pgd"})
        if not isinstance(a.get("name"), str) or set(a) - {"name", "params"}:
            raise RobenchError(f"transfer: attack.params.attack must be {{name: <white-box attack>, params: {{...}}}}, got {a}")
        if a["name"] in ("transfer", "ensemble"):
            raise RobenchError(f"transfer: the crafting attack must be a white-box attack, not '{a['name']}'")
        self.inner_name = a["name"]
        self.inner = instantiate(ATTACKS, a["name"], a.get("params"), "attack")
        # what the run may ask of it is what the crafting attack can do (robench/evaluation/spec.py checks it)
        self.eps_policy, self.norms, self.layouts = self.inner.eps_policy, self.inner.norms, self.inner.layouts
        if self.inner.access != "gradient":
            raise RobenchError(f"transfer: crafting attack '{a['name']}' has access '{self.inner.access}'; "
                               f"use a white-box (gradient) attack")
        self.surrogate_max_queries = int(surrogate_max_queries)
        self.surrogate: Optional[nn.Module] = None
        self.stats = {"surrogate": None, "surrogate_checkpoint": None, "crafting_attack": self.inner_name,
                      "surrogate_success": 0, "transferred": 0, "surrogate_queries": 0}

    # ------------------------------------------------------------------ the surrogate
    def set_surrogate(self, model: nn.Module, label: str = "custom") -> None:
        """Use this module as the surrogate (programmatic use, tests)."""
        self.surrogate = model.eval()
        self.stats["surrogate"] = label

    def prepare(self, context) -> None:
        """Build and load the surrogate through the engine's ``context.load_surrogate`` (unless
        :meth:`set_surrogate` already gave one)."""
        if self.surrogate is not None and context.load_surrogate is None:
            return
        if context.load_surrogate is None:
            raise RobenchError("transfer: no surrogate model (give one with set_surrogate, or run it where the "
                               "engine can load attack.params.surrogate)")
        model, label, path = context.load_surrogate(dict(self.surrogate_cfg))
        self.set_surrogate(model.to(context.device), label)
        self.stats["surrogate_checkpoint"] = path

    # ------------------------------------------------------------------ the attack
    def run(self, oracle: AttackView, generator: torch.Generator) -> None:
        if self.surrogate is None:
            raise RobenchError("transfer: no surrogate model (the engine loads it from attack.params.surrogate)")
        idx = oracle.active_indices()
        if len(idx) == 0:
            return
        x0, y, t = oracle.x0[idx], oracle.y[idx], oracle.targets
        last = LastProposal(x0)
        view, finalize = own_model_oracle(self.surrogate, x0, y, norm=oracle.norm, eps=oracle.eps,
                                          max_queries=self.surrogate_max_queries, num_classes=oracle.num_classes,
                                          targets=None if t is None else t[idx], observe=last)
        self.inner.run(view, generator)
        res = finalize()
        best = res.best_x.to(x0.device)
        x = best if self.inner.minimizes_distortion else last.x
        if self.inner.minimizes_distortion:  # no surrogate success: fall back to the last proposal
            x = torch.where(res.adversarial.to(x0.device).view(-1, *[1] * (x0.dim() - 1)), best, last.x)
        box = (oracle.low, oracle.high)
        x = geometry(oracle.norm).project_point(x, x0, oracle.eps, box) if oracle.eps is not None else x.clamp(*box)
        oracle.labels(x, idx)
        self.stats["surrogate_success"] += int(res.success.sum())
        self.stats["transferred"] += len(idx)
        self.stats["surrogate_queries"] += int(res.queries.sum())

    def summary_extra(self) -> Dict[str, Any]:
        s = dict(self.stats)
        s["surrogate_success_rate"] = s["surrogate_success"] / s["transferred"] if s["transferred"] else float("nan")
        return {"transfer": s}
