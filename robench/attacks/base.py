from __future__ import annotations

from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F

from robench.oracle import Oracle


class Attack:
    """Base class. Subclasses set ``access`` and implement :meth:`run`.

    ``run(oracle, generator)`` drives the oracle and returns nothing the benchmark trusts: success,
    query counts and the adversarial examples are whatever the oracle observed.

    ``minimizes_distortion``: False for eps-bounded attacks (the oracle stops answering a sample once
    it has succeeded), True for minimal-perturbation attacks that keep shrinking the distortion of an
    adversarial point (C&W, DeepFool, hard-label attacks).
    """

    access: str = "gradient"
    minimizes_distortion: bool = False

    def run(self, oracle: Oracle, generator: torch.Generator) -> None:
        raise NotImplementedError

    def summary_extra(self) -> Dict[str, Any]:
        """Attack-specific figures merged into the run's summary (optional hook; none by default)."""
        return {}


def _take(state, keep: torch.Tensor):
    if state is None:
        return None
    if isinstance(state, dict):
        return {k: v[keep] for k, v in state.items()}
    return state[keep]


def keep_active(oracle: Oracle, idx: torch.Tensor, *state, mask: Optional[torch.Tensor] = None):
    """The active-set step every batched attack takes after an oracle call: drop the rows whose sample
    the oracle no longer answers (succeeded in an eps-bounded run, or out of budget) from the working
    tensors. ``idx``: the sample of each working row; ``state``: tensors (or dicts of tensors, or None)
    whose first dimension is aligned with ``idx``; ``mask`` (optional, per row): rows the attack itself
    wants to keep (e.g. answered rows), combined with the oracle's ``active``.

    Returns ``(idx, *state)``, filtered; the very same objects when every row stays (no copy). The
    caller stops when ``len(idx) == 0``.
    """
    keep = oracle.active[idx]
    if mask is not None:
        keep = keep & mask
    if bool(keep.all()):
        return (idx, *state)
    return (idx[keep], *[_take(t, keep) for t in state])


def attack_loss(kind: str, logits: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    """Per-row loss to MAXIMISE. ``ce``: cross-entropy (untargeted: of y; targeted: minus that of the
    target). ``cw``: the Carlini-Wagner margin on logits, max_{i!=y} Z_i - Z_y untargeted and
    Z_t - max_{i!=t} Z_i targeted (CW17; the Cheng notes §1.1 print the targeted sign flipped)."""
    if kind == "ce":
        if targets is None:
            return F.cross_entropy(logits, y, reduction="none")
        return -F.cross_entropy(logits, targets, reduction="none")
    if kind == "cw":
        cls = y if targets is None else targets
        own = logits.gather(1, cls[:, None]).squeeze(1)
        other = logits.masked_fill(F.one_hot(cls, logits.shape[1]).bool(), float("-inf")).amax(1)
        return other - own if targets is None else own - other
    raise ValueError(f"unknown loss {kind!r} (use 'ce' or 'cw')")
