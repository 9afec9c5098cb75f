"""Architectures (normalisation inside the model) and checkpoints (DESIGN.md, "The pieces": models/)."""
from robench.models.base import Normalize, build_model  # noqa: F401
from robench.models import mnist_models, cifar_models, imagenet_models, denoise  # noqa: F401  (registration)
from robench.models import audio_models  # noqa: F401  (kws_cnn: waveforms in, log-mel front end inside)
from robench.models import gbdt  # noqa: F401  (LightGBM trees, lightgbm imported on use)
from robench.models import sources  # noqa: F401  (model sources: module, torchscript, onnx, zoos)
from robench.models import robustbench_eval  # noqa: F401  (experiment=robustbench_eval: resolvers, callback)
