"""Evaluation protocols: objects that declare their runs and merge their results into the summary.

An :class:`Evaluation` (one per ``robench attack`` run) holds the victim facts every protocol needs and
the protocols that apply to the run's config:

* :class:`Standard` (always): the randomized re-check (``recheck_repeats: null`` means 1 for a
  deterministic victim and 3 for a randomized one, the GenAttack thesis's TVM protocol
  [alzantot2019 §2.6.2.2]), confirmation on sight, the defense setup, first-sight success rate, and with input
  defenses the undefended clean accuracy (the same model without its input transformations).
* :class:`Adaptive` (``adaptive: true``; [athalye2018]). For a gradient attack on a victim with input
  transformations the attack runs twice on the same samples, with the same seeds: the main run
  *adaptively* (BPDA backward on, EOT over ``attack.eot_samples`` draws, or ``adaptive_eot_samples``
  when that is 1 and the victim is randomized, confirmation on sight against a randomized victim) and
  a declared second run *naively* (no BPDA, one EOT sample). Records are the adaptive run's; summary.json
  gets ``adaptive`` and ``non_adaptive`` blocks. A score- or label-based attack sees no gradients: one run.
* :class:`Detection` (a detector in the ``defense`` group, e.g. ``defense=[none,feature_squeeze_detect]``):
  the detector is calibrated on clean training images before the attack, each successful adversarial
  point is scored after its batch (record column ``detector_score``), the clean test images give the
  false-positive rate; ``detection.csv`` has the per-sample scores.
* :class:`Shared` (an attack that declares ``requires = ("build_set",)``: ``uap``, ``patch``; attached by
  :meth:`Shared.attach` from prepare_run): one perturbation is built on a build set before the first test
  batch (:meth:`Protocol.before_run`; robench/evaluation/shared.py holds the referee's build oracle, the
  checks and the placement), then the run's attack is the referee's
  :class:`~robench.evaluation.shared.ApplyShared`, which places it on each test input and asks for one
  label; summary.json gets ``shared`` and the run folder ``perturbation.csv``.

Randomness is measured (:func:`robench.victim.preflight`: repeated forward passes disagree), or taken
from a defense that declares itself randomized; a flag alone never makes a randomized victim deterministic.

The job runs the main run and every :class:`ExtraRun` a protocol declares through the engine
(:func:`robench.evaluation.engine.execute`) and hands the outcomes back to :meth:`Evaluation.merge`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch

from robench.defenses.base import InputDefense, is_randomized, reseed_defenses, set_bpda
from robench.defenses.compose import build_detector, defense_spec, undefended
from robench.errors import RobenchError


@dataclass
class ExtraRun:
    """A run a protocol declares besides the main one: its name, the oracle settings that differ
    (``referee``: fields of :class:`robench.evaluation.engine.Referee`), and what to do to the victim before and after."""

    name: str
    referee: Dict[str, Any]
    before: Callable[[], None] = lambda: None
    after: Callable[[], None] = lambda: None


class Protocol:
    """Base: no extra columns, runs or keys."""

    def record_columns(self, ev: "Evaluation") -> Dict[str, Any]:
        return {}

    def before_run(self, ev: "Evaluation") -> None:
        """Work before the first batch of the main run (the shared protocol builds its perturbation here)."""
        pass

    def after_batch(self, ev: "Evaluation", outcome) -> None:
        pass

    def extra_runs(self, ev: "Evaluation") -> List[ExtraRun]:
        return []

    def merge(self, ev: "Evaluation", summary: Dict[str, Any], records, x: torch.Tensor, extra: Dict[str, list],
              tables: Dict[str, Any]) -> None:
        """Add the protocol's keys to ``summary``; per-sample tables for the run folder go into ``tables``
        (file name -> DataFrame; the run folder writes them)."""
        pass


class Standard(Protocol):
    def merge(self, ev, summary, records, x, extra, tables):
        from robench.training.loop import predict

        n_att = summary.get("n_attacked") or 0
        seen = sum(1 for r in records if r["attacked"] and r["clean_pred"] == r["label"]
                   and (r["success"] or r["recheck_failed"]))  # over the headline samples (results.summarize)
        summary["first_sight_success_rate"] = seen / n_att if n_att else float("nan")
        summary["recheck_repeats"] = ev.recheck_repeats
        summary["confirm_repeats"] = ev.confirm_repeats
        d = {"recipe": ev.spec.recipe, "inputs": [{"name": n, **ev.describe(i)} for i, (n, _) in enumerate(ev.spec.inputs)],
             "randomized": ev.randomized, "bpda": ev.bpda, "eot_samples": ev.eot_samples}
        if ev.has_inputs:
            y = torch.tensor([r["label"] for r in records])
            summary["undefended_clean_accuracy"] = float((predict(undefended(ev.model), x).argmax(1).cpu() == y).float().mean())
        summary["defense_setup"] = d


class Adaptive(Protocol):
    def applies(self, ev) -> bool:
        return ev.has_inputs and ev.gradient_attack and ev.settings_differ

    def extra_runs(self, ev):
        if not self.applies(ev):
            return []

        def before():
            reseed_defenses(ev.model, ev.seed)
            set_bpda(ev.model, False)

        return [ExtraRun("non_adaptive", {"eot_samples": 1, "confirm_repeats": self.naive_confirm(ev), "checkpoints": ()},
                         before=before, after=lambda: set_bpda(ev.model, ev.bpda))]

    @staticmethod
    def naive_confirm(ev) -> int:
        return ev.confirm_repeats if ev.user_confirm else 0

    def merge(self, ev, summary, records, x, extra, tables):
        if "non_adaptive" not in extra:
            return
        outs = [o for o in extra["non_adaptive"] if o.result is not None]
        # the headline numbers cover originally correct samples only (results.summarize)
        correct = [bool(records[k]["clean_pred"] == records[k]["label"]) for o in outs for k in o.rows.tolist()]
        claimed = torch.cat([o.result.claimed for o in outs]) if outs else torch.zeros(0, dtype=torch.bool)
        success = torch.tensor([f["success"] for o in outs for f in o.fields], dtype=torch.bool)  # after the referee's check
        ok = torch.tensor(correct, dtype=torch.bool)
        claimed, success = claimed[ok], success[ok]
        n_att, n_correct, n = summary.get("n_attacked") or 0, summary["n_correct"], summary["n_samples"]
        ns = int(success.sum())
        summary["non_adaptive"] = {"bpda": False, "eot_samples": 1, "n_success": ns, "confirm_repeats": self.naive_confirm(ev),
                                   "success_rate": ns / n_att if n_att else float("nan"),
                                   "first_sight_success_rate": float(claimed.float().mean()) if n_att else float("nan"),
                                   "robust_accuracy": (n_correct - ns) / n if n else float("nan")}
        summary["adaptive"] = {"bpda": ev.bpda, "eot_samples": ev.eot_samples, "confirm_repeats": ev.confirm_repeats,
                               "n_success": summary["n_success"], "success_rate": summary["success_rate"],
                               "first_sight_success_rate": summary["first_sight_success_rate"],
                               "robust_accuracy": summary["robust_accuracy"]}


class Detection(Protocol):
    def __init__(self, detector, name: str):
        self.detector, self.name = detector, name

    def calibrate(self, model, splits) -> None:
        if splits is None:
            raise RobenchError(f"detector '{self.name}' needs clean training images to calibrate on")
        n = min(self.detector.calibration_samples, len(splits.train))
        xc = torch.stack([splits.train[i][0] for i in range(n)]).float()
        self.detector.calibrate(model, xc)

    def record_columns(self, ev):
        return {"detector_score": float("nan")}

    def after_batch(self, ev, outcome):
        """The detector's score of each successful adversarial point (kept in records.csv, so a resumed run keeps them)."""
        res = outcome.result
        if res is None:
            return
        ok = torch.tensor([f["success"] for f in outcome.fields], dtype=torch.bool).nonzero().flatten()
        if len(ok):
            s = self.detector.scores(ev.model, res.best_x[ok])
            for j, v in zip(ok.tolist(), s.tolist()):
                outcome.fields[j]["detector_score"] = float(v)

    def merge(self, ev, summary, records, x, extra, tables):
        import pandas as pd

        from robench.evaluation import results as R

        det = self.detector
        clean = det.scores(ev.model, x)
        clean_flag = det.detect(clean)
        rows, adv_flags = [], []
        for k, r in enumerate(records):
            a = float(r.get("detector_score", float("nan")))
            flag = (not math.isnan(a)) and a > det.threshold
            if r["success"] and not math.isnan(a):
                adv_flags.append(flag)
            rows.append({"index": r["index"], "clean_score": float(clean[k]), "clean_detected": bool(clean_flag[k]),
                         "success": bool(r["success"]), "adv_score": a, "adv_detected": bool(flag)})
        tables["detection.csv"] = pd.DataFrame(rows)
        n_att = sum(1 for r in records if r["attacked"])
        n_undetected = sum(1 for r, row in zip(records, rows) if r["success"] and not row["adv_detected"])
        nan = float("nan")
        summary["detection"] = {
            "detector": self.name, **{k: v for k, v in det.describe().items() if k != "threshold"},
            "threshold": det.threshold, "false_positive_rate": float(clean_flag.float().mean()) if len(x) else nan,
            "n_adversarial": len(adv_flags), "detection_rate": sum(adv_flags) / len(adv_flags) if adv_flags else nan,
            "success_rate_undetected": n_undetected / n_att if n_att else nan}


class Shared(Protocol):
    """The shared-perturbation protocol (see the module docstring; the referee's mechanics are in
    robench/evaluation/shared.py): builds the perturbation before the first test batch (:meth:`before_run`)
    and merges the ``shared`` block and ``perturbation.csv`` (:meth:`merge`)."""

    def __init__(self, builder, apply_, model, device, build, referee, seed: int, name: str, target: Optional[int]):
        self.builder, self.apply, self.model, self.device = builder, apply_, model, device
        self.build, self.referee, self.seed, self.name, self.target = build, referee, seed, name, target
        self.outcome = None

    @classmethod
    def attach(cls, ev: "Evaluation", spec, attack, model, device, data, splits, referee, name: str):
        """Called by :func:`~robench.evaluation.prepare.prepare_run` for an attack that requires a build set:
        the protocol's checks (one line each), the build set, the protocol appended to ``ev``; returns the
        :class:`~robench.evaluation.shared.ApplyShared` that becomes the run's attack."""
        from robench.attacks.universal.base import SharedAttack
        from robench.evaluation.shared import ApplyShared, select_build_set

        if not isinstance(attack, SharedAttack):
            raise RobenchError(f"attack '{name}' requires a build set but is not a "
                               f"robench.attacks.universal.base.SharedAttack")
        b = spec.budget
        target = None
        if b.targeted:
            if isinstance(b.target, bool) or not isinstance(b.target, int):
                raise RobenchError(f"attack={name} builds one perturbation for every sample: a targeted run needs one "
                                   f"target class, budget.target=<class index> (got '{b.target}')")
            target = int(b.target)
        if spec.adaptive:
            raise RobenchError(f"adaptive=true re-runs a per-sample attack without BPDA/EOT; attack={name} builds one "
                               f"shared perturbation: set attack.bpda / attack.eot_samples for its build instead")
        build = select_build_set(attack, splits, model, device, target, data.indices)
        apply_ = ApplyShared(attack, name)
        ev.protocols.append(cls(attack, apply_, model, device, build, referee, spec.seed, name, target))
        return apply_

    def before_run(self, ev) -> None:
        from robench.evaluation.shared import run_build

        self.outcome = run_build(self.builder, self.model, self.build, self.referee, self.device, self.seed,
                                 self.name, self.target)
        self.apply.perturbation = self.outcome.perturbation

    def build_success_rate(self) -> float:
        """Success of the built perturbation on the build set, measured by the referee (uncounted forward
        passes; a random placement drawn from a generator of its own)."""
        from robench.evaluation.engine import batch_seed
        from robench.evaluation.shared import BUILD_BATCH, apply
        from robench.training.loop import predict

        gen = torch.Generator().manual_seed(batch_seed(self.seed, BUILD_BATCH + 1))
        xa = apply(self.outcome.perturbation, self.build.x, gen, self.referee.box)
        pred = predict(self.model, xa).argmax(1).cpu()
        hit = (pred == self.target) if self.target is not None else (pred != self.build.y)
        return float(hit.float().mean())

    def merge(self, ev, summary, records, x, extra, tables):
        import pandas as pd

        from robench.geometry import distortion

        o, b = self.outcome, self.build
        if o is None:
            return
        p = o.perturbation
        v = p.values
        block: Dict[str, Any] = {
            "kind": p.kind, "build_split": b.split, "build_offset": b.offset, "build_samples": b.requested,
            "build_used": len(b.y), "build_indices": [int(i) for i in b.indices.tolist()],
            "build_queries": int(o.queries.sum()), "build_grad_queries": int(o.grad_queries.sum()),
            "build_max_queries": int(o.queries.max()) if len(o.queries) else 0, "build_seconds": o.seconds,
            "build_success_rate": self.build_success_rate()}
        if p.kind == "additive":
            block.update({f"perturbation_{n}": float(distortion(v[None], n)[0]) for n in ("linf", "l2", "l0")})
        else:
            block.update({"placement": p.placement, "patch_side": int(v.shape[-1]),
                          "row": p.row if p.placement == "fixed" else None,
                          "col": p.col if p.placement == "fixed" else None})
        summary["shared"] = block
        c, hh, ww = v.shape
        grid = torch.stack(torch.meshgrid(torch.arange(c), torch.arange(hh), torch.arange(ww), indexing="ij"), -1)
        tables["perturbation.csv"] = pd.DataFrame({"channel": grid[..., 0].flatten().tolist(),
                                                   "row": grid[..., 1].flatten().tolist(),
                                                   "col": grid[..., 2].flatten().tolist(),
                                                   "value": v.flatten().tolist()})


class Evaluation:
    """The protocols of one attack run and the victim facts they share, from the run's validated
    settings (robench/evaluation/spec.py decides every rule on them): the ``defense`` config, the ``seed``,
    ``adaptive`` and ``adaptive_eot_samples``, ``recheck_repeats`` (None: auto) and ``confirm_on_sight``
    (None: auto)."""

    def __init__(self, defense: Any, *, seed: int = 0, adaptive: bool = False, adaptive_eot_samples: int = 10,
                 recheck_repeats: Optional[int] = None, confirm_on_sight: Optional[bool] = None):
        from robench.evaluation.spec import thaw

        self.spec = defense_spec(thaw(defense) if defense is not None else None)
        self.seed = int(seed)
        self.adaptive = bool(adaptive)
        self.adaptive_eot = int(adaptive_eot_samples)
        self.user_recheck = recheck_repeats
        self.user_confirm = confirm_on_sight
        detector = build_detector(self.spec)
        self.protocols: List[Protocol] = [Standard()] + ([Adaptive()] if self.adaptive else []) + \
            ([Detection(detector, self.spec.detector[0])] if detector is not None else [])
        self.model = None
        self.preflight: Dict[str, Any] = {}
        self.randomized = self.has_inputs = self.gradient_attack = self.settings_differ = False
        self.bpda, self.eot_samples = False, 1

    @property
    def label(self) -> str:
        return self.spec.label

    @property
    def detection(self) -> Optional[Detection]:
        return next((p for p in self.protocols if isinstance(p, Detection)), None)

    # ------------------------------------------------------------------ before the attack
    def prepare(self, model, access: str, bpda: bool, eot: int, splits, x: Optional[torch.Tensor] = None,
                for_victim: Optional[Callable[[bool, int], int]] = None) -> tuple[bool, int]:
        """Pre-flight checks (``x``: a few clean inputs), seeds the victim's randomness, sets BPDA,
        calibrates the detector; returns (bpda, eot_samples) of the main run. ``for_victim``: the attack's
        hook (:meth:`robench.attacks.base.Attack.for_victim`), told whether the victim is randomized and
        the run's EOT draws, returning the EOT draws it runs with."""
        from robench.victim import preflight

        self.model = model
        self.preflight = preflight(model, x) if x is not None and len(x) else {"randomized": False, "probabilities": False}
        self.randomized = self.preflight["randomized"] or is_randomized(model)
        self.preflight["randomized"] = self.randomized
        self.has_inputs = any(isinstance(m, InputDefense) for m in model.modules())
        reseed_defenses(model, self.seed)
        bpda, eot = bool(bpda), int(eot)
        if for_victim is not None:  # the attack told what pre-flight found (e.g. AutoAttack: version rand, EOT x20)
            eot = int(for_victim(self.randomized, eot))
        self.gradient_attack = access == "gradient"
        if self.adaptive and self.has_inputs and self.gradient_attack:
            bpda = True
            if self.randomized and eot == 1:
                eot = self.adaptive_eot
            needs_bpda = any(isinstance(m, InputDefense) and not m.differentiable for m in model.modules())
            self.settings_differ = needs_bpda or eot > 1
        self.bpda, self.eot_samples = bpda, eot
        set_bpda(model, bpda)
        if self.detection is not None:
            self.detection.calibrate(model, splits)
        return bpda, eot

    @property
    def confirm_repeats(self) -> int:
        """Confirmations of a success at sight in the main run: ``recheck_repeats - 1`` (so success holds
        k times in a row) when ``confirm_on_sight`` is true, or when it is null (auto) for the adaptive
        run of a gradient attack against a randomized victim; else 0."""
        on = self.user_confirm
        if on is None:
            on = self.adaptive and self.randomized and self.gradient_attack
        return max(0, self.recheck_repeats - 1) if on else 0

    @property
    def recheck_repeats(self) -> int:
        if self.user_recheck is not None:
            return int(self.user_recheck)
        return 3 if self.randomized else 1

    def describe(self, i: int) -> dict:
        ts = [m for m in self.model.modules() if isinstance(m, InputDefense)]
        return ts[i].describe() if i < len(ts) else {}

    # ------------------------------------------------------------------ the runs
    def record_columns(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        for p in self.protocols:
            out.update(p.record_columns(self))
        return out

    def before_run(self) -> None:
        for p in self.protocols:
            p.before_run(self)

    def after_batch(self, outcome) -> None:
        for p in self.protocols:
            p.after_batch(self, outcome)

    def extra_runs(self) -> List[ExtraRun]:
        return [r for p in self.protocols for r in p.extra_runs(self)]

    def merge(self, summary: Dict[str, Any], records, x: torch.Tensor, extra: Dict[str, list]) -> Dict[str, Any]:
        """Adds every protocol's keys to ``summary`` (in place); ``extra``: outcomes of the declared runs by
        name. Returns the per-sample tables the protocols made (file name -> DataFrame)."""
        tables: Dict[str, Any] = {}
        for p in self.protocols:
            p.merge(self, summary, records, x, extra, tables)
        return tables

    # ------------------------------------------------------------------ reporting
    def rows(self, s: Dict[str, Any]) -> List[tuple]:
        """Extra (metric, value) rows for the printed and Markdown tables."""
        pct = lambda v: "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2%}"
        out = []
        if self.has_inputs:
            out.append(("undefended clean accuracy", pct(s.get("undefended_clean_accuracy"))))
            out.append(("defended clean accuracy", pct(s.get("clean_accuracy"))))
        if self.randomized or s.get("recheck_failed"):
            out.append(("success, first sight", pct(s.get("first_sight_success_rate"))))
            out.append((f"success, re-checked {s.get('recheck_repeats')}/{s.get('recheck_repeats')}", pct(s.get("success_rate"))))
        if "non_adaptive" in s:
            na, ad = s["non_adaptive"], s["adaptive"]
            out.append(("success, non-adaptive (no BPDA, no EOT)", pct(na["success_rate"])))
            tag = "BPDA" + (f" + EOT x{ad['eot_samples']}" if ad["eot_samples"] > 1 else "") + \
                (f" + confirm {ad['confirm_repeats'] + 1}x" if ad["confirm_repeats"] else "")
            out.append((f"success, adaptive ({tag})", pct(ad["success_rate"])))
        elif self.adaptive and self.has_inputs and not self.gradient_attack:
            out.append(("adaptive gradients", "n/a (attack uses no gradients)"))
        elif self.adaptive and self.has_inputs:
            out.append(("adaptive gradients", "n/a (differentiable, deterministic: one run)"))
        if "detection" in s:
            dd = s["detection"]
            out.append((f"detection rate ({dd['n_adversarial']} adv. examples)", pct(dd["detection_rate"])))
            out.append(("detector false-positive rate (clean)", pct(dd["false_positive_rate"])))
            out.append(("success rate, undetected", pct(dd["success_rate_undetected"])))
        return out

    def table(self, s: Dict[str, Any]):
        """The defense table (a rich Table), or None when there is nothing to show."""
        rows = self.rows(s)
        if not rows:
            return None
        from rich.table import Table

        t = Table(title=f"defense {self.label}", title_justify="left", header_style="bold")
        t.add_column("metric")
        t.add_column("value", justify="right")
        for a, b in rows:
            t.add_row(a, b)
        return t
