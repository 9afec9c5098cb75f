"""Clean accuracy of the default MNIST victim behind each input transformation (robench's settings),
on all 1,000 embedded test images, with the wall time of one pass. Needs the demo's checkpoint
(`robench train-defense`, checkpoints/mnist/cw_mnist/none.pt).

    python benchmarks/defenses_clean_accuracy.py
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from robench.models.checkpoint import load_checkpoint
from robench.config import configs_dir
from robench.data import eval_slice, load_dataset
from robench.defenses.base import reseed_defenses
from robench.defenses.compose import DefendedModel, instantiate_input
from robench.models import build_model
from robench.training.loop import predict

SETTINGS = [("jpeg", {}), ("bit_depth", {}), ("bit_depth", {"bits": 1}), ("median_smoothing", {}),
            ("median_smoothing", {"size": 3}), ("random_resize_pad", {}), ("tvm", {})]


def main() -> None:
    splits = load_dataset(OmegaConf.load(configs_dir() / "dataset" / "mnist.yaml"))
    _, x, y = eval_slice(splits, None)
    model = build_model("cw_mnist", splits)
    load_checkpoint(Path("checkpoints/mnist/cw_mnist/none.pt"), model, remake="robench train-defense")
    model.eval()
    acc = lambda m: (predict(m, x).argmax(1) == y).float().mean().item()
    print(f"{'defense':<34} clean accuracy   seconds / 1,000 images")
    print(f"{'none (undefended)':<34} {acc(model):>13.2%}")
    for name, params in SETTINGS:
        d = DefendedModel(model, [instantiate_input(name, params)]).eval()
        reseed_defenses(d, 0)
        t = time.perf_counter()
        a = acc(d)
        label = name + (" " + ",".join(f"{k}={v}" for k, v in params.items()) if params else " (default)")
        print(f"{label:<34} {a:>13.2%}   {time.perf_counter() - t:8.2f}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
