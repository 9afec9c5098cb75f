from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from robench.defenses.base import TrainingRecipe
from robench.errors import RobenchError
from robench.registry import DEFENSES


@DEFENSES.register("distillation")
class Distillation(TrainingRecipe):
    """Defensive distillation (Papernot et al. [papernot2016]; softmax as in [saha2020 eq. 5.5]): a second network is
    trained on the class probabilities of a first one, both at softmax temperature T,
    S(z)_i = exp(z_i / T) / Σ_j exp(z_j / T); at test time the network runs at T = 1 (plain logits).

    ``teacher`` names the defense whose checkpoint (same dataset and model, at the conventional
    path) gives the soft labels softmax(z_teacher / T); the default is ``distillation_teacher``, the
    first network trained at temperature T, as in the paper (``robench train-defense
    defense=distillation_teacher``). Any checkpoint works (``defense.params.teacher=none``), but a
    teacher trained at T = 1 gives soft labels whose distillation reproduces the teacher, not the
    defense. The loss is the soft-label cross-entropy at temperature T, without Hinton's T² factor
    (Papernot et al. use none). Saha gives no T: T = 100, the temperature Papernot et al. and
    Carlini and Wagner's evaluation of it [carlini2017] use for MNIST and CIFAR-10.
    """

    def __init__(self, temperature: float = 100.0, teacher: Optional[str] = "distillation_teacher"):
        if temperature <= 0:
            raise RobenchError(f"distillation needs temperature > 0, got {temperature}")
        self.t, self.teacher_name = float(temperature), teacher
        self.teacher = None

    def bind(self, context):
        if not self.teacher_name:
            raise RobenchError("distillation needs defense.params.teacher: the defense whose checkpoint teaches "
                               "(e.g. distillation_teacher or none)")
        self.teacher = context.load_model(self.teacher_name).to(context.device).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def batch_loss(self, model, x, y, index):
        with torch.no_grad():
            soft = F.softmax(self.teacher(x).float() / self.t, 1)
        logits = model(x)
        loss = -(soft * F.log_softmax(logits.float() / self.t, 1)).sum(1).mean()
        return loss, logits


@DEFENSES.register("distillation_teacher")
class DistillationTeacher(TrainingRecipe):
    """The first network of defensive distillation [papernot2016]: cross-entropy of
    softmax(z / T) on the hard labels, T = 100; its checkpoint teaches ``distillation``."""

    def __init__(self, temperature: float = 100.0):
        if temperature <= 0:
            raise RobenchError(f"distillation_teacher needs temperature > 0, got {temperature}")
        self.t = float(temperature)

    def batch_loss(self, model, x, y, index):
        logits = model(x)
        return F.cross_entropy(logits.float() / self.t, y), logits
