"""Defended victims in ``robench attack``: the hooks run.py calls, kept out of its loop.

* **Re-check repeats.** ``recheck_repeats: null`` (the default) means 1 for a deterministic victim and
  3 for a randomized one (the TVM protocol of [alzantot2019 §2.6.2.2]: success only if the target
  is predicted 3 times in a row); the summary reports both the first-sight success rate (what the
  attack saw once) and the re-checked one (``success_rate``), and ``recheck_failed``.
* **Adaptive evaluation** (``adaptive: true``). For a gradient attack on a victim with input
  transformations the attack runs twice on the same samples, with the same seeds: once *naively*
  (``bpda`` off, one EOT sample: a non-differentiable transform passes no gradient, which is what a
  defense that only masks gradients relies on) and once *adaptively* (BPDA backward on, and EOT over
  ``attack.eot_samples`` draws, or ``adaptive_eot_samples`` when that is 1 and the victim is
  randomized; Athalye et al. [athalye2018]) that, against a randomized victim, does not stop at a lucky draw:
  the oracle confirms each success when it sees it (``confirm_on_sight``, null = auto). The per-sample records are those of the adaptive run (the
  stronger attacker); summary.json gets ``adaptive`` and ``non_adaptive`` blocks and the printed table
  shows both. A score- or label-based attack sees no gradients, so it runs once.
* **Clean accuracies.** ``clean_accuracy`` is that of the defended victim (as every attack run
  reports it); ``undefended_clean_accuracy`` is the same model without its input transformations.
* **Detection** (a detector in the ``defense`` group, e.g. ``defense=[none,feature_squeeze_detect]``):
  the detector is calibrated on clean training images before the attack, every attacked sample's
  best adversarial point is scored after its batch (whatever the attack), the clean test images of
  the run give the false-positive rate; ``detection.csv`` has the per-sample scores.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from robench.defenses.base import InputDefense, is_randomized, reseed_defenses, set_bpda
from robench.defenses.compose import build_detector, defense_spec, undefended
from robench.errors import RobenchError


class DefenseRun:
    def __init__(self, cfg: Any):
        self.cfg = cfg
        self.spec = defense_spec(cfg.defense)
        self.adaptive = bool(cfg.get("adaptive", False))
        self.adaptive_eot = int(cfg.get("adaptive_eot_samples", 10) or 1)
        if self.adaptive_eot < 1:
            raise RobenchError(f"adaptive_eot_samples must be an integer >= 1, got {self.adaptive_eot}")
        rr = cfg.get("recheck_repeats")
        if rr is not None and (not isinstance(rr, int) or isinstance(rr, bool) or rr < 1):
            raise RobenchError(f"recheck_repeats must be an integer >= 1 (or null: 3 for a randomized defense, else 1), got '{rr}'")
        self.user_recheck = rr
        co = cfg.get("confirm_on_sight")
        if co is not None and not isinstance(co, bool):
            raise RobenchError(f"confirm_on_sight must be true, false or null (auto), got '{co}'")
        self.user_confirm = co
        self.detector = build_detector(self.spec)
        self.model = None
        self.randomized = self.has_inputs = self.gradient_attack = False
        self.bpda, self.eot_samples = False, 1
        self._settings_differ = False

    @property
    def label(self) -> str:
        return self.spec.label

    # ------------------------------------------------------------------ before the attack
    def prepare(self, model, attack, attack_cfg, splits) -> tuple[bool, int]:
        """Seeds the victim's randomness, calibrates the detector; returns (bpda, eot_samples) of the main run."""
        self.model = model
        self.randomized = is_randomized(model)
        self.has_inputs = any(isinstance(m, InputDefense) for m in model.modules())
        reseed_defenses(model, int(self.cfg.seed))
        bpda = bool(attack_cfg.get("bpda", False))
        eot = int(attack_cfg.get("eot_samples", 1))
        if eot < 1:
            raise RobenchError(f"attack.eot_samples must be an integer >= 1, got {eot}")
        self.gradient_attack = attack.access == "gradient"
        if self.adaptive and self.has_inputs and self.gradient_attack:
            bpda = True
            if self.randomized and eot == 1:
                eot = self.adaptive_eot
            needs_bpda = any(isinstance(m, InputDefense) and not m.differentiable for m in model.modules())
            self._settings_differ = needs_bpda or eot > 1
        self.bpda, self.eot_samples = bpda, eot
        set_bpda(model, bpda)
        if self.detector is not None:
            n = min(self.detector.calibration_samples, len(splits.train))
            xc = torch.stack([splits.train[i][0] for i in range(n)]).float()
            self.detector.calibrate(model, xc)
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

    # ------------------------------------------------------------------ during the attack
    def record_columns(self) -> Dict[str, Any]:
        """Extra per-sample record columns and their defaults (the detector's score of the adversarial point)."""
        return {"detector_score": float("nan")} if self.detector is not None else {}

    def after_batch(self, res) -> List[Dict[str, Any]]:
        """Per attacked row of the batch, the record columns to update: the detector's score of each
        successful adversarial point (kept in records.csv, so a resumed run keeps them)."""
        out: List[Dict[str, Any]] = [{} for _ in range(len(res.success))]
        if self.detector is None:
            return out
        ok = res.success.nonzero().flatten()
        if len(ok):
            s = self.detector.scores(self.model, res.best_x[ok])
            for j, v in zip(ok.tolist(), s.tolist()):
                out[j] = {"detector_score": float(v)}
        return out

    # ------------------------------------------------------------------ after the attack
    def finish(self, summary: Dict[str, Any], records: List[Dict[str, Any]], x: torch.Tensor, run_dir: Path,
               rerun=None) -> Dict[str, Any]:
        """Adds the defense's keys to ``summary`` (in place). ``rerun(bpda, eot_samples)`` runs the same
        attack again on the same samples and returns (claimed, success) bool tensors over the attacked ones."""
        from robench.train import predict

        n_att = summary.get("n_attacked") or 0
        fs = (summary["n_success"] + summary.get("recheck_failed", 0)) / n_att if n_att else float("nan")
        summary["first_sight_success_rate"] = fs
        summary["recheck_repeats"] = self.recheck_repeats
        summary["confirm_repeats"] = self.confirm_repeats
        d = {"recipe": self.spec.recipe, "inputs": [{"name": n, **self._describe(i)} for i, (n, _) in
                                                     enumerate(self.spec.inputs)],
             "randomized": self.randomized, "bpda": self.bpda, "eot_samples": self.eot_samples}
        if self.has_inputs:
            y = torch.tensor([r["label"] for r in records])
            base = undefended(self.model)
            summary["undefended_clean_accuracy"] = float((predict(base, x).argmax(1).cpu() == y).float().mean())
        summary["defense_setup"] = d
        if self.adaptive and self.has_inputs and self.gradient_attack and self._settings_differ and rerun is not None:
            reseed_defenses(self.model, int(self.cfg.seed))
            set_bpda(self.model, False)
            claimed, success = rerun(False, 1, self.confirm_repeats if self.user_confirm else 0)
            set_bpda(self.model, self.bpda)
            n_correct = summary["n_correct"]
            n = summary["n_samples"]
            ns = int(success.sum())
            summary["non_adaptive"] = {"bpda": False, "eot_samples": 1, "n_success": ns,
                                       "confirm_repeats": self.confirm_repeats if self.user_confirm else 0,
                                       "success_rate": ns / n_att if n_att else float("nan"),
                                       "first_sight_success_rate": float(claimed.float().mean()) if n_att else float("nan"),
                                       "robust_accuracy": (n_correct - ns) / n if n else float("nan")}
            summary["adaptive"] = {"bpda": self.bpda, "eot_samples": self.eot_samples, "confirm_repeats": self.confirm_repeats,
                                   "n_success": summary["n_success"], "success_rate": summary["success_rate"],
                                   "first_sight_success_rate": fs, "robust_accuracy": summary["robust_accuracy"]}
        if self.detector is not None:
            summary["detection"] = self._detection(records, x, run_dir)
        return summary

    def _describe(self, i: int) -> dict:
        ts = [m for m in self.model.modules() if isinstance(m, InputDefense)]
        return ts[i].describe() if i < len(ts) else {}

    def _detection(self, records, x, run_dir: Path) -> Dict[str, Any]:
        import pandas as pd

        from robench import results as R

        det = self.detector
        clean = det.scores(self.model, x)
        clean_flag = det.detect(clean)
        rows, adv_flags = [], []
        for k, r in enumerate(records):
            a = float(r.get("detector_score", float("nan")))
            flag = (not math.isnan(a)) and a > det.threshold
            if r["success"] and not math.isnan(a):
                adv_flags.append(flag)
            rows.append({"index": r["index"], "clean_score": float(clean[k]), "clean_detected": bool(clean_flag[k]),
                         "success": bool(r["success"]), "adv_score": a, "adv_detected": bool(flag)})
        R.atomic_write_text(run_dir / "detection.csv", pd.DataFrame(rows).to_csv(index=False))
        n_att = sum(1 for r in records if r["attacked"])
        n_undetected = sum(1 for r, row in zip(records, rows) if r["success"] and not row["adv_detected"])
        nan = float("nan")
        return {"detector": self.spec.detector[0], **{k: v for k, v in det.describe().items() if k != "threshold"},
                "threshold": det.threshold, "false_positive_rate": float(clean_flag.float().mean()) if len(x) else nan,
                "n_adversarial": len(adv_flags),
                "detection_rate": sum(adv_flags) / len(adv_flags) if adv_flags else nan,
                "success_rate_undetected": n_undetected / n_att if n_att else nan}

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

    def report(self, run_dir: Path, s: Dict[str, Any], show: bool = True) -> None:
        """Print the defense table (``show``) and append it to summary.md."""
        rows = self.rows(s)
        if not rows:
            return
        from rich.console import Console
        from rich.table import Table

        from robench import results as R

        t = Table(title=f"defense {self.label}", title_justify="left", header_style="bold")
        t.add_column("metric")
        t.add_column("value", justify="right")
        for a, b in rows:
            t.add_row(a, b)
        if show:
            Console().print(t)
        md = (run_dir / "summary.md").read_text() if (run_dir / "summary.md").exists() else ""
        md += f"\n## defense {self.label}\n\n| metric | value |\n|---|---|\n" + "".join(f"| {a} | {b} |\n" for a, b in rows)
        R.atomic_write_text(run_dir / "summary.md", md)


def run_batches(attack, plan, new_oracle, *, seed_of, device):
    """Run ``attack`` again on the batches of ``plan`` (pairs of global batch number and the rows it
    attacks), each through a fresh ``new_oracle(rows)``, no records written; returns (claimed, success)
    bool tensors over all those rows. Each batch's generator is seeded by ``seed_of(batch)`` as in the
    main run, so a re-run with other gradient settings starts from the same random draws."""
    claimed, success = [], []
    for bt, sel in plan:
        if len(sel) == 0:
            continue
        o = new_oracle(sel)
        attack.run(o, torch.Generator(device=device).manual_seed(int(seed_of(bt))))
        r = o.finalize()
        claimed.append(r.claimed)
        success.append(r.success)
    if not claimed:
        return torch.zeros(0, dtype=torch.bool), torch.zeros(0, dtype=torch.bool)
    return torch.cat(claimed), torch.cat(success)
