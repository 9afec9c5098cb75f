from __future__ import annotations

import io

import numpy as np
import torch

from robench.defenses.base import InputDefense
from robench.errors import RobenchError
from robench.registry import DEFENSES


@DEFENSES.register("jpeg")
class JPEG(InputDefense):
    """JPEG compression of the input (Guo et al. [guo2018]; Dziugaite et al. [dziugaite2016]), quality 75.

    Setting: quality 75, the one GenAttack attacks [alzantot2019 §2.6.2.2, Table 2.4]
    (JPEG compression of GRM17 = [guo2018], quality 75). The forward pass is a real baseline JPEG encode + decode in
    memory (libjpeg through Pillow; torchvision's ``encode_jpeg`` is deprecated since 0.29) of each
    image quantised to 8 bits: one device-to-host copy for the batch, the codec on the CPU (in a
    small thread pool: Pillow releases the GIL while coding), one copy back to the input's device.
    Grayscale images are encoded as one-channel JPEGs, colour ones as YCbCr with Pillow's default
    4:2:0 chroma subsampling.

    Not differentiable (8-bit rounding and DCT quantisation): the BPDA backward is the identity
    (the straight-through approximation Athalye et al. [athalye2018] use for Guo et al.'s
    transformations).
    """

    differentiable = False
    randomized = False

    def __init__(self, quality: int = 75):
        super().__init__()
        if not isinstance(quality, int) or isinstance(quality, bool) or not 1 <= quality <= 100:
            raise RobenchError(f"jpeg quality must be an integer in 1..100, got '{quality}'")
        self.quality = quality

    def describe(self) -> dict:
        return {"quality": self.quality}

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] not in (1, 3):
            raise RobenchError(f"jpeg needs 1- or 3-channel images, got {x.shape[1]} channels")
        u8 = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        if len(u8) >= 64:
            out = list(_pool().map(lambda a: _jpeg_roundtrip(a, self.quality), u8, chunksize=16))
        else:
            out = [_jpeg_roundtrip(a, self.quality) for a in u8]
        y = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)
        return y.to(x.device).to(x.dtype).div_(255)


def _jpeg_roundtrip(a: np.ndarray, quality: int) -> np.ndarray:
    """One HxWxC uint8 image through a JPEG encode and decode (Pillow, in memory)."""
    from PIL import Image

    img = Image.fromarray(a[..., 0] if a.shape[2] == 1 else a, mode="L" if a.shape[2] == 1 else "RGB")
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    out = np.asarray(Image.open(buf).convert(img.mode))
    return out[..., None] if out.ndim == 2 else out


_POOL = None


def _pool():
    global _POOL
    if _POOL is None:
        import os
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(max_workers=max(1, min(8, len(os.sched_getaffinity(0)))))
    return _POOL
