"""The batch-norm recipes of the adversarial-masking chapter [cheng2021 §6]: BN fine-tuning (Table 6.1)
with the masking interpolation (Table 6.2), AdvProp [xie2020advprop] and RobMask (Algorithm 10).

Each conditions the model's batch-norm layers first (:meth:`prepare_model`, model surgery in
robench/models/conditional_bn.py; the loop's caller applies it after ``train.init_from``), so they
need a model with BN: ``model=small_cnn_bn`` on MNIST, ``resnet18`` / ``preact_resnet18`` / ... on
CIFAR. Adversarial examples are crafted on the model (eval mode) with PGD from a random start.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from robench.defenses.adversarial import check_threat, peek_logits, pgd, warm
from robench.defenses.base import TrainingRecipe
from robench.errors import RobenchError
from robench.models.conditional_bn import condition_bn, conditional_layers, encode_eps, set_code, tell_eps
from robench.registry import DEFENSES

CLEAN, ADV = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])


def _check_steps(what: str, steps: int, step_frac: float) -> None:
    if int(steps) < 1 or not float(step_frac) > 0:
        raise RobenchError(f"{what} needs steps >= 1 and step_frac > 0 (got {steps}, {step_frac})")


@DEFENSES.register("bn_finetune")
class BNFinetune(TrainingRecipe):
    """Fine-tune only the BN rescaling (γ, β) of a trained model [cheng2021 §6.2.1, Table 6.1]:
    adversarially (``adversarial=true``, PGD examples at eps: Table 6.1's "+ Adv. Finetuning of BN"
    of a naturally trained model, ``train.init_from: none``) or on clean images
    (``bn_finetune_std``: "+ Standard Finetuning of BN" of an adversarially trained one,
    ``train.init_from: pgd_at``).

    The surgery keeps the original γ, β as row 0 (frozen) and trains a copy γ′, β′ as row 1, so the
    one checkpoint holds both ends of the masking interpolation [cheng2021 §6.2.2, Table 6.2]:
    ``mix`` p evaluates γ̂ = pγ + (1 − p)γ′, β̂ = pβ + (1 − p)β′ (p = 0, the fine-tuned model, by
    default; ``robench attack defense=bn_finetune defense.params.mix=0.4``; the preset
    ``experiment=cheng_table6_2`` sweeps p). Everything else is frozen, the running statistics
    included (deliberate: the thesis finds μ, σ almost unchanged by fine-tuning, Fig 6.1, and frozen
    statistics make p = 1 exactly the original model).

    Optimizer, lr, schedule and epochs are the run's ``train.*``: the thesis fine-tunes with "the same
    optimizer, learning rate, learning rate scheduler and number of epochs" as the original training,
    whose values it does not state. On MNIST (README, "Batch-norm methods") the run's Adam 1e-3 barely
    moves γ, β: Table 6.1's pattern shows with ``train.lr=0.01`` (a departure, measured at Linf 0.2 and
    0.3); with the original settings only its first half shows, at Linf 0.1.
    """

    adversarial = True
    is_adversarial_finetune = True

    #: numeric ranges the registry checks before construction (robench.registry.validate_params)
    param_ranges = {"step_frac": "(0,1]", "mix": "[0,1]"}

    def __init__(self, eps: float = 0.3, norm: str = "linf", steps: int = 7, step_frac: float = 0.2,
                 mix: float = 0.0, adversarial: Optional[bool] = None):
        check_threat(norm, eps, "bn_finetune")
        _check_steps("bn_finetune", steps, step_frac)
        if not 0.0 <= float(mix) <= 1.0:
            raise RobenchError(f"bn_finetune: mix must be in [0, 1], got {mix}")
        self.eps, self.norm, self.steps, self.step_frac, self.mix = float(eps), norm, int(steps), float(step_frac), float(mix)
        if adversarial is not None:
            self.is_adversarial_finetune = bool(adversarial)
        self.adversarial = self.is_adversarial_finetune

    def bind(self, context):
        cfg = context.cfg
        if cfg is not None and not (cfg.get("train") or {}).get("init_from"):
            raise RobenchError(f"{cfg.defense.name} fine-tunes a trained model: set train.init_from (e.g. none or pgd_at)")

    def prepare_model(self, model):
        condition_bn(model, k=2, n_stats=1)
        for p in model.parameters():
            p.requires_grad_(False)
        for m in conditional_layers(model):
            m.freeze_stats = True
            m.weight.requires_grad_(True)
            m.bias.requires_grad_(True)
            m.weight.register_hook(_row0_frozen)
            m.bias.register_hook(_row0_frozen)
        return model

    def batch_loss(self, model, x, y, index):
        set_code(model, ADV)   # train γ′, β′
        if self.is_adversarial_finetune:
            xa = pgd(model, x, y, eps=self.eps, steps=self.steps, step_size=self.step_frac * self.eps, norm=self.norm)
            adv_logits = model(xa)
            out = (F.cross_entropy(adv_logits.float(), y), peek_logits(model, x), adv_logits)
        else:
            logits = model(x)
            out = (F.cross_entropy(logits.float(), y), logits)
        set_code(model, torch.tensor([self.mix, 1 - self.mix]))   # evaluated (and saved) at p = mix
        return out


def _row0_frozen(g):
    g = g.clone()
    g[0] = 0
    return g


@DEFENSES.register("bn_finetune_std")
class BNFinetuneStd(BNFinetune):
    """``bn_finetune`` on clean images: Table 6.1's "+ Standard Finetuning of BN" of an adversarially
    trained model [cheng2021 §6.2.1] (configs/defense/bn_finetune_std.yaml: ``train.init_from: pgd_at``)."""

    adversarial = False
    is_adversarial_finetune = False


@DEFENSES.register("advprop")
class AdvProp(TrainingRecipe):
    """AdvProp (Xie et al. [xie2020advprop]): two BNs, one for clean and one for adversarial
    images (their own running statistics and γ, β; every other weight shared), loss
    CE(f_clean(x)) + CE(f_adv(x′)) with x′ PGD on the adversarial branch; the model is evaluated with
    the clean BN (the special case of RobMask with p frozen at 1 for the adversarial branch,
    [cheng2021 §6.3]). PGD: ``steps`` (7, [cheng2021 §6.4]) of ``step_frac`` · eps (ε/5), random start.
    """

    adversarial = True

    #: numeric ranges the registry checks before construction (robench.registry.validate_params)
    param_ranges = {"step_frac": "(0,1]"}

    def __init__(self, eps: float = 0.3, norm: str = "linf", steps: int = 7, step_frac: float = 0.2,
                 warmup_epochs: float = 0.0):
        check_threat(norm, eps, "advprop")
        _check_steps("advprop", steps, step_frac)
        self.eps, self.norm, self.steps, self.step_frac = float(eps), norm, int(steps), float(step_frac)
        self.warmup_epochs = float(warmup_epochs)

    def prepare_model(self, model):
        return condition_bn(model, k=2, n_stats=2)

    def batch_loss(self, model, x, y, index):
        eps = warm(self.eps, self.epoch, self.warmup_epochs)
        set_code(model, ADV)
        xa = pgd(model, x, y, eps=eps, steps=self.steps, step_size=self.step_frac * eps, norm=self.norm)
        adv_logits = model(xa)
        set_code(model, CLEAN)
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y) + F.cross_entropy(adv_logits.float(), y)
        return loss, logits, adv_logits


@DEFENSES.register("robmask")
class RobMask(TrainingRecipe):
    """RobMask [cheng2021 §6.3, Algorithm 10]: every BN's rescaling is the low-rank combination
    γ_i = Σ_j u_ij w_j, β_i = Σ_j u_ij w′_j (k = 2) of an encoding u_i = [1 − p_i, p_i] of the
    example's eps ε_i = p_i ε_max, p_i ~ U[0, 1] drawn per example; x_i + δ_i by PGD at ε_i (``steps``
    7 of ε_i/5 from a random start, [cheng2021 §6.4]) with the model told u_i; one CE loss on the
    perturbed batch trains W, W′ and θ together (Algorithm 10 shows only the perturbed loss; ε_i near
    0 gives nearly clean examples).

    At test time the model is told the eps it runs at (``eval_eps``, default the run's budget eps;
    ``robench attack defense=robmask defense.params.eval_eps=0.1``), as Table 6.5 evaluates one
    RobMask model at several eps; the checkpoint and the summary record it.
    """

    adversarial = True

    #: numeric ranges the registry checks before construction (robench.registry.validate_params)
    param_ranges = {"step_frac": "(0,1]", "eval_eps": ">=0"}

    def __init__(self, eps_max: float = 0.3, norm: str = "linf", steps: int = 7, step_frac: float = 0.2,
                 eval_eps: Optional[float] = None):
        check_threat(norm, eps_max, "robmask")
        _check_steps("robmask", steps, step_frac)
        if eval_eps is not None and not 0 <= float(eval_eps):
            raise RobenchError(f"robmask: eval_eps must be >= 0, got {eval_eps}")
        self.eps_max, self.norm, self.steps, self.step_frac = float(eps_max), norm, int(steps), float(step_frac)
        self.eval_eps = self.eps_max if eval_eps is None else float(eval_eps)

    def prepare_model(self, model):
        condition_bn(model, k=2, n_stats=1, eps_max=self.eps_max)
        tell_eps(model, self.eval_eps)
        return model

    def batch_loss(self, model, x, y, index):
        eps_i = torch.rand(len(x), device=x.device) * self.eps_max
        set_code(model, encode_eps(eps_i, self.eps_max).to(x.device))
        xa = pgd(model, x, y, eps=eps_i, steps=self.steps, step_size=self.step_frac * eps_i, norm=self.norm)
        adv_logits = model(xa)
        loss = F.cross_entropy(adv_logits.float(), y)
        tell_eps(model, 0.0)
        logits = peek_logits(model, x)
        tell_eps(model, self.eval_eps)   # what the loop's evaluation and the checkpoint see
        return loss, logits, adv_logits
