"""Defenses: training recipes (train-time) and input transformations (inference-time), one config
group so that ``defense=X`` means the same to ``robench train-defense`` and ``robench attack``
(DESIGN.md, "Defenses"); ``defense=[recipe,transform,...]`` composes them (robench/defenses/compose.py)."""
from robench.defenses.base import InputDefense, TrainContext, TrainingRecipe  # noqa: F401
from robench.defenses import natural  # noqa: F401  (registration)
from robench.defenses import (cat, distillation, fast_at, fgsm_at, free_at, gaussian_aug, label_smoothing,  # noqa: F401
                              mixup, pgd_at, sprout, trades, bn_methods)
from robench.defenses import bit_depth, jpeg, median_smoothing, random_resize_pad, tvm  # noqa: F401
from robench.defenses import feature_squeeze  # noqa: F401
from robench.defenses import deepcloak, input_grad, magnet  # noqa: F401  (registration)
