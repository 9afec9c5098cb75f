"""An oracle over a model the attack itself owns (a transfer attack's surrogate): the same counting,
judging and best-point bookkeeping as the victim's oracle, for the attack's own use.

Nothing here touches the victim: the queries made through it are the attack's private business and
never reach the run's records. Attack modules use :func:`own_model_oracle` instead of importing the
referee's :class:`~robench.referee.oracle.Oracle` class.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from torch import nn

from robench.referee.types import OracleResult
from robench.referee.view import OracleView


def own_model_oracle(model: nn.Module, x0: torch.Tensor, y: torch.Tensor, *, norm: str, eps: Optional[float],
                     max_queries: int, num_classes: int, targets: Optional[torch.Tensor] = None,
                     observe: Optional[Callable] = None,
                     box: Tuple[float, float] = (0.0, 1.0)) -> Tuple[OracleView, Callable[[], OracleResult]]:
    """(a gradient-level view of an oracle over ``model``, the function that finalizes it). The oracle
    keeps answering after a success (``stop_on_success=False``): the attack decides what to keep.
    ``box``: the input domain's [low, high] (the victim view's ``low`` / ``high``)."""
    from robench.referee.oracle import Oracle

    o = Oracle(model, x0, y, access="gradient", norm=norm, eps=eps, max_queries=max_queries, targets=targets,
               stop_on_success=False, num_classes=num_classes, box=box)
    return o.view(observe=observe), o.finalize
