from __future__ import annotations

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
