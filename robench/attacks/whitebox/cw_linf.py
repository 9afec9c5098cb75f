from __future__ import annotations

from typing import Optional

from robench.attacks.whitebox.pgd import PGD
from robench.errors import RobenchError
from robench.registry import ATTACKS


@ATTACKS.register("cw_linf")
class CWLinf(PGD):
    """C&W-Linf as [cheng2021 §4.2.4.2] defines it: PGD with the C&W margin loss instead of cross-entropy.

    "we replace the cross entropy loss with C&W-l_inf loss (CW17) in PGD attack" ([cheng2021 §4.2.4.2],
    §5.3.4.11): the loss ascended is ``max_{i!=y} Z_i - Z_y`` (targeted: ``Z_t - max_{i!=t} Z_i``) on
    the logits, the update, projection, random start and restarts are PGD's (see :class:`PGD`; its
    defaults: 40 steps of ``2.5 eps / steps``). The thesis's runs (Table 4.2) are "C&W^100" (100 steps) and
    "20 C&W^1000" (20 restarts of 1,000 steps) with step size ``eps / 5``: set ``steps``,
    ``restarts`` and ``step_size`` to reproduce them.
    """

    def __init__(self, steps: int = 40, step_size: Optional[float] = None, random_start: bool = True,
                 restarts: int = 1, early_stop: bool = True):
        super().__init__(steps=steps, step_size=step_size, random_start=random_start, restarts=restarts,
                         loss="cw", early_stop=early_stop)
