"""Data sources: your own images (``folder``), your own tensors (``tensors``), and three more
torchvision sets (``cifar100``, ``svhn``, ``fashion_mnist``). README, "Your own model and data".

``num_classes``, shape, mean and std come from the config when it sets them, else from the data
(mean and std: per channel over the training split, at most ``stats_samples`` images). Anything
inconsistent (labels out of range, images of different sizes without ``image_size``, a wrong
channel count) fails in one line before any work.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import Dataset, TensorDataset

from robench.data.base import DatasetSplits, class_files, folder_dirs
from robench.data.torchvision_sets import torchvision_split
from robench.errors import RobenchError
from robench.registry import DATASETS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _opt_int(cfg, key: str) -> Optional[int]:
    v = cfg.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise RobenchError(f"dataset.{key} must be an integer >= 1 or null, got '{v}'")
    return int(v)


class _Measured(Sequence):
    """Per-channel mean or std of the first training images, measured on first use (only robench's own
    architectures read them: a source model brings its own normalisation, so its runs read no images for it)."""

    def __init__(self, train: Dataset, n: int, which: int, cache: dict):
        self.train, self.n, self.which, self.cache = train, n, which, cache

    def _values(self) -> List[float]:
        if "v" not in self.cache:
            n = min(len(self.train), self.n)
            if isinstance(self.train, TensorDataset):
                x = self.train.tensors[0][:n]
            else:
                x = torch.stack([self.train[i][0] for i in range(n)])
            self.cache["v"] = ([float(v) for v in x.mean(dim=(0, 2, 3))],
                               [float(v) for v in x.std(dim=(0, 2, 3)).clamp_min(1e-3)])
        return self.cache["v"][self.which]

    def __getitem__(self, i):
        return self._values()[i]

    def __len__(self) -> int:
        return len(self._values())

    def __repr__(self) -> str:
        return repr(self._values())


def _stats(cfg, train: Dataset, channels: int) -> Tuple[Sequence[float], Sequence[float]]:
    """``dataset.mean``/``dataset.std`` when given, else measured on the first ``stats_samples`` training images."""
    mean, std = cfg.get("mean"), cfg.get("std")
    if mean is not None and std is not None:
        mean, std = [float(v) for v in mean], [float(v) for v in std]
        if len(mean) != channels or len(std) != channels or any(s <= 0 for s in std):
            raise RobenchError(f"dataset.mean/dataset.std need {channels} value(s) each (std > 0), got {mean} and {std}")
        return mean, std
    if (mean is None) != (std is None):
        raise RobenchError("dataset.mean and dataset.std go together: give both or neither")
    n, cache = int(cfg.get("stats_samples", 1000) or 1000), {}
    return _Measured(train, n, 0, cache), _Measured(train, n, 1, cache)


def _check_labels(y: torch.Tensor, num_classes: int, where: str) -> None:
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        bad = int(y.max()) if int(y.max()) >= num_classes else int(y.min())
        raise RobenchError(f"{where}: label {bad} is out of range for {num_classes} classes (0..{num_classes - 1}); "
                           f"fix the labels or set dataset.num_classes")


# ---------------------------------------------------------------- tensors

def _load_arrays(path: Path) -> dict:
    try:
        if path.suffix == ".npz":
            import numpy as np

            with np.load(path, allow_pickle=False) as z:
                return {k: torch.from_numpy(z[k].copy()) for k in z.files}
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RobenchError(f"dataset.path {path} is unreadable ({e.__class__.__name__}): expected a .pt file "
                           f"(torch.save of a dict) or an .npz with arrays x and y") from None
    if not isinstance(blob, dict):
        raise RobenchError(f"dataset.path {path} must hold a dict with tensors x and y, got {type(blob).__name__}")
    return blob


def _as_images(x: Any, path: Path, key: str) -> torch.Tensor:
    """float [0, 1] NCHW as is; uint8 NHWC (or NHW) scaled by 1/255 and made NCHW."""
    if not torch.is_tensor(x):
        raise RobenchError(f"{path}: '{key}' must be an array, got {type(x).__name__}")
    if x.dtype == torch.uint8:
        if x.dim() == 3:
            x = x.unsqueeze(-1)
        if x.dim() != 4 or x.shape[-1] not in (1, 3, 4):
            raise RobenchError(f"{path}: uint8 '{key}' must be NHWC with 1, 3 or 4 channels, got shape {tuple(x.shape)}")
        return x.permute(0, 3, 1, 2).float().div(255.0).contiguous()
    if not x.is_floating_point():
        raise RobenchError(f"{path}: '{key}' must be float in [0, 1] (NCHW) or uint8 (NHWC), got {x.dtype}")
    if x.dim() != 4:
        raise RobenchError(f"{path}: float '{key}' must be NCHW, got shape {tuple(x.shape)}")
    if x.shape[1] not in (1, 3, 4):
        raise RobenchError(f"{path}: float '{key}' must be NCHW with 1, 3 or 4 channels, got shape {tuple(x.shape)} "
                           f"(NHWC floats: convert to NCHW, or store uint8 NHWC)")
    x = x.float()
    from robench.victim import check_inputs

    check_inputs(x, f"{path}: float '{key}'", hint=" (divide by 255?)")
    return x.contiguous()


def _as_labels(y: Any, n: int, path: Path, key: str) -> torch.Tensor:
    if not torch.is_tensor(y) or y.dim() != 1 or y.is_floating_point() and not bool((y == y.round()).all()):
        raise RobenchError(f"{path}: '{key}' must be a 1-d array of integer labels")
    if len(y) != n:
        raise RobenchError(f"{path}: '{key}' has {len(y)} labels for {n} images")
    return y.long()


@DATASETS.register("tensors")
def tensors(cfg) -> DatasetSplits:
    """Your own arrays: dataset.path=FILE (.pt or .npz) with x (float 0..1 NCHW or uint8 NHWC) and y; x_train, y_train optional."""
    if cfg.get("path") in (None, ""):
        raise RobenchError("dataset=tensors needs dataset.path=FILE (.pt or .npz holding x and y)")
    path = Path(str(cfg.path)).expanduser()
    if not path.is_file():
        raise RobenchError(f"dataset.path {path} not found (no such file)")
    blob = _load_arrays(path)
    for k in ("x", "y"):
        if k not in blob:
            raise RobenchError(f"{path} has no '{k}' (keys: {', '.join(sorted(blob)) or 'none'}); it needs x (images) "
                               f"and y (labels)")
    x = _as_images(blob["x"], path, "x")
    y = _as_labels(blob["y"], len(x), path, "y")
    if "x_train" in blob:
        xt = _as_images(blob["x_train"], path, "x_train")
        yt = _as_labels(blob.get("y_train"), len(xt), path, "y_train")
        if xt.shape[1:] != x.shape[1:]:
            raise RobenchError(f"{path}: x_train images are {tuple(xt.shape[1:])}, x images {tuple(x.shape[1:])}")
    else:
        xt, yt = x, y
    num_classes = _opt_int(cfg, "num_classes") or int(max(int(y.max()), int(yt.max())) + 1)
    _check_labels(y, num_classes, f"{path} y")
    _check_labels(yt, num_classes, f"{path} y_train")
    train, test = TensorDataset(xt, yt), TensorDataset(x, y)
    mean, std = _stats(cfg, train, x.shape[1])
    names = cfg.get("class_names")
    return DatasetSplits("tensors", train, test, num_classes, tuple(x.shape[1:]), mean, std,
                         list(names) if names else [str(i) for i in range(num_classes)])


# ---------------------------------------------------------------- folder

class ImageFiles(Dataset):
    """(path, label) pairs read with PIL: channels, resize, centre crop, to [0, 1] CHW."""

    def __init__(self, items: Sequence[Tuple[Path, int]], channels: int, resize: Optional[int],
                 crop: Optional[int]):
        import torchvision.transforms as T

        self.items = list(items)
        self.mode = "L" if channels == 1 else "RGB"
        tf = ([T.Resize(resize)] if resize else []) + ([T.CenterCrop(crop)] if crop else []) + [T.ToTensor()]
        self.tf = T.Compose(tf)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        from PIL import Image

        p, label = self.items[i]
        try:
            with Image.open(p) as im:
                img = im.convert(self.mode)
        except Exception as e:
            raise RobenchError(f"image {p} is unreadable ({e.__class__.__name__})") from None
        return self.tf(img), label


def _scan(folder: Path, labels: str, order: str) -> Tuple[List[Tuple[Path, int]], List[str], List[int]]:
    items, classes, idx = class_files(folder, labels, IMAGE_SUFFIXES, "<image>.png|jpg", "PNG or JPEG images")
    if order == "filename":
        items.sort(key=lambda t: (t[0].name, t[1]))
    elif order != "class":
        raise RobenchError(f"dataset.order must be class or filename, got '{order}'")
    return items, classes, idx


def _first_size(items, what: str) -> Tuple[str, Tuple[int, int]]:
    """Mode and size of the first image, and every image the same size (headers only: cheap)."""
    from PIL import Image

    sizes = {}
    mode = None
    for p, _ in items:
        try:
            with Image.open(p) as im:
                sizes.setdefault(im.size, p)
                mode = mode or im.mode
        except Exception as e:
            raise RobenchError(f"image {p} is unreadable ({e.__class__.__name__})") from None
        if len(sizes) > 1:
            (a, pa), (b, pb) = list(sizes.items())[:2]
            raise RobenchError(f"{what} images differ in size ({pa.name}: {a[0]}x{a[1]}, {pb.name}: {b[0]}x{b[1]}); "
                               f"set dataset.image_size=N (and dataset.resize=M) to resize and centre-crop them")
    return mode or "RGB", next(iter(sizes))


@DATASETS.register("folder")
def folder(cfg) -> DatasetSplits:
    """Your own images: dataset.root=DIR in ImageFolder layout (DIR/<class>/*.png or *.jpg, or DIR/test and DIR/train), resize and centre-crop options."""
    root, test_dir, train_dir = folder_dirs(cfg, "folder", "<image>.png")
    labels, order = str(cfg.get("labels", "sorted")), str(cfg.get("order", "class"))
    test_items, classes, idx = _scan(test_dir, labels, order)
    train_items, tr_classes, _ = _scan(train_dir, labels, order) if train_dir != test_dir else (test_items, classes, idx)
    if labels == "sorted" and tr_classes != classes:
        raise RobenchError(f"the class folders of {train_dir} and {test_dir} differ: with dataset.labels=sorted both need "
                           f"the same classes")
    crop, resize = _opt_int(cfg, "image_size"), _opt_int(cfg, "resize")
    channels = cfg.get("channels")
    # with a crop only the first image's mode matters; without, every image must have one size
    mode, size = _first_size(test_items[:1] if crop else test_items + (train_items if train_dir != test_dir else []),
                             str(root))
    if channels is None:
        channels = 1 if mode in ("L", "1", "I", "I;16", "LA") else 3
    if channels not in (1, 3):
        raise RobenchError(f"dataset.channels must be 1, 3 or null (from the images), got '{channels}'")
    if crop:
        h = w = crop
    elif resize:
        raise RobenchError("dataset.resize needs dataset.image_size (the centre crop) so every image has one shape")
    else:
        w, h = size
    num_classes = _opt_int(cfg, "num_classes") or (max(idx) + 1 if labels == "numeric" else len(classes))
    _check_labels(torch.tensor([k for _, k in test_items + train_items]), num_classes, str(root))
    train = ImageFiles(train_items, channels, resize, crop)
    test = ImageFiles(test_items, channels, resize, crop)
    mean, std = _stats(cfg, train, channels)
    names = list(classes) if labels == "sorted" else [str(i) for i in range(num_classes)]
    splits = DatasetSplits("folder", train, test, num_classes, (channels, h, w), mean, std, names)
    splits.extra["class_order"] = [f"{k}:{c}" for c, k in zip(classes, idx)]
    return splits


# ---------------------------------------------------------------- more torchvision sets

CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
SVHN_MEAN, SVHN_STD = (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)
FASHION_MEAN, FASHION_STD = (0.2860,), (0.3530,)


@DATASETS.register("cifar100")
def cifar100(cfg) -> DatasetSplits:
    """CIFAR-100 32x32 colour images, 100 classes, through torchvision (dataset.root, dataset.download)."""
    import torchvision

    train = torchvision_split(torchvision.datasets.CIFAR100, cfg, True, "CIFAR-100")
    test = torchvision_split(torchvision.datasets.CIFAR100, cfg, False, "CIFAR-100")
    return DatasetSplits("cifar100", train, test, 100, (3, 32, 32), CIFAR100_MEAN, CIFAR100_STD, list(test.classes))


def _svhn(root, train, download, transform):
    import torchvision

    return torchvision.datasets.SVHN(root, split="train" if train else "test", download=download, transform=transform)


@DATASETS.register("svhn")
def svhn(cfg) -> DatasetSplits:
    """SVHN 32x32 house-number digits through torchvision (train / test splits; dataset.root, dataset.download)."""
    train = torchvision_split(_svhn, cfg, True, "SVHN")
    test = torchvision_split(_svhn, cfg, False, "SVHN")
    return DatasetSplits("svhn", train, test, 10, (3, 32, 32), SVHN_MEAN, SVHN_STD, [str(i) for i in range(10)])


@DATASETS.register("fashion_mnist")
def fashion_mnist(cfg) -> DatasetSplits:
    """Fashion-MNIST 28x28 grey clothing images, 10 classes, through torchvision (dataset.root, dataset.download)."""
    import torchvision

    train = torchvision_split(torchvision.datasets.FashionMNIST, cfg, True, "Fashion-MNIST")
    test = torchvision_split(torchvision.datasets.FashionMNIST, cfg, False, "Fashion-MNIST")
    return DatasetSplits("fashion_mnist", train, test, 10, (1, 28, 28), FASHION_MEAN, FASHION_STD, list(test.classes))
