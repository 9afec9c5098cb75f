from __future__ import annotations

import torch

from robench.attacks.base import Attack, AttackView
from robench.errors import RobenchError
from robench.registry import ATTACKS


@ATTACKS.register("gaussian_noise")
class GaussianNoise(Attack):
    """Accuracy under Gaussian noise: x = clip_[0,1](x0 + sigma * N(0, I)), the classic baseline row.

    [szegedy2014 Fig. 7(c)], quoted in [zhao2020slides] (L-BFGS slides): "Randomly distorted
    samples by Gaussian noise with stddev=1. Accuracy: 51%" (MNIST); the default ``sigma`` is that 1.0
    (on [0, 1] pixels). The noisy image is clipped to [0, 1] (the slides do not say; the oracle only
    accepts valid images).

    Not an eps-bounded attack: its size is ``sigma``, not a ball, so it refuses a finite
    ``budget.eps`` (run it with ``budget.eps=null``; the budget's norm still chooses which distortion
    the records rank by). With ``draws = 1`` (default) each attacked sample gets one noisy copy and
    the summary's ``robust_accuracy`` is the accuracy under noise (over the samples that were correct
    clean, as everywhere in robench); ``draws = k`` gives the worst case over k independent copies (a
    sample leaves as soon as one copy is misclassified). Cost: one label query per draw.
    """

    access = "label"
    layouts = ("NCHW", "NCT")
    eps_policy = "null"

    def __init__(self, sigma: float = 1.0, draws: int = 1):
        if sigma <= 0 or draws < 1:
            raise RobenchError(f"gaussian_noise needs sigma > 0 and draws >= 1 (got sigma={sigma}, draws={draws})")
        self.sigma, self.draws = float(sigma), int(draws)

    def run(self, oracle: AttackView, generator: torch.Generator) -> None:
        x0 = oracle.x0
        for _ in range(self.draws):
            idx = oracle.active_indices()
            if len(idx) == 0:
                return
            noise = torch.randn(x0[idx].shape, generator=generator, device=x0.device)
            oracle.labels((x0[idx] + self.sigma * noise).clamp(oracle.low, oracle.high), idx)
