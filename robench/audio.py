"""Audio helpers: reading 16-bit PCM WAV files, and the perception measures of an audio perturbation.

Waveforms live in robench as float tensors in [-1, 1] (int16 samples / 32768, the ``AUDIO`` domain of
robench/domain.py), layout ``N x C x T``. Files are read with Python's standard ``wave``
module (no extra dependency); only 16-bit PCM is supported, the format of the Free Spoken Digit
Dataset and of the Speech Commands clips of [alzantot2019 Ch. 3]. Adversarial clips are written by the
run folder's one writer of saved examples (``save_adversarial=true adversarial_formats=[npz,wav]``:
:func:`robench.evaluation.adversarial.wav_bytes`, ``adversarial/wav/<index>_<label>_<target>.wav``).

Perception measures (records and summaries of audio runs, robench/evaluation/results.py):

* ``dB(x) = 20 log10 max_i |x_i|`` and the relative loudness of a perturbation
  ``dB_x(delta) = dB(delta) - dB(x)`` (Carlini and Wagner's measure [carlini2018audio]: how much
  quieter the perturbation is than the clip; more negative is quieter);
* ``SNR = 10 log10 (sum x_i^2 / sum delta_i^2)`` in dB (higher is quieter).

Both are +inf / -inf where the perturbation is zero and NaN where the clip itself is silent.
"""
from __future__ import annotations

import wave
from pathlib import Path
from typing import Tuple, Union

import numpy as np
import torch

from robench.errors import RobenchError

#: int16 full scale: a sample s is stored as the float s / FULL_SCALE
FULL_SCALE = 32768


def read_wav(path: Union[str, Path]) -> Tuple[np.ndarray, int]:
    """A 16-bit PCM WAV file as (int16 array of shape (channels, frames), sample rate).

    A file that is not a readable WAV, is truncated, or is not 16-bit PCM fails with one line."""
    path = Path(path)
    try:
        with wave.open(str(path), "rb") as w:
            ch, width, rate, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            raw = w.readframes(n)
    except FileNotFoundError:
        raise RobenchError(f"WAV file {path} not found") from None
    except (wave.Error, EOFError, OSError, ValueError) as e:
        raise RobenchError(f"WAV file {path} is unreadable ({e.__class__.__name__}: {e}); "
                           f"it must be an uncompressed PCM .wav file: replace it or remove it") from None
    if width != 2:
        raise RobenchError(f"WAV file {path} has {8 * width}-bit samples; robench reads 16-bit PCM only "
                           f"(convert it, e.g. sox in.wav -b 16 out.wav)")
    if len(raw) != n * ch * width:
        raise RobenchError(f"WAV file {path} is truncated: its header announces {n} frames, the file holds "
                           f"{len(raw) // max(ch * width, 1)}; replace it")
    return np.frombuffer(raw, dtype="<i2").reshape(-1, ch).T.astype(np.int16), int(rate)


# ---------------------------------------------------------------- perception measures

def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.detach().double().flatten(1)


def db(x: torch.Tensor) -> torch.Tensor:
    """Per row: ``20 log10 max_i |x_i|`` (-inf for an all-zero row) [carlini2018audio]."""
    return 20 * torch.log10(_flat(x).abs().amax(1))


def db_x(delta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per row: ``dB(delta) - dB(x)``, the perturbation's loudness relative to the clip
    [carlini2018audio] (NaN where the clip is silent; -inf where delta is zero)."""
    ref = db(x)
    return torch.where(torch.isfinite(ref), db(delta) - ref, torch.full_like(ref, float("nan")))


def snr_db(delta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per row: ``10 log10 (||x||^2 / ||delta||^2)`` in dB (NaN where the clip is silent; +inf where
    delta is zero)."""
    px, pd = _flat(x).pow(2).sum(1), _flat(delta).pow(2).sum(1)
    out = 10 * torch.log10(px) - 10 * torch.log10(pd)
    return torch.where(px > 0, out, torch.full_like(out, float("nan")))
