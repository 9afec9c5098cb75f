"""End-of-training evaluation: clean and robust accuracy through the real attack path.

The same pieces as ``robench attack`` (the engine, robench/evaluation/engine.py): the first ``n_samples`` test images,
only the originally correct ones attacked, the registered attack (PGD-40 by default) driving an
:class:`~robench.referee.oracle.Oracle` at the run's budget through :func:`robench.evaluation.engine.execute`, batch b's
``torch.Generator`` seeded from (the run's seed, b) across batches of ``batch_size``. With the same seed, slice and attack parameters the robust
accuracy is the number ``robench attack`` reports for the checkpoint.
"""
from __future__ import annotations

import time
from typing import Any, Dict

import torch
from omegaconf import OmegaConf


def robust_accuracy(model, splits, ecfg, budget, seed: int, device: torch.device) -> Dict[str, Any]:
    """{clean_accuracy, robust_accuracy, n_samples, ...} or {} when ``eval.n_samples`` is 0."""
    from robench.config import validate_budget
    from robench.data import eval_slice
    from robench.evaluation.engine import Plan, Referee, run_all
    from robench.errors import RobenchError
    from robench.registry import ATTACKS, instantiate
    from robench.training.loop import predict
    from robench.victim import gradient_free

    n = ecfg.get("n_samples", 500)
    if n is not None and int(n) == 0:
        return {}
    validate_budget(budget, splits.num_classes)
    if budget.targeted:
        raise RobenchError("the end-of-training evaluation is untargeted: keep budget.targeted=false for train-defense")
    params = OmegaConf.to_container(ecfg.get("params") or {}, resolve=True)
    name = str(ecfg.get("attack", "pgd"))
    attack = instantiate(ATTACKS, name, params, "eval.attack")
    reason = gradient_free(model)
    if reason and attack.access == "gradient":  # model=gbdt: evaluate it with a label attack (robench attack)
        return {"skipped": f"{reason}, so eval.attack={name} cannot run; attack it with `robench attack` and a score- "
                           f"or label-based attack (e.g. attack=opt)"}
    bs = int(ecfg.get("batch_size", 1000))
    if bs < 1:
        raise RobenchError(f"eval.batch_size must be >= 1, got {bs}")
    _, x, y = eval_slice(splits, None if n is None else int(n), 0, key="eval")
    model.eval()
    correct = (predict(model, x).argmax(1).cpu() == y)
    t0 = time.perf_counter()
    # batches and seeds as robench attack draws them, so the number equals that of `robench attack`
    # with the same attack, budget, slice and batch_size: the same engine runs both
    plan = Plan.contiguous(x, y, None, correct, bs, int(seed))
    referee = Referee(access=attack.access, norm=budget.norm, eps=budget.eps, max_queries=int(budget.max_queries),
                      num_classes=splits.num_classes, stop_on_success=not attack.minimizes_distortion)
    n_success = sum(sum(f["success"] for f in o.fields) for o in run_all(attack, model, plan, referee, device))
    n_correct = int(correct.sum())
    return {"clean_accuracy": n_correct / len(y), "robust_accuracy": (n_correct - n_success) / len(y),
            "n_samples": len(y), "attack": name, "params": params, "norm": budget.norm, "eps": budget.eps,
            "max_queries": int(budget.max_queries), "seconds": time.perf_counter() - t0}
