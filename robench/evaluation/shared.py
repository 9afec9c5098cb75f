"""The referee's side of the shared-perturbation protocol (the protocol itself is
:class:`robench.evaluation.protocols.Shared`): one perturbation built on a set of images, then evaluated,
fixed, on the test slice (docs/attacks/l0-and-universal.md; DESIGN.md, "Shared perturbations").

An attack that declares ``requires = ("build_set",)`` (a :class:`~robench.attacks.universal.base.SharedAttack`)
runs in two phases, both through the referee:

1. **build** (:func:`run_build`, called by :class:`~robench.evaluation.protocols.Shared` before the first test batch): the
   build set is the first ``build_samples`` images of the attack's ``build_split`` from ``build_offset``,
   less those the victim misclassifies (and, targeted, those whose label is the target); one
   :class:`~robench.referee.oracle.Oracle` over all of them, at the attack's access level, with the run's
   norm, eps and ``budget.max_queries`` *per build image*, never stopping on success (a universal
   perturbation keeps working on images it already fools), guarded like every batch
   (robench/referee/guard.py). The attack's ``build(view, generator)`` returns a
   :class:`~robench.attacks.universal.base.SharedPerturbation`, which is checked here (shape, finite, inside
   the ball or the patch's area).
2. **evaluation** (:class:`ApplyShared`, the run's attack): per test batch, the referee's own code places
   the perturbation on each attacked input (a patch at its fixed corner, or at a corner drawn from the
   batch's generator) and asks the victim for labels once per sample. The oracle judges and the final
   re-check certifies success as for any attack; records hold one query per sample.

The build's cost and provenance go into ``summary.json``'s ``shared`` block (results.py documents its
keys) and the perturbation into ``perturbation.csv``. The build set is deterministic (the first images
from the offset) and its generator is seeded from the run seed, so a resumed or sharded run rebuilds
exactly the same perturbation.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch

from robench.attacks.base import Attack, AttackView
from robench.attacks.universal.base import KINDS, PLACEMENTS, SharedAttack, SharedPerturbation, paste, patch_side
from robench.errors import RobenchError
from robench.geometry import distortion

#: the build phase's generator is seeded with batch_seed(seed, BUILD_BATCH), a batch number no test batch has
BUILD_BATCH = 2 ** 40
TOL = 1e-5


@dataclass
class BuildSet:
    """The build images (CPU), their labels, their dataset indices and the split they come from."""

    x: torch.Tensor
    y: torch.Tensor
    indices: torch.Tensor
    split: str
    requested: int
    offset: int


@dataclass
class BuildOutcome:
    """What the build phase produced and spent (counts from the build oracle, per build image)."""

    perturbation: SharedPerturbation
    queries: torch.Tensor
    grad_queries: torch.Tensor
    seconds: float


def select_build_set(attack: SharedAttack, splits: Any, model, device, targets_class: Optional[int],
                     eval_indices: Optional[torch.Tensor] = None, limit: Optional[int] = None) -> BuildSet:
    """The build set the attack names, cut by the referee: correctly classified images only (and, targeted,
    not of the target class). ``limit`` caps the number read (the contract's small runs)."""
    from robench.training.loop import predict

    split = attack.build_split
    ds = getattr(splits, split, None) if splits is not None else None
    if ds is None:
        where = ("the Python API builds on train_data=" if splits is not None else "no dataset was given")
        raise RobenchError(f"{type(attack).__name__} builds its perturbation on the {split} split, which this run "
                           f"does not have ({where}); pass train_data= (robench.evaluate) or run robench attack")
    n_total = len(ds)
    off = attack.build_offset
    n = min(attack.build_samples, max(0, n_total - off))
    if limit is not None:
        n = min(n, int(limit))
    if n < 1:
        raise RobenchError(f"the build set is empty: build_offset={off} with {n_total} images in the {split} split")
    idx = torch.arange(off, off + n)
    if split == "test" and eval_indices is not None:
        both = set(idx.tolist()) & set(int(i) for i in eval_indices.tolist())
        if both:
            raise RobenchError(f"the build set (test images {off}..{off + n - 1}) overlaps the evaluated slice "
                               f"({len(both)} images): move it with attack.params.build_offset or the evaluation with "
                               f"dataset.offset, or build on the train split")
    xs, ys = zip(*(ds[int(i)][:2] for i in idx))
    x = torch.stack([torch.as_tensor(v) for v in xs]).float()
    y = torch.as_tensor([int(v) for v in ys])
    pred = predict(model, x).argmax(1).cpu()
    keep = pred == y
    if targets_class is not None:
        keep &= y != int(targets_class)
    if not bool(keep.any()):
        raise RobenchError(f"no image of the build set ({split} {off}..{off + n - 1}) is correctly classified "
                           f"(and not of the target class): nothing to build on")
    return BuildSet(x[keep], y[keep], idx[keep], split, attack.build_samples, off)


def run_build(attack: SharedAttack, model, build: BuildSet, referee, device, seed: int, name: str,
              target: Optional[int] = None) -> BuildOutcome:
    """Phase 1 (see the module docstring): the attack's ``build`` over one guarded oracle of the build set."""
    import dataclasses

    from robench.evaluation.engine import batch_seed
    from robench.referee.guard import Guard

    ref = dataclasses.replace(referee, stop_on_success=False, checkpoints=())
    guard = Guard(model, name)
    t = None if target is None else torch.full_like(build.y, int(target)).to(device)
    oracle = ref.oracle(guard.victim, build.x.to(device, copy=True), build.y.to(device, copy=True), t)
    gen = torch.Generator(device=device).manual_seed(batch_seed(seed, BUILD_BATCH))
    t0 = time.perf_counter()
    guard.arm(oracle)
    try:
        pert = attack.build(oracle.view(), gen)
    finally:
        pre = guard.disarm()
    queries, grad_queries = oracle.queries.cpu(), oracle.grad_queries.cpu()  # no finalize: nothing is certified here
    guard.check(oracle, ref, queries, -1, pre)
    pert = check_perturbation(pert, tuple(build.x.shape[1:]), ref, name)
    return BuildOutcome(pert, queries, grad_queries, time.perf_counter() - t0)


def check_perturbation(p: Any, shape: Tuple[int, ...], referee, name: str) -> SharedPerturbation:
    """A validated, detached copy of what ``build`` returned (one line for anything wrong)."""
    if not isinstance(p, SharedPerturbation):
        raise RobenchError(f"attack '{name}': build() must return a SharedPerturbation, got {type(p).__name__}")
    if p.kind not in KINDS or p.placement not in PLACEMENTS:
        raise RobenchError(f"attack '{name}': a shared perturbation's kind is one of {KINDS} and its placement one "
                           f"of {PLACEMENTS}, got '{p.kind}', '{p.placement}'")
    v = p.values
    if not torch.is_tensor(v) or not v.is_floating_point() or not bool(torch.isfinite(v).all()):
        raise RobenchError(f"attack '{name}': the shared perturbation must be a finite float tensor")
    v = v.detach().float().cpu().clone()
    lo, hi = referee.box
    if p.kind == "additive":
        if tuple(v.shape) != tuple(shape):
            raise RobenchError(f"attack '{name}': an additive perturbation has the input's shape {tuple(shape)}, "
                               f"got {tuple(v.shape)}")
        if referee.eps is not None:
            d = float(distortion(v[None], referee.norm)[0])
            if d > referee.eps + TOL:
                raise RobenchError(f"attack '{name}': its perturbation's {referee.norm} norm {d:.6g} exceeds "
                                   f"budget.eps={referee.eps:g}")
        return SharedPerturbation("additive", v)
    if len(shape) != 3:
        raise RobenchError(f"attack '{name}': patches are for images (C x H x W), not inputs of shape {tuple(shape)}")
    if referee.norm != "l0":
        raise RobenchError(f"attack '{name}': a patch's budget is its area: budget.norm=l0")
    c, h, w = shape
    s = patch_side(referee.eps, h, w)
    if tuple(v.shape) != (c, s, s):
        raise RobenchError(f"attack '{name}': the patch must be {c} x {s} x {s} (budget.eps={referee.eps:g} "
                           f"positions), got {tuple(v.shape)}")
    if p.placement == "fixed" and not (0 <= int(p.row) <= h - s and 0 <= int(p.col) <= w - s):
        raise RobenchError(f"attack '{name}': the patch's corner ({p.row}, {p.col}) puts it outside the "
                           f"{h} x {w} image")
    return SharedPerturbation("patch", v.clamp(lo, hi), p.placement, int(p.row), int(p.col))


def apply(p: SharedPerturbation, x0: torch.Tensor, generator: Optional[torch.Generator],
          box: Tuple[float, float]) -> torch.Tensor:
    """The referee's placement of a validated perturbation on inputs ``x0`` (a patch at a corner drawn from
    ``generator`` per row when its placement is random)."""
    lo, hi = box
    v = p.values.to(x0.device, x0.dtype)
    if p.kind == "additive":
        return (x0 + v).clamp(lo, hi)
    n, c, h, w = x0.shape
    s = v.shape[-1]
    if s == 0:
        return x0.clone()
    if p.placement == "random":
        rows = torch.randint(0, h - s + 1, (n,), generator=generator, device=generator.device).to(x0.device)
        cols = torch.randint(0, w - s + 1, (n,), generator=generator, device=generator.device).to(x0.device)
    else:
        rows = torch.full((n,), p.row, device=x0.device)
        cols = torch.full((n,), p.col, device=x0.device)
    return paste(x0, v, rows, cols)


class ApplyShared(Attack):
    """The evaluation phase's attack (referee code, not a plugin): places the built perturbation on each
    attacked input and asks for its label once (see the module docstring)."""

    access = "label"

    def __init__(self, builder: Any, name: str):
        self.builder, self.name = builder, name
        self.perturbation: Optional[SharedPerturbation] = None

    def run(self, oracle: AttackView, generator: torch.Generator) -> None:
        if self.perturbation is None:
            raise RobenchError(f"attack '{self.name}': the shared perturbation was not built before the test batches")
        idx = oracle.active_indices()
        if len(idx) == 0:
            return
        x = apply(self.perturbation, oracle.x0[idx], generator, (oracle.low, oracle.high))
        oracle.labels(x, idx)

    def summary_extra(self) -> Dict[str, Any]:
        return self.builder.summary_extra()
