"""Audio datasets: the Free Spoken Digit Dataset (``fsdd``) and your own WAV files (``audio_folder``).

Waveforms are held in memory as float tensors in [-1, 1] (int16 samples / 32768), ``N x 1 x T``, with
the ``Domain(-1, 1, "NCT", sample_rate, 1/32768)`` of robench/domain.py. Every clip gets one fixed
length (``dataset.length`` samples): a longer clip is centre-cropped (its middle ``length`` samples), a
shorter one is zero-padded symmetrically (it sits in the middle of the window; an odd number of padding
samples puts the extra one at the end). A spoken word in FSDD is trimmed to near-minimal silence, so
centring keeps the whole word in all but the 20 longest of its 3,000 clips (over 1 s).

Files are read with :func:`robench.audio.read_wav` (16-bit PCM, stdlib ``wave``); a missing folder, a
corrupt file, another sample rate, sample width or channel count fail in one line before any work.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import TensorDataset

from robench.audio import FULL_SCALE, read_wav
from robench.data.base import DatasetSplits, class_files, folder_dirs
from robench.domain import Domain
from robench.errors import RobenchError
from robench.registry import DATASETS

FSDD_RATE = 8000
#: ``{digit}_{speaker}_{index}.wav``
FSDD_NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)\.wav$")


def fit_length(a: np.ndarray, length: int) -> Tuple[np.ndarray, int]:
    """(channels, T) int16 -> (channels, length): centre crop or symmetric zero padding; returns the
    clip and how many samples were cut (0 when padded)."""
    t = a.shape[1]
    if t >= length:
        s = (t - length) // 2
        return a[:, s:s + length], t - length
    left = (length - t) // 2
    out = np.zeros((a.shape[0], length), dtype=np.int16)
    out[:, left:left + t] = a
    return out, 0


def load_clip(path: Path, rate: Optional[int], length: int, what: str) -> Tuple[np.ndarray, int, int]:
    """One mono 16-bit WAV as (1, length) int16 (see :func:`fit_length`), its rate and samples cut;
    ``rate`` (when given) must match the file's."""
    a, r = read_wav(path)
    if rate is not None and r != rate:
        raise RobenchError(f"{path} has a sample rate of {r} Hz, {what} needs {rate} Hz; resample it "
                           f"(e.g. sox in.wav -r {rate} out.wav) or remove it")
    if a.shape[0] != 1:
        raise RobenchError(f"{path} has {a.shape[0]} channels, {what} needs mono clips; mix it down "
                           f"(e.g. sox in.wav -c 1 out.wav) or remove it")
    a, cut = fit_length(a, length)
    return a, r, cut


def _length(cfg, default: Optional[int]) -> Optional[int]:
    v = cfg.get("length", default)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise RobenchError(f"dataset.length must be an integer number of samples >= 1, got '{v}'")
    return int(v)


def _tensors(clips: Sequence[np.ndarray], labels: Sequence[int]) -> TensorDataset:
    x = torch.from_numpy(np.stack(clips).astype(np.float32) / FULL_SCALE) if clips else torch.zeros(0, 1, 1)
    return TensorDataset(x, torch.as_tensor(list(labels), dtype=torch.long))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_sums(path: Path) -> Dict[str, str]:
    """``sha256sum`` output (``<hex>  <name>``, one a line) -> {file name: hex}."""
    out = {}
    for k, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        m = re.fullmatch(r"([0-9a-fA-F]{64}) [ *]?(\S.*)", line.strip())
        if m is None:
            raise RobenchError(f"{path} line {k} is not a sha256sum line ('<64 hex digits>  <file name>'); "
                               f"restore the file or delete it to skip the check")
        out[Path(m.group(2)).name] = m.group(1).lower()
    return out


def find_fsdd(root: Path) -> Path:
    """The folder holding FSDD's WAV files: ``root/FSDD/recordings`` (the layout of the dataset's
    release), ``root/recordings`` or ``root`` itself."""
    for d in (root / "FSDD" / "recordings", root / "recordings", root):
        if d.is_dir() and any(FSDD_NAME.match(p.name) for p in d.iterdir()):
            return d
    raise RobenchError(f"FSDD not found under {root}: expected {root / 'FSDD' / 'recordings'}/<digit>_<speaker>_<index>.wav "
                       f"(the Free Spoken Digit Dataset's recordings folder); set dataset.root=DIR")


@DATASETS.register("fsdd")
def fsdd(cfg) -> DatasetSplits:
    """The Free Spoken Digit Dataset [jackson2018fsdd]: 3,000 recordings of the digits 0-9 by six speakers
    (8 kHz, 16-bit mono WAV), read from ``dataset.root`` (``ROOT/FSDD/recordings/*.wav``), sha256-checked
    against ``SHA256SUMS`` (next to ``recordings/`` or inside it) when that file is there, held in memory.

    The dataset's conventional split: recordings with index 0-4 (``dataset.test_max_index``) are the
    test set (300 clips), 5-49 the training set (2,700). Test and train are ordered by (index, speaker,
    digit), so any prefix of the test split mixes every digit and speaker. Each clip is fitted to
    ``dataset.length`` samples (8,000 = 1 s; :func:`fit_length`)."""
    root = Path(str(cfg.get("root") or "data")).expanduser()
    if not root.is_dir():
        raise RobenchError(f"dataset.root {root} is not a folder; set dataset.root=DIR to the folder holding "
                           f"FSDD/recordings/*.wav")
    rec = find_fsdd(root)
    length = _length(cfg, FSDD_RATE)
    t_max = cfg.get("test_max_index", 4)
    if isinstance(t_max, bool) or not isinstance(t_max, int) or t_max < 0:
        raise RobenchError(f"dataset.test_max_index must be an integer >= 0, got '{t_max}'")
    files = sorted(p for p in rec.iterdir() if p.suffix.lower() == ".wav" and p.is_file())
    sums_file = next((f for f in (rec.parent / "SHA256SUMS", rec / "SHA256SUMS") if f.is_file()), None)
    verify = bool(cfg.get("verify_sha256", True)) and sums_file is not None
    if verify:
        sums = _read_sums(sums_file)
        names = {p.name for p in files}
        missing = sorted(set(sums) - names)
        if missing:
            raise RobenchError(f"FSDD under {rec} is incomplete: {len(missing)} file(s) listed in {sums_file} are missing "
                               f"(e.g. {missing[0]}); restore them, or set dataset.verify_sha256=false")
        extra = sorted(names - set(sums))
        if extra:
            raise RobenchError(f"{rec / extra[0]} is not listed in {sums_file} ({len(extra)} such file(s)); remove it, "
                               f"or set dataset.verify_sha256=false")
    items = []
    for p in files:
        m = FSDD_NAME.match(p.name)
        if m is None:
            raise RobenchError(f"{p} does not follow FSDD's naming <digit>_<speaker>_<index>.wav; remove it")
        items.append((int(m.group(3)), m.group(2), int(m.group(1)), p))
    items.sort(key=lambda t: t[:3])
    parts: Dict[bool, Tuple[List[np.ndarray], List[int]]] = {True: ([], []), False: ([], [])}
    n_cut = 0
    for index, _, digit, p in items:
        if verify and _sha256(p) != sums[p.name]:
            raise RobenchError(f"{p} fails its sha256 check ({sums_file}): the file is corrupt or was changed; restore it, "
                               f"or set dataset.verify_sha256=false")
        a, _, cut = load_clip(p, FSDD_RATE, length, "FSDD")
        n_cut += cut > 0
        xs, ys = parts[index <= t_max]
        xs.append(a)
        ys.append(digit)
    if not parts[True][0] or not parts[False][0]:
        which = "test" if not parts[True][0] else "training"
        raise RobenchError(f"FSDD under {rec} has no {which} clips (test: index <= {t_max}); check dataset.root and "
                           f"dataset.test_max_index")
    splits = DatasetSplits("fsdd", _tensors(*parts[False]), _tensors(*parts[True]), 10, (1, length), (0.0,), (1.0,),
                           [str(d) for d in range(10)],
                           domain=Domain(-1.0, 1.0, "NCT", sample_rate=FSDD_RATE, quantum=1.0 / FULL_SCALE))
    splits.extra.update(folder=str(rec), sha256_checked=verify, length=length, clips_cropped=n_cut,
                        fit="centre crop / symmetric zero padding")
    return splits


# ---------------------------------------------------------------- audio_folder

def _scan_audio(folder: Path, labels: str) -> Tuple[List[Tuple[Path, int]], List[str], List[int]]:
    """(file, label) pairs of ``folder/<class>/*.wav`` (class order: sorted names, or numeric names)."""
    return class_files(folder, labels, (".wav",), "<clip>.wav", ".wav files")


@DATASETS.register("audio_folder")
def audio_folder(cfg) -> DatasetSplits:
    """Your own audio: dataset.root=DIR with class folders of 16-bit mono WAV files (DIR/<class>/*.wav, or DIR/test and DIR/train), one sample rate, fixed length."""
    _, test_dir, train_dir = folder_dirs(cfg, "audio_folder", "<clip>.wav")
    labels = str(cfg.get("labels", "sorted"))
    test_items, classes, idx = _scan_audio(test_dir, labels)
    if train_dir != test_dir:
        train_items, tr_classes, _ = _scan_audio(train_dir, labels)
        if labels == "sorted" and tr_classes != classes:
            raise RobenchError(f"the class folders of {train_dir} and {test_dir} differ: with dataset.labels=sorted both "
                               f"need the same classes")
    else:
        train_items = test_items
    rate = cfg.get("sample_rate")
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int) or rate < 1):
        raise RobenchError(f"dataset.sample_rate must be an integer number of Hz or null (from the files), got '{rate}'")
    length = _length(cfg, None)
    everything = test_items + (train_items if train_dir != test_dir else [])
    if rate is None:
        rate = read_wav(everything[0][0])[1]
    if length is None:  # every clip must then have one length
        lens = {}
        for p, _ in everything:
            lens.setdefault(read_wav(p)[0].shape[1], p)
            if len(lens) > 1:
                (a, pa), (b, pb) = list(lens.items())[:2]
                raise RobenchError(f"clips differ in length ({pa.name}: {a} samples, {pb.name}: {b}); set dataset.length=N "
                                   f"(samples) to centre-crop or zero-pad them to N")
        length = next(iter(lens))
    loaded: Dict[Path, np.ndarray] = {}

    def load(items):
        out = []
        for p, _ in items:
            if p not in loaded:
                loaded[p] = load_clip(p, int(rate), length, "this dataset (dataset.sample_rate)")[0]
            out.append(loaded[p])
        return _tensors(out, [k for _, k in items])

    test = load(test_items)
    train = load(train_items) if train_dir != test_dir else test
    num_classes = cfg.get("num_classes") or (max(idx) + 1 if labels == "numeric" else len(classes))
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < max(idx) + 1:
        raise RobenchError(f"dataset.num_classes={num_classes} is too small for class folders up to label {max(idx)}")
    names = list(classes) if labels == "sorted" else [str(i) for i in range(num_classes)]
    splits = DatasetSplits("audio_folder", train, test, int(num_classes), (1, length), (0.0,), (1.0,), names,
                           domain=Domain(-1.0, 1.0, "NCT", sample_rate=int(rate), quantum=1.0 / FULL_SCALE))
    splits.extra["class_order"] = [f"{k}:{c}" for c, k in zip(classes, idx)]
    return splits
