"""Datasets as float tensors in [0, 1], NCHW (DESIGN.md, "The pieces": data/).

A dataset plugin is a function ``(cfg) -> DatasetSplits``: it returns torch Datasets for the train and
test splits plus the facts a model needs (number of classes, input shape, normalisation statistics).
Evaluation slices the test split with :func:`eval_slice` (``n_samples``, ``offset``, ``shard=i/n``).
"""
from robench.data.base import DatasetSplits, eval_slice, load_dataset, parse_shard  # noqa: F401
from robench.data import mnist, torchvision_sets  # noqa: F401  (registration)
from robench.data import sources  # noqa: F401  (folder, tensors, cifar100, svhn, fashion_mnist)
from robench.data import audio  # noqa: F401  (fsdd, audio_folder: waveforms in [-1, 1], N x 1 x T)
