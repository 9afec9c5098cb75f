"""ImageNet victims from torchvision, with pretrained weights when they can be had."""
from __future__ import annotations

from torch import nn

from robench.errors import RobenchError
from robench.registry import MODELS


def _tv(name: str, pretrained: bool, num_classes: int, **kw) -> nn.Module:
    import torchvision

    if not pretrained:
        return getattr(torchvision.models, name)(weights=None, num_classes=num_classes, **kw)
    try:
        return getattr(torchvision.models, name)(weights="DEFAULT", **kw)
    except Exception as e:  # offline: torch.hub cannot fetch the weights
        raise RobenchError(f"pretrained {name} weights are not available ({e.__class__.__name__}); go online once "
                           f"so torch.hub caches them, or set model.params.pretrained=false") from None


@MODELS.register("resnet50")
def resnet50(num_classes: int = 1000, shape=(3, 224, 224), pretrained: bool = True) -> nn.Module:
    """torchvision ResNet-50 [he2016] (ImageNet top-1 76.1% with the V1 weights), pretrained when available."""
    return _tv("resnet50", pretrained, num_classes)


@MODELS.register("inception_v3")
def inception_v3(num_classes: int = 1000, shape=(3, 299, 299), pretrained: bool = True) -> nn.Module:
    """torchvision Inception-v3 [szegedy2016] (299x299 inputs: dataset.image_size=299), pretrained when available."""
    kw = {"aux_logits": True, "init_weights": False} if not pretrained else {}
    m = _tv("inception_v3", pretrained, num_classes, **kw)
    m.aux_logits, m.AuxLogits = False, None
    return m
