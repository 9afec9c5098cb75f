from __future__ import annotations

from robench.attacks.whitebox.apgd import APGD
from robench.registry import ATTACKS


@ATTACKS.register("apgd_dlr")
class APGDDLR(APGD):
    """Auto-PGD with the difference-of-logits-ratio loss, APGD-DLR ([croce2020 eq. 6]).

    The algorithm, defaults and costs are :class:`~robench.attacks.whitebox.apgd.APGD`'s; the loss
    ascended is DLR (:func:`~robench.attacks.whitebox.apgd.dlr_loss`), invariant to shifts and
    rescalings of the logits. In a targeted budget it is the targeted DLR of eq. 7 towards the
    budget's target.
    """

    name = "apgd_dlr"
    default_loss = "dlr"
