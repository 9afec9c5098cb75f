"""MagNet (Meng and Chen [meng2017magnet]): autoencoders that detect adversarial inputs (reconstruction
error) and reform them (the reconstruction is what the classifier sees).

Three plugins share two autoencoders:

* ``defense=magnet`` (a training recipe): trains the autoencoders on the training split with the
  classifier frozen (``train.init_from``, default ``none``) and puts the reformer, an input
  transformation (:class:`MagNetReformer`, an :class:`~robench.defenses.base.InputDefense`), in front of
  the classifier; the checkpoint holds both (a model surgery re-applied on load);
* ``defense=[magnet,magnet_detect]``: the same victim plus the detector (:class:`MagNetDetector`,
  robench's Detection protocol: calibrated on clean training images, each success scored after its
  batch, the false-positive rate on the clean test images).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from robench.defenses.adversarial import peek_logits
from robench.defenses.base import InputDefense, TrainingRecipe
from robench.errors import RobenchError
from robench.registry import DEFENSES

#: the MNIST autoencoders of the authors' code (train_defense.py): I = [3, "average", 3], II = [3]
STRUCTURE_I = (3, "average", 3)
STRUCTURE_II = (3,)


def _check_structure(structure: Sequence, what: str) -> List:
    out = []
    for s in structure:
        ok = (isinstance(s, int) and not isinstance(s, bool) and s >= 1) or s in ("average", "max")
        if not ok:
            raise RobenchError(f"magnet {what}: each entry must be a channel count >= 1, 'average' or 'max', got {s!r}")
        out.append(s)
    if not any(isinstance(s, int) for s in out):
        raise RobenchError(f"magnet {what} needs at least one convolution (a channel count), got {list(structure)}")
    return out


class DenoisingAutoEncoder(nn.Module):
    """Meng and Chen's autoencoder (``DenoisingAutoEncoder`` of their code): for each entry of
    ``structure`` a 3x3 convolution with that many channels and the activation, or a 2x2 pooling
    ("average" / "max"); then the mirror image (pooling -> 2x upsampling); then a 3x3 convolution
    back to the image's channels with a sigmoid (outputs in [0, 1])."""

    def __init__(self, channels: int, structure: Sequence, activation: str = "sigmoid"):
        super().__init__()
        act = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU}[activation]
        layers: List[nn.Module] = []
        c = channels
        for s in structure:
            if isinstance(s, int):
                layers += [nn.Conv2d(c, s, 3, padding=1), act()]
                c = s
            else:
                layers.append(nn.AvgPool2d(2) if s == "average" else nn.MaxPool2d(2))
        for s in reversed(list(structure)):
            if isinstance(s, int):
                layers += [nn.Conv2d(c, s, 3, padding=1), act()]
                c = s
            else:
                layers.append(nn.Upsample(scale_factor=2))
        layers += [nn.Conv2d(c, channels, 3, padding=1), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)
        for m in self.net:  # Keras's initialisation, as the authors' models had (Glorot uniform, zero bias)
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MagNetReformer(InputDefense):
    """MagNet's reformer: ``clip(AE_I(x), 0, 1)`` in front of the classifier [meng2017magnet]. It also
    carries the detector's second autoencoder (``detector_ae``, unused in the forward pass) so that one
    checkpoint holds MagNet whole.

    ``differentiable`` (default true): the reformer is a network, so a white-box attack differentiates
    through it (end to end: the adaptive attack). Set ``defense.params.differentiable=false`` at attack
    time to treat it as a black box (no gradient, or BPDA's identity with ``attack.bpda=true`` /
    ``adaptive=true``), Meng and Chen's "grey-box" view of the reformer."""

    randomized = False

    def __init__(self, channels: int, structure_i: Sequence = STRUCTURE_I, structure_ii: Sequence = STRUCTURE_II,
                 activation: str = "sigmoid", differentiable: bool = True):
        super().__init__()
        self.ae = DenoisingAutoEncoder(channels, structure_i, activation)
        self.detector_ae = DenoisingAutoEncoder(channels, structure_ii, activation)
        self.differentiable = bool(differentiable)
        self.settings = {"structure_i": list(structure_i), "structure_ii": list(structure_ii), "activation": activation}

    def describe(self) -> dict:
        return {**self.settings, "differentiable": self.differentiable}

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return self.ae(x).clamp(0, 1)


def insert_reformer(model: nn.Module, channels: int, structure_i: Sequence, structure_ii: Sequence,
                    activation: str) -> MagNetReformer:
    """Model surgery: put a :class:`MagNetReformer` first in a robench architecture (a ``Sequential`` of
    normalisation and network) and record it in ``model.robench_surgery``."""
    if not isinstance(model, nn.Sequential):
        raise RobenchError(f"magnet: cannot put the reformer in front of a {type(model).__name__} (robench's "
                           f"registered architectures only)")
    ref = MagNetReformer(channels, structure_i, structure_ii, activation)
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    ref.to(dev)
    mods = OrderedDict([("reformer", ref)] + [(k, v) for k, v in model._modules.items() if k != "reformer"])
    model._modules.clear()
    model._modules.update(mods)
    model.robench_surgery = {"kind": "magnet", "channels": int(channels), "structure_i": list(structure_i),
                             "structure_ii": list(structure_ii), "activation": activation}
    return ref


def apply_surgery(model: nn.Module, record: dict) -> nn.Module:
    """Re-apply a ``magnet`` surgery record (robench/models/conditional_bn.py dispatches here)."""
    insert_reformer(model, record["channels"], record["structure_i"], record["structure_ii"], record["activation"])
    return model


def configure(model: nn.Module, params: Dict[str, Any]) -> str:
    """At attack time (``robench attack defense=magnet``): the reformer's ``differentiable`` switch."""
    ref = find_reformer(model)
    if ref is not None and params.get("differentiable") is not None:
        ref.differentiable = bool(params["differentiable"])
    return f"reformer differentiable={ref.differentiable}" if ref is not None else "no reformer"


def find_reformer(model: nn.Module) -> Optional[MagNetReformer]:
    return next((m for m in model.modules() if isinstance(m, MagNetReformer)), None)


@DEFENSES.register("magnet")
class MagNet(TrainingRecipe):
    """MagNet's autoencoders, trained (Meng and Chen [meng2017magnet]; the thesis names it among the add-on
    defenses that train "additional networks whose job is to discriminate between adversarial and real
    inputs" [saha2020 §2.3.2]).

    The classifier (``train.init_from``, default the natural checkpoint) is frozen; two denoising
    autoencoders are trained on the training split: inputs x + ``v_noise`` · N(0, I) clipped to [0, 1],
    target x, mean squared error (Adam; both losses summed). AE I (``structure_i``, default
    [3, average, 3]: conv 3 sigmoid, 2x2 average pool, conv 3 sigmoid, and the mirror) is the reformer
    and detector I; AE II (``structure_ii``, [3]) is detector II: the MNIST setting of the authors'
    code (https://github.com/Trevillie/MagNet, ``train_defense.py``: sigmoid activations, v_noise 0.1,
    Keras's Glorot initialisation, Adam at 1e-3 for 100 epochs of batches of 256: about 21,000 steps on
    their 55,000 images; robench's config takes 15 epochs of batches of 32 at lr 5e-3, 1,875 steps on
    the embedded subset's 4,000 images, where the sigmoid autoencoders leave their constant-output
    plateau; their 1e-9 activity regulariser is left out).

    ``differentiable`` only matters at attack time (:class:`MagNetReformer`).
    """

    #: numeric ranges the registry checks before construction (robench.registry.validate_params)
    param_ranges = {"v_noise": ">=0"}

    def __init__(self, v_noise: float = 0.1, structure_i: Sequence = STRUCTURE_I,
                 structure_ii: Sequence = STRUCTURE_II, activation: str = "sigmoid", differentiable: bool = True):
        if not v_noise >= 0:
            raise RobenchError(f"magnet v_noise must be >= 0, got {v_noise}")
        if activation not in ("sigmoid", "relu"):
            raise RobenchError(f"magnet activation must be 'sigmoid' or 'relu', got '{activation}'")
        self.structure_i = _check_structure(structure_i, "structure_i")
        self.structure_ii = _check_structure(structure_ii, "structure_ii")
        self.v_noise, self.activation, self.differentiable = float(v_noise), activation, bool(differentiable)
        self.reformer: Optional[MagNetReformer] = None
        self.channels: Optional[int] = None  # the images' channels (bind: the dataset's shape)

    def bind(self, context):
        cfg = context.cfg
        if cfg is not None and not (cfg.get("train") or {}).get("init_from"):
            raise RobenchError("magnet protects a trained classifier: set train.init_from (e.g. none)")
        splits = context.splits
        if splits is not None:
            self.channels = int(splits.shape[0])
            side = tuple(splits.shape[1:])
            pools = sum(1 for s in self.structure_i if not isinstance(s, int))
            if any(v % 2 ** pools for v in side):
                raise RobenchError(f"magnet structure_i pools {pools} time(s): the image side {side} must be divisible by {2 ** pools}")

    def prepare_model(self, model):
        for p in model.parameters():
            p.requires_grad_(False)
        channels = self.channels
        if channels is None:  # not bound to a dataset: the classifier's first convolution says it
            conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
            if conv is None:
                raise RobenchError("magnet: the images' channels are unknown (bind the recipe to the dataset)")
            channels = conv.in_channels
        self.reformer = insert_reformer(model, channels, self.structure_i, self.structure_ii, self.activation)
        return model

    def batch_loss(self, model, x, y, index):
        ref = self.reformer
        noisy = (x + self.v_noise * torch.randn_like(x)).clamp(0, 1)
        loss = F.mse_loss(ref.ae(noisy).float(), x.float()) + F.mse_loss(ref.detector_ae(noisy).float(), x.float())
        return loss, peek_logits(model, x)


@DEFENSES.register("magnet_detect")
class MagNetDetector:
    """MagNet's detectors [meng2017magnet], for robench's Detection protocol: the reconstruction error
    ``mean_pixels |x - AE(x)|^p`` of detector I (AE I, p = 2) and detector II (AE II, p = 1), the
    authors' MNIST pair (``test_defense.py``). Each detector's threshold is set on clean training images
    for a false-positive rate ``fpr`` (0.001, their MNIST "drop rate", per detector); an input is flagged
    when either detector exceeds its threshold. The detection score robench records is
    ``max_k error_k / threshold_k`` (flagged above 1).

    It needs the autoencoders ``defense=magnet`` trained, so it goes with that recipe:
    ``defense=[magnet,magnet_detect]``. The attack does not see the detector (robench's Detection
    protocol scores each success after the fact): with a white-box attack through the reformer this is
    the adversary that knows the reformer and ignores the detector; an adversary optimising against
    both (Carlini and Wagner's attack on MagNet) is not implemented.
    """

    kind = "detector"
    #: the training recipe whose networks (the autoencoders) it reads inside the victim
    needs_recipe = "magnet"

    #: numeric ranges the registry checks before construction (robench.registry.validate_params)
    param_ranges = {"p_i": "[1,2]", "p_ii": "[1,2]"}

    def __init__(self, fpr: float = 0.001, calibration_samples: int = 1000, p_i: int = 2, p_ii: int = 1,
                 batch_size: int = 500):
        if not 0 <= fpr < 1:
            raise RobenchError(f"magnet_detect fpr must be in [0, 1), got {fpr}")
        if p_i not in (1, 2) or p_ii not in (1, 2):
            raise RobenchError(f"magnet_detect p_i and p_ii must be 1 or 2, got {p_i}, {p_ii}")
        self.fpr, self.calibration_samples, self.batch_size = float(fpr), int(calibration_samples), int(batch_size)
        self.p = (int(p_i), int(p_ii))
        self.thresholds: Optional[torch.Tensor] = None
        self.threshold: Optional[float] = None

    def describe(self) -> dict:
        return {"fpr_per_detector": self.fpr, "p": list(self.p),
                "detector_thresholds": None if self.thresholds is None else self.thresholds.tolist(),
                "threshold": self.threshold}

    @torch.no_grad()
    def errors(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """(n, 2) reconstruction errors of detectors I and II (CPU); uncounted evaluations."""
        ref = find_reformer(model)
        if ref is None:
            raise RobenchError("magnet_detect needs MagNet's autoencoders in the victim: use defense=[magnet,magnet_detect] "
                               "(after robench train-defense defense=magnet)")
        dev = next(ref.parameters()).device
        out = []
        for s in range(0, len(x), self.batch_size):
            xb = x[s:s + self.batch_size].to(dev)
            e = [((xb - ae(xb)).abs() ** p).flatten(1).mean(1) for ae, p in zip((ref.ae, ref.detector_ae), self.p)]
            out.append(torch.stack(e, 1).cpu())
        return torch.cat(out) if out else torch.zeros(0, 2)

    def calibrate(self, model: nn.Module, x_clean: torch.Tensor) -> float:
        e = self.errors(model, x_clean).double()
        self.thresholds = (torch.quantile(e, 1 - self.fpr, dim=0, interpolation="higher").float()
                           if len(e) else torch.full((2,), float("inf")))
        self.threshold = 1.0
        return self.threshold

    def scores(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.thresholds is None:
            raise RuntimeError("calibrate the detector first")
        return (self.errors(model, x) / self.thresholds.clamp_min(1e-12)).amax(1)

    def detect(self, scores: torch.Tensor) -> torch.Tensor:
        if self.threshold is None:
            raise RuntimeError("calibrate the detector first")
        return scores > self.threshold
