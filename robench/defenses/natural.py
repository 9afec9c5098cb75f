from __future__ import annotations

import torch
import torch.nn.functional as F

from robench.defenses.base import TrainingRecipe
from robench.errors import RobenchError
from robench.registry import DEFENSES


def random_shift(x: torch.Tensor, shift: int) -> torch.Tensor:
    """Each image translated by its own random (dy, dx) in [-shift, shift]^2 pixels, zero-filled
    (torch's global generator, which the training loop seeds and resumes)."""
    if shift <= 0:
        return x
    n, _, h, w = x.shape
    xp = F.pad(x, (shift, shift, shift, shift))
    off = torch.randint(0, 2 * shift + 1, (2, n), device=x.device)
    rows = (torch.arange(h, device=x.device)[None] + off[0][:, None])  # (n, h)
    cols = (torch.arange(w, device=x.device)[None] + off[1][:, None])  # (n, w)
    ar = torch.arange(n, device=x.device)[:, None, None]
    out = xp.permute(0, 2, 3, 1)[ar, rows[:, :, None], cols[:, None, :]]  # (n, h, w, c)
    return out.permute(0, 3, 1, 2).contiguous()


@DEFENSES.register("none")
class Natural(TrainingRecipe):
    """No defense: natural (empirical-risk) training with cross-entropy on clean images.

    ``shift`` (default 0: off): light augmentation, each training image translated by a random
    integer offset of up to ``shift`` pixels per axis (zero fill). Not a defense; the paper victim
    preset (``experiment=paper_victim_mnist``) uses ``shift: 2`` to reach C&W's 99.4-99.5% test
    accuracy in a few epochs instead of C&W's 50 [carlini2017].
    """

    #: numeric ranges the registry checks before construction (robench.registry.validate_params)
    param_ranges = {"shift": ">=0"}

    def __init__(self, shift: int = 0):
        if int(shift) != shift or shift < 0:
            raise RobenchError(f"defense 'none' needs shift to be an integer >= 0, got {shift}")
        self.shift = int(shift)

    def batch_loss(self, model, x, y, index):
        logits = model(random_shift(x, self.shift))
        return F.cross_entropy(logits, y), logits
