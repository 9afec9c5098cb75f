from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from robench.referee.view import AttackView, OracleView

#: what an attack may ask the engine for, beyond its oracle view (``Attack.requires``)
CONTEXT_NEEDS = ("class_images", "surrogate", "build_set")


class ClassImages:
    """Training-split images by class, drawn on demand (targeted hard-label initialisation [cheng2019opt §2.5]:
    "100 samples in target class from training dataset"). Built lazily from a dataset
    of (image, label) pairs; the attack never sees the dataset object or the run's config."""

    def __init__(self, dataset):
        self._dataset = dataset
        self._xy: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

    def _all(self) -> Tuple[torch.Tensor, torch.Tensor]:
        if self._xy is None:
            from torch.utils.data import DataLoader

            self._xy = tuple(map(torch.cat, zip(*[(a, b) for a, b in DataLoader(self._dataset, batch_size=1000)])))
        return self._xy

    def draw(self, classes: torch.Tensor, n: int, gen: torch.Generator) -> Optional[torch.Tensor]:
        """(len(classes), n, C, H, W) images of each class (CPU), without replacement and cycled when a
        class has fewer than ``n``; None when some class has no image. ``gen`` seeds a CPU generator."""
        xs, ys = self._all()
        cpu = torch.Generator().manual_seed(int(torch.randint(2 ** 31 - 1, (1,), generator=gen, device=gen.device)))
        out = []
        for c in classes.tolist():
            pool = (ys == c).nonzero().flatten()
            if len(pool) == 0:
                return None
            out.append(xs[pool[torch.randperm(len(pool), generator=cpu)[:n]]])
            if len(out[-1]) < n:
                out[-1] = out[-1].repeat((n + len(out[-1]) - 1) // len(out[-1]), 1, 1, 1)[:n]
        return torch.stack(out)

    def sample(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """``n`` training images drawn uniformly without replacement (all of them, shuffled, when the
        split has fewer), labels not returned: what an attacker holding unlabeled in-distribution
        images has (AutoZOOM's autoencoder data, the substitute attack's seed set). ``gen`` seeds a
        CPU generator, as in :meth:`draw`."""
        xs, _ = self._all()
        cpu = torch.Generator().manual_seed(int(torch.randint(2 ** 31 - 1, (1,), generator=gen, device=gen.device)))
        return xs[torch.randperm(len(xs), generator=cpu)[:int(n)]]


@dataclass(frozen=True)
class AttackContext:
    """The narrow context the engine hands to :meth:`Attack.prepare`: only what the attack declared in
    ``requires`` is filled in (None otherwise). Never the run's config, the victim or the test split.

    * ``class_images``: a :class:`ClassImages` over the training split (``requires`` "class_images"):
      images of given classes (:meth:`ClassImages.draw`) or a uniform, label-free sample
      (:meth:`ClassImages.sample`);
    * ``load_surrogate(spec) -> (model, label, checkpoint path)``: builds a surrogate model from a spec
      ``{model, params, defense, checkpoint}`` (``requires`` "surrogate"; transfer);
    * ``device``: where the victim runs.
    """

    device: torch.device = torch.device("cpu")
    class_images: Optional[ClassImages] = None
    load_surrogate: Optional[Callable[[Dict[str, Any]], Tuple[nn.Module, str, str]]] = None


class Attack:
    """Base class. Subclasses set ``access`` and implement :meth:`run`.

    ``run(oracle, generator)`` drives an :class:`~robench.referee.oracle.OracleView` (the oracle's answers at
    ``access``, nothing more) and returns nothing the benchmark trusts: success, query counts and the
    adversarial examples are whatever the oracle observed.

    ``minimizes_distortion``: False for eps-bounded attacks (the oracle stops answering a sample once
    it has succeeded), True for minimal-perturbation attacks that keep shrinking the distortion of an
    adversarial point (C&W, DeepFool, hard-label attacks).

    Declarations, enforced before a run starts (robench/evaluation/spec.py, ``AttackTraits``) and
    checked true by the contract test (tests/test_contract.py, robench.testing), which runs the attack
    under every budget and input layout it declares:

    * ``eps_policy``: what the attack needs of ``budget.eps``: ``"any"`` (default), ``"finite"`` (an
      eps-ball, e.g. PGD, the ensemble) or ``"null"`` (not eps-bounded, e.g. gaussian_noise);
    * ``norms``: the budget norms it supports (default linf and l2);
    * ``layouts``: the input layouts it handles (robench/domain.py): ``"NCHW"`` images (default),
      ``"NCT"`` 1-D signals such as audio.

    ``requires``: names from :data:`CONTEXT_NEEDS` the attack needs beyond its view; the engine fills
    them into the :class:`AttackContext` it passes to :meth:`prepare` once, before the first batch.
    ``"build_set"`` is different: the attack builds one perturbation for many samples and runs under the
    shared protocol (robench/attacks/universal/base.py, robench/evaluation/protocols.py (Shared)).
    """

    access: str = "gradient"
    minimizes_distortion: bool = False
    requires: Tuple[str, ...] = ()
    eps_policy: str = "any"
    norms: Tuple[str, ...] = ("linf", "l2")
    layouts: Tuple[str, ...] = ("NCHW",)

    def prepare(self, context: AttackContext) -> None:
        """Receive the declared context (default: nothing to do)."""

    def for_victim(self, randomized: bool, eot_samples: int) -> int:
        """Told once, before the first batch, what the evaluation's pre-flight found (``randomized``: the
        victim's outputs vary between forward passes) and the run's EOT draws (``attack.eot_samples``);
        returns the EOT draws the run uses (default: unchanged). AutoAttack picks its version here."""
        return eot_samples

    def run(self, oracle: OracleView, generator: torch.Generator) -> None:
        raise NotImplementedError

    def summary_extra(self) -> Dict[str, Any]:
        """Attack-specific figures, kept in the run's summary under ``attack_extra`` (never beside the
        metrics): plain JSON values only (optional hook; none by default)."""
        return {}


def _take(state, keep: torch.Tensor):
    if state is None:
        return None
    if isinstance(state, dict):
        return {k: v[keep] for k, v in state.items()}
    return state[keep]


def keep_active(oracle: OracleView, idx: torch.Tensor, *state, mask: Optional[torch.Tensor] = None):
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
    Z_t - max_{i!=t} Z_i targeted [carlini2017 §V.A] ([cheng2021 §2.2, eq. 2.7] prints the targeted sign flipped)."""
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
