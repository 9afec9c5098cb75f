"""An example third-party robench plugin: one attack, registered by decorator, with its config."""
import torch

from robench.attacks.base import Attack, attack_loss
from robench.registry import ATTACKS


@ATTACKS.register("example_fgsm")
class ExampleFGSM(Attack):
    """One signed-gradient step of size eps (FGSM, Goodfellow et al. [goodfellow2015]), as a plugin example."""

    access = "gradient"

    def __init__(self, loss: str = "ce"):
        self.loss = loss

    def run(self, oracle, generator):
        idx = oracle.active_indices()
        t = oracle.targets
        loss = lambda logits, i: attack_loss(self.loss, logits, oracle.y[i], None if t is None else t[i])
        _, g = oracle.gradient(oracle.x0[idx], loss, idx)
        oracle.labels((oracle.x0[idx] + oracle.eps * g.sign()).clamp(0, 1), idx)
