from __future__ import annotations

from typing import Optional

import torch

from robench.attacks.whitebox.bim import BIM
from robench.attacks.base import AttackView
from robench.registry import ATTACKS


@ATTACKS.register("ilcm")
class ILCM(BIM):
    """Iterative least-likely class method (Kurakin, Goodfellow and Bengio [kurakin2017]): BIM towards y_LL.

    Update ([saha2020 eq. 2.14], with the gradient at the iterate and ``sign``):

        y_LL = argmin_y p(y | x0),   x^{n+1} = Clip_{x0,eps}( x^n - alpha * sign( grad_x CE(x^n, y_LL) ) )

    Steps and step size as :class:`BIM` (Kurakin's rule). In an untargeted budget the attack descends
    the cross-entropy of the least-likely class but success is judged as the paper reports it, as
    misclassification (``label != y``); ``y_LL`` comes from one counted forward query on the clean
    images. In a targeted budget the budget's targets are used (with ``budget.target=least_likely``
    they are exactly y_LL, and success means reaching it).
    """

    name = "ilcm"

    def loss_targets(self, oracle: AttackView) -> Optional[torch.Tensor]:
        if oracle.targeted:
            return oracle.targets
        idx = oracle.active_indices()
        ll = torch.zeros_like(oracle.y)
        if len(idx):
            ll[idx] = oracle.logits(oracle.x0[idx], idx).argmin(1)
        return ll
