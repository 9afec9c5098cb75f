from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch

from robench.attacks.base import AttackView
from robench.attacks.universal.base import SharedAttack, SharedPerturbation
from robench.errors import RobenchError
from robench.geometry import geometry
from robench.registry import ATTACKS


@ATTACKS.register("uap")
class UAP(SharedAttack):
    """Universal adversarial perturbations (Moosavi-Dezfooli, Fawzi, Fawzi and Frossard [moosavi2017uap §3,
    Alg. 1]), and with a targeted budget the targeted UAP (Hirano and Takemoto [hirano2020tuap §2]):
    one perturbation v for every input, white-box, Linf or L2, built on a build set and evaluated on the
    test slice (the shared protocol, robench/evaluation/protocols.py).

    Papers: Universal adversarial perturbations (CVPR 2017), https://arxiv.org/abs/1610.08401; Simple
    iterative method for generating targeted universal adversarial perturbations (Algorithms 2020),
    https://arxiv.org/abs/1911.06502. Distance: the budget's norm (``p``), ``xi = budget.eps``. Arguments:
    ``delta`` (0.2: stop once the build set's fooling rate reaches 1 - delta, the paper's value),
    ``max_passes`` (20 passes over the build set at most; the paper has no cap, ART's default is 20),
    ``overshoot`` (0.02) and ``max_iter_df`` (10): the DeepFool settings of the authors' code;
    ``candidates`` (10: classes DeepFool tries, the code's ``num_classes``); ``step`` (targeted runs: the
    targeted FGSM step, null: ``xi``, robench's choice, the papers give it per data set on other scales);
    ``build_split``, ``build_samples``, ``build_offset``: the build set (robench/attacks/universal/base.py).
    Usage: ``robench attack attack=uap budget=linf_0.3`` (targeted: ``budget.targeted=true budget.target=3``).

    Untargeted (Alg. 1): ``v = 0``; each pass visits the build images in a random order; for an image
    with ``k(x_i + v) = k(x_i)`` the minimal L2 perturbation ``dv`` that sends ``x_i + v`` to another class
    is computed with DeepFool ([moosavi2016], multi-class, ``max_iter_df`` iterations, overshoot as the
    code: ``(1 + overshoot)`` times the accumulated step), and when DeepFool reaches another class,
    ``v = P_{p, xi}(v + dv)`` (the projection onto the ball). After each pass the fooling rate over the
    build set is measured; the loop ends when it is at least ``1 - delta``, after ``max_passes`` passes,
    or when no build image has queries left. The authors' code applies ``dv`` only when DeepFool stopped
    before its last iteration; here, when it reached another class (ART's rule).

    Targeted (Hirano and Takemoto's Algorithm 1, as their ART implementation runs it): for an image with
    ``k(x_i + v) != y'``, one targeted FGSM step ``dv = -step sign(grad CE(x_i + v, y'))`` (L2 budgets:
    ``-step g / ||g||_2``) is taken, and ``v = P_{p, xi}(v + dv)`` only if ``k(x_i + v + dv) = y'``; the
    rate measured is the targeted success rate. One target class for every input: ``budget.target``.

    Every input the attack sends is clipped to the box (the papers add v unclipped). Queries, per build
    image: 1 label query per visit (is it fooled?), then per DeepFool iteration ``candidates - 1``
    gradient rows and 1 label query (targeted: 1 gradient row and 1 label query), and 1 label query per
    pass for the fooling rate; an image without the queries for the next step is skipped.
    ``summary.json``'s ``attack_extra`` holds the build set's rate after each pass.
    """

    access = "gradient"
    norms = ("linf", "l2")

    #: numeric ranges the registry checks before construction (robench.registry.validate_params)
    param_ranges = {"delta": "[0,1]", "max_passes": ">=1", "overshoot": ">=0", "max_iter_df": ">=1",
                    "candidates": ">=2", "step": ">0", "build_samples": ">=1", "build_offset": ">=0"}

    def __init__(self, delta: float = 0.2, max_passes: int = 20, overshoot: float = 0.02, max_iter_df: int = 10,
                 candidates: int = 10, step: Optional[float] = None, build_split: str = "train",
                 build_samples: int = 1000, build_offset: int = 0):
        super().__init__(build_split, build_samples, build_offset)
        if not 0 <= delta <= 1 or max_passes < 1 or overshoot < 0 or max_iter_df < 1 or candidates < 2:
            raise RobenchError(f"uap needs delta in [0, 1], max_passes >= 1, overshoot >= 0, max_iter_df >= 1 and "
                               f"candidates >= 2 (got {delta}, {max_passes}, {overshoot}, {max_iter_df}, {candidates})")
        if step is not None and not step > 0:
            raise RobenchError(f"uap step must be > 0 or null, got {step}")
        self.delta, self.max_passes, self.overshoot = float(delta), int(max_passes), float(overshoot)
        self.max_iter_df, self.candidates, self.step = int(max_iter_df), int(candidates), step
        self.history: List[float] = []

    def summary_extra(self) -> Dict[str, Any]:
        return {"uap": {"passes": len(self.history), "build_rate_after_pass": [round(r, 6) for r in self.history]}}

    # ------------------------------------------------------------------ the build (Alg. 1)
    def build(self, oracle: AttackView, generator: torch.Generator) -> SharedPerturbation:
        x0, y, t = oracle.x0, oracle.y, oracle.targets
        lo, hi, dev = oracle.low, oracle.high, x0.device
        geo = geometry(oracle.norm)
        eps = float(oracle.eps)
        n = x0.shape[0]
        v = torch.zeros_like(x0[0])
        self.history = []
        all_idx = torch.arange(n, device=dev)
        need = 1 + (self.candidates - 1 if t is None else 1) * oracle.eot_samples + 1  # visit + one step + its check
        for _ in range(self.max_passes):
            order = torch.randperm(n, generator=generator, device=generator.device).to(dev)
            for i in order.tolist():
                if int(oracle.remaining[i]) < need:
                    continue
                ii = all_idx[i:i + 1]
                xi = (x0[i] + v).clamp(lo, hi)[None]
                lab = int(oracle.labels(xi, ii)[0])
                if lab < 0:
                    continue
                if t is None:
                    if lab != int(y[i]):
                        continue
                    dv = self._deepfool(oracle, xi, i, lab)
                else:
                    if lab == int(t[i]):
                        continue
                    dv = self._targeted_step(oracle, xi, i, int(t[i]), eps)
                if dv is not None:
                    v = geo.project((v + dv)[None], eps)[0]
            live = oracle.remaining > 0
            if not bool(live.any()):
                break
            labs = oracle.labels((x0[live] + v).clamp(lo, hi), all_idx[live])
            ok = labs >= 0
            hit = (labs == t[live]) if t is not None else (labs != y[live])
            rate = float((hit & ok).float().sum() / ok.float().sum().clamp_min(1))
            self.history.append(rate)
            if rate >= 1 - self.delta:
                break
        return SharedPerturbation("additive", v)

    def _deepfool(self, oracle: AttackView, x: torch.Tensor, i: int, label: int) -> Optional[torch.Tensor]:
        """DeepFool [moosavi2016 Alg. 2] (L2) from ``x`` (1, C, H, W) of build image ``i``: the perturbation
        ``(1 + overshoot) r_tot`` when it reaches another class, else None."""
        lo, hi, dev = oracle.low, oracle.high, x.device
        k = oracle.num_classes
        cand = torch.tensor([c for c in range(k) if c != label], device=dev)
        if self.candidates < k:  # the top classes of the logits at x: from the first gradient call's logits
            cand = None
        x_start = x
        r_tot = torch.zeros_like(x)
        per_iter = (min(self.candidates, k) - 1) * oracle.eot_samples + 1
        ii = torch.tensor([i], device=dev)
        xc = x
        for _ in range(self.max_iter_df):
            if int(oracle.remaining[i]) < per_iter:
                return None
            if cand is None:
                lg = oracle.logits(xc, ii)
                if bool(torch.isnan(lg).any()):
                    return None
                order = lg[0].argsort(descending=True)
                cand = order[order != label][: self.candidates - 1]
            kk = len(cand)
            rows = ii.repeat(kk)

            def loss_fn(logits, r, cc=cand):
                reps = len(r) // len(cc)
                cls = cc.repeat(reps)
                return logits.gather(1, cls[:, None]).squeeze(1) - logits[:, label]

            logits, g = oracle.gradient(xc.repeat(kk, *([1] * (xc.dim() - 1))), loss_fn, rows)
            if bool(torch.isnan(logits).any()):
                return None
            lg = logits[0]
            fk = lg[cand] - lg[label]
            wk = g.view(kk, -1)
            ratio = fk.abs() / wk.norm(dim=1).clamp_min(1e-12)
            b = int(ratio.argmin())
            w = wk[b]
            r = (fk[b].abs() + 1e-4) / w.pow(2).sum().clamp_min(1e-12) * w
            r_tot = r_tot + r.view_as(x)
            xc = (x_start + (1 + self.overshoot) * r_tot).clamp(lo, hi)
            lab = int(oracle.labels(xc, ii)[0])
            if lab < 0:
                return None
            if lab != label:
                return ((1 + self.overshoot) * r_tot)[0]
        return None

    def _targeted_step(self, oracle: AttackView, x: torch.Tensor, i: int, target: int, eps: float) -> Optional[torch.Tensor]:
        """Hirano and Takemoto's step: a targeted FGSM step from ``x``; returned only when it reaches ``target``."""
        ii = torch.tensor([i], device=x.device)
        step = float(self.step) if self.step is not None else eps

        def loss_fn(logits, r):
            return torch.nn.functional.cross_entropy(logits, torch.full((len(r),), target, device=logits.device),
                                                     reduction="none")

        logits, g = oracle.gradient(x, loss_fn, ii)
        if bool(torch.isnan(logits).any()):
            return None
        dv = -geometry(oracle.norm).step(g, step)   # descend the target's cross-entropy
        xn = (x + dv).clamp(oracle.low, oracle.high)
        lab = int(oracle.labels(xn, ii)[0])
        return dv[0] if lab == target else None
