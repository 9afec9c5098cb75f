from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

import torch
from torch import nn


@dataclass
class TrainContext:
    """What a recipe may see of the run (handed to :meth:`TrainingRecipe.bind` before training).

    ``load_model(defense)`` builds the run's (dataset, model) architecture and loads the checkpoint
    that ``robench train-defense defense=<defense>`` writes for it (a one-line error naming that
    command when it is missing): how distillation finds its teacher.
    """

    cfg: Any = None
    splits: Any = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    load_model: Optional[Callable[[str], nn.Module]] = None


class TrainingRecipe:
    """A training-time defense: supplies the loss of one batch to the shared loop in ``train.py``.

    ``batch_loss(model, x, y, index)`` returns ``(loss, logits)`` or ``(loss, clean_logits,
    adv_logits)``: the logits only feed the progress bar and the per-epoch log (clean and adversarial
    batch accuracy), so recipes may compute them without gradient. ``index`` holds the training-set
    indices of the batch, for recipes with per-example state (CAT's eps_i).

    Hooks, all optional: :meth:`bind` (the run's context, e.g. a teacher checkpoint), :meth:`setup`
    (allocate per-example state), :meth:`after_step` (after each optimizer step: SPROUT's ascent on
    its Dirichlet parameter), :meth:`state_dict` / :meth:`load_state_dict` (what the loop saves so an
    interrupted run resumes exactly). Before each batch the loop sets ``self.epoch`` to the fraction
    of training done, in epochs (0.0 at the start, 1.5 halfway through the second epoch): eps warm-ups
    read it.

    Randomness: recipes draw from torch's global generator (the loop seeds it and saves its state
    with the resume state), since ``torch.distributions`` samplers take no generator.
    """

    kind = "train"
    adversarial = False   # crafts adversarial examples: the progress bar shows adversarial accuracy
    epoch: float = 0.0
    replays: int = 1      # optimizer steps per minibatch (free adversarial training replays each batch m times)

    def bind(self, context: TrainContext) -> None:
        """Called once before :meth:`setup` with the run's context."""

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Called once on the freshly built (and ``train.init_from``-initialised) model before
        training; returns the model to train (model surgery: the conditional BN of bn_methods.py)."""
        return model

    def setup(self, n_train: int, num_classes: int, device: torch.device) -> None:
        """Called once before training (allocate per-example state here)."""

    def batch_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor):
        raise NotImplementedError

    def after_step(self, grad_scale: float = 1.0) -> None:
        """Called after each optimizer step; gradients of the recipe's own leaves are multiplied by
        ``grad_scale`` (mixed-precision loss scaling; 1.0 otherwise)."""

    may_stop_early = False  # True: the loop calls end_of_epoch and keeps the previous epoch's weights

    def end_of_epoch(self, model: nn.Module, splits, epoch: int) -> bool:
        """With ``may_stop_early``, called after each epoch (``epoch`` = epochs done); True stops training
        and restores the weights of the epoch before (fast AT's early stop, Wong et al. [wong2020])."""
        return False

    def state_dict(self) -> Dict[str, Any]:
        """Per-example and learned state, tensors and plain types only (saved with the resume state)."""
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass


class InputDefense(nn.Module):
    """An inference-time defense: an ``nn.Module`` placed in front of the model.

    Subclasses implement :meth:`transform` (the real transformation, images in [0, 1] -> [0, 1]) and
    set the flags:

    * ``differentiable``: autograd through ``transform`` gives the true gradient (no BPDA needed);
    * ``randomized``: each forward draws fresh randomness, so gradient attacks should use EOT
      (``attack.eot_samples``) and the oracle's final re-check repeats (``recheck_repeats``).

    Gradients (Athalye et al. [athalye2018]): with ``bpda`` off, a non-differentiable transform passes no
    gradient at all (what a naive attacker sees: the gradient-masking illusion); with ``bpda`` on,
    the forward value is ``transform(x)`` but the backward is that of :meth:`approx` (identity by
    default: the straight-through estimator). ``set_bpda(model, flag)`` switches every input defense
    inside a model.

    Randomness: a randomized transform draws from :meth:`generator` (one ``torch.Generator`` per
    device, seeded by :meth:`reseed`; ``robench attack`` reseeds every input defense with the run's
    seed), never from the global RNG, so a run is reproducible from its seed.
    """

    kind = "input"
    randomized = False
    differentiable = False

    def __init__(self) -> None:
        super().__init__()
        self.bpda = False
        self._seed = 0
        self._generators: dict = {}

    def reseed(self, seed: int) -> None:
        """Restart this defense's random stream from ``seed`` (on every device)."""
        self._seed = int(seed)
        self._generators = {}

    def generator(self, device: torch.device) -> torch.Generator:
        """This defense's own random stream on ``device``."""
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self._seed)
        return self._generators[key]

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.describe().items())

    def describe(self) -> dict:
        """The transform's settings (for summaries); subclasses list their constructor arguments."""
        return {}

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def approx(self, x: torch.Tensor) -> torch.Tensor:
        """Differentiable approximation of ``transform`` used for BPDA's backward pass."""
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.differentiable:
            return self.transform(x)
        if self.bpda and torch.is_grad_enabled() and x.requires_grad:
            a = self.approx(x)
            with torch.no_grad():
                t = self.transform(x)
            return a + (t - a).detach()
        with torch.no_grad():
            return self.transform(x.detach())


def set_bpda(model: nn.Module, flag: bool) -> int:
    """Turn BPDA on or off for every :class:`InputDefense` inside ``model``; returns how many."""
    n = 0
    for m in model.modules():
        if isinstance(m, InputDefense):
            m.bpda = bool(flag)
            n += 1
    return n


def is_randomized(model: nn.Module) -> bool:
    return any(isinstance(m, InputDefense) and m.randomized for m in model.modules())


def reseed_defenses(model: nn.Module, seed: int) -> int:
    """Reseed every :class:`InputDefense` inside ``model`` (each from its own offset of ``seed``)."""
    n = 0
    for m in model.modules():
        if isinstance(m, InputDefense):
            m.reseed(int(seed) * 1000 + n)
            n += 1
    return n
