"""Audio data (robench/data/audio.py), WAV reading and perception measures (robench/audio.py), the saved
examples' WAV encoding (robench/evaluation/adversarial.py), the success matrix's numbers, and the
kws_cnn front end (robench/models/audio_models.py), on tiny synthetic clips written here (never FSDD)."""
from __future__ import annotations

import hashlib
import math
import wave

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from robench.audio import db, db_x, read_wav, snr_db
from robench.data import load_dataset
from robench.errors import RobenchError

RATE = 8000


def tone(freq: float, n: int, amp: float = 0.5) -> np.ndarray:
    t = np.arange(n) / RATE
    return np.rint(amp * 32767 * np.sin(2 * math.pi * freq * t)).astype(np.int16)


def raw_wav(path, samples: np.ndarray, rate: int = RATE, width: int = 2, channels: int = 1) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes() if width == 2 else samples.astype(np.uint8).tobytes())


def fsdd_tree(root, n_index: int = 7, speakers=("anna", "bob"), lengths=None, sums: bool = True):
    """root/FSDD/recordings/{digit}_{speaker}_{index}.wav: digit d is a tone at 300 + 150 d Hz."""
    rec = root / "FSDD" / "recordings"
    rec.mkdir(parents=True)
    lines = []
    for d in range(10):
        for s in speakers:
            for i in range(n_index):
                n = (lengths or {}).get((d, s, i), 2000 + 100 * i)
                p = rec / f"{d}_{s}_{i}.wav"
                raw_wav(p, tone(300 + 150 * d, n))
                lines.append(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}")
    if sums:
        (root / "FSDD" / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    return rec


def fsdd_cfg(root, **over):
    cfg = OmegaConf.load(__import__("pathlib").Path(__file__).resolve().parents[1] / "configs" / "dataset" / "fsdd.yaml")
    cfg.root = str(root)
    for k, v in over.items():
        cfg[k] = v
    return cfg


# ---------------------------------------------------------------- fsdd

def test_fsdd_split_order_domain_and_values(tmp_path):
    fsdd_tree(tmp_path, lengths={(3, "bob", 2): 8000})
    s = load_dataset(fsdd_cfg(tmp_path, length=8000))
    x, y = s.test.tensors
    assert len(s.test) == 10 * 2 * 5 and len(s.train) == 10 * 2 * 2  # index 0-4 test, 5-6 train
    assert x.shape == (100, 1, 8000) and s.shape == (1, 8000) and x.dtype == torch.float32
    assert s.domain.box == (-1.0, 1.0) and s.domain.layout == "NCT" and s.domain.sample_rate == 8000
    assert s.domain.quantum == 1 / 32768 and s.extra["sha256_checked"]
    # ordered by (index, speaker, digit): every prefix of 20 holds all ten digits
    assert y[:20].tolist() == list(range(10)) * 2
    # the clip of (3, bob, 2) is 8,000 samples long: no padding, values are int16 / 32768
    k = 2 * 20 + 10 + 3
    assert torch.equal(x[k, 0], torch.from_numpy(tone(300 + 450, 8000).astype(np.float32) / 32768))
    assert float(x.abs().max()) <= 1.0


def test_fsdd_pads_symmetrically_and_centre_crops(tmp_path):
    fsdd_tree(tmp_path, lengths={(0, "anna", 0): 1001, (1, "anna", 0): 3000})
    s = load_dataset(fsdd_cfg(tmp_path, length=2000))
    x = s.test.tensors[0]
    short = x[0, 0]  # (0, anna, 0): 1,001 samples in a 2,000 window: 499 zeros before, 500 after
    ref = torch.from_numpy(tone(300, 1001).astype(np.float32) / 32768)
    assert torch.equal(short[499:1500], ref) and not short[:499].any() and not short[1500:].any()
    long = x[1, 0]  # (1, anna, 0): 3,000 samples, the middle 2,000 kept
    assert torch.equal(long, torch.from_numpy(tone(450, 3000)[500:2500].astype(np.float32) / 32768))
    assert s.extra["clips_cropped"] >= 1


@pytest.mark.parametrize("case, message", [
    ("missing", "FSDD not found"),
    ("corrupt", "unreadable"),
    ("rate", "16000 Hz"),
    ("stereo", "2 channels"),
    ("width", "8-bit"),
    ("checksum", "sha256"),
    ("unlisted", "not listed"),
    ("truncated", "truncated"),
])
def test_fsdd_errors_are_one_line(tmp_path, case, message):
    if case == "missing":
        (tmp_path / "empty").mkdir()
        root = tmp_path / "empty"
    else:
        rec = fsdd_tree(tmp_path, n_index=6, sums=case in ("checksum", "unlisted"))
        root = tmp_path
        p = rec / "4_bob_1.wav"
        if case == "corrupt":
            p.write_bytes(b"RIFF not a wave file at all")
        elif case == "rate":
            raw_wav(p, tone(900, 2000), rate=16000)
        elif case == "stereo":
            raw_wav(p, np.repeat(tone(900, 2000), 2), channels=2)
        elif case == "width":
            raw_wav(p, np.full(2000, 128), width=1)
        elif case == "checksum":
            raw_wav(p, tone(901, 2000))
        elif case == "unlisted":
            raw_wav(rec / "4_bob_9.wav", tone(900, 2000))
        elif case == "truncated":
            p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(RobenchError) as e:
        load_dataset(fsdd_cfg(root))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_fsdd_root_not_a_folder(tmp_path):
    with pytest.raises(RobenchError, match="not a folder"):
        load_dataset(fsdd_cfg(tmp_path / "nowhere"))


def test_fsdd_without_sums_reads_unchecked(tmp_path):
    fsdd_tree(tmp_path, n_index=6, sums=False)
    s = load_dataset(fsdd_cfg(tmp_path))
    assert not s.extra["sha256_checked"] and len(s.test) == 100 and len(s.train) == 20


# ---------------------------------------------------------------- audio_folder

def folder_cfg(root, **over):
    cfg = OmegaConf.load(__import__("pathlib").Path(__file__).resolve().parents[1] / "configs" / "dataset" / "audio_folder.yaml")
    cfg.root = None if root is None else str(root)
    for k, v in over.items():
        cfg[k] = v
    return cfg


def test_audio_folder_classes_lengths_and_rate(tmp_path):
    for c, f in (("no", 400), ("yes", 900)):
        (tmp_path / c).mkdir()
        for i in range(3):
            raw_wav(tmp_path / c / f"{i}.wav", tone(f, 1200 + 100 * i))
    with pytest.raises(RobenchError, match="differ in length.*dataset.length"):
        load_dataset(folder_cfg(tmp_path))
    s = load_dataset(folder_cfg(tmp_path, length=1000))
    assert s.class_names == ["no", "yes"] and s.num_classes == 2 and s.shape == (1, 1000)
    assert s.test.tensors[0].shape == (6, 1, 1000) and s.test.tensors[1].tolist() == [0, 0, 0, 1, 1, 1]
    assert s.domain.sample_rate == RATE and s.domain.layout == "NCT"
    raw_wav(tmp_path / "yes" / "9.wav", tone(900, 1000), rate=16000)
    with pytest.raises(RobenchError, match="16000 Hz"):
        load_dataset(folder_cfg(tmp_path, length=1000))
    with pytest.raises(RobenchError, match="needs dataset.root"):
        load_dataset(folder_cfg(None))


# ---------------------------------------------------------------- WAV I/O and measures

def test_saved_wav_reads_back_the_same_samples(tmp_path):
    """The run folder's one WAV encoder (adversarial/wav/*.wav) and the data loader's reader agree sample for sample."""
    from robench.evaluation.adversarial import wav_bytes

    g = torch.Generator().manual_seed(0)
    ints = torch.randint(-32768, 32768, (1, 3001), generator=g)
    x = ints.float() / 32768  # on the int16 grid, as robench holds audio
    (tmp_path / "clip.wav").write_bytes(wav_bytes(x.numpy(), 8000))
    back, rate = read_wav(tmp_path / "clip.wav")
    assert rate == 8000 and back.shape == (1, 3001) and back.dtype == np.int16
    assert np.array_equal(back[0], ints[0].numpy().astype(np.int16))
    assert torch.equal(torch.from_numpy(back.astype(np.float32) / 32768), x)
    (tmp_path / "one.wav").write_bytes(wav_bytes(np.array([[1.0, -1.0, 0.0]]), 16000))  # +1.0 is clipped to 32767
    assert read_wav(tmp_path / "one.wav")[0].tolist() == [[32767, -32768, 0]]


def test_perception_measures():
    x = torch.zeros(2, 1, 100)
    x[:, 0, 10] = 0.5
    delta = torch.zeros_like(x)
    delta[0, 0, 3] = 0.005
    delta[1, 0, :] = 0.0
    assert torch.allclose(db(x), torch.full((2,), 20 * math.log10(0.5), dtype=torch.float64))
    assert abs(float(db_x(delta, x)[0]) - (-40.0)) < 1e-5 and float(db_x(delta, x)[1]) == -math.inf
    assert abs(float(snr_db(delta, x)[0]) - 40.0) < 1e-5 and float(snr_db(delta, x)[1]) == math.inf
    assert math.isnan(float(db_x(delta, torch.zeros_like(x))[0]))


# ---------------------------------------------------------------- the kws_cnn front end

def test_front_end_shape_and_gradient():
    from robench.models.audio_models import LogMel, kws_cnn

    fe = LogMel(8000)
    x = torch.from_numpy(tone(700, 8000).astype(np.float32) / 32768).view(1, 1, -1).repeat(2, 1, 1)
    f = fe(x)
    assert f.shape == (2, 40, 63) and torch.isfinite(f).all()
    # a 700 Hz tone: the band holding 700 Hz is far above the bands near 3,500 Hz
    assert float(f[0, :, 30].max() - f[0, -1, 30]) > 5
    net = kws_cnn(10, (1, 8000)).eval()
    xr = x.clone().requires_grad_(True)
    out = net(xr)
    assert out.shape == (2, 10)
    g, = torch.autograd.grad(out[:, 3].sum(), xr)
    assert torch.isfinite(g).all() and float(g.abs().sum()) > 0  # differentiable end to end
    with pytest.raises(RobenchError, match="waveforms"):
        kws_cnn(10, (1, 28, 28))


# ---------------------------------------------------------------- the success matrix

def test_success_matrix_numbers_from_records():
    """robench report's source-by-target matrix (robench/report/plots.py) over a budget.target=all run's rows."""
    import pandas as pd

    from robench.report.plots import target_rates

    rows = []
    for src in range(3):
        for tgt in range(3):
            if tgt != src:
                for k in range(4):  # source 0 -> target 1: 3 of 4 succeed; every other pair: 1 of 4
                    rows.append({"index": 10 * src + k, "label": src, "target": tgt, "attacked": True,
                                 "success": k < (3 if (src, tgt) == (0, 1) else 1)})
    rows.append({"index": 99, "label": 2, "target": 0, "attacked": False, "success": True})  # not attacked: left out
    rate, n = target_rates(pd.DataFrame(rows))
    assert rate.shape == (3, 3) and np.isnan(rate.diagonal()).all() and n.diagonal().sum() == 0
    assert rate[0, 1] == 0.75 and rate[2, 0] == 0.25 and n[2, 0] == 4 and n.sum() == 24
    rate, n = target_rates(pd.DataFrame(rows), num_classes=10)
    assert rate.shape == (10, 10) and n[3:].sum() == 0
