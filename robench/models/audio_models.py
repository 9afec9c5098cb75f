"""Audio victims: a keyword-spotting CNN whose front end (log-mel spectrogram) is inside the model.

Every attack on ``kws_cnn`` sees the raw waveform (``N x 1 x T`` in [-1, 1]), as in the speech chapter
of the GenAttack thesis [alzantot2019 §3.2], where the attacker feeds 16-bit audio to a model that
computes its own features. Unlike the thesis's TensorFlow front end (which it calls non-differentiable,
§3.2), robench's is written in torch (framing, ``torch.fft.rfft`` and a mel filterbank built here; torchaudio is not
needed) and is differentiable end to end, so white-box attacks give a ceiling on the same pairs.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from robench.errors import RobenchError
from robench.registry import MODELS


def hz_to_mel(f):
    """HTK mel scale: ``2595 log10(1 + f / 700)``."""
    return 2595.0 * math.log10(1.0 + f / 700.0)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> torch.Tensor:
    """(n_fft // 2 + 1, n_mels) triangular filters, equally spaced on the HTK mel scale between fmin
    and fmax, each peaking at 1 (no area normalisation: the log and the BatchNorm that follow make
    the scale irrelevant)."""
    n_bins = n_fft // 2 + 1
    freqs = torch.linspace(0.0, sample_rate / 2.0, n_bins, dtype=torch.float64)
    mels = torch.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2, dtype=torch.float64)
    hz = 700.0 * (10.0 ** (mels / 2595.0) - 1.0)
    lo, mid, hi = hz[:-2], hz[1:-1], hz[2:]
    f = freqs[:, None]
    up = (f - lo) / (mid - lo)
    down = (hi - f) / (hi - mid)
    return torch.clamp(torch.minimum(up, down), min=0.0).float()


class LogMel(nn.Module):
    """Waveform (N x 1 x T) -> log-mel spectrogram (N x n_mels x frames), differentiable.

    Hann window of ``window_ms``, hop ``hop_ms``, frames centred on the hops (the clip zero-padded by
    half a window at each end; ``torch.stft(center=True)`` pads by reflection instead, which costs three
    times as much here), power spectrum by ``torch.fft.rfft``, mel filterbank (:func:`mel_filterbank`),
    ``log(mel + floor)``. At 8 kHz the defaults give 256-sample windows, a 128-sample hop and 63 frames
    per second of audio."""

    def __init__(self, sample_rate: int = 8000, window_ms: float = 32.0, hop_ms: float = 16.0, n_mels: int = 40,
                 fmin: float = 20.0, fmax: float | None = None, floor: float = 1e-6):
        super().__init__()
        self.n_fft = int(round(sample_rate * window_ms / 1000.0))
        self.hop = int(round(sample_rate * hop_ms / 1000.0))
        fmax = sample_rate / 2.0 if fmax is None else float(fmax)
        if self.n_fft < 8 or self.hop < 1 or not 0 <= fmin < fmax <= sample_rate / 2.0 or n_mels < 1 or floor <= 0:
            raise RobenchError(f"kws_cnn front end: need window >= 8 samples, hop >= 1, 0 <= fmin < fmax <= "
                               f"sample_rate/2, n_mels >= 1 and floor > 0 (got window {self.n_fft}, hop {self.hop}, "
                               f"fmin {fmin}, fmax {fmax}, n_mels {n_mels}, floor {floor})")
        self.floor = float(floor)
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)
        self.register_buffer("fb", mel_filterbank(sample_rate, self.n_fft, n_mels, fmin, fmax), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3:
            raise RobenchError(f"kws_cnn takes waveforms N x C x T, got a batch of shape {tuple(x.shape)}")
        n, c, t = x.shape
        half = self.n_fft // 2
        frames = F.pad(x.reshape(n * c, t).float(), (half, half)).unfold(1, self.n_fft, self.hop)  # (N*C, frames, n_fft)
        spec = torch.fft.rfft(frames * self.window, dim=-1)
        power = spec.real.pow(2) + spec.imag.pow(2)              # (N*C, frames, bins)
        mel = torch.matmul(power, self.fb)                       # (N*C, frames, n_mels)
        return torch.log(mel + self.floor).transpose(1, 2).reshape(n, c * self.fb.shape[1], -1)


class KWSCNN(nn.Module):
    """Log-mel front end, then a small 1-D convolutional network over time (mel bands as channels):
    BatchNorm on the features, four Conv1d-BatchNorm-ReLU blocks (the last three of stride 2), global
    average and max pooling over time, dropout, a linear layer.

    Training-mode augmentation (``model.train()`` only; evaluation and every attack see the clip as
    is): each clip is shifted in time by up to ``shift_ms`` (zero-filled) and, with probability
    ``noise_prob``, gets white noise at a signal-to-noise ratio drawn uniformly in
    [``noise_snr_min``, ``noise_snr_max``] dB."""

    def __init__(self, num_classes: int, channels: int, sample_rate: int, width: int, n_mels: int, window_ms: float,
                 hop_ms: float, floor: float, dropout: float, shift_ms: float, noise_prob: float, noise_snr_min: float,
                 noise_snr_max: float):
        super().__init__()
        self.front = LogMel(sample_rate, window_ms, hop_ms, n_mels, floor=floor)
        c = channels * n_mels
        w = int(width)
        self.net = nn.Sequential(
            nn.BatchNorm1d(c),
            nn.Conv1d(c, w, 5, padding=2), nn.BatchNorm1d(w), nn.ReLU(),
            nn.Conv1d(w, w, 3, stride=2, padding=1), nn.BatchNorm1d(w), nn.ReLU(),
            nn.Conv1d(w, 3 * w // 2, 3, stride=2, padding=1), nn.BatchNorm1d(3 * w // 2), nn.ReLU(),
            nn.Conv1d(3 * w // 2, 3 * w // 2, 3, stride=2, padding=1), nn.BatchNorm1d(3 * w // 2), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(3 * w, num_classes))
        self.shift = int(round(sample_rate * shift_ms / 1000.0))
        self.noise_prob, self.snr = float(noise_prob), (float(noise_snr_min), float(noise_snr_max))

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        n, _, t = x.shape
        if self.shift > 0:
            s = torch.randint(-self.shift, self.shift + 1, (n, 1, 1), device=x.device)
            src = torch.arange(t, device=x.device).view(1, 1, t) - s
            x = torch.where((src >= 0) & (src < t), x.gather(2, src.clamp(0, t - 1).expand_as(x)), torch.zeros_like(x))
        if self.noise_prob > 0:
            on = torch.rand(n, 1, 1, device=x.device) < self.noise_prob
            snr = torch.empty(n, 1, 1, device=x.device).uniform_(*self.snr)
            rms = x.pow(2).mean((1, 2), keepdim=True).sqrt()
            noise = torch.randn_like(x) * rms * 10 ** (-snr / 20)
            x = (x + on * noise).clamp(-1.0, 1.0)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            x = self.augment(x)
        h = self.net(self.front(x))
        return self.head(torch.cat([h.mean(2), h.amax(2)], 1))


@MODELS.register("kws_cnn")
def kws_cnn(num_classes: int = 10, shape=(1, 8000), sample_rate: int = 8000, width: int = 64, n_mels: int = 40,
            window_ms: float = 32.0, hop_ms: float = 16.0, floor: float = 1e-6, dropout: float = 0.2,
            shift_ms: float = 100.0, noise_prob: float = 0.5, noise_snr_min: float = 10.0,
            noise_snr_max: float = 40.0) -> nn.Module:
    """Keyword-spotting CNN on raw waveforms (N x 1 x T): log-mel front end inside the model, 1-D convolutions over time."""
    if len(shape) != 2:
        raise RobenchError(f"kws_cnn takes waveforms (a dataset of shape C x T, e.g. dataset=fsdd), got inputs of "
                           f"shape {tuple(shape)}")
    if width < 2 or sample_rate < 1 or not 0 <= noise_prob <= 1 or shift_ms < 0 or noise_snr_min > noise_snr_max:
        raise RobenchError(f"kws_cnn: need width >= 2, sample_rate >= 1, noise_prob in [0, 1], shift_ms >= 0 and "
                           f"noise_snr_min <= noise_snr_max (got {width}, {sample_rate}, {noise_prob}, {shift_ms}, "
                           f"{noise_snr_min} > {noise_snr_max})")
    return KWSCNN(num_classes, int(shape[0]), int(sample_rate), width, n_mels, window_ms, hop_ms, floor, dropout,
                  shift_ms, noise_prob, noise_snr_min, noise_snr_max)


#: numeric ranges the registry checks before construction (robench.registry.validate_params)
kws_cnn.param_ranges = {"sample_rate": ">=1", "width": ">=2", "n_mels": ">=1", "window_ms": ">0", "hop_ms": ">0",
                        "floor": ">0", "shift_ms": ">=0", "noise_prob": "[0,1]", "noise_snr_min": "[-100,200]",
                        "noise_snr_max": "[-100,200]"}
