"""Saved adversarial examples (README, "What a run writes"): each completed batch's clean inputs and the
oracle's best adversarial point per sample, in a format that cannot run code.

With ``save_adversarial=true`` (CLI) or a ``run_dir`` (Python API) the run folder gets
``adversarial/batch_<b>.npz`` for every completed batch b: numpy arrays only, read back with
``allow_pickle=False``: ``index``, ``label``, ``target`` (-1: untargeted), ``clean_pred``,
``success``, ``adversarial`` (the oracle saw an adversarial point), ``pred`` (the victim's label of
the stored point, one referee-side forward pass that is no query), ``x`` (the stored point: the best
adversarial one, the clean input where none was seen) and ``x0`` (the clean input). A batch's file is
written right after its records, so a resumed run keeps the files of its completed batches; a sharded
run's shards each write their own batches, and :func:`load_adversarial` reads several folders as one.
``adversarial_formats`` may add ``png`` (images, one file per sample: ``png/<index>_<label>_<target>.png``)
or ``wav`` (signals with a sample rate: ``wav/<index>_<label>_<target>.wav``, 16-bit).
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Sequence, Union

import numpy as np
import torch

from robench.errors import RobenchError

FOLDER = "adversarial"
FIELDS = ("index", "label", "target", "clean_pred", "success", "adversarial", "pred")
FORMATS = ("npz", "png", "wav")


def batch_arrays(rows: Dict[str, Any], x: torch.Tensor, x0: torch.Tensor, pred: torch.Tensor) -> Dict[str, np.ndarray]:
    """The npz payload of one batch (``rows``: per-sample fields of :data:`FIELDS` except ``pred``)."""
    out = {k: np.asarray(rows[k]) for k in FIELDS if k != "pred"}
    out["pred"] = pred.cpu().numpy().astype(np.int64)
    out["x"] = x.detach().cpu().float().numpy()
    out["x0"] = x0.detach().cpu().float().numpy()
    return out


def npz_bytes(arrays: Dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def png_bytes(img: np.ndarray, low: float = 0.0, high: float = 1.0) -> bytes:
    """One C x H x W image in [low, high] as an 8-bit PNG (greyscale or RGB)."""
    from PIL import Image

    a = np.clip((img - low) / (high - low), 0, 1)
    a = np.round(a * 255).astype(np.uint8)
    a = a[0] if a.shape[0] == 1 else np.transpose(a[:3], (1, 2, 0))
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def wav_bytes(signal: np.ndarray, sample_rate: int) -> bytes:
    """One C x T signal in [-1, 1] as a 16-bit PCM WAV (channels interleaved)."""
    import wave

    a = np.clip(np.round(np.asarray(signal, dtype=np.float64) * 32768), -32768, 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(a.shape[0])
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(np.ascontiguousarray(a.T).tobytes())
    return buf.getvalue()


def sample_name(index: int, label: int, target: int) -> str:
    return f"{index}_{label}_{target}"


@dataclass
class Adversarial:
    """Saved examples of one or more runs: ``x`` (the stored points), ``x0`` (clean inputs) and the per-sample
    fields of :data:`FIELDS` as tensors, in index order."""

    x: torch.Tensor
    x0: torch.Tensor
    index: torch.Tensor
    label: torch.Tensor
    target: torch.Tensor
    clean_pred: torch.Tensor
    success: torch.Tensor
    adversarial: torch.Tensor
    pred: torch.Tensor

    def __len__(self) -> int:
        return len(self.index)


def load_adversarial(run_dirs: Union[str, Path, Sequence[Union[str, Path]]]) -> Adversarial:
    """The adversarial examples saved in one run folder (or several: the shards of one run), sorted by
    ``index``. Files are read with ``allow_pickle=False``: nothing in them can run code."""
    dirs: Iterable = [run_dirs] if isinstance(run_dirs, (str, Path)) else run_dirs
    parts: List[Dict[str, np.ndarray]] = []
    for d in dirs:
        folder = Path(d) / FOLDER
        files = sorted(folder.glob("batch_*.npz"))
        if not files:
            raise RobenchError(f"{Path(d)} holds no saved adversarial examples ({folder}/batch_*.npz); run the attack "
                               f"with save_adversarial=true")
        for f in files:
            try:
                with np.load(f, allow_pickle=False) as z:
                    parts.append({k: z[k] for k in (*FIELDS, "x", "x0")})
            except (OSError, ValueError, KeyError) as e:
                raise RobenchError(f"{f} is not a saved-examples file ({type(e).__name__}); delete it and resume the "
                                   f"run to write it again") from None
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.argsort(cat["index"], kind="stable")
    t = {k: torch.from_numpy(np.ascontiguousarray(v[order])) for k, v in cat.items()}
    return Adversarial(**t)
