"""DeepCloak (Gao et al. [gao2017deepcloak]): a mask layer that removes the features adversarial examples move most."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from robench.defenses.adversarial import check_threat, pgd
from robench.defenses.base import TrainingRecipe
from robench.errors import RobenchError
from robench.registry import DEFENSES


class MaskedLinear(nn.Module):
    """``linear(x * mask)``: DeepCloak's mask layer in front of a fully connected layer (the mask a
    0/1 buffer over the layer's input features, saved with the weights)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.linear = linear
        self.register_buffer("mask", torch.ones(linear.in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x * self.mask)


def _last_linear(model: nn.Module):
    """(parent, attribute name, module) of the model's last ``nn.Linear`` (in ``modules()`` order)."""
    found = None
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Linear):
                found = (parent, name, child)
    if found is None:
        raise RobenchError(f"deepcloak: {type(model).__name__} has no fully connected layer to put the mask in front of")
    return found


def insert_mask(model: nn.Module) -> MaskedLinear:
    """Model surgery: wrap the last fully connected layer in a :class:`MaskedLinear` (mask all ones)
    and record it in ``model.robench_surgery`` (checkpoints re-apply it before loading the weights)."""
    parent, name, lin = _last_linear(model)
    masked = MaskedLinear(lin).to(lin.weight.device)
    setattr(parent, name, masked)
    model.robench_surgery = {"kind": "deepcloak", "features": int(lin.in_features)}
    return masked


def apply_surgery(model: nn.Module, record: dict) -> nn.Module:
    """Re-apply a ``deepcloak`` surgery record (robench/models/conditional_bn.py dispatches here)."""
    insert_mask(model)
    model.robench_surgery = dict(record)
    return model


@DEFENSES.register("deepcloak")
class DeepCloak(TrainingRecipe):
    """DeepCloak (Gao et al. [gao2017deepcloak]; [zhao2020slides] "DeepCloak": "Insert a mask layer in
    DNN model to remove unnecessary features", F(x) = g(c(x))): c is the network up to its last fully
    connected layer, g that layer, and the mask zeroes the features of c(x) that adversarial examples
    change most.

    On a trained model (``train.init_from``, default ``none``: the natural checkpoint of the same
    dataset and architecture):

    1. ``samples`` training images x (the first ones of the split) and adversarial counterparts x'
       crafted on the model itself: ``steps`` = 1 is FGSM at the budget's eps (default), more steps PGD;
    2. per feature k of c: the mean over the pairs of |c(x)_k - c(x')_k|;
    3. the ``fraction`` of features with the largest mean difference are masked (set to 0 for every input).

    The mask goes into the checkpoint (a model surgery re-applied on load), so ``robench attack
    defense=deepcloak`` attacks the masked model; a white-box attack on it is end to end (the mask is a
    linear layer), the adaptive evaluation. DeepCloak's own evaluation, adversarial examples of the
    original model classified by the masked one, is ``attack=transfer`` with the unmasked checkpoint as
    the surrogate (docs/defenses/training-recipes.md, "Defenses of the seeds").

    ``retrain: false`` (default): the features are removed and nothing is retrained; the shared training
    loop still runs its epoch (``train.epochs: 1`` in the config) with a zero loss, so the weights stay
    as they were. ``retrain: true`` fine-tunes the model with the mask in place on clean cross-entropy.
    The slides give no fraction or attack; ``fraction`` 0.05 (10 of cw_mnist's 200 penultimate features)
    and FGSM pairs are robench's choices (no fraction has been measured against another yet).
    """

    #: numeric ranges the registry checks before construction (robench.registry.validate_params)
    param_ranges = {"fraction": "[0,1)", "samples": ">=1", "steps": ">=1"}

    def __init__(self, eps: float = 0.3, norm: str = "linf", fraction: float = 0.05, samples: int = 1000,
                 steps: int = 1, retrain: bool = False):
        check_threat(norm, eps, "deepcloak")
        if not 0.0 <= fraction < 1.0:
            raise RobenchError(f"deepcloak fraction must be in [0, 1), got {fraction}")
        if int(samples) < 1 or int(steps) < 1:
            raise RobenchError(f"deepcloak needs samples >= 1 and steps >= 1 (got {samples}, {steps})")
        self.eps, self.norm, self.fraction = float(eps), norm, float(fraction)
        self.samples, self.steps, self.retrain = int(samples), int(steps), bool(retrain)
        self.splits, self.device = None, torch.device("cpu")
        self.removed: Optional[list] = None

    def bind(self, context):
        cfg = context.cfg
        if cfg is not None and not (cfg.get("train") or {}).get("init_from"):
            raise RobenchError("deepcloak masks a trained model: set train.init_from (e.g. none)")
        self.splits, self.device = context.splits, context.device

    def prepare_model(self, model):
        if self.splits is None:
            raise RobenchError("deepcloak needs the training split (run it through robench train-defense)")
        model = model.to(self.device).eval()
        masked = insert_mask(model)
        n = min(self.samples, len(self.splits.train))
        x = torch.stack([self.splits.train[i][0] for i in range(n)]).to(self.device)
        y = torch.tensor([int(self.splits.train[i][1]) for i in range(n)], device=self.device)
        feats = []
        hook = masked.register_forward_pre_hook(lambda m, a: feats.append(a[0].detach()))
        try:
            diff = torch.zeros(masked.linear.in_features, device=self.device)
            for s in range(0, n, 250):
                xb, yb = x[s:s + 250], y[s:s + 250]
                xa = pgd(model, xb, yb, eps=self.eps, steps=self.steps, norm=self.norm,
                         step_size=self.eps if self.steps == 1 else None, rand_init=self.steps > 1)
                feats.clear()
                with torch.no_grad():
                    model(xb)
                    model(xa)
                diff += (feats[0] - feats[1]).abs().sum(0)
        finally:
            hook.remove()
        k = int(round(self.fraction * len(diff)))
        removed = diff.topk(k).indices if k > 0 else torch.zeros(0, dtype=torch.long, device=diff.device)
        masked.mask[removed] = 0.0
        self.removed = sorted(removed.tolist())
        model.robench_surgery = {**model.robench_surgery, "removed": len(self.removed), "fraction": self.fraction}
        return model

    def batch_loss(self, model, x, y, index):
        logits = model(x)
        if self.retrain:
            return F.cross_entropy(logits.float(), y), logits
        return (logits * 0).sum(), logits   # a zero gradient: no weight moves (Gao et al. do not retrain)
