"""The input domain of a dataset: the box its values live in and the layout of one input.

Images live in [0, 1] with layout ``N x C x H x W``; audio waveforms in [-1, 1] with layout
``N x C x T`` (int16 samples / 32768). A dataset declares its domain on its
:class:`~robench.data.base.DatasetSplits`; the oracle's box check, the geometry's clipping and random
starts, preflight and every attack take the box from there instead of assuming [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple


@dataclass(frozen=True)
class Domain:
    """The box ``[low, high]`` every input coordinate lives in, and the layout of a batch.

    ``layout``: ``"NCHW"`` (images) or ``"NCT"`` (1-D signals such as audio); ``sample_rate``: the
    signal's rate in Hz (audio), else None; ``quantum``: the smallest step of the stored values
    (audio: 1/32768, one int16 step), else None."""

    low: float = 0.0
    high: float = 1.0
    layout: str = "NCHW"
    sample_rate: Optional[int] = None
    quantum: Optional[float] = None

    def __post_init__(self):
        if not self.low < self.high:
            raise ValueError(f"a domain needs low < high, got [{self.low}, {self.high}]")
        if self.layout not in ("NCHW", "NCT"):
            raise ValueError(f"layout must be NCHW or NCT, got {self.layout!r}")

    @property
    def box(self) -> Tuple[float, float]:
        return (float(self.low), float(self.high))

    @property
    def ndim(self) -> int:
        """Dimensions of a batch (4 for images, 3 for signals)."""
        return len(self.layout)

    def describe(self) -> str:
        kind = "images" if self.layout == "NCHW" else "signals"
        return f"{kind} in [{self.low:g}, {self.high:g}] ({' x '.join(self.layout)})"


#: images in [0, 1], N x C x H x W (every dataset's default)
IMAGE = Domain()
#: waveforms in [-1, 1], N x C x T
AUDIO = Domain(low=-1.0, high=1.0, layout="NCT", quantum=1.0 / 32768)
