"""End-of-training evaluation: clean and robust accuracy through the real attack path.

The same pieces as ``robench attack``: a :class:`~robench.evaluation.spec.RunSpec`, prepared by
:func:`~robench.evaluation.prepare.prepare_run` and run by the :class:`~robench.evaluation.runner.Runner`
(no run folder, nothing shown): the first ``n_samples`` test images, only the originally correct ones
attacked, the registered attack (PGD-40 by default) at the run's budget, batch b's ``torch.Generator``
seeded from (the run's seed, b) across batches of ``batch_size``. With the same seed, slice and attack
parameters the robust accuracy is the number ``robench attack`` reports for the checkpoint.
"""
from __future__ import annotations

import time
from typing import Any, Dict

import torch
from omegaconf import OmegaConf


def robust_accuracy(model, splits, ecfg, budget, seed: int, device: torch.device) -> Dict[str, Any]:
    """{clean_accuracy, robust_accuracy, n_samples, ...} or {} when ``eval.n_samples`` is 0."""
    from robench.data import eval_slice
    from robench.errors import RobenchError
    from robench.evaluation.prepare import Slice, prepare_run
    from robench.evaluation.runner import Runner
    from robench.evaluation.spec import Budget, RunSpec
    from robench.registry import ATTACKS
    from robench.victim import gradient_refusal

    n = ecfg.get("n_samples", 500)
    if n is not None and int(n) == 0:
        return {}
    b = Budget.from_mapping(OmegaConf.to_container(budget, resolve=True))
    if b.targeted:
        raise RobenchError("the end-of-training evaluation is untargeted: keep budget.targeted=false for train-defense")
    raw = ecfg.get("params")
    params = OmegaConf.to_container(raw, resolve=True) if raw is not None and OmegaConf.is_config(raw) else dict(raw or {})
    name = str(ecfg.get("attack", "pgd"))
    refusal = gradient_refusal(model, getattr(ATTACKS.get(name), "access", ""), name)
    if refusal:  # model=gbdt: evaluate it with a score- or label-based attack (robench attack)
        return {"skipped": f"{refusal} (eval.attack)"}
    spec = RunSpec.create(name, params, budget=b, batch_size=int(ecfg.get("batch_size", 1000)), seed=int(seed))
    idx, x, y = eval_slice(splits, None if n is None else int(n), 0, key="eval")
    model.eval()
    t0 = time.perf_counter()
    prep = prepare_run(spec, model, Slice(x, y, idx, domain=splits.domain), device=device,
                       num_classes=splits.num_classes, splits=splits)  # splits: a shared attack's build set
    try:
        s, _, _ = Runner(prep).run()
    finally:
        prep.close()
    return {"clean_accuracy": s["clean_accuracy"], "robust_accuracy": s["robust_accuracy"], "n_samples": len(y),
            "attack": name, "params": params, "norm": b.norm.value, "eps": b.eps, "max_queries": b.max_queries,
            "seconds": time.perf_counter() - t0}
