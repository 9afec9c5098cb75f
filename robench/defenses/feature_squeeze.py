from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from robench.errors import RobenchError
from robench.registry import DEFENSES

#: Xu et al.'s MNIST detector [xu2018]: 1-bit depth and 2x2 median smoothing
DEFAULT_SQUEEZERS = ({"name": "bit_depth", "bits": 1}, {"name": "median_smoothing", "size": 2})


@DEFENSES.register("feature_squeeze_detect")
class FeatureSqueezeDetector:
    """Feature-squeezing detection (Xu, Evans and Qi [xu2018]): flag an input when the model's softmax
    on it and on a squeezed copy differ too much.

    Score (Xu et al.'s joint detector): ``max_s || softmax(f(x)) - softmax(f(s(x))) ||_1`` over the
    squeezers ``s``; an input is flagged adversarial when its score exceeds a threshold chosen on
    clean data for a target false-positive rate ``fpr`` (the smallest threshold that at most ``fpr``
    of the calibration images exceed). The feature-squeezing slide of [zhao2020slides] gives the bit
    depths (1 bit on MNIST, 4 bits on ImageNet) and no thresholds or filter sizes; the default
    squeezers are Xu et al.'s MNIST pair (1-bit depth, 2x2 median) and ``fpr=0.05`` their 5% target,
    both from their paper. The calibration images are the first ``calibration_samples`` images of
    the *training* split (Xu et al. also pick the threshold on legitimate training-side data), so the
    false-positive rate robench reports, on the test images of the run, is an honest held-out one.

    ``f`` is the whole victim (model behind any input transformations of the run). The detector is
    not attacked (the static adversary of Xu et al.'s Table 4): the attack's adversarial examples,
    whichever attack made them, are scored after the fact. Squeezers are input defenses by name:
    ``squeezers: [{name: bit_depth, bits: 1}, {name: median_smoothing, size: 2}]``.
    """

    kind = "detector"

    def __init__(self, squeezers: Sequence[Dict[str, Any]] = DEFAULT_SQUEEZERS, fpr: float = 0.05,
                 calibration_samples: int = 1000, batch_size: int = 500):
        from robench.defenses.base import InputDefense
        from robench.defenses.compose import instantiate_input

        if not 0 <= fpr < 1:
            raise RobenchError(f"feature_squeeze_detect fpr must be in [0, 1), got {fpr}")
        if not squeezers:
            raise RobenchError("feature_squeeze_detect needs at least one squeezer, e.g. [{name: bit_depth, bits: 1}]")
        self.squeezers: List[InputDefense] = []
        for s in squeezers:
            s = dict(s)
            if "name" not in s:
                raise RobenchError(f"each feature_squeeze_detect squeezer needs a name (an input defense), got {s}")
            self.squeezers.append(instantiate_input(s.pop("name"), s))
        self.squeezer_specs = [dict(s) for s in squeezers]
        self.fpr = float(fpr)
        self.calibration_samples = int(calibration_samples)
        self.batch_size = int(batch_size)
        self.threshold: Optional[float] = None

    def describe(self) -> dict:
        return {"squeezers": self.squeezer_specs, "fpr": self.fpr, "threshold": self.threshold}

    @torch.no_grad()
    def scores(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Detection score of each row of ``x`` (on CPU); uncounted model evaluations."""
        dev = next(model.parameters()).device
        out = []
        for s in range(0, len(x), self.batch_size):
            xb = x[s:s + self.batch_size].to(dev)
            p0 = model(xb).softmax(1)
            d = torch.stack([(p0 - model(q.transform(xb)).softmax(1)).abs().sum(1) for q in self.squeezers]).amax(0)
            out.append(d.cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def calibrate(self, model: nn.Module, x_clean: torch.Tensor) -> float:
        s = self.scores(model, x_clean)
        self.threshold = float(torch.quantile(s.double(), 1 - self.fpr, interpolation="higher")) if len(s) else float("inf")
        return self.threshold

    def detect(self, scores: torch.Tensor) -> torch.Tensor:
        if self.threshold is None:
            raise RuntimeError("calibrate the detector first")
        return scores > self.threshold


def detection_report(detector: FeatureSqueezeDetector, model: nn.Module, x_clean: torch.Tensor,
                     x_adv: torch.Tensor) -> Dict[str, float]:
    """Detection rate on ``x_adv`` (any attack's successful adversarial examples) and false-positive
    rate on ``x_clean``, with the detector's calibrated threshold."""
    fp = detector.detect(detector.scores(model, x_clean)).float()
    dr = detector.detect(detector.scores(model, x_adv)).float()
    nan = float("nan")
    return {"threshold": detector.threshold, "false_positive_rate": float(fp.mean()) if len(fp) else nan,
            "detection_rate": float(dr.mean()) if len(dr) else nan, "n_clean": len(fp), "n_adversarial": len(dr)}
