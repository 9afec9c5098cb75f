from __future__ import annotations

from pathlib import Path

from robench.data.base import DatasetSplits
from robench.errors import RobenchError
from robench.registry import DATASETS

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def torchvision_split(cls, cfg, train: bool, what: str, **kw):
    """A torchvision dataset split as [0,1] float tensors; a missing dataset fails with one line."""
    import torchvision.transforms as T

    root = Path(str(cfg.get("root", "data"))).expanduser()
    download = bool(cfg.get("download", False))
    try:
        return cls(str(root), train=train, download=download, transform=T.ToTensor(), **kw)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted. You can use download=True ..."
        if download:
            first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
            raise RobenchError(f"{what} could not be downloaded to {root} ({first}); offline, put the files "
                               f"there or set dataset.root=DIR") from None
        raise RobenchError(f"{what} not found under {root}: pass dataset.download=true (needs internet) "
                           f"or dataset.root=DIR pointing at an existing copy") from None
    except OSError as e:  # download attempted offline
        raise RobenchError(f"{what} could not be fetched into {root} ({e.__class__.__name__}: {e}); "
                           f"offline, put the files there or set dataset.root=DIR") from None


@DATASETS.register("cifar10")
def cifar10(cfg) -> DatasetSplits:
    """CIFAR-10 32x32 colour images through torchvision (dataset.root, dataset.download)."""
    import torchvision

    train = torchvision_split(torchvision.datasets.CIFAR10, cfg, True, "CIFAR-10")
    test = torchvision_split(torchvision.datasets.CIFAR10, cfg, False, "CIFAR-10")
    return DatasetSplits("cifar10", train, test, 10, (3, 32, 32), CIFAR_MEAN, CIFAR_STD, list(test.classes))


@DATASETS.register("imagenet")
def imagenet(cfg) -> DatasetSplits:
    """ImageNet validation images from an ImageFolder directory (resize 256 / centre crop 224 by default)."""
    import torchvision
    import torchvision.transforms as T

    root = Path(str(cfg.get("root", "data/imagenet"))).expanduser()
    val = root / str(cfg.get("split", "val"))
    if not val.is_dir():
        raise RobenchError(f"ImageNet validation folder {val} not found: set dataset.root=DIR where DIR/val/"
                           f"<wnid>/*.JPEG holds the validation images (ImageFolder layout)")
    size = int(cfg.get("image_size", 224))
    resize = int(cfg.get("resize", round(size / 0.875)))
    tf = T.Compose([T.Resize(resize), T.CenterCrop(size), T.ToTensor()])
    ds = torchvision.datasets.ImageFolder(str(val), transform=tf)
    # ImageNet is evaluation-only here (pretrained victims); the train split is the same folder so that
    # code asking for it gets something well-defined rather than a crash.
    return DatasetSplits("imagenet", ds, ds, 1000, (3, size, size), IMAGENET_MEAN, IMAGENET_STD, ds.classes)
