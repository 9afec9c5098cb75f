"""What crosses the oracle's border, as plain types: access levels, the refusal an attack gets when it asks
above its level, and the certified result the engine receives (:class:`OracleResult`).

Both sides import these: :mod:`robench.referee.view` (what an attack holds) and
:mod:`robench.referee.oracle` (the referee); neither imports the other's module for them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

ACCESS_LEVELS = ("gradient", "scores", "label")
#: access levels ordered: a level answers everything a lower one does
ACCESS_RANK = {"label": 0, "scores": 1, "gradient": 2}


class AccessError(RuntimeError):
    """An attack asked the oracle for more than its declared access level allows."""


@dataclass
class OracleResult:
    """What the oracle certifies for one batch after :meth:`Oracle.finalize` (all tensors on CPU)."""

    success: torch.Tensor             # bool: success held at first sight and in every re-check
    claimed: torch.Tensor             # bool: success seen during the attack (before the re-check)
    queries: torch.Tensor             # long: queries spent on each sample
    grad_queries: torch.Tensor        # long: of which forward+backward rows
    queries_at_success: torch.Tensor  # long: query number of the first success (-1: none)
    seconds_at_success: torch.Tensor  # float: wall time from oracle creation to first success (nan: none)
    adversarial: torch.Tensor         # bool: an adversarial point (any distortion) was seen
    best_x: torch.Tensor              # the best adversarial point seen (x0 where none)
    seconds: float                    # wall time of the whole batch
    checkpoints: tuple = ()           # the query counts of the anytime curve (sorted)
    dist_at: Optional[torch.Tensor] = None  # float (n, len(checkpoints)): best adversarial distortion
    #                                   within c queries (inf: none yet; inf too where the re-check failed)


#: the read-only facts an attack may read from its view (each a fresh copy or an immutable value)
VIEW_FACTS = ("x0", "y", "targets", "targeted", "eps", "norm", "max_queries", "num_classes", "n", "device",
              "low", "high", "eot_samples", "checkpoints", "active", "remaining", "queries", "grad_queries", "success",
              "queries_at_success", "best_dist", "best_x", "dist_at")
#: the query methods of each access level (a level also has those of the levels below it)
VIEW_METHODS = {"label": ("labels",), "scores": ("labels", "scores"),
                "gradient": ("labels", "scores", "logits", "gradient", "jacobian")}
