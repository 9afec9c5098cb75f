from __future__ import annotations

import torch

from robench.attacks.whitebox.apgd import APGD
from robench.errors import RobenchError
from robench.attacks.base import AttackView
from robench.registry import ATTACKS


@ATTACKS.register("apgd_t")
class APGDT(APGD):
    """Targeted Auto-PGD with the targeted DLR loss, APGD-T ([croce2020 §4, eq. 7]).

    In an untargeted budget (AutoAttack's use): for ``j = 2 .. target_classes + 1`` it runs APGD
    with the targeted DLR loss towards the class ranked ``j``-th by the clean logits, each run only
    on the samples still robust; success is misclassification. The clean logits cost one forward
    query per sample. In a targeted budget it runs towards the budget's target instead (success:
    reaching it), ``restarts`` times. Defaults are AutoAttack's standard version: 9 target classes,
    100 iterations, 1 restart per target class (``restarts`` repeats the whole sweep).
    """

    name = "apgd_t"
    default_loss = "dlr"

    #: numeric ranges the registry checks before construction (robench.registry.validate_params)
    param_ranges = {"target_classes": ">=1"}

    def __init__(self, steps: int = 100, restarts: int = 1, rho: float = 0.75, target_classes: int = 9):
        super().__init__(steps=steps, restarts=restarts, rho=rho, loss="dlr")
        self.target_classes = target_classes

    def run(self, oracle: AttackView, generator: torch.Generator) -> None:
        if oracle.targeted:
            return super().run(oracle, generator)
        k = oracle.num_classes
        idx = oracle.active_indices()
        if len(idx) == 0:
            return
        order = torch.zeros(oracle.n, k, dtype=torch.long, device=oracle.device)
        order[idx] = oracle.logits(oracle.x0[idx], idx).argsort(1, descending=True)
        for _ in range(self.restarts):
            for j in range(1, min(self.target_classes, k - 1) + 1):
                target = order[:, j]
                if not self.single_run(oracle, generator, self.loss_fn(oracle, target), oracle.active_indices()):
                    return
