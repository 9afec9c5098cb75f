"""An example third-party robench plugin: one attack, registered by decorator, with its config."""
from typing import Literal

from robench.attacks.base import Attack, AttackView, attack_loss
from robench.registry import ATTACKS


@ATTACKS.register("example_fgsm")
class ExampleFGSM(Attack):
    """One signed-gradient step of size eps (FGSM, Goodfellow et al. [goodfellow2015]), as a plugin example."""

    access = "gradient"         # what the oracle may answer it: gradient, scores or label
    eps_policy = "finite"       # it needs an eps-ball (any / finite / null): checked before a run starts
    norms = ("linf",)           # budget norms it supports: a sign step is an Linf step
    layouts = ("NCHW", "NCT")   # input layouts it handles: images and 1-D signals (elementwise arithmetic)

    def __init__(self, loss: Literal["ce", "cw"] = "ce"):
        self.loss = loss

    def run(self, oracle: AttackView, generator):
        idx = oracle.active_indices()
        t = oracle.targets
        loss = lambda logits, i: attack_loss(self.loss, logits, oracle.y[i], None if t is None else t[i])
        _, g = oracle.gradient(oracle.x0[idx], loss, idx)
        x = (oracle.x0[idx] + oracle.eps * g.sign()).clamp(oracle.low, oracle.high)  # the input box, from the view
        oracle.labels(x, idx)
