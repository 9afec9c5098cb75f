from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import Dataset

from robench.domain import IMAGE, Domain
from robench.errors import RobenchError
from robench.registry import DATASETS


@dataclass
class DatasetSplits:
    name: str
    train: Dataset
    test: Dataset
    num_classes: int
    shape: Tuple[int, int, int]          # C, H, W of one image
    mean: Sequence[float]                 # per-channel, used by the model's Normalize layer
    std: Sequence[float]
    class_names: Optional[Sequence[str]] = None
    extra: dict = field(default_factory=dict)
    domain: Domain = IMAGE                # the box and layout of the inputs (robench/domain.py)


def load_dataset(cfg: Any) -> DatasetSplits:
    """Build the dataset named ``cfg.name`` with the rest of ``cfg`` as its options."""
    return DATASETS.get(cfg.name)(cfg)


def parse_shard(shard: Any) -> Tuple[int, int]:
    """``"i/n"`` (0-based shard i of n) -> (i, n); ``None`` -> (0, 1)."""
    if shard in (None, "", "null"):
        return 0, 1
    try:
        i, n = (int(s) for s in str(shard).split("/"))
    except ValueError:
        raise RobenchError(f"dataset.shard must look like i/n (e.g. 0/4), got '{shard}'") from None
    if n < 1 or not 0 <= i < n:
        raise RobenchError(f"dataset.shard={shard}: need n >= 1 and 0 <= i < n")
    return i, n


def eval_indices(n_total: int, n_samples: Optional[int], offset: int, shard: Any, unit: int = 1,
                 key: str = "dataset") -> torch.Tensor:
    """Test-split indices for this evaluation: ``[offset, offset + n_samples)``, then shard i of n.

    The slice is cut into units of ``unit`` consecutive samples (``robench attack`` passes
    ``attack.batch_size``: batch b is positions ``[b*unit, (b+1)*unit)`` of the full, unsharded
    slice). Shards are contiguous runs of whole units, as equal as possible (the first
    ``n_units % n`` shards hold one more unit); their union is exactly the unsharded selection, so
    merging shard records reproduces the unsharded run.
    """
    if offset < 0 or offset >= n_total:
        raise RobenchError(f"dataset.offset={offset} is outside the test split (0..{n_total - 1})")
    if n_samples is not None and n_samples < 1:
        raise RobenchError(f"{key}.n_samples must be >= 1 (or null for all), got {n_samples}")
    if n_samples is not None and offset + n_samples > n_total:  # never a silently shorter slice
        at = f"dataset.offset={offset} + " if offset else ""
        raise RobenchError(f"{at}{key}.n_samples={n_samples} runs past the end of the test split ({n_total} images): "
                           f"the slice would hold only {n_total - offset}; lower it ({key}.n_samples=null takes the "
                           f"rest of the split)")
    end = n_total if n_samples is None else min(n_total, offset + n_samples)
    idx = torch.arange(offset, end)
    i, n = parse_shard(shard)
    if n == 1:
        return idx
    units = torch.tensor_split(torch.arange(-(-len(idx) // unit)), n)[i]
    if len(units) == 0:
        raise RobenchError(f"dataset.shard={shard} is empty: the slice holds only {-(-len(idx) // unit)} batch(es) of "
                           f"attack.batch_size={unit} samples; use fewer shards or a smaller attack.batch_size")
    return idx[int(units[0]) * unit:(int(units[-1]) + 1) * unit]


def eval_slice(splits: DatasetSplits, n_samples: Optional[int], offset: int = 0,
               shard: Any = None, unit: int = 1, key: str = "dataset") -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (dataset indices, images NCHW in [0,1], labels) of the evaluation slice (shards in
    units of ``unit`` samples, see :func:`eval_indices`)."""
    idx = eval_indices(len(splits.test), n_samples, offset, shard, unit, key)
    if len(idx) == 0:
        raise RobenchError("the evaluation slice is empty: check dataset.n_samples, dataset.offset and dataset.shard")
    xs, ys = zip(*(splits.test[int(i)] for i in idx))
    return idx, torch.stack(xs).float(), torch.as_tensor(ys, dtype=torch.long)


# ---------------------------------------------------------------- users' class folders (dataset=folder, audio_folder)
def folder_dirs(cfg: Any, dataset: str, layout: str) -> Tuple[Path, Path, Path]:
    """(root, test folder, train folder) of a class-folder dataset: ``dataset.root=DIR`` holding ``DIR/<class>/...``,
    or ``DIR/test`` (``val``) and ``DIR/train`` (``dataset.test_dir`` / ``train_dir`` name others); the
    train folder is the test folder when there is none. ``layout``: the file pattern, for the messages."""
    if cfg.get("root") in (None, ""):
        raise RobenchError(f"dataset={dataset} needs dataset.root=DIR (layout: DIR/<class>/{layout})")
    root = Path(str(cfg.root)).expanduser()
    if not root.is_dir():
        raise RobenchError(f"dataset.root {root} is not a folder")

    def pick(key: str, names: Sequence[str]) -> Optional[Path]:
        if cfg.get(key):
            p = root / str(cfg.get(key))
            if not p.is_dir():
                raise RobenchError(f"dataset.{key}: {p} is not a folder")
            return p
        return next((root / n for n in names if (root / n).is_dir()), None)

    test_dir = pick("test_dir", ("test", "val")) or root
    return root, test_dir, pick("train_dir", ("train",)) or test_dir


def class_files(folder: Path, labels: str, suffixes: Sequence[str], layout: str,
                kind: str) -> Tuple[List[Tuple[Path, int]], List[str], List[int]]:
    """(file, label) pairs of ``folder/<class>/*`` with one of ``suffixes``, the class names and their labels
    (``labels=sorted``: 0.. in name order; ``numeric``: the folder names, non-negative integers)."""
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise RobenchError(f"{folder} holds no class folders: the layout is {folder}/<class>/{layout}")
    if labels == "numeric":
        try:
            idx = [int(c) for c in classes]
        except ValueError:
            raise RobenchError(f"dataset.labels=numeric needs class folders named by their index, found "
                               f"'{next(c for c in classes if not c.lstrip('-').isdigit())}' in {folder}") from None
        if min(idx) < 0:
            raise RobenchError(f"dataset.labels=numeric: class folder {min(idx)} in {folder} is negative")
        classes = [c for _, c in sorted(zip(idx, classes))]
        idx = sorted(idx)
    elif labels == "sorted":
        idx = list(range(len(classes)))
    else:
        raise RobenchError(f"dataset.labels must be sorted or numeric, got '{labels}'")
    items = []
    for c, k in zip(classes, idx):
        items += [(p, k) for p in sorted((folder / c).iterdir()) if p.suffix.lower() in suffixes and p.is_file()]
    if not items:
        raise RobenchError(f"no {kind} under {folder}/<class>/")
    return items, classes, idx
